"""edge.heatmaps: safe names, the four files per alert, retention by size, drops instead of blocking.

The worker's mechanics are tested with a small stand-in explainer (a deterministic Gaussian blob
per label) and the real overlay functions of ``edge.gradcam``; the real LiteRT explainer on a
really exported bundle is exercised in the end-to-end daemon tests and below when ``tiny_bundle``
is available.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.heatmaps import SIDECAR_KIND, SUFFIXES, Retention, paths_for, safe_name, sidecar_files
from tests.support.heatmaps import BlobExplainer, frame, make_worker
from tests.support.wait import wait_until


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
    path = w.submit(
        "st-abcd1234-000007",
        42,
        "2026-01-01T00:00:00.000Z",
        ("error", "break"),
        {"good": 0.1, "error": 0.9, "break": 0.7, "length": 0.8},
        frame(),
    )
    assert path == str((tmp_path / "hm").resolve() / "st-abcd1234-000007.overlay.jpg")
    assert wait_until(lambda: w.saved == 1)
    w.close(5.0)
    stop.set()
    w.join(5)
    files = sorted(p.name for p in (tmp_path / "hm").iterdir())
    assert files == [
        "st-abcd1234-000007.jet.jpg",
        "st-abcd1234-000007.json",
        "st-abcd1234-000007.overlay.jpg",
        "st-abcd1234-000007.png",
    ]
    orig = cv2.imread(str(tmp_path / "hm" / "st-abcd1234-000007.png"))
    assert orig is not None and np.array_equal(orig, frame())  # lossless original
    ov = cv2.imread(path)
    assert ov is not None
    assert ov.shape == (64, 64, 3) and not np.array_equal(ov, frame())
    # error (blue) blob on the left, break (green) on the right: the colours land where the maps are
    left, right = ov[32, 16].astype(int), ov[32, 32 + 16 - 1].astype(int)
    assert left[0] > left[1] and right[1] > right[0]
    side = json.loads((tmp_path / "hm" / "st-abcd1234-000007.json").read_text())
    assert side["event_id"] == "st-abcd1234-000007" and side["frame"] == 42
    assert side["labels"] == ["error", "break"] and side["scores"]["error"] == 0.9
    assert set(side["peaks"]) == {"error", "break"} and side["jet_label"] == "error"


def write_set(root: Path, event_id: str, nbytes: int, mtime: float, legacy: bool = False) -> str:
    """A heatmap set as the worker writes it (sidecar last); ``legacy``: a sidecar from before the marker."""
    stem = safe_name(event_id)
    for suf in (".png", ".overlay.jpg", ".jet.jpg"):
        (root / f"{stem}{suf}").write_bytes(b"x" * (nbytes // 3))
    side = {
        "event_id": event_id,
        "frame": 1,
        "ts": "t",
        "labels": ["error"],
        "scores": {"error": 0.9},
        "peaks": {"error": 1.0},
        "jet_label": "error",
        "files": sidecar_files(stem),
    }
    if not legacy:
        side["kind"] = SIDECAR_KIND
    (root / f"{stem}.json").write_text(json.dumps(side))
    for suf in SUFFIXES:
        os.utime(root / f"{stem}{suf}", (mtime, mtime))
    return stem


def test_retention_deletes_oldest_first(tmp_path):
    root = tmp_path / "hm"
    root.mkdir()
    for i in range(5):
        write_set(root, f"old{i}", 150_000, time.time() - 1000 + i, legacy=(i == 0))
    (root / "unrelated.txt").write_bytes(b"y" * 1_000_000)  # not ours: never counted, never deleted
    r = Retention(root, max_bytes=450_000)
    assert set(r.groups) == {f"old{i}" for i in range(5)}  # the legacy sidecar (no marker) is ours too
    assert 5 * 150_000 <= r.total < 5 * 151_000
    assert r.enforce() == 3
    left = sorted(p.name for p in root.iterdir())
    assert left == sorted([f"old{i}{suf}" for i in (3, 4) for suf in SUFFIXES] + ["unrelated.txt"])


def test_retention_never_deletes_files_it_did_not_write(tmp_path):
    """Issue 12 #1: a holiday photo (300 KB, from 2020) and a settings file that merely look like
    a heatmap set (``*.png``, ``*.json``) in ``heatmaps.dir``: 150 frames later at max_mb 0.5, the
    worker has deleted many of its own sets, and not one byte of the user's."""
    root = tmp_path / "hm"
    root.mkdir()
    holiday = root / "holiday_1.png"
    holiday.write_bytes(os.urandom(300_000))
    settings = root / "settings_1.json"
    settings.write_text(json.dumps({"event_id": "settings_1", "volume": 7}))  # JSON, even with an event_id
    lookalike = root / "ev-999.json"  # names an event id but is not a sidecar of ours
    lookalike.write_text(json.dumps({"event_id": "ev-999", "files": {"frame": "holiday_1.png"}}))
    old = time.mktime((2020, 7, 1, 12, 0, 0, 0, 0, -1))
    for p in (holiday, settings, lookalike):
        os.utime(p, (old, old))
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    rng = np.random.default_rng(0)
    stop = threading.Event()
    w = make_worker(root, stop, max_mb=0.5, queue_size=200)
    assert w.prepare_dir()
    w.start()
    for i in range(150):
        noise = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)  # ~50 KB PNG: 0.5 MB holds a few sets
        assert w.submit(f"ev-{i}", i, "t", ("error",), {"error": 0.9}, noise)
    assert wait_until(lambda: w.saved + w.dropped == 150, 120)
    w.close(5.0)
    stop.set()
    w.join(10)
    assert w.saved == 150 and w.deleted > 100
    for name, data in before.items():
        assert (root / name).read_bytes() == data, name
    ours = [p for p in root.iterdir() if p.name not in before]
    assert sum(p.stat().st_size for p in ours) <= 0.5 * 2**20


