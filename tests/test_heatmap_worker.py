"""edge.heatmaps: safe names, the four files per alert, retention by size, drops instead of blocking.

The worker's mechanics are tested with a small stand-in explainer (a deterministic Gaussian blob
per label) and the real overlay functions of ``edge.gradcam``; the real LiteRT explainer on a
really exported bundle is exercised in the end-to-end daemon tests and below when ``tiny_bundle``
is available.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edge.gradcam import Heatmap
from edge.heatmaps import HeatmapWorker, Retention, paths_for, safe_name


class BlobExplainer:
    """One Gaussian blob per label, at a label-dependent place; ``delay`` simulates a slow CPU."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls = 0

    def explain(self, frame, labels):
        self.calls += 1
        time.sleep(self.delay)
        h, w = frame.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        out = {}
        for i, lab in enumerate(labels):
            cx, cy = w * (0.25 + 0.25 * i), h / 2
            cam = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (w / 8) ** 2)).astype(np.float32)
            out[lab] = Heatmap(lab, cam, 1.0 + i, 0.9)
        return out


def overlays():
    from edge.gradcam import overlay_jet, overlay_labels
    return overlay_labels, overlay_jet


def make_worker(root: Path, stop: threading.Event, explainer=None, **kw) -> HeatmapWorker:
    ol, oj = overlays()
    ex = explainer or BlobExplainer()
    return HeatmapWorker(root, stop, explainer_factory=lambda: ex, overlay_labels=ol, overlay_jet=oj,
                         labels_all=("good", "error", "break", "length"), **kw)


def frame(v=128):
    img = np.full((64, 64, 3), v, np.uint8)
    cv2.line(img, (32, 0), (32, 63), (20, 20, 20), 3)
    return img


def wait_for(cond, timeout=20.0):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_safe_name_and_paths_stay_inside(tmp_path):
    assert safe_name("sew-03-1a2b3c4d-000001") == "sew-03-1a2b3c4d-000001"
    assert safe_name("../../etc/passwd") == "_.._etc_passwd"
    assert safe_name("a/b\\c d\x00e") == "a_b_c_d_e"
    assert safe_name("...") == "event" and len(safe_name("x" * 500)) <= 96
    for evil in ("../../x", "/abs/path", "..", "a/../../b", "\x00", "~root"):
        for p in paths_for(tmp_path, evil).values():
            assert p.parent == tmp_path.resolve()


def test_writes_frame_overlays_and_sidecar(tmp_path):
    stop = threading.Event()
    w = make_worker(tmp_path / "hm", stop)
    assert w.prepare_dir()
    w.start()
    path = w.submit("st-abcd1234-000007", 42, "2026-01-01T00:00:00.000Z", ("error", "break"),
                    {"good": 0.1, "error": 0.9, "break": 0.7, "length": 0.8}, frame())
    assert path == str((tmp_path / "hm").resolve() / "st-abcd1234-000007.overlay.jpg")
    assert wait_for(lambda: w.saved == 1)
    w.close(5.0)
    stop.set()
    w.join(5)
    files = sorted(p.name for p in (tmp_path / "hm").iterdir())
    assert files == ["st-abcd1234-000007.jet.jpg", "st-abcd1234-000007.json", "st-abcd1234-000007.overlay.jpg",
                     "st-abcd1234-000007.png"]
    orig = cv2.imread(str(tmp_path / "hm" / "st-abcd1234-000007.png"))
    assert np.array_equal(orig, frame())                       # lossless original
    ov = cv2.imread(path)
    assert ov.shape == (64, 64, 3) and not np.array_equal(ov, frame())
    # error (blue) blob on the left, break (green) on the right: the colours land where the maps are
    left, right = ov[32, 16].astype(int), ov[32, 32 + 16 - 1].astype(int)
    assert left[0] > left[1] and right[1] > right[0]
    side = json.loads((tmp_path / "hm" / "st-abcd1234-000007.json").read_text())
    assert side["event_id"] == "st-abcd1234-000007" and side["frame"] == 42
    assert side["labels"] == ["error", "break"] and side["scores"]["error"] == 0.9
    assert set(side["peaks"]) == {"error", "break"} and side["jet_label"] == "error"


