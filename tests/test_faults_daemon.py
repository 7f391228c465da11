"""Faults the daemon must survive: camera missing/vanishing/corrupt/wrong size, heatmap dir unwritable,
broker unreachable. Each: no crash, visible in stats, alerts keep flowing."""

from __future__ import annotations

import signal
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.daemon import (
    daemon_config,
    daemon_log,
    error_lines,
    log_alerts,
    log_summary,
    noise_video,
    start_daemon,
    wait_exit,
)
from tests.support.mqtt import free_port


def stats_where(sub, topic: str, pred, timeout: float = 30.0) -> dict:
    return sub.wait_for(topic, lambda m: pred(m.json()), timeout=timeout).json()


@pytest.mark.slow
def test_missing_camera_at_start_is_retried_and_visible(tmp_path, tiny_bundle, mqtt_broker, mqtt_subscriber):
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/stats").wait_subscribed()
    cfg = daemon_config(
        tmp_path,
        tiny_bundle,
        "unused",
        mqtt_broker,
        camera={"source": "usb", "device": str(tmp_path / "video9"), "reconnect_min_s": 0.05, "reconnect_max_s": 0.2},
    )
    proc = start_daemon(cfg)
    st = stats_where(sub, "seamqc/test-st/stats", lambda s: s["camera"]["reconnects"] >= 3, timeout=60)
    assert st["camera"]["state"] == "lost" and "no such device" in st["camera"]["last_error"]
    assert st["frames"] == 0 and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 10) == 0
    assert "camera: " in daemon_log(cfg) and "Traceback" not in daemon_log(cfg)


@pytest.mark.slow
def test_source_vanishing_mid_run_reconnects_when_it_returns(tmp_path, tiny_bundle, mqtt_broker, mqtt_subscriber):
    video = noise_video(tmp_path / "v.mp4", 15)
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/stats").wait_subscribed()
    cfg = daemon_config(
        tmp_path,
        tiny_bundle,
        video,
        mqtt_broker,
        camera={"loop": True, "realtime": True, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2},
    )
    proc = start_daemon(cfg)
    stats_where(sub, "seamqc/test-st/stats", lambda s: s["frames"] > 0 and s["camera"]["state"] == "ok", 60)
    video.rename(tmp_path / "gone.mp4")
    lost = stats_where(sub, "seamqc/test-st/stats", lambda s: s["camera"]["state"] == "lost")
    assert "vanished" in lost["camera"]["last_error"]
    (tmp_path / "gone.mp4").rename(video)
    back = stats_where(
        sub, "seamqc/test-st/stats", lambda s: s["camera"]["state"] == "ok" and s["frames"] > lost["frames"]
    )
    assert back["camera"]["reconnects"] >= 1
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 10) == 0


@pytest.mark.slow  # runs the daemon on the tiny model
def test_wrong_frame_size_is_resized_and_counted(tmp_path, tiny_bundle):
    video = noise_video(tmp_path / "small.mp4", 20, size=(320, 240))
    cfg = daemon_config(tmp_path, tiny_bundle, video, None)
    proc = start_daemon(cfg)
    assert wait_exit(proc) == 0
    text = daemon_log(cfg)
    s = log_summary(text)
    assert s["frames"] == 20 and s["camera"]["resized"] == 20
    assert sum("resizing them" in line for line in text.splitlines()) == 1  # logged once


@pytest.mark.slow  # runs the daemon on the tiny model
def test_heatmap_dir_unwritable_alerts_continue(tmp_path, tiny_bundle):
    video = noise_video(tmp_path / "v.mp4", 40)
    (tmp_path / "file").write_text("not a directory")
    cfg = daemon_config(
        tmp_path,
        tiny_bundle,
        video,
        None,
        heatmaps={"dir": str(tmp_path / "file" / "heatmaps")},
        decision={"thresholds": {"error": 0.0}, "max_event_frames": 10},
    )
    proc = start_daemon(cfg)
    assert wait_exit(proc) == 0
    text = daemon_log(cfg)
    s, alerts = log_summary(text), log_alerts(text)
    assert len(alerts) == s["alerts"] >= 3
    assert all(a["heatmap"] is None for a in alerts)
    assert s["heatmaps"]["dropped"] == len(alerts) and s["heatmaps"]["saved"] == 0
    assert sum("heatmaps are dropped" in line for line in text.splitlines()) == 1


@pytest.mark.slow  # runs the daemon on the tiny model
def test_broker_unreachable_keeps_classifying(tmp_path, tiny_bundle):
    video = noise_video(tmp_path / "v.mp4", 40)

    class Nowhere:
        host, port = "127.0.0.1", free_port()

    cfg = daemon_config(
        tmp_path, tiny_bundle, video, Nowhere, decision={"thresholds": {"break": 0.0}, "max_event_frames": 10}
    )
    proc = start_daemon(cfg)
    assert wait_exit(proc, 60) == 0
    s = log_summary(daemon_log(cfg))
    assert s["frames"] == 40 and s["alerts"] >= 3
    assert s["outbox_depth"] == s["alerts"] and s["mqtt_connected"] is False


class _Scripted:
    """A live source that returns good, empty, corrupt and odd-sized frames, then ends."""

    fps, live = 30.0, True

    def __init__(self, frames):
        self.frames = list(frames)
        self.frame_size = (640, 480)
        self.roi = (192, 112, 256, 256)

    def open(self):
        pass

    def read(self):
        from edge.camera import EndOfStream

        if not self.frames:
            raise EndOfStream()
        return self.frames.pop(0)

    def close(self):
        pass

    def rewind(self):
        return False


