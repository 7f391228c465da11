"""Shared pytest setup. Fixtures live in per-area plugin modules under tests/support/ (each area owns its
own); shared helpers live there too, never in test files."""

import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = ["tests.support.model", "tests.support.mqtt", "tests.support.collect"]


@pytest.fixture(autouse=True)
def _restore_signal_handlers():
    """Tests that run the daemon in-process install its signal handlers; put the originals back so
    a later test's child processes do not inherit an ignored SIGINT (Python keeps SIG_IGN)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        if handler is not None and signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


def pytest_terminal_summary(terminalreporter) -> None:
    """Say how many fuzz cases ran (issue 12 asks for the count in the test output)."""
    fuzz = sys.modules.get("tests.test_fuzz")
    counts = getattr(fuzz, "FUZZ_COUNTS", None)
    if counts and (counts["config"] or counts["manifest"] or counts["subprocess"]):
        terminalreporter.write_line(
            f"fuzz: {counts['config']} config cases, {counts['manifest']} manifest cases in-process, "
            f"{counts['subprocess']} as real processes ({counts['seconds']:.0f} s); (check-config, run) exits: "
            + ", ".join(f"{k}: {v}" for k, v in sorted(counts["exits"].items(), key=lambda kv: -kv[1]))
        )