def test_retention_deletes_oldest_first(tmp_path):
    root = tmp_path / "hm"
    root.mkdir()
    for i in range(5):
        for suf in (".png", ".json"):
            (root / f"old{i}{suf}").write_bytes(b"x" * 100_000)
        t = time.time() - 1000 + i
        os.utime(root / f"old{i}.png", (t, t))
        os.utime(root / f"old{i}.json", (t, t))
    (root / "unrelated.txt").write_bytes(b"y" * 1_000_000)   # not ours: never deleted
    r = Retention(root, max_bytes=450_000)
    assert r.total == 1_000_000
    assert r.enforce() == 3
    left = sorted(p.name for p in root.iterdir())
    assert left == ["old3.json", "old3.png", "old4.json", "old4.png", "unrelated.txt"]


def test_worker_enforces_max_mb(tmp_path):
    stop = threading.Event()
    w = make_worker(tmp_path, stop, max_mb=1.0)
    w.prepare_dir()
    w.start()
    assert w.submit("ev-0", 0, "t", ("error",), {"error": 0.9}, frame(60))
    assert wait_for(lambda: w.saved == 1)
    one_set = sum(p.stat().st_size for p in tmp_path.iterdir())
    w.retention.max_bytes = int(one_set * 2.5)   # room for two sets
    for i in range(1, 4):
        assert w.submit(f"ev-{i}", i, "t", ("error",), {"error": 0.9}, frame(60 + 40 * i))
        assert wait_for(lambda: w.saved == i + 1)
    w.close(5.0)
    stop.set()
    w.join(5)
    stems = {p.name.split(".")[0] for p in tmp_path.iterdir()}
    assert stems == {"ev-2", "ev-3"} and w.deleted == 2
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= w.retention.max_bytes


def test_full_queue_drops_and_never_blocks(tmp_path, caplog):
    stop = threading.Event()
    w = make_worker(tmp_path, stop, queue_size=2, explainer=BlobExplainer(delay=0.3))
    w.prepare_dir()
    w.start()
    t0 = time.monotonic()
    results = [w.submit(f"ev-{i}", i, "t", ("break",), {"break": 0.9}, frame()) for i in range(10)]
    assert time.monotonic() - t0 < 0.25 * 10          # submit never waits for the worker
    assert results.count(None) >= 6 and w.dropped == results.count(None)
    assert sum("worker is behind" in r.message for r in caplog.records) == 1   # logged once
    w.close(5.0)
    stop.set()
    w.join(10)
    assert w.saved + w.dropped == 10


def test_unwritable_dir_counts_drops(tmp_path, caplog):
    (tmp_path / "file").write_text("a file where the directory should be")
    root = tmp_path / "file" / "hm"      # cannot be created, even by root
    stop = threading.Event()
    w = make_worker(root, stop)
    assert not w.prepare_dir()
    w.start()
    assert w.submit("ev-1", 1, "t", ("error",), {"error": 0.9}, frame()) is None
    assert w.submit("ev-2", 2, "t", ("error",), {"error": 0.9}, frame()) is None
    assert w.dropped == 2 and w.saved == 0
    assert sum("cannot write to" in r.message for r in caplog.records) == 1
    w.close(5.0)
    stop.set()
    w.join(5)


def test_write_failure_in_worker_is_counted(tmp_path, caplog):
    """The directory disappears (replaced by a file) after start: dropped, logged once, no crash."""
    root = tmp_path / "hm"
    stop = threading.Event()
    w = make_worker(root, stop)
    assert w.prepare_dir()
    root.rmdir()
    root.write_text("not a dir")
    w.start()
    assert w.submit("ev-1", 1, "t", ("error",), {"error": 0.9}, frame()) is not None
    assert wait_for(lambda: w.dropped == 1)
    assert w.submit("ev-2", 2, "t", ("error",), {"error": 0.9}, frame()) is None or wait_for(lambda: w.dropped == 2)
    w.close(5.0)
    stop.set()
    w.join(5)
    assert w.saved == 0 and w.is_alive() is False
    assert sum("heatmaps are dropped" in r.message for r in caplog.records) == 1


