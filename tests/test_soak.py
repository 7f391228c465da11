"""Issue 5 — nothing lost, nothing stuck: a bounded soak, path safety, a full heatmap disk.

* ``test_soak_rss_threads_fds``: the daemon as a subprocess for 20,000 frames of a looping
  synthetic seam video with every frame flagged (an alert + heatmap every 20 frames), a tiny
  ``heatmaps.max_mb`` so retention deletes all the time, a real Mosquitto receiving the alerts.
  psutil samples RSS, threads and fds every ~0.5 s; after warm-up RSS must stay flat (≤ 5 MB),
  threads not growing, fds bounded, the heatmap directory within ``max_mb`` (+ one set), and every
  logged alert must reach the subscriber exactly once or still be in the outbox. The figures are
  printed (``pytest -s`` / the CI log).
* Path safety (5.8): hostile event ids / labels / station names never make the worker or the
  outbox write outside their directories; unsafe station names are a config error (exit 78).
* A FULL heatmap directory (tiny tmpfs; skipped where ``mount`` is not permitted): alerts go on,
  heatmaps are counted dropped, one log line, no partial files left to keep the disk full.
* A FULL outbox disk mid-run: the daemon stops loudly (exit 74, one ``error:`` line), and what it
  stored before is still there.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.daemon import (
    ROOT,
    daemon_config,
    daemon_log,
    error_lines,
    log_alerts,
    log_summary,
    start_daemon,
    wait_exit,
)
from tests.support.daemon import noise_video as small_video
from tests.support.fs import tmpfs
from tests.support.heatmaps import frame as still
from tests.support.heatmaps import make_worker
from tests.support.wait import wait_until

SOAK_FRAMES = 20_000
EVENT_FRAMES = 20  # every frame flags error; an event (alert + heatmap) closes every 20 frames
MAX_MB = 1.0


def _dir_bytes(root: Path) -> int:
    total = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for e in entries:
        try:
            if e.is_file(follow_symlinks=False):
                total += e.stat(follow_symlinks=False).st_size
        except OSError:  # deleted between scandir and stat (retention at work)
            pass
    return total


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


@pytest.fixture(scope="module")
def soak_video(tmp_path_factory) -> Path:
    """A few hundred frames of the real moving-seam video (``convert.synth.write_video``)."""
    from convert.synth import write_video

    p = tmp_path_factory.mktemp("soak_video") / "seam.mp4"
    write_video(p, 240, seed=5)
    return p


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_soak_rss_threads_fds(tmp_path, tiny_bundle, soak_video, mqtt_broker, mqtt_subscriber):
    import psutil

    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/alert").wait_subscribed()
    hm_dir = tmp_path / "heatmaps"
    cfg = daemon_config(
        tmp_path,
        tiny_bundle,
        soak_video,
        mqtt_broker,
        camera={"loop": True, "realtime": False},
        decision={
            "expected_length": "any",
            "min_frames": 1,
            "window": 1,
            "thresholds": {"error": 0.0},
            "max_event_frames": EVENT_FRAMES,
        },
        heatmaps={"dir": str(hm_dir), "max_mb": MAX_MB, "queue_size": 8},
        stats_interval=1.0,
    )
    t0 = time.monotonic()
    proc = start_daemon(cfg, "--max-frames", str(SOAK_FRAMES))
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, float, int, int]] = []  # (t, rss MB, threads, fds)
    hm_max = 0
    while proc.poll() is None:
        try:
            with ps.oneshot():
                samples.append((time.monotonic() - t0, ps.memory_info().rss / 2**20, ps.num_threads(), ps.num_fds()))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            break
        hm_max = max(hm_max, _dir_bytes(hm_dir))
        time.sleep(0.5)
    rc = wait_exit(proc, 120)
    wall = time.monotonic() - t0
    text = daemon_log(cfg)
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text
    s = log_summary(text)
    logged = log_alerts(text)
    assert s["frames"] == SOAK_FRAMES

    # ---- memory, threads, fds after warm-up (the first 20 % of the samples are discarded; the last
    # sample or two can be the shutdown, so they go too)
    assert len(samples) >= 12, f"only {len(samples)} samples in {wall:.1f} s"
    body = samples[len(samples) // 5 : -2]
    k = max(3, len(body) // 5)
    rss_first, rss_last = _median([x[1] for x in body[:k]]), _median([x[1] for x in body[-k:]])
    growth = rss_last - rss_first
    threads = sorted({x[2] for x in body})
    fds = [x[3] for x in body]
    hm_end = _dir_bytes(hm_dir)
    sets_left = {p.name.split(".")[0] for p in hm_dir.iterdir()}
    one_set = hm_end / max(1, len(sets_left))
    limit = MAX_MB * 2**20

    # ---- every logged alert reached the subscriber exactly once, or is still in the outbox
    from edge.outbox import Outbox

    with Outbox(tmp_path / "outbox.sqlite") as ob:
        pending = {it.event_id for it in ob.pending()}
    ids = [a["event_id"] for a in logged]
    want = len([i for i in ids if i not in pending])
    sub.wait_count("seamqc/test-st/alert", want, timeout=30)
    # a late duplicate would arrive before a marker published now that the daemon has exited: the
    # broker forwards one topic to one subscriber in the order it received the messages
    import paho.mqtt.publish as publish

    publish.single(
        "seamqc/test-st/alert", '{"event_id": "end-marker"}', qos=1, hostname=mqtt_broker.host, port=mqtt_broker.port
    )
    sub.wait_for("seamqc/test-st/alert", lambda m: m.json()["event_id"] == "end-marker", timeout=30)
    got_ids = [m.json()["event_id"] for m in sub.on("seamqc/test-st/alert")]
    assert got_ids.pop() == "end-marker"

    print(
        f"\nSOAK: {s['frames']} frames in {wall:.1f} s wall (daemon {s['fps']} fps), {len(samples)} samples; "
        f"RSS at warm-up end (t={body[0][0]:.0f} s) {body[0][1]:.1f} MB, "
        f"post-warm-up median {rss_first:.1f} → end median {rss_last:.1f} MB "
        f"(growth {growth:+.2f} MB, max {max(x[1] for x in samples):.1f} MB); threads {threads}; "
        f"fds {min(fds)}..{max(fds)}; heatmap dir max {hm_max / 2**20:.2f} MB / end {hm_end / 2**20:.2f} MB "
        f"vs max_mb {MAX_MB} (one set ≈ {one_set / 1024:.0f} KB); heatmaps saved {s['heatmaps']['saved']}, "
        f"dropped {s['heatmaps']['dropped']}, deleted {s['heatmaps']['deleted']}; alerts logged {len(ids)}, "
        f"received {len(got_ids)} ({len(set(got_ids))} distinct), left in outbox {len(pending)}"
    )

    assert growth <= 5.0, f"RSS grew {growth:.2f} MB after warm-up"
    # no thread leak: after warm-up the count takes at most two values 2 apart over the whole soak
    # (1,000 events: a thread leaked per event would add hundreds). Measured on a VM about twice as
    # slow as usual, 2026-12-06: 10 → 12 once (a pool started late), and 10 ↔ 12 over the last fifth
    # (two short-lived threads, the fds moving 15..17 with them)
    assert len(threads) <= 2 and threads[-1] - threads[0] <= 2, f"threads changed after warm-up: {threads}"
    assert max(fds) - min(fds) <= 4, f"fd count varied {min(fds)}..{max(fds)}"
    assert s["heatmaps"]["saved"] > 50 and s["heatmaps"]["deleted"] > 0  # retention really ran
    assert hm_max <= limit + 2 * one_set and hm_end <= limit + one_set
    assert len(ids) == s["alerts"] == len(set(ids)) >= SOAK_FRAMES // EVENT_FRAMES
    assert len(got_ids) == len(set(got_ids)), "an alert arrived twice"
    assert set(got_ids) | pending == set(ids) and not set(got_ids) & pending
    assert got_ids == [i for i in ids if i not in pending]  # in the order they were logged, each once


# --------------------------------------------------------------------------- path safety (5.8)

HOSTILE = [
    "../../escape",
    "/tmp/abs-escape",
    "a/../../b",
    "..",
    ".",
    "",
    "x\x00y/../../z",
    "~root",
    "..\\..\\win",
    "a" * 5000,
    "\u202e../evil",
    "ok/..%2f..%2fx",
    "-rf /",
]


def _tree(root: Path) -> set[Path]:
    return {p.resolve() for p in root.rglob("*")}


def test_hostile_ids_and_labels_stay_in_heatmap_dir(tmp_path):
    """Event ids and labels that look like paths, carry NUL or are absurdly long: every file the
    worker writes lands directly in its directory, nothing appears anywhere else."""
    outside = tmp_path / "outside"
    outside.mkdir()
    root = outside / "hm"
    stop = threading.Event()
    w = make_worker(root, stop, queue_size=len(HOSTILE) + 1)
    assert w.prepare_dir()
    w.start()
    before = _tree(tmp_path) - _tree(root)
    labels = ("error", "../../label", "/etc/passwd\x00", "b" * 3000)
    for i, ev in enumerate(HOSTILE):
        p = w.submit(ev, i, "../../ts", labels, {lab: 0.9 for lab in labels}, still(40 + 10 * i))
        assert p is not None and Path(p).parent == root.resolve()
        assert len(Path(p).name) < 120
    assert wait_until(lambda: w.saved + w.dropped == len(HOSTILE), 60)
    w.close(5.0)
    stop.set()
    w.join(10)
    assert w.saved == len(HOSTILE) and w.dropped == 0
    after = _tree(tmp_path)
    assert after - _tree(root) == before  # nothing new outside the directory
    for p in root.iterdir():
        assert p.parent == root and p.is_file() and not p.name.startswith(".")
    # the sidecar keeps the hostile id as data (JSON-escaped), not as a path
    sides = [json.loads(p.read_text()) for p in root.glob("*.json")]
    assert {s["event_id"] for s in sides} <= set(HOSTILE)


def test_long_event_ids_keep_distinct_names(tmp_path):
    """Ids are cut to 96 characters for file names; ids that differ only after the cut (a long
    station prefix, then the event counter) must not share (and overwrite) one heatmap set."""
    from edge.heatmaps import paths_for, safe_name

    prefix = "st" * 60 + "-1a2b3c4d"
    names = {safe_name(f"{prefix}-{i:06d}") for i in range(50)}
    assert len(names) == 50 and all(len(n) <= 96 for n in names)
    assert safe_name(f"{prefix}-000001") == safe_name(f"{prefix}-000001")  # stable
    assert {paths_for(tmp_path, f"{prefix}-{i:06d}")["overlay"] for i in range(50)}.__len__() == 50


def test_outbox_stores_hostile_ids_as_data(tmp_path):
    """The outbox's only path is its configured file: ids and payloads are rows, never file names."""
    from edge.outbox import Outbox

    box = tmp_path / "box"
    before = _tree(tmp_path)
    with Outbox(box / "outbox.sqlite") as ob:
        for ev in HOSTILE:
            ob.put(
                ev.replace("\x00", "\\0") or "empty",
                "seamqc/st/alert",
                json.dumps({"event_id": ev, "labels": ["../../x"]}),
            )
        assert ob.depth() == len(HOSTILE)
    new = _tree(tmp_path) - before
    assert new and all(
        p.parent == box.resolve() and p.name.startswith("outbox.sqlite") or p == box.resolve() for p in new
    ), new