def test_bundle_folder_as_heatmaps_dir_keeps_the_bundle(tmp_path):
    """Issue 12 #1: ``heatmaps.dir`` set to the model bundle's folder: retention used to delete
    ``manifest.json`` (and the next start exited 78). Now the bundle still loads and verifies."""
    from edge.bundle import load_bundle

    shipped = Path(__file__).resolve().parent.parent / "edge" / "models" / "default"
    root = tmp_path / "bundle"
    root.mkdir()
    shutil.copyfile(shipped / "manifest.json", root / "manifest.json")
    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["files"].values():
        shutil.copyfile(shipped / entry["path"], root / entry["path"])
    old = time.time() - 10 * 365 * 86400
    for p in root.iterdir():
        os.utime(p, (old, old))
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    stop = threading.Event()
    w = make_worker(root, stop, max_mb=0.5, queue_size=200)
    assert w.prepare_dir()
    w.start()
    rng = np.random.default_rng(1)
    for i in range(150):
        assert w.submit(
            f"ev-{i}", i, "t", ("error",), {"error": 0.9}, rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
        )
    assert wait_until(lambda: w.saved + w.dropped == 150, 120)
    w.close(5.0)
    stop.set()
    w.join(10)
    assert w.saved == 150 and w.deleted > 100
    assert {name: (root / name).read_bytes() for name in before} == before
    assert load_bundle(root, verify=True).labels == tuple(manifest["labels"])


def test_restart_finds_its_earlier_sets_and_only_those(tmp_path):
    """Sets of an earlier run (sidecar with the marker, or a legacy sidecar) age out after a
    restart; a ``*.json`` that is not a sidecar of ours, or whose files are not its set, does not."""
    root = tmp_path / "hm"
    root.mkdir()
    t = time.time() - 5000
    write_set(root, "prev-1", 300_000, t)
    write_set(root, "prev-2", 300_000, t + 1, legacy=True)
    forged = write_set(root, "prev-3", 300_000, t + 2)
    side = json.loads((root / f"{forged}.json").read_text())
    side["files"]["frame"] = "holiday.png"  # not the set's own name: not ours
    (root / f"{forged}.json").write_text(json.dumps(side))
    r = Retention(root, max_bytes=0)
    assert set(r.groups) == {"prev-1", "prev-2"}
    assert r.enforce() == 2
    assert sorted(p.name for p in root.iterdir()) == sorted(f"prev-3{suf}" for suf in SUFFIXES)


def test_worker_enforces_max_mb(tmp_path):
    stop = threading.Event()
    w = make_worker(tmp_path, stop, max_mb=1.0)
    w.prepare_dir()
    w.start()
    assert w.submit("ev-0", 0, "t", ("error",), {"error": 0.9}, frame(60))
    assert wait_until(lambda: w.saved == 1)
    one_set = sum(p.stat().st_size for p in tmp_path.iterdir())
    w.retention.max_bytes = int(one_set * 2.5)  # room for two sets
    for i in range(1, 4):
        assert w.submit(f"ev-{i}", i, "t", ("error",), {"error": 0.9}, frame(60 + 40 * i))
        assert wait_until(lambda n=i + 1: w.saved == n)  # type: ignore[misc]
    w.close(5.0)
    stop.set()
    w.join(5)
    stems = {p.name.split(".")[0] for p in tmp_path.iterdir()}
    assert stems == {"ev-2", "ev-3"} and w.deleted == 2
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= w.retention.max_bytes


