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
    # the flood breaker (tested below) off the path: this is about the log line and the queue
    inbox = FeedbackInbox("seamqc/st/feedback", LABELS, queue_size=3, clock=lambda: now[0], junk_limit=100_000)
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

        def published_and_received() -> bool:
            op.publish(inbox.topic, good, qos=1).wait_for_publish(5)
            return inbox.received > 0

        wait_until(published_and_received, what="feedback received")
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

        def published_and_received() -> bool:
            dash.publish(inbox.topic, ok, qos=1).wait_for_publish(5)
            return inbox.received > 0

        wait_until(published_and_received, what="the dashboard's feedback received")
        got = []
        while (fb := inbox.get(0)) is not None:
            got.append(fb)
        # only the dashboard's (possibly repeated until the SUBACK): the intruder's never arrived
        assert got and {f.event_id for f in got if isinstance(f, Verdict)} == {"x-2"} and inbox.junk == 0
    finally:
        for c in (intruder, dash):
            c.loop_stop()
            c.disconnect()


# -- the flood breaker (issue 14: 10,000 junk messages cost the fps in paho's thread, not in the parser) --


class _Switch:
    """Stands in for ``Publisher.set_listening``: records each call (False: unsubscribe, True: subscribe)."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, on: bool) -> None:
        self.calls.append(on)


def _paused(inbox: FeedbackInbox) -> bool:
    """``inbox.paused``, read through a call: mypy keeps an attribute narrowed by one assert across
    the ``handle``/``tick`` calls that change it, and would call the next, opposite assert unreachable."""
    return inbox.paused


def _breaker(now: list[float], switch: _Switch, **kw: object) -> FeedbackInbox:
    kw = {"junk_limit": 5, "junk_window_s": 10.0, "pause_s": 60.0, **kw}
    return FeedbackInbox("seamqc/st/feedback", LABELS, clock=lambda: now[0], listening=switch, **kw)  # type: ignore[arg-type]


def test_breaker_trips_on_the_limit_plus_one_within_the_window_and_resumes_after_the_pause(caplog):
    now, switch = [1000.0], _Switch()
    inbox = _breaker(now, switch)
    with caplog.at_level(logging.WARNING, logger="edge.feedback"):
        for _ in range(5):  # the limit itself is allowed
            inbox.handle(b"junk")
            now[0] += 1.0
        assert not _paused(inbox) and switch.calls == [] and inbox.pauses == 0
        inbox.handle(b"junk")  # the 6th within 10 s
        assert _paused(inbox) and inbox.pauses == 1 and switch.calls == [False]
        for _ in range(100):  # what the broker had sent before it read the UNSUBSCRIBE: counted, no new pause
            inbox.handle(b"junk")
        assert inbox.junk == 106 and inbox.pauses == 1 and switch.calls == [False]
        paused = [r.getMessage() for r in caplog.records if "unsubscribed" in r.getMessage()]
    assert len(paused) == 1, paused
    line = paused[0]
    assert "seamqc/st/feedback" in line and "6 refused messages within 10 s" in line and "for 60 s" in line
    assert "ACL" in line and "feedback_paused" in line
    now[0] += 59.9
    inbox.tick()
    assert _paused(inbox) and switch.calls == [False]  # not yet
    now[0] += 0.2
    inbox.tick()
    assert not _paused(inbox) and switch.calls == [False, True] and inbox.pauses == 1
    inbox.tick()  # idempotent
    assert switch.calls == [False, True]
    # the window starts empty again: the stragglers of the pause do not count towards the next trip
    for _ in range(5):
        inbox.handle(b"junk")
    assert not _paused(inbox)
    inbox.handle(b"junk")
    assert _paused(inbox) and inbox.pauses == 2 and switch.calls == [False, True, False]


def test_breaker_window_slides_junk_at_a_trickle_never_trips():
    now, switch = [0.0], _Switch()
    inbox = _breaker(now, switch, junk_limit=3, junk_window_s=10.0)
    for _ in range(1000):  # one every 3.4 s: never more than 3 within 10 s
        inbox.handle(b"\xff")
        now[0] += 3.4
    assert inbox.junk == 1000 and inbox.pauses == 0 and not _paused(inbox) and switch.calls == []
    for _ in range(3):  # one every 3.3 s: the 4th is 9.9 s after the 1st
        inbox.handle(b"\xff")
        now[0] += 3.3
    assert not _paused(inbox)
    inbox.handle(b"\xff")
    assert _paused(inbox) and switch.calls == [False]


def test_breaker_never_trips_on_valid_feedback_nor_on_a_full_queue():
    now, switch = [0.0], _Switch()
    inbox = _breaker(now, switch, junk_limit=5)
    for i in range(10_000):  # well-formed, all in the same instant; the queue of 256 overflows
        inbox.handle(_b({"event_id": f"e{i}", "verdict": "confirmed"}))
    assert inbox.dropped == 10_000 - 256 and inbox.junk == 0
    assert inbox.pauses == 0 and not _paused(inbox) and switch.calls == []


def test_breaker_without_a_switch_still_counts():
    """``listening`` None (tests, benchmarks): the state and the counters, nothing to call."""
    now = [0.0]
    inbox = FeedbackInbox("t", LABELS, clock=lambda: now[0], junk_limit=1, junk_window_s=1.0, pause_s=1.0)
    inbox.handle(b"x")
    inbox.handle(b"x")
    assert _paused(inbox) and inbox.pauses == 1
    now[0] += 1.0
    inbox.tick()
    assert not _paused(inbox)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("feedback_junk_limit: 0", ":3: mqtt.feedback_junk_limit: 0 must be >= 1"),
        ("feedback_junk_limit: -5", ":3: mqtt.feedback_junk_limit: -5 must be >= 1"),
        ("feedback_junk_limit: many", ":3: mqtt.feedback_junk_limit: 'many' is not a valid integer"),
        ("feedback_junk_window_s: 0", ":3: mqtt.feedback_junk_window_s: 0 must be > 0"),
        ("feedback_junk_window_s: .inf", ":3: mqtt.feedback_junk_window_s: inf is not a finite number"),
        ("feedback_pause_s: -1", ":3: mqtt.feedback_pause_s: -1 must be > 0"),
        ("feedback_pause_s: 1.0e+9", ":3: mqtt.feedback_pause_s: 1000000000.0 must be <= 86400"),
        ("feedback_paws_s: 60", ":3: mqtt.feedback_paws_s: unknown key"),
    ],
)
def test_breaker_config_errors_are_one_line_naming_file_key_value(tmp_path, line, expected):
    from edge.config import load_config
    from edge.errors import ConfigError

    p = tmp_path / "c.yaml"
    p.write_text(f"model: {{bundle: /b}}\nmqtt:\n  {line}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert ei.value.exit_code == 78 and "\n" not in msg and msg.startswith(str(p)), msg
    assert msg[len(str(p)) :].startswith(expected), msg


def test_breaker_config_defaults(tmp_path):
    from edge.config import load_config

    p = tmp_path / "c.yaml"
    p.write_text("model: {bundle: /b}\n")
    m = load_config(p).mqtt
    assert (m.feedback_junk_limit, m.feedback_junk_window_s, m.feedback_pause_s) == (200, 10.0, 60.0)


def test_breaker_on_a_real_broker_unsubscribes_stays_off_across_a_reconnect_and_subscribes_again(
    mqtt_broker, mqtt_publisher
):
    """Publisher + inbox on Mosquitto, the pause's clock injected (the daemon test covers the real timer).

    A second listened topic (``probe``) proves what the broker routes: the publisher subscribes its
    topics in order on each connect, so once a probe arrives, a feedback subscription made on that
    connect would be in place too; and a feedback message published before a probe (same client, so
    routed in that order) would have arrived before it.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    now = [0.0]
    pub = mqtt_publisher(mqtt_broker, station="st1", start=False)
    topic = pub.topics.feedback
    inbox = FeedbackInbox(
        topic,
        LABELS,
        clock=lambda: now[0],
        junk_limit=20,
        junk_window_s=10.0,
        pause_s=60.0,
        listening=lambda on: pub.set_listening(topic, on),
    )
    probes: list[bytes] = []
    assert pub.listen(topic, inbox.on_message)
    assert pub.listen("seamqc/st1/probe", lambda c, u, m: probes.append(bytes(m.payload)))
    pub.start()
    wait_until(lambda: pub.connected, what="publisher connected")
    op = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="operator", protocol=mqtt.MQTTv5)
    op.connect(mqtt_broker.host, mqtt_broker.port)
    op.loop_start()

    def probe(tag: bytes) -> None:
        def arrived() -> bool:
            if tag not in probes and op.is_connected():
                op.publish("seamqc/st1/probe", tag, qos=1).wait_for_publish(5)
            return tag in probes

        wait_until(
            arrived,
            timeout=30,
            what=f"probe {tag!r} received",
        )

    try:
        probe(b"p0")
        # well-formed feedback at a high rate (unacknowledged, as fast as paho sends): never trips
        for i in range(1000):
            op.publish(topic, _b({"event_id": f"ok-{i}", "verdict": "confirmed"}), qos=1)
        wait_until(lambda: inbox.received == 1000, timeout=30, what="1,000 valid messages received")
        assert inbox.pauses == 0 and inbox.junk == 0 and inbox.dropped == 1000 - inbox.q.maxsize
        while inbox.get(0) is not None:
            pass
        # junk, each one handled before the next goes: the 21st within 10 s trips the breaker, exactly
        # (Mosquitto still delivers what it had already sent or queued for the station when it reads
        # the UNSUBSCRIBE; sending one at a time keeps that at 0 here, the daemon test lets a few through)
        unsubacks: list[int] = []
        pub._client.on_unsubscribe = lambda c, u, mid, rc, props: unsubacks.append(mid)  # test-only probe
        sent = 0
        while not inbox.paused and sent < 100:
            op.publish(topic, b"junk %d" % sent, qos=1).wait_for_publish(5)
            sent += 1
            # the probe follows it on both connections and through paho's one network thread: once it is
            # in, the junk's callback has returned and the breaker has decided (junk is counted before)
            probe(b"after junk %d" % sent)
        assert _paused(inbox) and inbox.pauses == 1 and sent == inbox.junk == 21
        # the UNSUBSCRIBE travels on the station's connection, the flood on the operator's: no order
        # between them until the broker's UNSUBACK is back, after which nothing more is routed
        wait_until(lambda: len(unsubacks) == 1, what="the broker acknowledged the UNSUBSCRIBE")
        for i in range(50):  # the flood goes on: the broker routes it nowhere
            op.publish(topic, b"more junk %d" % i, qos=1).wait_for_publish(5)
        probe(b"p1")
        junk = inbox.junk
        assert junk == 21, junk  # none of the 50 arrived
        mqtt_broker.restart()  # a clean session; the reconnect must not subscribe the paused topic
        wait_until(lambda: pub.connected and op.is_connected(), timeout=30, what="both reconnected")
        probe(b"p2")
        op.publish(topic, _b({"event_id": "during-pause", "verdict": "confirmed"}), qos=1).wait_for_publish(5)
        probe(b"p3")
        assert inbox.received == 1000 + junk and inbox.get(0) is None  # not routed to the station
        now[0] += 60.0  # the pause is over: the samples worker's tick subscribes again
        inbox.tick()
        assert not _paused(inbox)
        after = _b({"event_id": "after-pause", "verdict": "confirmed"})

        def published_and_queued() -> bool:
            op.publish(topic, after, qos=1).wait_for_publish(5)
            return inbox.q.qsize() > 0

        wait_until(published_and_queued, timeout=30, what="feedback after the pause")
        fb = inbox.get(0)
        assert isinstance(fb, Verdict) and fb.event_id == "after-pause" and inbox.pauses == 1
    finally:
        op.loop_stop()
        op.disconnect()
