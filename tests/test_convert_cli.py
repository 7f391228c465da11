"""``python -m convert``: a command whose module fails to import is reported, not dropped.

The module is broken for real in a child interpreter: a finder ahead of the normal ones makes
``import convert.localize`` (or the whole module) fail the way a missing dependency does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BREAK = """
import importlib.abc, importlib.machinery, sys

class Broken(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name == "convert.localize" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        {how}

sys.meta_path.insert(0, Broken())
from convert.__main__ import main
sys.exit(main(sys.argv[1:]))
"""

HOW = {
    "dependency": "import no_such_dependency_xyz",  # ModuleNotFoundError naming another module
    "module": "raise ModuleNotFoundError(\"No module named 'convert.localize'\", name='convert.localize')",
}


def _run(how: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", BREAK.format(how=HOW[how]), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.parametrize("how", sorted(HOW))
def test_broken_command_is_one_clear_line(how):
    p = _run(how, "localize", "--heatmaps", "x", "--boxes", "y")
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("error: command 'localize' is unavailable: convert.localize failed to import")
    assert "ModuleNotFoundError" in lines[0]
    if how == "dependency":
        assert "no_such_dependency_xyz" in lines[0]


def test_help_lists_the_broken_command_as_unavailable():
    p = _run("dependency", "--help")
    assert p.returncode == 0, p.stderr
    listed = [ln for ln in p.stdout.splitlines() if ln.strip().startswith("localize")]
    assert listed and "UNAVAILABLE" in listed[0], p.stdout
    assert any(ln.strip().startswith("evaluate") and "UNAVAILABLE" not in ln for ln in p.stdout.splitlines())


def test_every_command_renders_its_help():
    """``--help`` must work for every command: a bare ``%`` in one help string made argparse raise
    ``ValueError`` (a traceback) for ``convert evaluate --help``."""
    import argparse

    from convert.__main__ import COMMANDS, build_parser
    from edge.__main__ import build_parser as edge_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) == len(COMMANDS)  # module ``leaveout`` registers ``leave-out``
    assert not [a.dest for a in sub._choices_actions if "UNAVAILABLE" in (a.help or "")]
    for name, p in sub.choices.items():
        text = p.format_help()
        assert text.startswith("usage: python -m convert " + name), name
    assert "found / flagged % (" in sub.choices["evaluate"].format_help()
    assert edge_parser().format_help().startswith("usage:")