@pytest.mark.parametrize(
    "station", ["../../etc", "a/b", "/abs", "sew\x0003", "sew 03", "sew+#", "s" * 65, "s" * 100_000]
)
def test_unsafe_station_is_exit_78(tmp_path, station):
    """A station id becomes MQTT topic levels and the event-id prefix (→ heatmap names): one that
    could address another path or topic is refused at start with one line (exit 78)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"station: {json.dumps(station)}\nmodel: {{bundle: {json.dumps(str(tmp_path))}}}\n"
        f"heatmaps: {{dir: {json.dumps(str(tmp_path / 'hm'))}}}\n"
        f"outbox: {json.dumps(str(tmp_path / 'ob.sqlite'))}\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(cfg), "--check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "station" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "hm").exists() and not (tmp_path / "ob.sqlite").exists()


# --------------------------------------------------------------------------- a FULL heatmap disk (5.4)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs (less than one heatmap set of a noisy frame); skipped without mount rights."""
    with tmpfs(tmp_path / "full", "256k") as mnt:
        yield mnt


def test_worker_on_full_disk_leaves_no_partial_files(tiny_tmpfs, caplog):
    """Unit level, fast: ENOSPC in the middle of a set → dropped, logged once, and neither the
    half-written ``*.tmp`` nor the files already written of that set stay behind."""
    rng = np.random.default_rng(1)
    stop = threading.Event()
    w = make_worker(tiny_tmpfs, stop, max_mb=50)
    assert w.prepare_dir()
    w.start()
    for i in range(3):
        noise = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)  # ~200 KB PNG + big JPEGs
        w.submit(f"ev-{i}", i, "t", ("error",), {"error": 0.9}, noise)
    assert wait_until(lambda: w.saved + w.dropped == 3, 30)
    w.close(5.0)
    stop.set()
    w.join(10)
    assert w.dropped >= 1 and not w.is_alive()
    assert sum("heatmaps are dropped" in r.message and "No space left" in r.message for r in caplog.records) == 1
    left = sorted(p.name for p in tiny_tmpfs.iterdir())
    assert not [n for n in left if n.endswith(".tmp")], left
    assert len(left) == 4 * w.saved, left