class HeldExplainer(BlobExplainer):
    """Blocks inside ``explain`` until ``release`` is set: a worker that is busy for as long as the test wants."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def explain(self, frame, labels):
        self.entered.set()
        assert self.release.wait(60), "never released"  # hang guard only
        return super().explain(frame, labels)


def test_full_queue_drops_and_never_blocks(tmp_path, caplog):
    stop = threading.Event()
    ex = HeldExplainer()
    w = make_worker(tmp_path, stop, queue_size=2, explainer=ex)
    w.prepare_dir()
    w.start()
    results = [w.submit("ev-0", 0, "t", ("break",), {"break": 0.9}, frame())]
    assert ex.entered.wait(20)  # the worker holds ev-0 and takes nothing else until released

    def submit_rest() -> None:
        results.extend(w.submit(f"ev-{i}", i, "t", ("break",), {"break": 0.9}, frame()) for i in range(1, 10))

    submitter = threading.Thread(target=submit_rest, daemon=True)
    submitter.start()
    submitter.join(60)  # hang guard: submit must return while the worker is stuck, i.e. without waiting for it
    assert not submitter.is_alive(), "submit waited for the busy worker"
    # one in the worker, two in the queue, the other seven dropped and counted
    assert [r is not None for r in results] == [True, True, True] + [False] * 7
    assert w.dropped == 7 and w.saved == 0
    assert sum("worker is behind" in r.message for r in caplog.records) == 1  # logged once
    ex.release.set()
    w.close(60.0)
    stop.set()
    w.join(60)
    assert not w.is_alive()
    assert w.saved == 3 and w.dropped == 7 and ex.calls == 3
    assert {p.name.split(".")[0] for p in tmp_path.iterdir()} == {"ev-0", "ev-1", "ev-2"}


def test_unwritable_dir_counts_drops(tmp_path, caplog):
    (tmp_path / "file").write_text("a file where the directory should be")
    root = tmp_path / "file" / "hm"  # cannot be created, even by root
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
    assert wait_until(lambda: w.dropped == 1)
    assert w.submit("ev-2", 2, "t", ("error",), {"error": 0.9}, frame()) is None or wait_until(lambda: w.dropped == 2)
    w.close(5.0)
    stop.set()
    w.join(5)
    assert w.saved == 0 and w.is_alive() is False
    assert sum("heatmaps are dropped" in r.message for r in caplog.records) == 1


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_real_explainer_on_tiny_bundle(tmp_path, tiny_bundle):
    from edge.gradcam import Explainer

    stop = threading.Event()
    ex = Explainer(tiny_bundle, threads=1)
    w = make_worker(tmp_path, stop, explainer=ex)
    w.prepare_dir()
    w.start()
    img = cv2.resize(frame(), (256, 256))
    assert w.submit("tiny-1", 3, "t", ("error", "length"), {"error": 0.6, "length": 0.2}, img)
    assert wait_until(lambda: w.saved == 1, 60)
    w.close(5.0)
    stop.set()
    w.join(5)
    side = json.loads((tmp_path / "tiny-1.json").read_text())
    assert set(side["peaks"]) == {"error", "length"}
    overlay = cv2.imread(str(tmp_path / "tiny-1.overlay.jpg"))
    assert overlay is not None and overlay.shape == (256, 256, 3)


def test_wrong_length_set_on_a_2mm_line_explains_the_wrong_length(tmp_path):
    """The daemon's explainer on a 2 mm line (negate = negated_labels("2mm")): a 4 mm frame's
    length alert gets the negated-logit map, drawn strong in red, and the sidecar says so."""
    from convert.synth import render_image
    from edge.gradcam import Explainer, negated_labels

    shipped = Path(__file__).resolve().parent.parent / "edge" / "models" / "default"
    img, labels, _ = render_image(
        np.random.default_rng(1), 256, labels={"length": False, "error": False, "break": False}
    )
    assert labels["length"] is False  # 4 mm stitches
    stop = threading.Event()
    w = make_worker(tmp_path, stop, explainer=Explainer(shipped, threads=1, negate=negated_labels("2mm")))
    w.prepare_dir()
    w.start()
    try:
        assert w.submit("len-1", 5, "t", ("length",), {"length": 0.99}, img)
        assert wait_until(lambda: w.saved == 1, 60)
    finally:
        w.close(5.0)
        stop.set()
        w.join(5)
    side = json.loads((tmp_path / "len-1.json").read_text())
    assert side["explained"] == {"length": "-length"}
    overlay = cv2.imread(str(tmp_path / "len-1.overlay.jpg"))
    assert overlay is not None
    ov = overlay.astype(int)
    red_gain = (ov[..., 2] - ov[..., :2].max(axis=-1)) - (img[..., 2].astype(int) - img[..., :2].max(axis=-1))
    assert red_gain.max() > 60, red_gain.max()  # the length colour (red) is clearly drawn


def test_stop_drains_what_was_submitted_before_close(tmp_path):
    """At a clean stop the daemon flushes its last alerts, then closes: those heatmaps are written."""
    stop = threading.Event()
    w = make_worker(tmp_path, stop, explainer=BlobExplainer(delay=0.05))
    w.prepare_dir()
    w.start()
    stop.set()  # stop first (as on a signal) ...
    paths = [w.submit(f"ev-{i}", i, "t", ("error",), {"error": 0.9}, frame()) for i in range(4)]
    w.close(10.0)  # ... the last alerts, then "no more jobs"
    w.join(15)
    assert not w.is_alive() and w.saved == 4 and all(p is not None and Path(p).is_file() for p in paths)
    assert w.submit("late", 9, "t", ("error",), {"error": 0.9}, frame()) is None and w.dropped == 1


def test_close_wakes_an_idle_worker_at_once(tmp_path, monkeypatch):
    """An idle worker waits in ``q.get(timeout=POLL_S)``; ``close`` wakes it, so a stop never waits
    out the poll. With a 60 s poll, the worker still ends within the 5 s join."""
    import edge.heatmaps as hm

    monkeypatch.setattr(hm, "POLL_S", 60.0)
    stop = threading.Event()
    w = make_worker(tmp_path, stop)
    w.prepare_dir()
    w.start()
    assert w.submit("ev-0", 0, "t", ("error",), {"error": 0.9}, frame())
    wait_until(lambda: w.saved == 1, what="the first heatmap")  # now idle in get()
    stop.set()
    w.close(1.0)
    w.join(5)
    assert not w.is_alive() and w.saved == 1 and w.dropped == 0


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
        assert w.native_id is not None
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

    caplog.set_level(logging.INFO, logger="edge.heatmaps")
    root = tmp_path / "hm"
    stop = threading.Event()
    w = make_worker(root, stop)
    assert w.prepare_dir()
    w.start()

    def fail_once(i):
        root.rename(tmp_path / "hm.away")
        root.write_text("not a dir")  # the next save fails
        w.submit(f"ev-{i}", i, "t", ("error",), {"error": 0.9}, frame())
        assert wait_until(lambda: w.dropped == i // 2 + 1)
        root.unlink()
        (tmp_path / "hm.away").rename(root)

    try:
        for i in (0, 2):
            fail_once(i)
            assert w.submit(f"ev-{i + 1}", i + 1, "t", ("error",), {"error": 0.9}, frame())
            assert wait_until(lambda n=i // 2 + 1: w.saved == n)  # type: ignore[misc]
        assert w.dropped == 2 and w.saved == 2
        assert sum("heatmaps are dropped" in r.message for r in caplog.records) == 1
        assert not any("works again" in r.message for r in caplog.records)
        monkeypatch.setattr(hm, "FAIL_QUIET_S", 0.0)
        assert w.submit("ev-9", 9, "t", ("error",), {"error": 0.9}, frame())
        assert wait_until(lambda: w.saved == 3)
        # the worker logs "works again" just after it counts the save: wait for the line, then count
        assert wait_until(lambda: any("works again" in r.message for r in caplog.records))
        assert sum("works again" in r.message for r in caplog.records) == 1
    finally:
        w.close(5.0)
        stop.set()
        w.join(5)


def test_second_worker_on_the_same_dir_is_refused_until_the_first_ends(tmp_path):
    """Issue 12 #12: two daemons on one heatmaps.dir would delete each other's sets. The directory
    is locked (nothing is created in it); the second worker's start-up fails naming the holder."""
    from edge.statelock import StateLockedError

    root = tmp_path / "hm"
    stop1, stop2 = threading.Event(), threading.Event()
    first = make_worker(root, stop1)
    assert first.prepare_dir()
    second = make_worker(root, stop2)
    with pytest.raises(StateLockedError) as ei:
        second.prepare_dir()
    msg = str(ei.value)
    assert f"heatmaps.dir {root}" in msg and f"pid {os.getpid()}" in msg and ei.value.exit_code == 78, msg
    assert list(root.iterdir()) == []
    first.start()
    first.close(1.0)
    stop1.set()
    first.join(5)
    assert second.prepare_dir()  # the first worker's end released it
    # a worker that only later finds the directory taken drops heatmaps (logged), alerts go on
    third = make_worker(root, threading.Event())
    third.writable = False
    assert third.submit("ev-1", 1, "t", ("error",), {"error": 0.9}, frame()) is None and third.dropped == 1
    assert "in use by another seam-qc daemon" in third.error
