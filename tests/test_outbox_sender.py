"""edge.outbox_sender against a fake paho client: delivery rules without a broker or a clock.

The fake stands in for the network only: it records what the sender publishes and lets the test
play paho's network thread (CONNACK, PUBACK, a dropped connection) by calling the callbacks the
sender registered, with paho's own reason codes and properties. The outbox is the real SQLite
one. Most tests drive the sender with ``step()`` (what its thread does on each wake-up), so the
order of events is the test's, not the scheduler's; the last ones run the real thread.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.config import MqttConfig
from edge.outbox import Outbox
from edge.outbox_sender import OutboxSender, encode, publish_size

STATUS, ALERT = "seamqc/st1/status", "seamqc/st1/alert"


@dataclass
class Sent:
    mid: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class FakeInfo:
    """What ``Client.publish`` returns: ``rc``, ``mid``, and whether the PUBACK came."""

    def __init__(self, client: FakeClient, mid: int, rc: int):
        self.client, self.mid, self.rc = client, mid, rc

    def is_published(self) -> bool:
        return self.mid in self.client.acked

    def wait_for_publish(self, timeout: float | None = None) -> None:
        if self.client.auto_ack_status:
            self.client.puback(self.mid)


@dataclass
class FakeClient:
    """The paho methods the sender calls, plus the network thread's side (``connack``, ``puback``, ``drop``)."""

    sent: list[Sent] = field(default_factory=list)
    acked: set[int] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    next_rc: int = mqtt.MQTT_ERR_SUCCESS  # what the next publish returns (NO_CONN, QUEUE_SIZE)
    auto_ack_status: bool = False  # acknowledge `offline` as soon as stop() waits for it
    auto_ack: str | None = None  # answer each alert at once with this PUBACK reason
    _mid: int = 0
    # the callbacks the sender registers (paho's signatures); the network-thread methods call them
    on_log: Any = None
    on_connect: Any = None
    on_connect_fail: Any = None
    on_disconnect: Any = None
    on_publish: Any = None

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> FakeInfo:
        self._mid += 1
        data = payload.encode() if isinstance(payload, str) else payload
        self.sent.append(Sent(self._mid, topic, data, qos, retain))
        rc, self.next_rc = self.next_rc, mqtt.MQTT_ERR_SUCCESS
        if self.auto_ack is not None and topic == ALERT:
            self.puback(self._mid, self.auto_ack)
        return FakeInfo(self, self._mid, rc)

    def connect_async(self, host: str, port: int, keepalive: int = 60, **kw: object) -> None:
        self.calls.append(f"connect_async {host}:{port}")

    def loop_start(self) -> None:
        self.calls.append("loop_start")

    def loop_stop(self) -> None:
        self.calls.append("loop_stop")

    def disconnect(self) -> None:
        self.calls.append("disconnect")
        self.drop()

    # -- the network thread's side
    def connack(self, max_packet: int | None = None) -> int:
        """A successful CONNACK; returns the mid of the `online` the sender published in on_connect."""
        props = Properties(PacketTypes.CONNACK)
        if max_packet is not None:
            props.MaximumPacketSize = max_packet
        self.on_connect(self, None, None, ReasonCode(PacketTypes.CONNACK, "Success"), props)
        online = self.sent[-1]
        assert (online.topic, online.payload, online.qos, online.retain) == (STATUS, b"online", 1, True)
        return online.mid

    def puback(self, mid: int, reason: str = "Success") -> None:
        self.acked.add(mid)
        self.on_publish(self, None, mid, ReasonCode(PacketTypes.PUBACK, reason), Properties(PacketTypes.PUBACK))

    def drop(self) -> None:
        self.on_disconnect(self, None, None, ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"), None)

    def alerts(self) -> list[Sent]:
        return [s for s in self.sent if s.topic == ALERT]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def alert(i: int, **extra: object) -> bytes:
    return encode({"event_id": f"evt-{i:04d}", "station": "st1", "labels": ["error"], "heatmap": None, **extra})


@pytest.fixture
def outbox(tmp_path):
    ob = Outbox(tmp_path / "outbox.sqlite")
    yield ob
    ob.close()


def make(outbox: Outbox, clock: Clock | None = None, **cfg: object) -> tuple[OutboxSender, FakeClient]:
    fake = FakeClient()
    base: dict[str, object] = {"max_inflight": 3, "reconnect_min_s": 0.1, "reconnect_max_s": 5.0}
    sender = OutboxSender(
        fake,  # type: ignore[arg-type]  # a fake: only the paho methods the sender calls
        outbox,
        MqttConfig(**{**base, **cfg}),
        STATUS,
        client_id="seamqc-st1",
        v5=True,
        log=logging.getLogger("test.sender"),
        clock=clock or Clock(),
    )
    return sender, fake


def put(outbox: Outbox, *ids: int, **extra: object) -> None:
    for i in ids:
        outbox.put(f"evt-{i:04d}", ALERT, alert(i, **extra))


def ids(sent: list[Sent]) -> list[str]:
    return [json.loads(s.payload)["event_id"] for s in sent]


def pending(outbox: Outbox) -> list[str]:
    return [it.event_id for it in outbox.pending()]


def connect(sender: OutboxSender, fake: FakeClient, max_packet: int | None = None) -> None:
    fake.puback(fake.connack(max_packet))  # `online` acknowledged: the sender may publish alerts
    sender.step()
    assert sender.ready()


def test_an_acknowledged_alert_leaves_the_outbox_an_unacknowledged_one_stays(outbox):
    sender, fake = make(outbox)
    connect(sender, fake)
    put(outbox, 1, 2, 3)
    sender.step()
    sent = fake.alerts()
    assert ids(sent) == ["evt-0001", "evt-0002", "evt-0003"]  # outbox order
    assert all(s.qos == 1 and not s.retain for s in sent)
    assert sent[0].payload == alert(1)  # byte for byte what was committed
    assert sender.inflight == 3

    fake.puback(sent[0].mid)
    fake.puback(sent[2].mid)
    sender.step()
    assert pending(outbox) == ["evt-0002"]  # no PUBACK: kept
    assert (sender.delivered, sender.inflight) == (2, 1)

    sender.step()  # waiting is not a reason to send it again: it is paho's (it re-sends on reconnect)
    assert ids(fake.alerts()) == ["evt-0001", "evt-0002", "evt-0003"]
    fake.puback(sent[1].mid)
    sender.step()
    assert pending(outbox) == [] and sender.delivered == 3 and sender.inflight == 0


def test_nothing_is_sent_before_online_is_acknowledged(outbox):
    sender, fake = make(outbox)
    put(outbox, 1)
    sender.step()
    assert fake.sent == []  # not connected
    online = fake.connack()
    sender.step()
    assert fake.alerts() == [] and not sender.ready()  # paho's re-sends of the last session go first
    fake.puback(online)
    sender.step()
    assert ids(fake.alerts()) == ["evt-0001"]


def test_the_window_bounds_what_is_in_flight(outbox):
    sender, fake = make(outbox, max_inflight=2)
    connect(sender, fake)
    put(outbox, 1, 2, 3, 4, 5)
    sender.step()
    assert ids(fake.alerts()) == ["evt-0001", "evt-0002"]
    fake.puback(fake.alerts()[0].mid)
    sender.step()
    assert ids(fake.alerts()) == ["evt-0001", "evt-0002", "evt-0003"]
    assert pending(outbox) == ["evt-0002", "evt-0003", "evt-0004", "evt-0005"]


def test_after_a_reconnect_paho_resends_what_was_in_flight_and_the_sender_the_rest_in_order(outbox):
    sender, fake = make(outbox, max_inflight=3)
    connect(sender, fake)
    put(outbox, 1, 2, 3, 4, 5)
    sender.step()
    first = fake.alerts()
    assert ids(first) == ["evt-0001", "evt-0002", "evt-0003"]

    fake.drop()
    assert not sender.ready()  # at once, before the sender thread even looks
    put(outbox, 6)
    sender.step()
    assert len(fake.alerts()) == 3  # nothing published while disconnected
    assert pending(outbox) == [f"evt-{i:04d}" for i in range(1, 7)]  # the broker never acknowledged them

    online = fake.connack()
    sender.step()
    assert len(fake.alerts()) == 3  # not before `online` is acknowledged
    fake.puback(online)
    sender.step()
    assert len(fake.alerts()) == 3  # 1-3 are still paho's (it re-sends them itself): no duplicates
    for s in first:  # the broker acknowledges paho's re-sends
        fake.puback(s.mid)
    sender.step()
    assert ids(fake.alerts()) == [f"evt-{i:04d}" for i in range(1, 7)]  # each once, in order
    for s in fake.alerts()[3:]:
        fake.puback(s.mid)
    sender.step()
    assert pending(outbox) == [] and sender.delivered == 6


def test_a_reconnect_forgets_nothing_sent_while_the_link_was_down(outbox):
    """``publish`` returns NO_CONN when the connection dropped under it: paho keeps that message
    and sends it after the reconnect, so the sender counts it as in flight and does not send it again."""
    sender, fake = make(outbox)
    connect(sender, fake)
    put(outbox, 1)
    fake.next_rc = mqtt.MQTT_ERR_NO_CONN
    sender.step()
    assert sender.inflight == 1
    fake.drop()
    fake.puback(fake.connack())
    sender.step()
    assert ids(fake.alerts()) == ["evt-0001"]
    fake.puback(fake.alerts()[0].mid)
    sender.step()
    assert pending(outbox) == []


def test_a_full_paho_queue_stops_the_round_and_the_alert_goes_later(outbox):
    sender, fake = make(outbox)
    connect(sender, fake)
    put(outbox, 1, 2)
    fake.next_rc = mqtt.MQTT_ERR_QUEUE_SIZE
    sender.step()
    assert ids(fake.alerts()) == ["evt-0001"] and sender.inflight == 0  # refused by paho: not in flight
    sender.step()
    assert ids(fake.alerts()) == ["evt-0001", "evt-0001", "evt-0002"]


def test_an_alert_over_the_max_packet_size_is_trimmed_or_kept_and_later_ones_go_on(outbox, caplog):
    caplog.set_level(logging.WARNING, logger="test.sender")
    sender, fake = make(outbox, max_inflight=10)
    connect(sender, fake, max_packet=600)
    assert sender.max_packet == 600
    put(outbox, 1)
    put(outbox, 2, track="x" * 2000, heatmap="/var/lib/seam-qc/" + "h" * 700)  # big outside the core
    put(outbox, 3, scores={f"label-{i:03d}": 0.5 for i in range(100)})  # the core itself is too big
    put(outbox, 4)
    sender.step()
    sent = fake.alerts()
    assert ids(sent) == ["evt-0001", "evt-0002", "evt-0004"]
    trimmed = json.loads(sent[1].payload)
    assert trimmed["trimmed"] is True and "track" not in trimmed and trimmed["heatmap"] is None
    assert all(publish_size(ALERT, s.payload, 1, True) <= 600 for s in sent)
    assert (sender.oversize, sender.kept) == (1, 1)  # what stats report as mqtt_oversize

    for s in sent:
        fake.puback(s.mid)
    sender.step()
    assert pending(outbox) == ["evt-0003"]  # kept for a broker with a bigger limit
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "evt-0002" in lines[0] and "evt-0003" in lines[1]  # once each

    fake.drop()  # the next broker takes bigger packets: the kept alert goes out
    fake.puback(fake.connack(max_packet=100_000))
    sender.step()
    assert ids(fake.alerts())[-1] == "evt-0003" and sender.oversize == 0
    assert fake.alerts()[-1].payload == outbox.pending()[0].payload  # whole, not trimmed


def test_a_refused_alert_stays_and_is_offered_again_after_reconnect_max_s(outbox, caplog):
    caplog.set_level(logging.INFO, logger="test.sender")
    clock = Clock()
    sender, fake = make(outbox, clock, reconnect_max_s=5.0)
    connect(sender, fake)
    put(outbox, 1, 2)
    sender.step()
    for s in fake.alerts():
        fake.puback(s.mid, "Not authorized")
    sender.step()
    assert pending(outbox) == ["evt-0001", "evt-0002"]
    assert (sender.refused, sender.delivered, sender.kept, sender.inflight) == (2, 0, 2, 0)
    refusals = [r.getMessage() for r in caplog.records if "refused alert" in r.getMessage()]
    assert len(refusals) == 1 and "evt-0001 on seamqc/st1/alert: Not authorized" in refusals[0]

    clock.now += 4.9
    sender.step()
    assert len(fake.alerts()) == 2  # not yet
    clock.now += 0.2
    sender.step()
    again = fake.alerts()[2:]
    assert ids(again) == ["evt-0001", "evt-0002"]  # offered again, in order
    for s in again:
        fake.puback(s.mid)
    sender.step()
    assert pending(outbox) == [] and sender.delivered == 2 and sender.kept == 0
    assert any("accepts alerts again" in r.getMessage() for r in caplog.records)


def test_flush_and_stop_with_the_sender_thread(outbox):
    """The real thread: flush waits for the PUBACKs; stop publishes `offline` and keeps what is unacknowledged."""
    sender, fake = make(outbox)
    fake.auto_ack_status = True
    sender.start()
    assert fake.calls == ["connect_async localhost:1883", "loop_start"]
    fake.puback(fake.connack())
    fake.auto_ack = "Success"  # the broker acknowledges each alert as it arrives
    put(outbox, 1, 2)
    sender.wake()
    assert sender.flush(10) is True and pending(outbox) == [] and sender.delivered == 2
    assert ids(fake.alerts()) == ["evt-0001", "evt-0002"]

    fake.auto_ack = None  # the broker stops answering
    put(outbox, 3)
    sender.wake()
    assert sender.flush(0.2) is False
    sender.stop(timeout=0.5)
    offline = [s for s in fake.sent if s.topic == STATUS][-1]
    assert (offline.payload, offline.qos, offline.retain) == (b"offline", 1, True)
    assert fake.calls[-2:] == ["disconnect", "loop_stop"] and not sender.connected
    assert pending(outbox) == ["evt-0003"]  # no PUBACK: kept for the next start


def test_flush_gives_up_when_only_refused_alerts_are_left(outbox):
    sender, fake = make(outbox, reconnect_max_s=3600.0)
    sender.start()
    fake.puback(fake.connack())
    fake.auto_ack = "Not authorized"
    put(outbox, 1)
    sender.wake()
    assert sender.flush(10) is False
    assert sender.only_refused_left() and (sender.refused, sender.kept) == (1, 1)
    sender.stop(timeout=0.5)
    assert pending(outbox) == ["evt-0001"]
