"""The factory-floor signals on a real Mosquitto: the retained ``defect`` state and flat stats."""

from __future__ import annotations

import numbers

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
def test_daemon_defect_on_before_each_alert_off_at_close_and_flat_numeric_stats(
    tmp_path, tiny_bundle, video, mqtt_broker, mqtt_subscriber
):
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/#")
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
