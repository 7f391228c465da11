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
# Training without XLA here and in every `convert` subprocess (convert.train.use_xla), on every
# machine: train's default depends on the hardware (on with a GPU or without AVX-512), the suite's
# tiny trainings are mostly compile time, and every machine runs the suite the same way;
# SEAMQC_TRAIN_XLA=1 make test runs everything with it.
os.environ.setdefault("SEAMQC_TRAIN_XLA", "0")

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


# `make test` runs the suite on two pytest-xdist workers, one file at a time per worker (Makefile,
# TEST_JOBS). The files that take minutes go first, longest first (measured: the data loop ~3-4 min,
# the ship chain and the bench ~1.5 min each), so that the short unit tests fill the end instead of
# one worker finishing a long file alone; the rest keep their order.
LONGEST_FIRST = ("test_data_loop.py", "test_export.py", "test_bench.py", "test_applications.py", "test_fuzz.py")


def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a file, and of the other files, is kept


def _fuzz_counts() -> dict | None:
    fuzz = sys.modules.get("tests.test_fuzz")
    counts = getattr(fuzz, "FUZZ_COUNTS", None)
    if not counts or not (counts["config"] or counts["manifest"] or counts["subprocess"]):
        return None
    return {**counts, "exits": {str(k): v for k, v in counts["exits"].items()}}


_WORKER_FUZZ: list[dict] = []


def pytest_sessionfinish(session) -> None:
    """On an xdist worker: hand the fuzz counts to the controller, which prints the summary."""
    out = getattr(session.config, "workeroutput", None)
    counts = _fuzz_counts()
    if out is not None and counts:
        out["fuzz_counts"] = counts


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    counts = getattr(node, "workeroutput", {}).get("fuzz_counts")
    if counts:
        _WORKER_FUZZ.append(counts)


def pytest_terminal_summary(terminalreporter) -> None:
    """Say how many fuzz cases ran (issue 12 asks for the count in the test output)."""
    parts = [c for c in [_fuzz_counts(), *_WORKER_FUZZ] if c]
    if not parts:
        return
    total: dict = {"config": 0, "manifest": 0, "subprocess": 0, "seconds": 0.0, "exits": {}}
    for c in parts:
        for k in ("config", "manifest", "subprocess", "seconds"):
            total[k] += c[k]
        for k, v in c["exits"].items():
            total["exits"][k] = total["exits"].get(k, 0) + v
    terminalreporter.write_line(
        f"fuzz: {total['config']} config cases, {total['manifest']} manifest cases in-process, "
        f"{total['subprocess']} as real processes ({total['seconds']:.0f} s); (check-config, run) exits: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(total["exits"].items(), key=lambda kv: -kv[1]))
    )
