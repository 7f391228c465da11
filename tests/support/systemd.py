"""The shipped systemd unit, made runnable on this machine (for systemd-analyze and real runs)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
UNIT = ROOT / "systemd" / "seam-qc.service"


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart's interpreter pointed at one that exists here."""
    text = UNIT.read_text().replace("/opt/seam-qc/.venv/bin/python", str(Path(sys.executable).resolve()))
    out = tmp_path / "seam-qc.service"
    out.write_text(text)
    return out