@pytest.mark.slow  # runs the daemon on the tiny model
def test_heatmap_disk_full_alerts_continue_one_log_line(tmp_path, tiny_bundle, tiny_tmpfs):
    """heatmaps.dir on a tiny tmpfs that fills up (ENOSPC, not EACCES): every alert is still
    logged and stored, heatmaps that do not fit are counted dropped, the failure is logged once,
    and no partial files (``*.tmp``, incomplete sets) are left behind to keep the disk full."""
    video = small_video(tmp_path / "v.mp4", 80)  # noise: ~200 KB PNG + 2 big JPEGs per set
    cfg = daemon_config(
        tmp_path,
        tiny_bundle,
        video,
        None,
        heatmaps={"dir": str(tiny_tmpfs), "max_mb": 50},  # retention will not save us
        decision={"thresholds": {"error": 0.0}, "max_event_frames": 10},
    )
    proc = start_daemon(cfg)
    assert wait_exit(proc) == 0, daemon_log(cfg)[-3000:]
    text = daemon_log(cfg)
    assert "Traceback" not in text
    s, alerts = log_summary(text), log_alerts(text)
    hm = s["heatmaps"]
    print(
        f"\nDISK FULL: {s['frames']} frames, {len(alerts)} alerts, heatmaps saved {hm['saved']}, "
        f"dropped {hm['dropped']}; files left: {sorted(p.name for p in tiny_tmpfs.iterdir())}"
    )
    assert s["frames"] == 80 and len(alerts) == s["alerts"] == 8  # alerts continue
    assert s["outbox_depth"] == 8  # and all are stored (no broker)
    assert hm["dropped"] >= 1 and hm["saved"] + hm["dropped"] == len(alerts)
    fails = [line for line in text.splitlines() if "heatmaps are dropped" in line]
    assert len(fails) == 1 and "No space left on device" in fails[0], fails
    left = list(tiny_tmpfs.iterdir())
    assert not [p for p in left if p.name.endswith(".tmp")]
    stems: dict[str, list[str]] = {}
    for p in left:
        stems.setdefault(p.name.split(".")[0], []).append(p.name)
    assert len(stems) == hm["saved"] and all(len(v) == 4 for v in stems.values()), stems


