"""Camera and line health (edge.health) on the videos ``convert synth --impair`` makes, its config
section, and (slow) the daemon's retained ``/health`` message on a real Mosquitto."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.synth import DEFAULT_STITCHES_PER_MIN, IMPAIRMENTS, write_video
from convert.synth_fabric import BASE_PX_PER_MM
from edge import health as health_mod
from edge.config import HealthConfig
from edge.errors import ConfigError
from edge.health import CONDITIONS, HealthMonitor
from tests.support.daemon import (
    ROI,
    daemon_config,
    daemon_log,
    log_events,
    log_summary,
    notify_messages,
    notify_socket,
    start_daemon,
    wait_exit,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "edge" / "models" / "default"
FRAMES, FROM = 200, 100  # impaired from frame 100 on: the baseline is learned first
# short windows so that 100 impaired frames settle every condition
SETTINGS = {"every_n_frames": 5, "baseline_frames": 60, "hold_frames": 15, "frozen_frames": 30, "idle_frames": 45}
EXPECTED = {"blur": "blurred", "dark": "dark", "frozen": "frozen", "covered": "covered", "stopped": "idle"}
HOLD = {"blur": 15, "dark": 15, "frozen": 30, "covered": 15, "stopped": 45}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """``kind`` → the synth video (seed 3) impaired from FROM on; ``normal`` is unimpaired. Made on demand."""
    d = tmp_path_factory.mktemp("impaired")
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            p = d / f"{kind}.mp4"
            write_video(p, FRAMES, seed=3, impair=None if kind == "normal" else kind, impair_from=FROM)
            made[kind] = p
        return made[kind]

    return get


def roi_frames(path: Path) -> list[np.ndarray]:
    x, y, w, h = ROI
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        out.append(np.ascontiguousarray(img[y : y + h, x : x + w]))
    cap.release()
    assert len(out) == FRAMES
    return out


def watch(frames: list[np.ndarray], **over) -> tuple[HealthMonitor, list[tuple[int, str]], list[dict]]:
    """Run a monitor over the frames: (monitor, [(frame, state) at each change], metrics of each sample)."""
    mon = HealthMonitor(**{**SETTINGS, **over})
    changes, samples = [], []
    for i, img in enumerate(frames):
        before = mon.samples
        if mon.update(img):
            changes.append((i, mon.state))
        if mon.samples > before:
            samples.append(dict(mon.metrics))
    return mon, changes, samples


def test_normal_video_has_no_condition_and_measures_the_seam_speed(videos):
    mon, changes, samples = watch(roi_frames(videos("normal")))
    assert changes == [] and mon.state == "ok" and not mon.still
    assert mon.samples == FRAMES // 5 == 40
    assert mon.baseline is not None and mon.baseline["sharpness"] > 0.5 and 60 < mon.baseline["mean"] < 200
    # phase correlation sees the strip move at the synth speed: 1000 stitches/min x 2 mm = 33 mm/s
    speed = DEFAULT_STITCHES_PER_MIN * 2.0 / 60.0 * BASE_PX_PER_MM / 30.0  # ROI px per frame
    motion = np.median([s["motion"] for s in samples[1:]])
    assert speed == pytest.approx(13.9, abs=0.1)
    assert motion == pytest.approx(speed, abs=1.0)


@pytest.mark.parametrize("kind", IMPAIRMENTS)
def test_each_impaired_video_raises_its_condition_alone_after_its_hold(videos, kind):
    mon, changes, _ = watch(roi_frames(videos(kind)))
    assert [s for _, s in changes] == [EXPECTED[kind]], changes
    at = changes[0][0]
    # on the impairment's hold / 5 th sample (the first impaired sample is frame FROM), or one later
    assert FROM + HOLD[kind] - 5 <= at <= FROM + HOLD[kind], changes
    assert mon.conditions == (EXPECTED[kind],)
    assert mon.still is (kind in ("frozen", "stopped"))  # only these suspend re-alerting
    assert mon.payload()["state"] == EXPECTED[kind] and mon.payload()["conditions"] == [EXPECTED[kind]]


def test_bright_from_clipped_or_raised_light_and_it_clears_again(videos):
    frames = roi_frames(videos("normal"))
    bright = [
        np.clip(f.astype(np.float32) * 2.5, 0, 255).astype(np.uint8) if 100 <= i < 160 else f
        for i, f in enumerate(frames)
    ]
    mon, changes, samples = watch(bright)
    assert samples[25]["clipped_bright"] > 0.25  # frame 125: most of the view is white
    # set on the 3rd consecutive sample (hold 15 frames / every 5) and cleared on the 3rd without it
    assert changes == [(110, "bright"), (170, "ok")]
    assert mon.state == "ok"


def test_one_odd_frame_neither_raises_nor_clears(videos):
    frames = roi_frames(videos("normal"))
    frames[100] = np.zeros_like(frames[100])  # a sampled frame, black
    mon, changes, _ = watch(frames)
    assert changes == [] and mon.state == "ok"


def test_only_every_nth_frame_and_the_one_before_it_are_measured(videos, monkeypatch):
    """The cost model: 2 small grey copies per ``every_n_frames`` frames, nothing on the others."""
    frames = roi_frames(videos("normal"))[:100]
    calls = []
    real = health_mod.shrink_grey

    def counted(img, *a):
        calls.append(1)
        return real(img, *a)

    monkeypatch.setattr(health_mod, "shrink_grey", counted)
    for n, expected in ((5, 40), (10, 20), (1, 100)):
        calls.clear()
        mon = HealthMonitor(every_n_frames=n)
        for img in frames:
            mon.update(img)
        assert (len(calls), mon.samples) == (expected, 100 // n)
    assert health_mod.shrink_grey(frames[0]).shape == (128, 128)  # a 256-px ROI measured at 128


def test_config_defaults_are_the_monitors_defaults():
    params = inspect.signature(HealthMonitor).parameters
    cfg = HealthConfig().model_dump()
    assert cfg.pop("enabled") is True
    assert cfg == {k: p.default for k, p in params.items()}
    assert set(CONDITIONS) == {"blurred", "dark", "bright", "frozen", "covered", "idle"}


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("  every_n: 3", "health.every_n: unknown key"),
        ("  blur_ratio: 1.5", "health.blur_ratio: 1.5 must be < 1"),
        ("  every_n_frames: 0", "health.every_n_frames: 0 must be >= 1"),
    ],
)
def test_bad_health_config_is_one_line_naming_file_line_key_exit_78(tmp_path, line, needle):
    from edge.config import load_config

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"model:\n  bundle: {SHIPPED}\nhealth:\n  enabled: true\n{line}\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert str(e.value).startswith(f"{cfg}:5: {needle}"), str(e.value)
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(cfg), "--check-config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 78 and len(lines) == 1 and needle in lines[0] and str(cfg) in lines[0], r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "manifest.json").exists(), reason="shipped bundle edge/models/default not built yet")
def test_daemon_publishes_retained_health_stats_and_status_on_a_stopped_line(
    tmp_path, videos, mqtt_broker, mqtt_subscriber
):
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/#", qos=2)  # QoS 2: we see the publish QoS
    sock, addr = notify_socket(tmp_path)
    cfg = daemon_config(
        tmp_path,
        SHIPPED,
        videos("stopped"),
        mqtt_broker,
        heatmaps={"enabled": False},
        health=SETTINGS,
        decision={"expected_length": "2mm"},
    )
    proc = start_daemon(cfg, env={"NOTIFY_SOCKET": addr})
    status = notify_messages(sock, until="health idle", timeout=120)
    assert wait_exit(proc) == 0, daemon_log(cfg)[-3000:]
    sub.wait_for("seamqc/test-st/status", lambda m: m.text == "offline")
    seen = sub.on("seamqc/test-st/health")
    assert [m.json()["state"] for m in seen] == ["ok", "idle"]  # at start, then on the change only
    assert all(m.qos == 1 for m in seen)
    last = seen[-1].json()
    assert last["station"] == "test-st" and last["conditions"] == ["idle"]
    assert last["metrics"]["motion"] < 0.5 and last["baseline"]["sharpness"] > 0
    late = mqtt_subscriber(mqtt_broker, "seamqc/test-st/health").wait_for("seamqc/test-st/health")
    assert late.retain and late.json()["conditions"] == ["idle"]  # a dashboard starting now
    assert any("STATUS=running (" in m and "; health ok" in m for m in status), status
    assert any("; health idle" in m for m in status), status
    final = log_summary(daemon_log(cfg))
    assert final["health_state"] == "idle" and final["health_ok"] == 0
    assert final["health"]["conditions"] == ["idle"] and final["health_motion"] < 0.5
    events = [e.get("health")["state"] for e in log_events(daemon_log(cfg)) if e.name == "health"]
    assert events == ["ok", "idle"]


@pytest.mark.parametrize("shape", [(2, 2, 3), (1, 5, 3), (120, 160)])
def test_tiny_grey_or_flat_views_are_covered_never_an_exception(shape):
    mon = HealthMonitor(every_n_frames=1, baseline_frames=2, hold_frames=2, frozen_frames=2, idle_frames=2)
    for i in range(6):  # flat frames, alternating light: featureless but not frozen
        mon.update(np.full(shape, 120 if i % 2 else 30, np.uint8))
    assert mon.conditions == ("covered",)
    m = mon.payload()["metrics"]
    assert m["std"] == 0.0 and m["change"] == 90.0
    assert (m["motion"] is None) is (min(shape[:2]) < health_mod.MOTION_MIN)


@pytest.mark.parametrize("kind", ["normal", "blur", "stopped"])
def test_capture_thread_probe_gives_the_monitor_the_same_states_as_update(videos, kind):
    """The daemon's split: ``Capture(measure=monitor.new_probe())`` measures every n-th frame in the
    capture thread and the classifier thread only ``observe``s the numbers. Same metrics, same
    changes at the same frames, as ``update`` on the pixels."""
    import queue
    import threading

    from edge.camera import Capture, OpenCVSource
    from edge.config import CameraConfig

    path = videos(kind)
    ref, ref_changes, ref_samples = watch(roi_frames(path))
    mon = HealthMonitor(**SETTINGS)
    cam = CameraConfig(source="file", device=str(path), width=640, height=480, realtime=False, roi=list(ROI))
    q: queue.Queue = queue.Queue(maxsize=FRAMES + 1)
    cap = Capture(OpenCVSource(cam), q, threading.Event(), realtime=False, measure=mon.new_probe())
    cap.start()
    assert cap.ended.wait(30)
    cap.join(5)
    frames = [q.get_nowait() for _ in range(q.qsize())]
    assert len(frames) == FRAMES
    assert [f.seq for f in frames if f.health is not None] == list(range(0, FRAMES, SETTINGS["every_n_frames"]))
    changes, samples = [], []
    for f in frames:
        if mon.observe(f.health):
            changes.append((f.seq, mon.state))
        if f.health is not None:
            samples.append(dict(mon.metrics))
    assert changes == ref_changes and mon.conditions == ref.conditions and mon.frames == ref.frames == FRAMES
    assert len(samples) == len(ref_samples) == FRAMES // SETTINGS["every_n_frames"]
    for a, b in zip(samples, ref_samples):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-6, nan_ok=True), k
