"""edge.publish against a real Mosquitto: the §6 contract (topics, QoS, retain, payload) and its edges."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.errors import ConfigError
from edge.outbox import Outbox
from edge.publish import Publisher, RedactFilter, encode, read_password, topics
from tests.support.mqtt import alert_payload, free_port, mosquitto_sub, mqtt_config
from tests.support.wait import wait_until


def test_topics_follow_the_contract():
    t = topics("seamqc", "sew-03")
    assert (t.status, t.alert, t.stats) == ("seamqc/sew-03/status", "seamqc/sew-03/alert", "seamqc/sew-03/stats")
    assert topics("factory/qc", "s1").alert == "factory/qc/s1/alert"
    for bad in ("a/b", "a+", "#", ""):
        with pytest.raises(ConfigError, match="station"):
            topics("seamqc", bad)
    with pytest.raises(ConfigError, match="mqtt.prefix"):
        topics("seam/#", "s1")


def test_alert_status_stats_have_contract_qos_retain_and_payload(mqtt_broker, mqtt_subscriber, mqtt_publisher):
    live = mqtt_subscriber(mqtt_broker, "seamqc/#", qos=2)  # QoS 2 subscription: we see the publish QoS
    pub = mqtt_publisher(mqtt_broker, station="st1")
    assert live.wait_for("seamqc/st1/status", lambda m: m.text == "online").qos == 1
    assert pub.connected

    sent = alert_payload(1)
    event_id = pub.alert(sent)
    assert event_id == "evt-0001"
    msg = live.wait_for("seamqc/st1/alert")
    assert msg.qos == 1 and not msg.retain
    got = msg.json()
    assert got["event_id"] == "evt-0001" and got["station"] == "st1" and got["frame"] == 101
    assert got["labels"] == ["error"] and got["heatmap"] is None
    assert got["model"] == {"name": "default", "sha256": "ab" * 32}
    assert got["scores"]["error"] == pytest.approx(0.93, abs=1e-6)  # numpy scalars become JSON numbers
    assert set(got) == {"event_id", "station", "ts", "frame", "labels", "scores", "heatmap", "model"}
    assert pub.flush(10)
    assert pub.outbox_depth == 0  # deleted once the broker acknowledged it

    assert pub.stats({"fps": 29.5, "frames": 10, "outbox_depth": pub.outbox_depth}) is True
    st = live.wait_for("seamqc/st1/stats")
    assert st.qos == 0 and st.json()["fps"] == 29.5

    # a late subscriber (a dashboard starting up) gets retained status and stats, but no old alerts
    late = mqtt_subscriber(mqtt_broker, "seamqc/#", qos=2)
    assert late.wait_for("seamqc/st1/status").retain and late.wait_for("seamqc/st1/status").text == "online"
    assert late.wait_for("seamqc/st1/stats").retain
    assert late.on("seamqc/st1/alert") == []

    pub.stop()
    assert not pub.connected
    assert live.wait_for("seamqc/st1/status", lambda m: m.text == "offline").qos == 1
    # plain mosquitto_sub (what a shell/Node-RED user sees): the retained status is now offline
    lines = mosquitto_sub(mqtt_broker, "seamqc/st1/status", count=1, timeout=5)
    assert lines == ["seamqc/st1/status 1 offline"]


def test_alerts_from_a_previous_run_are_sent_first_and_in_order(tmp_path, mqtt_broker, mqtt_subscriber, mqtt_publisher):
    ob = Outbox(tmp_path / "outbox.sqlite")
    for i in range(30):  # what an earlier run left behind (broker down, then the daemon restarted)
        ob.put(f"evt-{i:04d}", "seamqc/st1/alert", encode(alert_payload(i)))
    sub = mqtt_subscriber(mqtt_broker, "seamqc/st1/alert")
    pub = mqtt_publisher(mqtt_broker, outbox=ob)
    for i in range(30, 60):
        pub.alert(alert_payload(i))
    msgs = sub.wait_count("seamqc/st1/alert", 60, timeout=20)
    assert [m.json()["event_id"] for m in msgs] == [f"evt-{i:04d}" for i in range(60)]
    assert pub.flush(10) and ob.depth() == 0
    pub.stop()
    ob.close()


def test_start_never_blocks_and_alerts_wait_in_the_outbox(tmp_path, mqtt_publisher):
    for host, port in (("no-such-host.invalid", 1883), ("127.0.0.1", free_port())):
        ob = Outbox(tmp_path / f"{port}.sqlite")
        pub = mqtt_publisher(None, outbox=ob, host=host, port=port)  # returns at once
        assert not pub.connected
        pub.alert(alert_payload(1))
        pub.alert(alert_payload(2))
        assert pub.outbox_depth == 2
        assert pub.stats({"fps": 1.0}) is False  # stats are skipped while disconnected
        pub.stop(timeout=1.0)
        assert [it.event_id for it in ob.pending()] == ["evt-0001", "evt-0002"]  # kept for the next run
        ob.close()


def test_connection_problems_are_logged_once_not_per_retry(mqtt_publisher, caplog):
    log = logging.getLogger("test.publish.once")
    caplog.set_level(logging.DEBUG, logger="test.publish.once")
    pub = mqtt_publisher(
        None, start=False, log=log, host="127.0.0.1", port=free_port(), reconnect_min_s=0.02, reconnect_max_s=0.05
    )
    attempts = []
    orig = pub._client.on_connect_fail

    def counting(c, u):
        attempts.append(1)
        orig(c, u)

    pub._client.on_connect_fail = counting
    pub.start()
    wait_until(lambda: len(attempts) >= 4, what="4 connection attempts")
    pub.stop(timeout=0.5)
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1, [r.getMessage() for r in caplog.records]
    assert "ConnectionRefusedError" in unreachable[0].getMessage()
    assert unreachable[0].levelno == logging.WARNING


def test_disabled_mqtt_is_an_outbox_only_sink_delivered_later(tmp_path, mqtt_broker, mqtt_subscriber):
    ob = Outbox(tmp_path / "outbox.sqlite")
    off = Publisher(mqtt_config(mqtt_broker, enabled=False), "st1", ob).start()
    assert off.alert(alert_payload(7)) == "evt-0007"
    assert not off.connected and off.stats({"fps": 1}) is False
    off.stop()
    assert ob.depth() == 1
    assert "seamqc-st1" not in mqtt_broker.log_text()  # it never connected

    sub = mqtt_subscriber(mqtt_broker, "seamqc/st1/alert")
    on = Publisher(mqtt_config(mqtt_broker), "st1", ob).start()
    assert sub.wait_for("seamqc/st1/alert").json()["event_id"] == "evt-0007"
    assert on.flush(10) and ob.depth() == 0
    on.stop()
    ob.close()


def test_alert_without_event_id_gets_one_and_keeps_it(mqtt_broker, mqtt_subscriber, mqtt_publisher):
    sub = mqtt_subscriber(mqtt_broker, "seamqc/st1/alert")
    pub = mqtt_publisher(mqtt_broker)
    payload = {"labels": ["break"], "frame": 3}
    ev = pub.alert(payload)
    assert ev and "event_id" not in payload  # the caller's dict is not modified
    got = sub.wait_for("seamqc/st1/alert").json()
    assert got["event_id"] == ev and got["station"] == "st1"


def test_alerts_from_many_threads_are_all_delivered_once(mqtt_broker, mqtt_subscriber, mqtt_publisher):
    sub = mqtt_subscriber(mqtt_broker, "seamqc/st1/alert")
    pub = mqtt_publisher(mqtt_broker, max_inflight=5)

    def produce(t: int) -> None:
        for i in range(50):
            pub.alert({"event_id": f"t{t}-{i:02d}", "i": i})

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    msgs = sub.wait_count("seamqc/st1/alert", 200, timeout=20)
    ids = [m.json()["event_id"] for m in msgs]
    assert sorted(ids) == sorted(f"t{t}-{i:02d}" for t in range(4) for i in range(50))
    for t in range(4):  # each producer's order is kept on the wire
        mine = [e for e in ids if e.startswith(f"t{t}-")]
        assert mine == sorted(mine)
    assert pub.flush(10) and pub.outbox_depth == 0


# -- credentials and TLS configuration errors (the TLS handshake itself is in test_tls.py) ---------


def test_password_sources_and_errors(tmp_path, monkeypatch):
    pw = tmp_path / "pw"
    pw.write_text("s3cret-Pa55\n")
    assert read_password(mqtt_config(username="u", password_file=pw)) == "s3cret-Pa55"
    with pytest.raises(ConfigError, match=r"^mqtt.password_file: .*/missing not found$"):
        read_password(mqtt_config(username="u", password_file=tmp_path / "missing"))
    with pytest.raises(ConfigError, match="mqtt.username"):  # config validation refuses it too
        read_password(mqtt_config().model_copy(update={"password_file": pw}))
    with pytest.raises(ConfigError, match=r"^mqtt.password_file: .* is not readable"):
        read_password(mqtt_config(username="u", password_file=tmp_path))  # a directory
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_password(mqtt_config(username="u", password_file=tmp_path / "empty"))
    # systemd LoadCredential=mqtt-password:... puts it in $CREDENTIALS_DIRECTORY
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_password(mqtt_config(username="u")) == "from-systemd"
    assert read_password(mqtt_config()) is None  # no user name: anonymous


def test_missing_tls_files_are_config_errors_naming_the_key(tmp_path):
    from edge.config import MqttConfig, TlsConfig

    ob = Outbox(tmp_path / "o.sqlite")
    ca = tmp_path / "nope" / "ca.pem"
    cfg = MqttConfig.model_construct(
        **{**mqtt_config().model_dump(), "tls": TlsConfig.model_construct(ca=ca, cert=None, key=None, insecure=False)}
    )
    with pytest.raises(ConfigError) as ei:
        Publisher(cfg, "st1", ob)
    assert str(ei.value) == f"mqtt.tls.ca: {ca} not found"
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    cfg = MqttConfig.model_construct(
        **{
            **mqtt_config().model_dump(),
            "tls": TlsConfig.model_construct(ca=garbage, cert=None, key=None, insecure=False),
        }
    )
    with pytest.raises(ConfigError, match="mqtt.tls.ca"):
        Publisher(cfg, "st1", ob)
    ob.close()


def test_redact_filter_hides_secrets_in_messages_and_args(caplog):
    log = logging.getLogger("test.publish.redact")
    caplog.set_level(logging.DEBUG, logger="test.publish.redact")
    f = RedactFilter("hunter2")
    log.addFilter(f)
    try:
        log.info("connecting with password %s to %s", "hunter2", "broker")
        log.warning("inline hunter2 here")
        log.info("nothing secret %d", 5)
    finally:
        log.removeFilter(f)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "hunter2" not in text and text.count("***") == 2
    assert "nothing secret 5" in text and "broker" in text


def test_encode_is_compact_utf8_json():
    data = encode({"a": np.float32(0.5), "b": np.arange(3), "c": "é", "p": None})
    assert data == '{"a":0.5,"b":[0,1,2],"c":"é","p":null}'.encode()
    assert json.loads(data)["b"] == [0, 1, 2]


def test_alert_over_the_brokers_max_packet_size_is_trimmed_or_kept_and_the_rest_pass(
    mqtt_broker_factory, mqtt_subscriber, mqtt_publisher, caplog
):
    """Issue 12 #11: an oversize alert made the broker drop the connection on every resend, for ever."""
    broker = mqtt_broker_factory(global_lines=["max_packet_size 600"])
    sub = mqtt_subscriber(broker, "seamqc/st1/#")
    log = logging.getLogger("test.publish.maxpacket")
    caplog.set_level(logging.INFO, logger="test.publish.maxpacket")
    pub = mqtt_publisher(broker, log=log)
    sub.wait_for("seamqc/st1/status", lambda m: m.text == "online")
    big_extra = {**alert_payload(2), "track": "x" * 2000, "heatmap": "/var/lib/seam-qc/" + "h" * 300}
    big_core = {**alert_payload(3), "scores": {f"label-{i:03d}": 0.5 for i in range(100)}}
    for p in (alert_payload(1), big_extra, big_core, alert_payload(4)):
        pub.alert(p)
    msgs = sub.wait_count("seamqc/st1/alert", 3, timeout=15)
    assert [m.json()["event_id"] for m in msgs] == ["evt-0001", "evt-0002", "evt-0004"]
    trimmed = msgs[1].json()
    assert trimmed["trimmed"] is True and "track" not in trimmed and trimmed["heatmap"] is None
    assert trimmed["scores"] == pytest.approx(msgs[0].json()["scores"]) and len(msgs[1].payload) < 600
    wait_until(lambda: pub.outbox_depth == 1, what="evt-0002 and evt-0004 acknowledged")
    assert [it.event_id for it in pub.outbox.pending()] == ["evt-0003"] and pub.oversize == 1
    assert pub.max_packet == 600  # MQTT 5 CONNACK MaximumPacketSize
    assert pub.stats({"big": "s" * 1000}) is False  # stats over the limit: skipped too
    assert pub.stats({"fps": 1.0}) is True
    pub.alert(alert_payload(5))  # later alerts are not blocked
    sub.wait_for("seamqc/st1/alert", lambda m: m.json()["event_id"] == "evt-0005")
    assert pub.flush(2) is False  # only the kept one is left: no wait
    pub.stop(timeout=3.0)
    assert [it.event_id for it in pub.outbox.pending()] == ["evt-0003"]  # kept for a bigger limit
    sub.wait_for("seamqc/st1/status", lambda m: m.text == "offline")
    # one connection all along: no disconnect for an oversize packet, no status flapping
    assert "oversize packet" not in broker.log_text()
    assert [m.text for m in sub.on("seamqc/st1/status")] == ["online", "offline"]
    lines = [r.getMessage() for r in caplog.records if "maximum packet size" in r.getMessage()]
    assert len(lines) == 3, lines  # trimmed, kept, stats: once each
    assert sum("evt-0003" in line and "kept in the outbox" in line for line in lines) == 1


