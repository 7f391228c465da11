"""The daemon as a subprocess, for tests: configs, videos, ``start_daemon`` and its JSON log events.

Every run goes through ``convert.harness.DaemonProcess`` (``--log-format json``), like the demo's and
the bench's: tests read events (``alert``, ``summary``, ``stopping``, ``exit`` …), never log prose.
The log of a run is also saved next to its config (``daemon.log`` for ``daemon.yaml``).
"""

from __future__ import annotations

import csv
import datetime as dt
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from convert import harness
from convert.harness import DaemonProcess, LogEvent

ROOT = harness.ROOT
SHIPPED = ROOT / "edge" / "models" / "default"
ROI = [192, 112, 256, 256]


def seam_video(path: Path, dataset: Path, n_stills: int = 30, hold: int = 6) -> list[dict]:
    """A 640×480 @ 30 fps video whose ROI shows the data set's labeled stills, ``hold`` frames each.

    Returns truth rows like ``convert synth --video`` (one row per defect still). Used where the
    real moving-seam video (``convert.synth.write_video``) is not needed: it has known labels per
    frame and costs nothing.
    """
    with open(dataset / "data.csv") as f:
        rows = list(csv.DictReader(f))[:n_stills]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 30, (640, 480))
    truth: list[dict] = []
    for i, r in enumerate(rows):
        still = cv2.imread(str(dataset / r["name"]))
        assert still is not None
        frame = np.full((480, 640, 3), 90, np.uint8)
        frame[112:368, 192:448] = cv2.resize(still, (256, 256))
        for _ in range(hold):
            w.write(frame)
        for lab in ("error", "break"):
            if r[lab] == "True":
                truth.append(
                    {
                        "defect_id": len(truth),
                        "label": lab,
                        "first_frame": i * hold,
                        "last_frame": i * hold + hold - 1,
                        "x": 0,
                        "y": 0,
                        "w": 256,
                        "h": 256,
                    }
                )
    w.release()
    return truth


def noise_video(path: Path, frames: int = 30, size: tuple[int, int] = (640, 480)) -> Path:
    """Random-noise frames (seed 0): each heatmap set is ~0.3 MB, so retention and disks work hard."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 30, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        w.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    w.release()
    return path


def daemon_config(tmp_path: Path, bundle: Path, video: Path | str, broker: Any = None, **over: Any) -> Path:
    """Write a daemon config for a test; ``over`` merges into sections (dicts) or replaces keys."""
    cfg: dict[str, Any] = {
        "station": "test-st",
        "camera": {
            "source": "file",
            "device": str(video),
            "width": 640,
            "height": 480,
            "fps": 30,
            "roi": ROI,
            "realtime": False,
        },
        "model": {"bundle": str(bundle), "threads": 1},
        "decision": {"expected_length": "any", "min_frames": 2, "window": 3},
        "mqtt": (
            {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1}
            if broker is not None
            else {"enabled": False}
        ),
        "heatmaps": {"dir": str(tmp_path / "heatmaps"), "max_mb": 50, "queue_size": 64},
        "outbox": str(tmp_path / "outbox.sqlite"),
        "stats_interval": 0.5,
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    p = tmp_path / "daemon.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def start_daemon(config: Path, *args: str, env: dict | None = None) -> DaemonProcess:
    """``python -m edge --config CONFIG --log-format json ARGS``; its log goes to ``CONFIG.log``."""
    return DaemonProcess(config, *args, log_path=Path(config).with_suffix(".log"), env=env, cwd=ROOT)


def daemon_log(config: Path) -> str:
    """The raw log (JSON lines) of the last run on ``config``."""
    return Path(config).with_suffix(".log").read_text()


def wait_exit(proc: DaemonProcess, timeout: float = 120) -> int:
    """The exit status; the process is killed (and TimeoutExpired raised) after ``timeout`` s."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def log_events(text: str) -> list[LogEvent]:
    return harness.parse_log(text)


def log_alerts(text: str) -> list[dict]:
    """The alert payloads of a saved JSON log (``alert`` events)."""
    return harness.alerts(harness.parse_log(text))


def log_summary(text: str) -> dict:
    """The final stats of a saved JSON log (``summary`` event); fails the test when there is none."""
    s = harness.summary(harness.parse_log(text))
    assert s, text[-2000:]
    return s


def error_lines(text: str) -> list[str]:
    """The run's one-line errors (``error: …``) of a saved JSON log."""
    return harness.errors(harness.parse_log(text))


def check_alert_payload(a: dict, station: str, labels: tuple[str, ...]) -> None:
    """ARCHITECTURE.md §6 alert payload."""
    assert set(a) >= {"event_id", "station", "ts", "frame", "labels", "scores", "heatmap", "model"}
    assert a["station"] == station and a["event_id"].startswith(station + "-")
    t = dt.datetime.fromisoformat(a["ts"].replace("Z", "+00:00"))
    assert t.tzinfo is not None and abs(t.timestamp() - time.time()) < 3600
    assert isinstance(a["frame"], int) and a["frame"] >= 0
    assert a["labels"] and set(a["labels"]) <= set(labels) - {"good"}
    assert set(a["scores"]) == set(labels) and all(0.0 <= v <= 1.0 for v in a["scores"].values())
    assert a["heatmap"] is None or a["heatmap"].endswith(".overlay.jpg")
    assert set(a["model"]) == {"name", "sha256", "version"} and len(a["model"]["sha256"]) == 64


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    """A datagram socket standing in for systemd's ``NOTIFY_SOCKET``."""
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)
    return s, path


def notify_messages(s: socket.socket, until: str | None = None, timeout: float = 60) -> list[str]:
    """sd_notify datagrams received until one contains ``until`` (or, without it, until a quiet 0.2 s)."""
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            out.append(s.recv(4096).decode())
        except TimeoutError:
            if until is None:
                return out
            continue
        if until is not None and any(until in m for m in out):
            return out
    return out