def test_real_explainer_on_tiny_bundle(tmp_path, tiny_bundle):
    from edge.gradcam import Explainer

    stop = threading.Event()
    ex = Explainer(tiny_bundle, threads=1)
    w = make_worker(tmp_path, stop, explainer=ex)
    w.prepare_dir()
    w.start()
    img = cv2.resize(frame(), (256, 256))
    assert w.submit("tiny-1", 3, "t", ("error", "length"), {"error": 0.6, "length": 0.2}, img)
    assert wait_for(lambda: w.saved == 1, 60)
    w.close(5.0)
    stop.set()
    w.join(5)
    side = json.loads((tmp_path / "tiny-1.json").read_text())
    assert set(side["peaks"]) == {"error", "length"}
    assert cv2.imread(str(tmp_path / "tiny-1.overlay.jpg")).shape == (256, 256, 3)


def test_stop_drains_what_was_submitted_before_close(tmp_path):
    """At a clean stop the daemon flushes its last alerts, then closes: those heatmaps are written."""
    stop = threading.Event()
    w = make_worker(tmp_path, stop, explainer=BlobExplainer(delay=0.05))
    w.prepare_dir()
    w.start()
    stop.set()                                   # stop first (as on a signal) ...
    paths = [w.submit(f"ev-{i}", i, "t", ("error",), {"error": 0.9}, frame()) for i in range(4)]
    w.close(10.0)                                # ... the last alerts, then "no more jobs"
    w.join(15)
    assert not w.is_alive() and w.saved == 4 and all(Path(p).is_file() for p in paths)
    assert w.submit("late", 9, "t", ("error",), {"error": 0.9}, frame()) is None and w.dropped == 1


def test_drain_deadline_drops_the_rest(tmp_path):
    stop = threading.Event()
    w = make_worker(tmp_path, stop, queue_size=20, explainer=BlobExplainer(delay=0.3))
    w.prepare_dir()
    w.start()
    for i in range(10):
        assert w.submit(f"ev-{i}", i, "t", ("error",), {"error": 0.9}, frame())
    w.close(0.5)
    stop.set()
    w.join(10)
    assert not w.is_alive() and w.saved + w.dropped == 10 and w.dropped >= 5


def test_worker_runs_below_the_pipeline_priority(tmp_path):
    """On a saturated CPU the scheduler favours capture and classification over heatmaps: the worker
    thread (and the LiteRT pool it creates) runs at a higher nice value than the daemon's threads."""
    from edge.heatmaps import NICE_INCREMENT

    stop = threading.Event()
    w = make_worker(tmp_path / "hm", stop)
    w.start()
    try:
        deadline = time.monotonic() + 5
        while w.native_id is None and time.monotonic() < deadline:
            time.sleep(0.01)
        base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        while os.getpriority(os.PRIO_PROCESS, w.native_id) == base and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.getpriority(os.PRIO_PROCESS, w.native_id) == min(19, base + NICE_INCREMENT)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    finally:
        stop.set()
        w.close(1.0)
        w.join(5)


def test_flapping_disk_keeps_one_error_line_then_recovers(tmp_path, caplog, monkeypatch):
    """A disk that flaps (a save fails, the next fits, the next fails) logs one error line, not one
    per transition; "works again" comes only once writes succeed for FAIL_QUIET_S."""
    import logging

    import edge.heatmaps as hm

    caplog.set_level(logging.INFO, logger="seamqc.heatmaps")
    root = tmp_path / "hm"
    stop = threading.Event()
    w = make_worker(root, stop)
    assert w.prepare_dir()
    w.start()

    def fail_once(i):
        root.rename(tmp_path / "hm.away")
        root.write_text("not a dir")          # the next save fails
        w.submit(f"ev-{i}", i, "t", ("error",), {"error": 0.9}, frame())
        assert wait_for(lambda: w.dropped == i // 2 + 1)
        root.unlink()
        (tmp_path / "hm.away").rename(root)

    try:
        for i in (0, 2):
            fail_once(i)
            assert w.submit(f"ev-{i + 1}", i + 1, "t", ("error",), {"error": 0.9}, frame())
            assert wait_for(lambda: w.saved == i // 2 + 1)
        assert w.dropped == 2 and w.saved == 2
        assert sum("heatmaps are dropped" in r.message for r in caplog.records) == 1
        assert not any("works again" in r.message for r in caplog.records)
        monkeypatch.setattr(hm, "FAIL_QUIET_S", 0.0)
        assert w.submit("ev-9", 9, "t", ("error",), {"error": 0.9}, frame())
        assert wait_for(lambda: w.saved == 3)
        assert sum("works again" in r.message for r in caplog.records) == 1
    finally:
        w.close(5.0)
        stop.set()
        w.join(5)
