"""``python -m convert …`` as a subprocess, for tests: one way to run the workstation CLI and to
check its one-line user errors (no traceback, one ``error:`` line naming what is wrong)."""

from __future__ import annotations

import os
import subprocess
import sys

from convert import harness

ROOT = harness.ROOT


def run_convert(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m convert ARGS`` from the repository root; output captured as text. ``env``:
    variables set on top of this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "convert", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
    )


def convert_ok(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    """``run_convert`` that must succeed; its stdout."""
    p = run_convert(*args, timeout=timeout, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def one_line_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    """A failed run's single ``error:`` line (no traceback), which contains every needle."""
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, p.stderr[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