def test_empty_or_bad_host_at_run_time_is_a_config_error_not_a_traceback(tmp_path):
    """Issue 12 #5: paho raised a bare ValueError at connect for ``mqtt.host: ''``."""
    from edge.config import MqttConfig

    ob = Outbox(tmp_path / "outbox.sqlite")
    for bad, key in (
        ({"host": ""}, "mqtt.host"),
        ({"host": " "}, "mqtt.host"),
        ({"host": "a b"}, "mqtt.host"),
        ({"port": 0}, "mqtt.port"),
    ):
        cfg = MqttConfig.model_construct(**{**MqttConfig().model_dump(), **bad})  # past config validation
        with pytest.raises(ConfigError, match=f"^{key}: "):
            Publisher(cfg, "st1", ob)
    ob.close()


def test_online_and_model_state_go_out_only_after_the_sessions_subscriptions(
    mqtt_broker_factory, mqtt_subscriber, mqtt_publisher
):
    """A fleet tool that sees ``online`` or ``model/state`` may publish on ``model/set`` at once
    (``convert deploy`` does): both must reach the broker behind the SUBSCRIBE of that connection, or
    the broker drops the rollout. paho sends a publish made while CONNECT is in flight right behind
    it (before ``on_connect`` can subscribe), so the publisher holds the newest state until its
    connect hook has subscribed, and subscribes before ``online`` — at start, and again after a
    broker restart. The order is asserted on the real client's calls (a spy that calls through),
    and a message on ``model/set`` then reaches the station's callback."""
    broker = mqtt_broker_factory(start=False)
    pub = mqtt_publisher(broker, station="st1", start=False)
    calls: list[tuple[str, str]] = []
    client = pub._client
    real_sub, real_pub = client.subscribe, client.publish

    def subscribe(topic, *a, **kw):
        calls.append(("subscribe", topic))
        return real_sub(topic, *a, **kw)

    def publish(topic, payload=None, *a, **kw):
        if topic.endswith("/model/state"):
            calls.append(("state", json.loads(payload)["state"]))
        elif topic.endswith("/status"):
            calls.append(("status", payload))
        return real_pub(topic, payload, *a, **kw)

    client.subscribe, client.publish = subscribe, publish
    got: list[bytes] = []
    assert pub.listen("seamqc/st1/model/set", lambda c, u, m: got.append(m.payload))
    pub.start()
    pub.model_state({"state": "loading"})  # the broker is down: held, not queued in paho
    pub.model_state({"state": "active"})  # the newest wins
    assert calls == []
    broker.start()
    sub = mqtt_subscriber(broker, "seamqc/st1/model/state")
    assert sub.wait_for("seamqc/st1/model/state", timeout=20).json()["state"] == "active"
    assert calls == [("subscribe", "seamqc/st1/model/set"), ("status", "online"), ("state", "active")]
    assert [m.json()["state"] for m in sub.on("seamqc/st1/model/state")] == ["active"]  # "loading" never sent

    pub.model_state({"state": "failed: x"})  # connected and subscribed: out at once
    assert calls[-1] == ("state", "failed: x")
    sub.wait_for("seamqc/st1/model/state", lambda m: m.json()["state"] == "failed: x")

    # a broker restart: the state published meanwhile follows the new connection's SUBSCRIBE
    broker.stop()
    wait_until(lambda: not pub.connected, timeout=10)
    del calls[:]
    pub.model_state({"state": "active"})
    broker.start()
    wait_until(lambda: ("state", "active") in calls, timeout=20)
    assert calls == [("subscribe", "seamqc/st1/model/set"), ("status", "online"), ("state", "active")]

    # end to end: a message on model/set reaches the callback
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.publish("seamqc/st1/model/set", b"hello", qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()
    wait_until(lambda: got == [b"hello"], timeout=10)
    pub.stop()
