"""What every part of the bench shares: the plan (how much to measure), timing and percentiles,
the machine description, the subprocess environment. No TensorFlow, no daemon."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.seam import DEFAULT_ROI

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_BUNDLE = Path("edge/models/default")
ROI = list(DEFAULT_ROI)
LABELS_EXPLAINED = ("error", "break", "length")  # every label that can be flagged
#: The yardstick of the classifier budget: the architecture of the model the Pi ran when the
#: real-seams work began (the single-look ``resnet-int8-gap`` with 8 filters). The shipped classifier
#: may cost up to 3× its int8 per-frame latency (``classifier_cost_vs_reference`` in report.TARGETS),
#: measured side by side at 1 thread, so the budget holds on any machine.
REFERENCE = {"arch": "resnet-int8-gap", "filters": 8}


@dataclass(frozen=True)
class Plan:
    quick: bool
    iters: int
    warmup: int
    rounds: int
    archs: tuple[str, ...]
    tf_threads: tuple[int, ...]
    lite_threads: tuple[int, ...]
    mobilenet: bool
    steady_s: float
    stats_interval: float
    startup_runs: int
    video_frames: int
    min_alerts: int
    e2e_runs: int
    hm_pairs: int
    hm_steady_s: float
    heatmap_repeats: int
    latency_pairs: int = 1  # alert/defect-ON latency runs per arm (heatmaps.mqtt on, off)
    fleet_stations: int = 20  # daemons on one broker (convert/bench/fleet.py)
    fleet_s: float = 10.0  # its steady window (s)
    junk_messages: int = 10_000  # junk on the feedback topic in each junk-flooded e2e run
    train_steps: int = 6  # training steps per round of the XLA on / off comparison (the first left out)
    train_rounds: int = 3


def make_plan(quick: bool, cores: int) -> Plan:
    """How much to measure: ``--quick`` stays around a minute, the full run takes ~4 min on 2 cores."""
    all_t = max(1, cores)
    threads = tuple(sorted({1, all_t}))
    if quick:
        return Plan(
            True,
            30,
            5,
            2,
            (),
            (all_t,),
            threads,
            False,
            2.0,
            0.4,
            1,
            150,
            3,
            1,
            1,
            1.6,
            10,
            fleet_stations=8,
            fleet_s=3.0,
            junk_messages=2_000,
            train_steps=4,
            train_rounds=2,
        )
    return Plan(
        False,
        240,
        20,
        4,
        ("resnet", "resnet-int8", "cnn"),
        threads,
        threads,
        True,
        5.0,
        1.0,
        3,
        420,
        10,
        2,
        3,
        5.0,
        40,
        latency_pairs=2,
    )


def pct(values: list[float] | np.ndarray, q: float) -> float:
    """Percentile as a plain float (the JSON has no numpy types)."""
    return float(np.percentile(np.asarray(values, np.float64), q))


def summary_ms(values: list[float]) -> dict[str, float]:
    """p50 / p99 / mean / n of per-call ms, rounded for the JSON."""
    return {
        "p50": round(pct(values, 50), 3),
        "p99": round(pct(values, 99), 3),
        "mean": round(float(np.mean(values)), 3),
        "n": len(values),
    }


def time_interleaved(
    fns: dict[str, Callable[..., Any]], iters: int, warmup: int, rounds: int
) -> dict[str, list[float]]:
    """Per-call ms of each function; calls are done in rounds (a,b,c,a,b,c…) so drift hits all alike."""
    import time as _t

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    per = max(1, -(-iters // rounds))
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(per):
                t0 = _t.perf_counter()
                fn()
                out[k].append((_t.perf_counter() - t0) * 1e3)
    return out


def machine_info() -> dict[str, Any]:
    """The machine and library versions: numbers mean nothing without them."""
    import importlib.metadata as md

    def ver(*names: str) -> str | None:
        for n in names:
            try:
                return md.version(n)
            except md.PackageNotFoundError:
                continue
        return None

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": cpu,
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "os": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": ver("tensorflow-cpu", "tensorflow"),
        "keras": ver("keras"),
        "ai_edge_litert": ver("ai-edge-litert"),
        "numpy": ver("numpy"),
        "opencv": ver("opencv-python-headless", "opencv-python"),
        "paho_mqtt": ver("paho-mqtt"),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def subprocess_env() -> dict[str, str]:
    """The environment for subprocesses: this checkout first on the import path."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def read_frame(path: str | Path) -> np.ndarray:
    """The bench's own frame (``make_inputs``) as BGR; one that cannot be read is a broken run."""
    import cv2

    frame = cv2.imread(str(path))
    if frame is None:
        raise RuntimeError(f"{path}: OpenCV cannot read the bench frame")
    return frame


def say(msg: str) -> None:
    """Progress on stderr, so stdout stays the table."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def iso_to_epoch(ts: str) -> float:
    """An alert's ``ts`` (ISO 8601 UTC, ms) → epoch seconds, to compare with receive times."""
    d = _dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.UTC)
    return d.timestamp()
