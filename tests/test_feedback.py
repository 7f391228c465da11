"""Operator feedback in (edge/feedback.py): the strict parser, the inbox that paho's thread feeds
(validate, enqueue, count, log at most once a minute), a hypothesis fuzz of the parser, and the
subscription through the publisher on a real Mosquitto."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.feedback import FEEDBACK_MAX, FeedbackError, FeedbackInbox, Missed, Verdict, parse_feedback
from tests.support.mqtt import alert_payload
from tests.support.wait import wait_until

LABELS = ("good", "error", "break", "length")


def _b(obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    "payload, expect",
    [
        ({"event_id": "st-1a2b3c4d-7", "verdict": "confirmed"}, Verdict),
        ({"event_id": "e", "verdict": "false_alarm", "labels": ["break", "break"], "by": "anna"}, Verdict),
        ({"event_id": "e", "verdict": "false_alarm", "labels": []}, Verdict),
        ({"missed": {"ts": "2026-01-02T03:04:05.123Z", "labels": ["error"]}, "by": "line-3-tv"}, Missed),
        ({"missed": {"ts": "2026-01-02T03:04:05+01:00", "labels": ["length", "break"]}}, Missed),
    ],
)
def test_valid_feedback_parses(payload, expect):
    fb = parse_feedback(_b(payload), LABELS)
    assert isinstance(fb, expect)
    if isinstance(fb, Verdict) and fb.labels is not None:
        assert fb.labels == list(dict.fromkeys(payload["labels"]))  # duplicates gone, order kept
    if isinstance(fb, Missed):
        assert fb.missed.epoch > 1.7e9


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "not a JSON object"),
        (b"[" * 3000 + b"]" * 3000, "over 4096 bytes"),
        (b"[" * 2000, "not JSON"),  # deep nesting within the size limit: no RecursionError escapes
        (_b({"event_id": "e", "verdict": "maybe"}), "verdict"),
        (_b({"event_id": "e", "verdict": "confirmed", "labels": ["dog"]}), "not a label of the model"),
        (_b({"event_id": "e", "verdict": "confirmed", "extra": 1}), "extra"),
        (_b({"event_id": 7, "verdict": "confirmed"}), "event_id"),
        (_b({"event_id": "a b", "verdict": "confirmed"}), "printable"),
        (_b({"event_id": "e", "verdict": "confirmed", "by": "x\u0000y"}), "control"),
        (_b({"event_id": "e", "verdict": "confirmed", "labels": "error"}), "labels"),
        (_b({"missed": {"ts": "2026-01-02T03:04:05", "labels": ["error"]}}), "time zone"),
        (_b({"missed": {"ts": "yesterday", "labels": ["error"]}}), "ISO 8601"),
        (_b({"missed": {"ts": "2026-01-02T03:04:05Z", "labels": []}}), "at least 1"),
        (_b({"missed": {"ts": "2026-01-02T03:04:05Z", "labels": ["error"], "frame": 3}}), "extra"),
        (_b({"missed": {"ts": "2026-01-02T03:04:05Z", "labels": ["error"]}, "event_id": "e"}), "extra"),
        (_b({"verdict": "confirmed"}), "event_id"),
    ],
)
def test_invalid_feedback_is_refused_with_a_reason(payload, why):
    with pytest.raises(FeedbackError) as e:
        parse_feedback(payload, LABELS)
    assert why.lower() in str(e.value).lower()


def test_payload_over_4kb_is_refused_even_when_valid_json():
    big = _b({"event_id": "e", "verdict": "confirmed", "by": "x" * FEEDBACK_MAX})
    with pytest.raises(FeedbackError, match="over 4096 bytes"):
        parse_feedback(big, LABELS)


def test_inbox_counts_junk_logs_at_most_once_a_minute_and_bounds_its_queue(caplog):
    now = [1000.0]
    inbox = FeedbackInbox("seamqc/st/feedback", LABELS, queue_size=3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="edge.feedback"):
        for i in range(10_000):
            inbox.handle(b"junk %d" % i)
        assert inbox.junk == 10_000 and inbox.received == 10_000
        assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
        now[0] += 61  # a minute later the next refusal says how many went unsaid
        inbox.handle(b"{}")
        assert len(caplog.records) == 2 and "+9999 more" in caplog.records[1].getMessage()
        for i in range(5):
            inbox.handle(_b({"event_id": f"e{i}", "verdict": "confirmed"}))
    assert inbox.q.qsize() == 3 and inbox.dropped == 2  # bounded: the callback never blocks
    got = [inbox.get(0), inbox.get(0), inbox.get(0), inbox.get(0)]
    assert [g.event_id for g in got[:3] if isinstance(g, Verdict)] == ["e0", "e1", "e2"] and got[3] is None


# -- fuzz -------------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5),
    max_leaves=20,
)
_label = st.sampled_from([*LABELS, "dog", "", "ERROR", "error\u0000"])
_near_valid = st.one_of(
    st.fixed_dictionaries(
        {"event_id": st.text(max_size=300) | _json, "verdict": st.sampled_from(["confirmed", "false_alarm", "x"])},
        optional={"labels": st.lists(_label, max_size=20) | _json, "by": st.text(max_size=80) | _json, "x": _json},
    ),
    st.fixed_dictionaries(
        {
            "missed": st.fixed_dictionaries(
                {"ts": st.text(max_size=50) | _json, "labels": st.lists(_label, max_size=20)}
            )
        },
        optional={"by": st.text(max_size=80) | _json},
    ),
)


def _check(payload: bytes) -> None:
    try:
        fb = parse_feedback(payload, LABELS)
    except FeedbackError as e:
        assert str(e) and len(str(e)) <= 160
        return
    assert len(payload) <= FEEDBACK_MAX
    if isinstance(fb, Verdict):
        assert fb.verdict in ("confirmed", "false_alarm") and 1 <= len(fb.event_id) <= 256
        assert fb.labels is None or (set(fb.labels) <= set(LABELS) and len(set(fb.labels)) == len(fb.labels))
    else:
        assert fb.missed.labels and set(fb.missed.labels) <= set(LABELS)
        assert isinstance(fb.missed.epoch, float)


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=5000))
def test_fuzz_feedback_bytes_never_raise_anything_but_feedback_error(payload):
    _check(payload)


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(_near_valid | _json)
def test_fuzz_feedback_structures_are_accepted_only_when_they_fit_the_schema(obj):
    try:
        payload = json.dumps(obj).encode()
    except ValueError:  # NaN is fine for json.dumps; nothing else fails, but be safe
        return
    _check(payload)
    inbox = FeedbackInbox("t", LABELS, queue_size=1)
    inbox.handle(payload)  # the paho callback never raises
    assert inbox.received == 1 and inbox.junk + inbox.q.qsize() == 1


# -- a real broker ----------------------------------------------------------------------------------


def test_publisher_subscribes_feedback_qos1_on_every_connect_and_junk_never_holds_up_alerts(
    mqtt_broker, mqtt_subscriber, mqtt_publisher
):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    sub = mqtt_subscriber(mqtt_broker, "seamqc/st1/alert")
    pub = mqtt_publisher(mqtt_broker, station="st1", start=False)
    inbox = FeedbackInbox(pub.topics.feedback, LABELS)
    assert inbox.topic == "seamqc/st1/feedback" and pub.listen(inbox.topic, inbox.on_message)
    pub.start()
    wait_until(lambda: pub.connected, what="publisher connected")
    op = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="operator", protocol=mqtt.MQTTv5)
    op.connect(mqtt_broker.host, mqtt_broker.port)
    op.loop_start()
    try:
        # the SUBACK may come after our connect: publish until the first message gets through
        good = _b({"event_id": "evt-0001", "verdict": "confirmed", "by": "anna"})
        wait_until(
            lambda: op.publish(inbox.topic, good, qos=1).wait_for_publish(5) or inbox.received > 0,
            what="feedback received",
        )
        for i in range(500):
            op.publish(inbox.topic, b"\x00junk" * (i % 7), qos=1)
        pub.alert(alert_payload(1))
        sub.wait_for("seamqc/st1/alert")
        wait_until(lambda: inbox.junk == 500, what="500 junk messages counted")
        fb = inbox.get(0)
        assert isinstance(fb, Verdict) and (fb.event_id, fb.by) == ("evt-0001", "anna")
        mqtt_broker.restart()  # a clean session: the daemon subscribes again on the reconnect
        wait_until(lambda: pub.connected, what="reconnected")
        before = inbox.received
        wait_until(
            lambda: op.is_connected() and op.publish(inbox.topic, good, qos=1) and inbox.received > before,
            timeout=30,
            what="feedback after the reconnect",
        )
    finally:
        op.loop_stop()
        op.disconnect()


def _readme_acl() -> str:
    """The ACL the README shows under 'Who may publish feedback' (the test uses the documented text)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    part = text.split("**Who may publish feedback.**", 1)[1]
    return part.split("```", 2)[1].strip("\n")