@pytest.mark.slow  # runs the daemon on the tiny model
def test_outbox_disk_full_mid_run_fails_loudly(tmp_path, tiny_bundle):
    """The outbox's disk fills while the daemon runs (no broker, so alerts accumulate): the daemon
    stops with exit 74 and one ``error: outbox …`` line instead of dropping alerts silently, and
    every alert stored before the failure is still in the outbox afterwards."""
    from edge.outbox import Outbox

    video = small_video(tmp_path / "v.mp4", 30)
    with tmpfs(tmp_path / "obfs", "1m") as mnt:
        cfg = daemon_config(
            tmp_path,
            tiny_bundle,
            video,
            None,
            outbox=str(mnt / "outbox.sqlite"),
            camera={"loop": True, "realtime": True},
            heatmaps={"enabled": False},
            decision={"thresholds": {"error": 0.0}, "max_event_frames": 10},
        )
        proc = start_daemon(cfg, "--max-frames", "6000")
        try:
            t = time.monotonic() + 60
            while len(log_alerts(daemon_log(cfg))) < 2 and time.monotonic() < t and proc.poll() is None:
                time.sleep(0.1)
            assert len(log_alerts(daemon_log(cfg))) >= 2, daemon_log(cfg)[-2000:]
            filler = mnt / "filler"
            with open(filler, "wb") as f:  # fill the disk to the last byte
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            rc = wait_exit(proc, 60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = daemon_log(cfg)
        filler.unlink()  # room to open the outbox again
        with Outbox(mnt / "outbox.sqlite") as ob:
            stored = [it.event_id for it in ob.pending()]
    logged = [a["event_id"] for a in log_alerts(text)]
    errors = error_lines(text)
    print(f"\nOUTBOX FULL: rc {rc}, alerts logged {len(logged)}, stored {len(stored)}; {errors}")
    assert rc == 74, text[-3000:]
    assert len(errors) == 1 and "outbox" in errors[0] and "full" in errors[0].lower(), errors
    assert "Traceback" not in text
    # an alert is logged only once it is stored: every logged alert is in the outbox, and the one
    # that hit the full disk is named in a loud "cannot store event <id>" line instead
    assert stored == logged and len(stored) >= 1
    refused = [line for line in text.splitlines() if "cannot store event" in line]
    assert len(refused) == 1 and not any(ev in refused[0] for ev in stored), refused
