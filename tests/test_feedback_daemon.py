"""The daemon with operator feedback and samples, on a real Mosquitto and the tiny model: verdicts and
missed reports arrive on ``/feedback`` while it runs, junk is counted and logged once, samples go to
the folder and out on ``/sample`` after the alerts; a full samples disk costs no alert."""

from __future__ import annotations

import datetime as dt
import json
import numbers
import signal

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.samples import read_sidecar
from tests.support.daemon import (
    daemon_config,
    daemon_log,
    log_alerts,
    log_events,
    log_summary,
    seam_video,
    start_daemon,
    wait_exit,
)
from tests.support.fs import tmpfs
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def video(tmp_path_factory, tiny_valid):
    p = tmp_path_factory.mktemp("video") / "seam.mp4"
    seam_video(p, tiny_valid)
    return p


def _operator(broker) -> mqtt.Client:
    op = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="operator", protocol=mqtt.MQTTv5)
    op.connect(broker.host, broker.port)
    op.loop_start()
    return op


def test_daemon_takes_verdicts_and_missed_reports_counts_junk_and_publishes_samples_after_alerts(
    tmp_path, tiny_bundle, video, mqtt_broker, mqtt_subscriber
):
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/#", v5=True)
    samples = tmp_path / "state" / "samples"
    cfg = daemon_config(
        tmp_path,
        tiny_bundle,
        video,
        mqtt_broker,
        camera={"loop": True, "realtime": True},
        # a tiny model's scores crowd its thresholds: with the default margin (0.1) nearly every
        # frame is "uncertain", and an uncertain frame is never a random good one
        samples={
            "enabled": True,
            "dir": str(samples),
            "random_good_per_h": 3600,
            "missed_window_s": 1.0,
            "uncertain_margin": 0.02,
        },
    )
    proc = start_daemon(cfg)
    op = _operator(mqtt_broker)
    try:
        first = sub.wait_for("seamqc/test-st/alert", timeout=60).json()
        proc.wait_event("ready")
        topic = "seamqc/test-st/feedback"
        for i in range(200):  # junk: counted, one log line
            op.publish(topic, b'{"event_id": 1}' if i % 2 else b"\xff" * i, qos=1).wait_for_publish(5)
        verdict = {"event_id": first["event_id"], "verdict": "false_alarm", "labels": ["break"], "by": "anna"}
        op.publish(topic, json.dumps(verdict), qos=1).wait_for_publish(5)
        op.publish(topic, json.dumps({"event_id": "other-st-1", "verdict": "confirmed"}), qos=1).wait_for_publish(5)
        now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        op.publish(topic, json.dumps({"missed": {"ts": now, "labels": ["error"]}, "by": "anna"}), qos=1)
        got = proc.wait_event("feedback", lambda e: e.get("kind") == "missed", timeout=30)
        assert got.get("samples"), "the ring buffer holds the frames of the last second"
        proc.wait_event("feedback", lambda e: e.get("kind") == "verdict" and e.get("event_id") == first["event_id"])
        proc.wait_event("feedback", lambda e: e.get("kind") == "unknown" and e.get("event_id") == "other-st-1")
        # the flagged sample of the first alert comes out again with the verdict
        wait_until(
            lambda: any(
                json.loads(dict(m.user)["sample"]).get("verdict")
                for m in sub.on("seamqc/test-st/sample")
                if json.loads(dict(m.user)["sample"]).get("event_id") == first["event_id"]
            ),
            timeout=30,
            what="the first alert's sample published with its verdict",
        )
        wait_until(
            lambda: any(
                json.loads(dict(m.user)["sample"]).get("reason") == "random_good"
                for m in sub.on("seamqc/test-st/sample")
            ),
            timeout=30,
            what="a random good sample (3,600 an hour)",
        )
    finally:
        op.loop_stop()
        op.disconnect()
        proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc) == 0, daemon_log(cfg)[-3000:]
    text = daemon_log(cfg)
    s = log_summary(text)
    assert s["feedback_junk"] == 200 and s["feedback_unknown"] == 1 and s["feedback_verdicts"] == 1
    assert s["feedback_missed"] == 1 and s["feedback_received"] == 203
    for k in [k for k in s if k.startswith(("feedback_", "samples_"))]:
        assert isinstance(s[k], numbers.Real) and not isinstance(s[k], bool), (k, s[k])
    assert sum("feedback on seamqc/test-st/feedback ignored" in line for line in text.splitlines()) == 1
    sides = [read_sidecar(p) for p in samples.glob("*.json")]
    reasons = {d["reason"] for d in sides if d}
    assert {"flagged", "missed_report", "random_good"} <= reasons, reasons
    flagged = next(d for d in sides if d and d.get("event_id") == first["event_id"])
    assert flagged["labels"] == ["break"] and flagged["verdict"]["by"] == "anna"
    assert all((samples / d["file"]).is_file() for d in sides if d)
    alerts = log_alerts(text)
    # nothing accepted is lost: every logged alert arrived, or (raised in the last instant before
    # SIGTERM, unacknowledged) waits in the durable outbox for the next start
    assert len(sub.on("seamqc/test-st/alert")) + s["outbox_depth"] >= len(alerts) and s["outbox_depth"] <= 1
    # alerts first: between an alert's storing in the outbox (its log line) and its arrival, at most
    # the one sample already in flight arrives
    stored = {
        e.get("event_id"): dt.datetime.fromisoformat(e.get("ts").replace("Z", "+00:00")).timestamp()
        for e in log_events(text)
        if e.name == "alert"
    }
    arrived = {m.json()["event_id"]: m.wall for m in sub.on("seamqc/test-st/alert")}
    sample_times = [m.wall for m in sub.on("seamqc/test-st/sample")]
    assert sample_times and stored
    for eid, t_stored in stored.items():
        if eid not in arrived:  # the one still in the outbox
            continue
        between = [t for t in sample_times if t_stored < t < arrived[eid]]
        assert len(between) <= 1, (eid, t_stored, arrived[eid], between)