def test_readme_acl_lets_only_the_dashboard_publish_feedback(tmp_path, mqtt_broker_factory, mqtt_publisher):
    import shutil
    import subprocess

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs mosquitto_passwd (mosquitto package)")
    users = {"dashboard": "d4sh", "st1": "s1pw", "st2": "s2pw"}
    pw = tmp_path / "passwd"
    for i, (u, p) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", "-b", *([] if i else ["-c"]), str(pw), u, p], check=True)
    acl = tmp_path / "acl"
    acl.write_text(_readme_acl() + "\n")
    broker = mqtt_broker_factory(global_lines=[f"password_file {pw}", f"acl_file {acl}"], anonymous=False)
    (tmp_path / "st1.pw").write_text("s1pw\n")
    pub = mqtt_publisher(broker, station="st1", start=False, username="st1", password_file=tmp_path / "st1.pw")
    inbox = FeedbackInbox(pub.topics.feedback, LABELS)
    pub.listen(inbox.topic, inbox.on_message)
    pub.start()
    wait_until(lambda: pub.connected, what="station connected")

    def client(user: str) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-{user}", protocol=mqtt.MQTTv5)
        c.username_pw_set(user, users[user])
        c.connect(broker.host, broker.port)
        c.loop_start()
        return c

    refused: dict[str, list] = {"st2": []}
    intruder = client("st2")  # another station: its PUBACK says "Not authorized" (MQTT 5)
    intruder.on_publish = lambda c, u, mid, rc, props: refused["st2"].append(rc)
    dash = client("dashboard")
    try:
        intruder.publish(inbox.topic, _b({"event_id": "x-1", "verdict": "confirmed"}), qos=1)
        wait_until(lambda: refused["st2"], what="the intruder's PUBACK")
        assert refused["st2"][0].is_failure and "authori" in str(refused["st2"][0]).lower()
        ok = _b({"event_id": "x-2", "verdict": "confirmed", "by": "dashboard"})
        wait_until(
            lambda: dash.publish(inbox.topic, ok, qos=1).wait_for_publish(5) or inbox.received > 0,
            what="the dashboard's feedback received",
        )
        got = []
        while (fb := inbox.get(0)) is not None:
            got.append(fb)
        # only the dashboard's (possibly repeated until the SUBACK): the intruder's never arrived
        assert got and {f.event_id for f in got if isinstance(f, Verdict)} == {"x-2"} and inbox.junk == 0
    finally:
        for c in (intruder, dash):
            c.loop_stop()
            c.disconnect()
