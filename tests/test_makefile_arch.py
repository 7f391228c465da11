"""``make demo`` / ``make install`` on 32-bit ARM: one clear line and nothing done.

ai-edge-litert 2.x has no 32-bit ARM wheels, so a 32-bit Raspberry Pi OS would otherwise fail deep
inside pip. A fake ``uname`` first on PATH plays the machine; every command the targets would run
next (apt, the venv's python3, useradd, systemctl …) is a stub that records its call, so the
test also proves nothing ran before the refusal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUBS = ("useradd", "install", "systemctl", "apt-get", "sudo", "python3")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(tmp_path: Path, machine: str, *targets: str) -> tuple[subprocess.CompletedProcess, str]:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    calls = tmp_path / "calls.log"
    (fake / "uname").write_text(f'#!/bin/sh\n[ "$1" = -m ] && echo {machine} && exit 0\nexec /bin/uname "$@"\n')
    for name in STUBS:
        (fake / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexit 1\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    p = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), f"VENV={tmp_path / 'venv'}", *targets],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return p, calls.read_text() if calls.exists() else ""


@pytest.mark.parametrize("machine", ["armv7l", "armv6l"])
@pytest.mark.parametrize("target", ["demo", "install", "setup"])
def test_32_bit_arm_is_refused_with_one_line(tmp_path, machine, target):
    p, calls = _make(tmp_path, machine, target)
    assert p.returncode != 0
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and machine in errors[0] and "64-bit" in errors[0], p.stderr
    assert calls == "" and not (tmp_path / "venv").exists()  # refused before anything ran


@pytest.mark.parametrize("machine", ["aarch64", "x86_64", "arm64"])
def test_64_bit_machines_pass_the_check(tmp_path, machine):
    p, calls = _make(tmp_path, machine, "arch")
    assert p.returncode == 0 and "error" not in p.stderr and calls == "", p.stderr