def test_a_full_samples_disk_costs_no_alert(tmp_path, tiny_bundle, video, mqtt_broker, mqtt_subscriber):
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/alert")
    with tmpfs(tmp_path / "small", "200k") as small:
        cfg = daemon_config(
            tmp_path,
            tiny_bundle,
            video,
            mqtt_broker,
            samples={"enabled": True, "dir": str(small), "random_good_per_h": 36000, "uncertain_per_h": 36000},
        )
        assert wait_exit(start_daemon(cfg)) == 0, daemon_log(cfg)[-3000:]
        text = daemon_log(cfg)
        s = log_summary(text)
        alerts = log_alerts(text)
        assert alerts and s["alerts"] == len(alerts)
        sub.wait_count("seamqc/test-st/alert", len(alerts))
        assert s["outbox_depth"] == 0 and s["samples_dropped"] > 0 and s["samples_saved"] > 0
        assert sum("samples: cannot write" in line for line in text.splitlines()) == 1


def test_junk_flood_pauses_the_feedback_subscription_and_valid_feedback_never_does(
    tmp_path, tiny_bundle, video, mqtt_broker, mqtt_subscriber
):
    """Issue 14's flood breaker on a real daemon: more than ``feedback_junk_limit`` refused messages
    unsubscribe the topic for ``feedback_pause_s`` (one line, counters in stats); a verdict sent in the
    pause is never delivered, one sent after it is applied; well-formed feedback at a high rate never trips it."""
    topic, stats = "seamqc/test-st/feedback", "seamqc/test-st/stats"
    sub = mqtt_subscriber(mqtt_broker, ["seamqc/test-st/alert", stats], v5=True)
    limit = 50
    cfg = daemon_config(
        tmp_path,
        tiny_bundle,
        video,
        mqtt_broker,
        camera={"loop": True, "realtime": True},
        mqtt={"feedback_junk_limit": limit, "feedback_junk_window_s": 30, "feedback_pause_s": 5},
    )
    proc = start_daemon(cfg)
    op = _operator(mqtt_broker)

    def next_stats(pred) -> dict:
        """The first stats message from now on that satisfies ``pred``."""
        seen = len(sub.on(stats))
        got: list[dict] = []

        def found() -> list[dict]:
            got.extend(m.json() for m in sub.on(stats)[seen:] if pred(m.json()))
            return got

        wait_until(found, timeout=30, what="stats")
        return got[0]

    try:
        first = sub.wait_for("seamqc/test-st/alert", timeout=60).json()
        proc.wait_event("ready")
        # 300 well-formed verdicts on ids the station never raised, as fast as paho sends them: the
        # queue may overflow (feedback_dropped), nothing is refused, the breaker stays closed
        for i in range(300):
            op.publish(topic, json.dumps({"event_id": f"elsewhere-{i}", "verdict": "confirmed"}), qos=1)
        s = next_stats(lambda s: s["feedback_received"] >= 300)
        assert s["feedback_junk"] == 0 and s["feedback_paused"] == 0 and s["feedback_pauses"] == 0, s
        # junk in chunks of 10, each chunk counted by the station before the next goes, until it pauses:
        # the 51st trips the breaker; the rest of its chunk (9 at most) may already be in flight or
        # queued for the station when Mosquitto reads the UNSUBSCRIBE, and it still delivers those
        sent = 0
        while True:
            for _ in range(10):
                op.publish(topic, b"junk %d" % sent, qos=1).wait_for_publish(5)
                sent += 1
            s = next_stats(lambda s, n=sent: s["feedback_paused"] == 1 or s["feedback_junk"] >= n)
            if s["feedback_paused"] or sent >= 4 * limit:
                break
        assert s["feedback_paused"] == 1 and s["feedback_pauses"] == 1 and sent == limit + 10, (sent, s)
        for i in range(100):  # the flood goes on: the broker routes it nowhere
            op.publish(topic, b"more junk %d" % i, qos=1).wait_for_publish(5)
        received = s["feedback_received"]
        proc.wait_event("feedback", lambda e: e.get("kind") == "paused")
        # the stats that said "paused" went out after the UNSUBSCRIBE (same connection, in order):
        # the broker has dropped the subscription, this verdict goes nowhere
        during = {"event_id": first["event_id"], "verdict": "confirmed", "by": "during-pause"}
        op.publish(topic, json.dumps(during), qos=1).wait_for_publish(5)
        s = next_stats(lambda s: s["feedback_paused"] == 0)  # 5 s later: subscribed again
        assert s["feedback_pauses"] == 1 and s["feedback_received"] == received, s
        after = {"event_id": first["event_id"], "verdict": "confirmed", "by": "after-pause"}
        op.publish(topic, json.dumps(after), qos=1).wait_for_publish(5)
        proc.wait_event("feedback", lambda e: e.get("kind") == "verdict" and e.get("by") == "after-pause")
    finally:
        op.loop_stop()
        op.disconnect()
        proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc) == 0, daemon_log(cfg)[-3000:]
    text = daemon_log(cfg)
    s = log_summary(text)
    # limit + 1 refused messages trip it, plus what of its chunk was already on its way (see above);
    # none of the 100 sent during the pause
    assert limit + 1 <= s["feedback_junk"] <= limit + 10, s["feedback_junk"]
    assert s["feedback_pauses"] == 1 and s["feedback_paused"] == 0 and s["feedback_verdicts"] == 1, s
    verdicts = [e for e in log_events(text) if e.name == "feedback" and e.get("kind") == "verdict"]
    assert [e.get("by") for e in verdicts] == ["after-pause"]  # the one sent in the pause never came
    paused = [line for line in text.splitlines() if "a flood: unsubscribed for 5 s" in line]
    assert len(paused) == 1 and f"{limit + 1} refused messages within 30 s" in paused[0], paused
