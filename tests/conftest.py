"""Shared pytest setup. Fixtures live in per-area plugin modules so each area owns its own."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = ["tests.fixtures_model", "tests.fixtures_mqtt"]


def pytest_terminal_summary(terminalreporter) -> None:
    """Say how many fuzz cases ran (issue 12 asks for the count in the test output)."""
    fuzz = sys.modules.get("tests.test_fuzz")
    counts = getattr(fuzz, "FUZZ_COUNTS", None)
    if counts and (counts["config"] or counts["manifest"] or counts["subprocess"]):
        terminalreporter.write_line(
            f"fuzz: {counts['config']} config cases, {counts['manifest']} manifest cases in-process, "
            f"{counts['subprocess']} as real processes ({counts['seconds']:.0f} s); (check-config, run) exits: "
            + ", ".join(f"{k}: {v}" for k, v in sorted(counts["exits"].items(), key=lambda kv: -kv[1])))