@pytest.mark.slow  # runs the daemon on the tiny model
def test_corrupt_frames_in_the_running_daemon(tmp_path, tiny_bundle, caplog):
    """In-process, on the daemon's own code path with a scripted source: no crash, counted in stats."""
    from edge.config import load_config
    from edge.daemon import Daemon

    video = noise_video(tmp_path / "v.mp4", 2)
    cfg = load_config(daemon_config(tmp_path, tiny_bundle, video, None))
    good = np.full((480, 640, 3), 120, np.uint8)
    script = [
        good,
        None,
        np.zeros((0,), np.uint8),
        np.zeros((480, 640, 3), np.float64),
        good,
        np.full((240, 320), 50, np.uint8),
        good,
    ]
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        d = Daemon(cfg)
        d.setup()
        d.source = _Scripted(script)
        assert d.run() == 0
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    st = d.stats_payload(0, 1.0)
    assert d.frames == 4 and st["camera"]["corrupt"] == 3 and st["camera"]["resized"] == 1
    assert st["camera"]["state"] == "ended" and st["frames"] == 4


@pytest.mark.slow
def test_sighup_reloads_and_sigterm_alerts_the_open_event(tmp_path, tiny_bundle, mqtt_broker, mqtt_subscriber):
    """Issue 12 #10: a dropped SSH session (SIGHUP) killed the daemon and lost its open events.
    Issue 16: SIGHUP now reloads the model and the line goes on; the open event survives the reload
    and is alerted at the clean stop."""
    video = noise_video(tmp_path / "v.mp4", 30)
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/#").wait_subscribed()
    cfg = daemon_config(
        tmp_path,
        tiny_bundle,
        video,
        mqtt_broker,
        camera={"loop": True, "realtime": True},  # runs until told to stop
        decision={"thresholds": {"error": 0.0}, "max_event_frames": 1_000_000},
    )
    proc = start_daemon(cfg)
    st = stats_where(sub, "seamqc/test-st/stats", lambda s: s["open_events"] >= 1 and s["frames"] > 5, 90)
    assert st["alerts"] == 0 and proc.poll() is None  # the event is open, not alerted
    proc.send_signal(signal.SIGHUP)
    proc.wait_event("model", lambda e: e.get("state") == "active", timeout=60)
    st = stats_where(sub, "seamqc/test-st/stats", lambda s: s["model_reloads"] == 1 and s["frames"] > st["frames"], 30)
    assert st["open_events"] >= 1 and st["alerts"] == 0 and proc.poll() is None  # still open, still running
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 10) == 0
    alert = sub.wait_for("seamqc/test-st/alert", timeout=5).json()  # flushed, delivered
    assert "error" in alert["labels"] and alert["last_frame"] - alert["first_frame"] >= 5
    sub.wait_for("seamqc/test-st/status", lambda m: m.text == "offline", timeout=5)
    text = daemon_log(cfg)
    s = log_summary(text)
    assert "stopping (SIGTERM)" in text and "Traceback" not in text
    assert s["alerts"] == len(log_alerts(text)) >= 1
    from edge.outbox import Outbox

    ob = Outbox(tmp_path / "outbox.sqlite")
    try:
        assert ob.depth() == 0  # acknowledged, none left
    finally:
        ob.close()


def mjpg_avi(path: Path, frames: int, size=(640, 480)) -> Path:
    """MJPG AVI (a 0-frame one opens and reads nothing, where OpenCV's 0-frame mp4 does not open).

    Noise, so the file is megabytes: FFmpeg may keep a small file's frames in its buffers.
    """
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        w.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    w.release()
    return path


@pytest.mark.slow
def test_video_that_stops_decoding_while_looping_exits_78_with_one_line(
    tmp_path, tiny_bundle, mqtt_broker, mqtt_subscriber
):
    """Issue 12 #7: a looped file truncated in place spun a core for ever; now exit 78, one line, clean stop."""
    video = mjpg_avi(tmp_path / "v.avi", 30)
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/#").wait_subscribed()
    cfg = daemon_config(tmp_path, tiny_bundle, video, mqtt_broker, camera={"loop": True, "realtime": True})
    proc = start_daemon(cfg)
    stats_where(sub, "seamqc/test-st/stats", lambda s: s["frames"] > 35, 90)  # decoded, looped
    with open(video, "r+b") as f:  # in place, as `cp` over it does
        f.truncate(0)
        f.write(mjpg_avi(tmp_path / "empty.avi", 0).read_bytes())
    try:
        rc = wait_exit(proc, 15)
    except Exception:
        raise AssertionError(daemon_log(cfg)[-4000:]) from None
    assert rc == 78, daemon_log(cfg)[-3000:]
    sub.wait_for("seamqc/test-st/status", lambda m: m.text == "offline", timeout=5)  # a clean stop
    text = daemon_log(cfg)
    errors = error_lines(text)
    assert len(errors) == 1 and "Traceback" not in text, text[-3000:]
    assert f"{cfg}:" in errors[0] and "camera.device" in errors[0] and str(video) in errors[0], errors
    assert "stopping (camera error)" in text and log_summary(text)["camera"]["state"] == "failed"
