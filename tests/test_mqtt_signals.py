"""The factory-floor signals on a real Mosquitto: the retained ``defect`` state, the heatmap JPEG
with its alert's ``event_id``, and flat stats."""

from __future__ import annotations

import numbers

import cv2
import numpy as np
import pytest

from tests.support.daemon import daemon_config, daemon_log, log_alerts, seam_video, start_daemon, wait_exit
from tests.support.mqtt import alert_payload


@pytest.fixture(scope="module")
def video(tmp_path_factory, tiny_valid):
    p = tmp_path_factory.mktemp("video") / "seam.mp4"
    return p, seam_video(p, tiny_valid)


def test_defect_is_retained_qos1_off_at_start_on_off_on_change_off_at_stop(
    mqtt_broker, mqtt_subscriber, mqtt_publisher
):
    live = mqtt_subscriber(mqtt_broker, "seamqc/st1/#", qos=2)  # QoS 2: we see the publish QoS
    pub = mqtt_publisher(mqtt_broker, station="st1")
    first = live.wait_for("seamqc/st1/defect")
    assert (first.text, first.qos) == ("OFF", 1)  # a restart clears a crash's retained ON
    pub.defect(True)
    pub.defect(True)  # no change, nothing sent
    pub.alert(alert_payload(1))
    pub.defect(False)
    live.wait_for("seamqc/st1/alert")
    seen = [m.text for m in live.wait_count("seamqc/st1/defect", 3)]
    assert seen == ["OFF", "ON", "OFF"]
    pub.defect(True)
    live.wait_count("seamqc/st1/defect", 4)
    late = mqtt_subscriber(mqtt_broker, "seamqc/st1/defect")  # a dashboard starting now
    m = late.wait_for("seamqc/st1/defect")
    assert m.retain and m.text == "ON"
    pub.stop()
    assert live.wait_count("seamqc/st1/defect", 5)[-1].text == "OFF"  # a clean stop leaves OFF


@pytest.mark.slow
def test_daemon_defect_on_before_each_alert_off_at_close_heatmap_of_a_published_alert_and_flat_numeric_stats(
    tmp_path, tiny_bundle, video, mqtt_broker, mqtt_subscriber
):
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/#", v5=True)  # MQTT 5: the heatmap's user properties
    cfg = daemon_config(tmp_path, tiny_bundle, video[0], mqtt_broker)
    assert wait_exit(start_daemon(cfg)) == 0, daemon_log(cfg)[-3000:]
    logged = log_alerts(daemon_log(cfg))
    assert logged, "the test video must give at least one alert"
    sub.wait_count("seamqc/test-st/alert", len(logged))
    sub.wait_for("seamqc/test-st/status", lambda m: m.text == "offline")
    order = [
        (m.topic.rsplit("/", 1)[1], m.text) for m in sub.messages if m.topic.rsplit("/", 1)[1] in ("defect", "alert")
    ]
    states = [text for kind, text in order if kind == "defect"]
    assert states[0] == "OFF" and states[-1] == "OFF"
    assert all(a != b for a, b in zip(states, states[1:]))  # published only on change
    for i, (kind, _) in enumerate(order):
        if kind == "alert":  # the early signal came first: an ON arrived before every alert
            assert ("defect", "ON") in order[:i], order
    assert states.count("ON") >= 1
    late = mqtt_subscriber(mqtt_broker, "seamqc/test-st/defect")
    assert late.wait_for("seamqc/test-st/defect").retain
    # the heatmap worker's JPEGs: each names, in its event_id user property, an alert that was
    # published on /alert and has that overlay on disk; the retained one is the last of them
    published = {m.json()["event_id"]: m.json() for m in sub.on("seamqc/test-st/alert")}
    images = sub.on("seamqc/test-st/heatmap")
    assert images, "heatmaps.mqtt is on by default: the daemon must publish overlays"
    hm_dir = tmp_path / "heatmaps"
    for m in images:
        eid = dict(m.user).get("event_id")
        assert eid in published, (eid, sorted(published))
        assert m.payload[:3] == b"\xff\xd8\xff" and len(m.payload) <= 60 * 1024
        assert published[eid]["heatmap"] == str(hm_dir / f"{eid}.overlay.jpg")
        assert (hm_dir / f"{eid}.overlay.jpg").is_file()
        img = cv2.imdecode(np.frombuffer(m.payload, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[2] == 3
    kept = mqtt_subscriber(mqtt_broker, "seamqc/test-st/heatmap", v5=True).wait_for("seamqc/test-st/heatmap")
    assert kept.retain and dict(kept.user)["event_id"] == dict(images[-1].user)["event_id"]
    st = sub.on("seamqc/test-st/stats")[-1].json()
    flat = (
        "fps",
        "frames",
        "alerts",
        "dropped_frames",
        "outbox_depth",
        "uptime_s",
        "inference_ms_p50",
        "inference_ms_p99",
        "heatmaps_saved",
        "heatmaps_dropped",
        "heatmaps_deleted",
        "defects_per_hour",
        "frame_gap_max_ms",
    )
    for key in flat:
        assert isinstance(st[key], numbers.Real) and not isinstance(st[key], bool), (key, st[key])
    assert st["inference_ms_p50"] == st["inference_ms"]["p50"] > 0  # the nested form stays
    assert st["heatmaps_saved"] == st["heatmaps"]["saved"] == len(logged)
    assert st["alerts"] == len(logged) and st["defects_per_hour"] > 0


def test_heatmap_image_fits_60kb_is_jpeg_retained_with_event_id_property(mqtt_broker, mqtt_subscriber, mqtt_publisher):
    from edge.heatmaps import MQTT_JPEG_MAX, jpeg_within

    noise = np.random.default_rng(0).integers(0, 256, (960, 1280, 3), dtype=np.uint8)  # hard to compress
    jpeg = jpeg_within(noise)
    assert jpeg is not None and len(jpeg) <= MQTT_JPEG_MAX == 60 * 1024
    live = mqtt_subscriber(mqtt_broker, "seamqc/st1/heatmap", v5=True)
    pub = mqtt_publisher(mqtt_broker, station="st1")
    live_status = mqtt_subscriber(mqtt_broker, "seamqc/st1/status")
    live_status.wait_for("seamqc/st1/status", lambda m: m.text == "online")
    assert pub.heatmap("evt-0042", jpeg) is True
    m = live.wait_for("seamqc/st1/heatmap")
    assert m.payload[:3] == b"\xff\xd8\xff" and len(m.payload) <= 60 * 1024
    assert dict(m.user)["event_id"] == "evt-0042"
    late = mqtt_subscriber(mqtt_broker, "seamqc/st1/heatmap", v5=True)
    got = late.wait_for("seamqc/st1/heatmap")
    assert got.retain and dict(got.user)["event_id"] == "evt-0042"
