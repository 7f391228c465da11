"""A broker whose ACL refuses the alert topic, against a real Mosquitto with a password file and ACL.

MQTT 3.1.1 cannot report such a refusal (the broker acknowledges and drops the publish), which is
why the publisher speaks MQTT 5 by default: the refusal comes back in the PUBACK, the alert stays in
the outbox, one error line says why, and the alert is delivered once the ACL is fixed.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import threading

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge.config import MqttConfig
from edge.outbox import Outbox
from edge.publish import connack_hint
from tests.support.mqtt import alert_payload
from tests.support.wait import wait_until

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd (mosquitto package)"
)

USER, PASSWORD = "line3", "s3am-qc"
DASH, DASH_PASSWORD = "dashboard", "d4sh"  # the factory dashboard: reads everything
DASH_ACL = f"user {DASH}\ntopic read seamqc/#\n"
DENY_ALERTS = f"user {USER}\ntopic readwrite seamqc/+/status\ntopic readwrite seamqc/+/stats\n{DASH_ACL}"
ALLOW_ALL = f"user {USER}\ntopic readwrite seamqc/#\n{DASH_ACL}"


def returns_within(guard_s: float, fn, *args):
    """``fn(*args)`` in a thread; its result. Fails if it has not returned after ``guard_s`` (a hang
    guard: the calls tested here are given an hour, so returning at all shows they did not wait it out)."""
    out: dict = {}

    def call() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(guard_s)
    assert not t.is_alive(), f"{fn.__name__}{args} still waiting after {guard_s} s: it waits for its timeout"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def acl_broker(tmp_path, mqtt_broker_factory):
    d = tmp_path / "acl"
    d.mkdir()
    passwords = d / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), USER, PASSWORD], check=True, capture_output=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), DASH, DASH_PASSWORD], check=True, capture_output=True)
    acl = d / "acl"
    acl.write_text(DENY_ALERTS)
    (d / "pw").write_text(PASSWORD + "\n")
    broker = mqtt_broker_factory(global_lines=[f"password_file {passwords}", f"acl_file {acl}"], anonymous=False)
    return broker, acl, d / "pw"


def test_refused_alerts_stay_in_the_outbox_and_are_delivered_once_the_acl_is_fixed(
    acl_broker, mqtt_subscriber, mqtt_publisher, tmp_path, caplog
):
    broker, acl, pw = acl_broker
    sub = mqtt_subscriber(broker, "seamqc/st1/alert", username=DASH, password=DASH_PASSWORD)
    sub.wait_subscribed()
    log = logging.getLogger("test.acl")
    caplog.set_level(logging.INFO, logger="test.acl")
    ob = Outbox(tmp_path / "outbox.sqlite")
    pub = mqtt_publisher(
        broker, outbox=ob, log=log, username=USER, password_file=pw, reconnect_min_s=0.1, reconnect_max_s=1.0
    )
    assert pub.v5
    wait_until(lambda: pub.connected, what="connect")
    for i in range(3):
        pub.alert(alert_payload(i))
    wait_until(lambda: pub.refused >= 3, what="three refusals")
    assert ob.depth() == 3 and pub.delivered == 0
    refusals = [r.getMessage() for r in caplog.records if "refused alert" in r.getMessage()]
    assert len(refusals) == 1, refusals  # one line, not one per alert or per retry
    assert "evt-0000 on seamqc/st1/alert: Not authorized" in refusals[0]
    assert "ACL" in refusals[0] and "offered again every 1 s" in refusals[0]
    # nothing delivered; returns as soon as only refused alerts are left, long before its hour is up
    assert returns_within(60, pub.flush, 3600.0) is False
    assert sub.on("seamqc/st1/alert") == []

    # the broker's admin fixes the ACL; Mosquitto reloads it on SIGHUP
    acl.write_text(ALLOW_ALL)
    broker.proc.send_signal(signal.SIGHUP)
    msgs = sub.wait_count("seamqc/st1/alert", 3, timeout=15)
    assert [m.json()["event_id"] for m in msgs] == ["evt-0000", "evt-0001", "evt-0002"]  # in order
    assert pub.flush(5) and ob.depth() == 0 and pub.delivered == 3
    assert any("accepts alerts again" in r.getMessage() for r in caplog.records)
    pub.stop()
    ob.close()


def test_stop_with_refused_alerts_is_prompt_and_keeps_them(acl_broker, mqtt_publisher, tmp_path):
    broker, _, pw = acl_broker
    ob = Outbox(tmp_path / "outbox.sqlite")
    pub = mqtt_publisher(broker, outbox=ob, username=USER, password_file=pw, reconnect_max_s=30)
    wait_until(lambda: pub.connected, what="connect")
    pub.alert(alert_payload(7))
    wait_until(lambda: pub.refused >= 1, what="a refusal")
    returns_within(60, pub.stop, 3600.0)  # does not wait its timeout for alerts the broker refuses
    assert [it.event_id for it in ob.pending()] == ["evt-0007"]
    ob.close()


def test_mqtt_311_cannot_see_the_refusal(acl_broker, mqtt_publisher, tmp_path):
    """Why 5 is the default: a 3.1.1 broker acknowledges the refused publish, and it is gone."""
    broker, _, pw = acl_broker
    ob = Outbox(tmp_path / "outbox.sqlite")
    pub = mqtt_publisher(broker, outbox=ob, username=USER, password_file=pw, protocol="3.1.1")
    assert not pub.v5
    pub.alert(alert_payload(1))
    assert pub.flush(10) and ob.depth() == 0 and pub.refused == 0 and pub.delivered == 1
    pub.stop()
    ob.close()


def test_protocol_setting_and_connack_hints():
    assert MqttConfig().protocol == "5"
    assert MqttConfig(protocol=5).protocol == "5" and MqttConfig(protocol="3.1.1").protocol == "3.1.1"
    with pytest.raises(ValueError):
        MqttConfig(protocol="4")
    unsupported = ReasonCode(PacketTypes.CONNACK, identifier=0x84)
    assert "set mqtt.protocol: 3.1.1" in connack_hint(unsupported, v5=True)
    assert connack_hint(unsupported, v5=False) == ""
    assert "mqtt.username" in connack_hint(ReasonCode(PacketTypes.CONNACK, identifier=0x86), v5=True)
    assert connack_hint(ReasonCode(PacketTypes.CONNACK, identifier=0x88), v5=True) == ""
