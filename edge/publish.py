"""MQTT publisher with a durable outbox: alerts survive broker outages and daemon restarts.

Contract (ARCHITECTURE.md §6): ``<prefix>/<station>/status`` (QoS 1, retained: ``online`` on every connect,
``offline`` as last will and on clean stop), ``/alert`` (QoS 1, JSON, written to the outbox first and
deleted only in ``on_publish`` for its message id), ``/stats`` (QoS 0, retained, skipped offline).

``Publisher`` is the daemon's facade over two parts:

* ``edge.mqtt_client.make_client``: the paho client, configured once (MQTT 5 / 3.1.1, TLS, user
  name and password file, the ``offline`` last will, paho's backoff and queue limits, the log
  redaction of the password);
* ``edge.outbox_sender.OutboxSender``: the thread that drains the outbox through that client, in
  order, deleting an alert on its PUBACK (refusals, packet-size trimming, reconnect re-sends).
  Its docstring says which thread writes which field.

What the facade adds is only what runs in the caller's thread: ``alert()`` commits to the outbox
and wakes the sender; ``stats()`` publishes QoS 0 directly (paho's ``publish`` is thread-safe and a
QoS 0 message leaves no acknowledgement to track); ``flush()``/``stop()`` wait on the sender.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.errors import ConfigError
from edge.homeassistant import Announcer, Device, discovery
from edge.mqtt_client import (
    CREDENTIAL_NAME,
    ClientSetup,
    RedactFilter,
    connack_hint,
    make_client,
    read_password,
    resolve_problem,
)
from edge.outbox import Outbox
from edge.outbox_sender import ALERT_CORE, OutboxSender, encode, publish_size, shrink_alert

if TYPE_CHECKING:  # the config module is only needed for type hints
    from edge.config import MqttConfig

__all__ = [
    "ALERT_CORE",
    "CREDENTIAL_NAME",
    "Publisher",
    "RedactFilter",
    "Topics",
    "connack_hint",
    "encode",
    "publish_size",
    "read_password",
    "resolve_problem",
    "shrink_alert",
    "topics",
]


@dataclass(frozen=True)
class Topics:
    status: str
    alert: str
    stats: str
    defect: str
    heatmap: str
    health: str
    feedback: str  # in: operator verdicts and missed-defect reports (edge.feedback)
    sample: str  # out: training samples (edge.samples)


def topics(prefix: str, station: str) -> Topics:
    """The topics of a station: ``<prefix>/<station>/status|alert|stats|defect|heatmap|health|feedback|sample``."""
    for name, value in (("mqtt.prefix", prefix), ("station", station)):
        if not value or any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            raise ConfigError(f"{name}: {value!r} is not a valid MQTT topic part (no '+', '#', empty or edge '/')")
    if "/" in station:
        raise ConfigError(f"station: {station!r} must not contain '/'")
    base = f"{prefix}/{station}"
    return Topics(
        f"{base}/status",
        f"{base}/alert",
        f"{base}/stats",
        f"{base}/defect",
        f"{base}/heatmap",
        f"{base}/health",
        f"{base}/feedback",
        f"{base}/sample",
    )


class Publisher:
    """Publishes a station's status, alerts and stats; alerts go through the durable ``Outbox``.

    ``start()`` never blocks (broker down or unknown host is fine: paho retries with backoff).
    With ``cfg.enabled`` false the publisher is an outbox-only sink.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        station: str,
        outbox: Outbox,
        log: logging.Logger | None = None,
        device: Device | None = None,
    ):
        self.cfg = cfg
        self.station = station
        self.topics = topics(cfg.prefix, station)
        self.outbox = outbox
        self.log = log or logging.getLogger(__name__)
        self.enabled = bool(cfg.enabled)
        self._setup: ClientSetup | None = None
        self._client: mqtt.Client | None = None
        self._sender: OutboxSender | None = None
        self._said: set[tuple[str, int]] = set()  # (what, limit) already logged by stats()
        self._defect: bool | None = None  # the last state handed to paho for ``/defect``
        self.announcer: Announcer | None = None  # Home Assistant discovery (mqtt.homeassistant)
        self._inbound: list[str] = []  # topics subscribed (QoS 1) on every connect (``listen``)
        self._paused: set[str] = set()  # of those, the ones not subscribed for now (``set_listening``)
        self._inbound_lock = threading.Lock()  # paho's thread (connect, pause) and the samples worker (resume)
        # model/state waits for the session's subscriptions (``model_state``): the latest payload, if held back
        self._subscribed_session = 0  # the sender's session whose inbound topics are subscribed
        self._held_state: bytes | None = None
        self._state_topic = f"{cfg.prefix}/{station}/model/state"
        if self.enabled:
            setup = make_client(cfg, station, self.topics.status, self.log)
            self._setup, self._client = setup, setup.client
            self.client_id, self.v5 = setup.client_id, setup.v5
            if cfg.homeassistant:
                configs = discovery(cfg.homeassistant_prefix, cfg.prefix, station, device)
                self.announcer = Announcer(setup.client, configs, cfg.homeassistant_prefix, self.log)
            self._sender = OutboxSender(
                setup.client,
                outbox,
                cfg,
                self.topics.status,
                client_id=setup.client_id,
                v5=setup.v5,
                log=self.log,
                paho_log=setup.paho_log,
                on_session=self._on_session,
                before_online=self._subscribe,
            )

    def _subscribe(self, client: mqtt.Client) -> None:
        """paho's network thread, on each connect before ``online``: the inbound topics.

        Before ``online`` and ``model/state`` on the same socket, so the broker has the subscriptions
        when a fleet tool that saw either publishes on ``model/set`` (``convert deploy`` does at once).
        """
        with self._inbound_lock:
            for topic in self._inbound:
                if topic not in self._paused:  # a paused topic stays unsubscribed across a reconnect
                    client.subscribe(topic, qos=1)
            if self._sender is not None:  # always: the sender is who calls this hook
                self._subscribed_session = self._sender.session

    def _on_session(self, client: mqtt.Client) -> None:
        """paho's network thread, after each connect's ``online``: discovery, then a held ``model/state``."""
        if self.announcer is not None:
            self.announcer.on_connect(client)
        with self._inbound_lock:
            held, self._held_state = self._held_state, None
            if held is not None:
                client.publish(self._state_topic, held, qos=1, retain=True)

    def listen(self, topic: str, callback: Any) -> bool:
        """Subscribe to ``topic`` (QoS 1) on every connect; paho's network thread calls ``callback``.

        Call before ``start``. The callback must only validate and enqueue (``edge.feedback``): it
        runs in the thread that also carries the alerts' acknowledgements. False when MQTT is off.
        """
        if self._client is None:
            return False
        self._client.message_callback_add(topic, callback)
        self._inbound.append(topic)
        return True

    def set_listening(self, topic: str, on: bool) -> None:
        """Unsubscribe from a ``listen`` topic (``on`` False) or subscribe to it again (the feedback flood breaker).

        Thread-safe (paho 2.x queues the packet). While off, a reconnect does not subscribe it; when
        disconnected, turning it on only clears the mark and the next connect subscribes.
        """
        client = self._client
        if client is None or topic not in self._inbound:
            return
        with self._inbound_lock:
            if on:
                self._paused.discard(topic)
                client.subscribe(topic, qos=1)
            else:
                self._paused.add(topic)
                client.unsubscribe(topic)

    def start(self) -> Publisher:
        """Connect in the background and start the sender; returns at once."""
        if self._sender is None:
            self.log.info(
                "MQTT disabled: alerts are kept in the outbox %s (%d pending)", self.outbox.path, self.outbox.depth()
            )
            return self
        self._sender.start()
        self.defect(False)  # a restart clears a retained ON left by a crash
        return self

    # -- what the sender publishes (read-only here) ----------------------------------------------
    @property
    def connected(self) -> bool:
        return self._sender is not None and self._sender.connected

    @property
    def inflight(self) -> int:
        """Alerts handed to the MQTT client and still waiting for the broker's PUBACK."""
        return self._sender.inflight if self._sender is not None else 0

    @property
    def oversize(self) -> int:
        """Alerts kept in the outbox because they exceed the broker's maximum packet size even trimmed."""
        return self._sender.oversize if self._sender is not None else 0

    @property
    def max_packet(self) -> int | None:
        """The broker's maximum packet size from the last CONNACK (MQTT 5), None when unlimited."""
        return self._sender.max_packet if self._sender is not None else None

    @property
    def refused(self) -> int:
        """PUBACKs with a failure reason code (MQTT 5: ACL, quota), for the stats."""
        return self._sender.refused if self._sender is not None else 0

    @property
    def delivered(self) -> int:
        """Alerts the broker acknowledged (and that left the outbox) since the start."""
        return self._sender.delivered if self._sender is not None else 0

    @property
    def junk(self) -> int:
        """Inbound messages ignored as junk (Home Assistant's status topic), for the stats."""
        return self.announcer.junk if self.announcer is not None else 0

    @property
    def outbox_depth(self) -> int:
        return self.outbox.depth()

    # -- the caller's thread ---------------------------------------------------------------------
    def alert(self, payload: dict[str, Any]) -> str:
        """Commit the alert to the outbox, then hand it to the sender; returns its ``event_id``.

        Raises ``OutboxError`` when it cannot be stored (the daemon must stop loudly).
        """
        if self._sender is not None:
            self._sender.raise_if_failed()
        body = dict(payload)
        event_id = str(body.get("event_id") or uuid.uuid4().hex)
        body["event_id"] = event_id
        body.setdefault("station", self.station)
        self.outbox.put(event_id, self.topics.alert, encode(body))
        if self._sender is not None:
            self._sender.wake()
        return event_id

    def stats(self, payload: dict[str, Any]) -> bool:
        """QoS 0 retained stats; skipped (False) when not connected or disabled."""
        sender, client = self._sender, self._client
        if sender is None or client is None or not sender.connected:
            return False
        data, limit = encode(payload), sender.max_packet
        if limit is not None and publish_size(self.topics.stats, data, 0, sender.v5) > limit:
            # over the limit the broker would drop the connection (and the alerts in flight with it)
            if ("stats", limit) not in self._said:
                self._said.add(("stats", limit))
                self.log.warning(
                    "MQTT stats are %d bytes, over the broker's maximum packet size of %d: not published (logged once)",
                    len(data),
                    limit,
                )
            return False
        info = client.publish(self.topics.stats, data, qos=0, retain=True)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def defect(self, on: bool) -> None:
        """Retained QoS 1 ``ON``/``OFF`` on ``/defect`` when the state changes; never blocks.

        The early signal: ``ON`` in the frame an event opens, long before its alert (sent when it
        closes). paho queues QoS 1 messages while the broker is away and sends them on reconnect.
        """
        if self._client is None or self._defect is on:
            return
        self._defect = on
        self._client.publish(self.topics.defect, "ON" if on else "OFF", qos=1, retain=True)

    def health(self, payload: dict[str, Any]) -> None:
        """Retained QoS 1 camera and line health JSON (``edge.health``) on ``/health``; never blocks.

        The daemon calls it at start and when the conditions change; paho queues it while the
        broker is away, so the floor sees the latest state after a reconnect.
        """
        if self._client is None:
            return
        self._client.publish(self.topics.health, encode(payload), qos=1, retain=True)

    def model_state(self, payload: dict[str, Any]) -> None:
        """Retained QoS 1 ``<prefix>/<station>/model/state`` JSON (``edge.modelswap``); never blocks.

        At start and after each reload attempt. It goes out only once this connection's inbound
        topics are subscribed: a fleet tool that sees ``active`` may publish on ``model/set`` at once,
        and paho would otherwise send it right behind CONNECT, before the SUBSCRIBE (the broker then
        drops the rollout). Until then the newest payload is held and sent by the connect hook.
        """
        if self._client is None or self._sender is None:
            return
        data = encode(payload)
        with self._inbound_lock:
            sender = self._sender
            if not (sender.connected and self._subscribed_session == sender.session):
                self._held_state = data  # the newest wins: it is retained state, not a log
                return
            self._held_state = None  # an older one must not follow this
            self._client.publish(self._state_topic, data, qos=1, retain=True)

    def heatmap(self, event_id: str, jpeg: bytes) -> bool:
        """The latest overlay JPEG on ``/heatmap``, retained, QoS 0, ``event_id`` as an MQTT 5 user property.

        Called by the heatmap worker's thread. Skipped (False) offline or over the broker's packet
        limit: only the latest image matters, so none is queued for later.
        """
        sender, client = self._sender, self._client
        if sender is None or client is None or not sender.connected:
            return False
        limit = sender.max_packet
        if limit is not None and publish_size(self.topics.heatmap, jpeg, 0, sender.v5) + 64 > limit:
            return False
        props = None
        if sender.v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [("event_id", event_id)]
        info = client.publish(self.topics.heatmap, jpeg, qos=0, retain=True, properties=props)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def sample(self, meta: dict[str, Any], png: bytes) -> Any:
        """One training sample on ``/sample`` (QoS 1, PNG bytes, metadata as MQTT 5 user properties).

        Called by the samples worker's thread, one sample at a time. Alerts first: it returns None
        (try later) unless the sender is ready and no alert is waiting in the outbox or in flight,
        and with MQTT 3.1.1 (no user properties). ``"oversize"`` when the broker's packet limit is
        below the sample; else paho's ``MQTTMessageInfo`` (``is_published()`` after the PUBACK).
        paho has room for one sample besides the alerts' window (``make_client``), so the sample
        never queues an alert behind it.
        """
        sender, client = self._sender, self._client
        if sender is None or client is None or not sender.v5 or not sender.ready():
            return None
        if sender.inflight or self.outbox.depth():
            return None
        meta_json = encode(meta).decode("utf-8")
        limit = sender.max_packet
        if limit is not None and publish_size(self.topics.sample, png, 1, True) + len(meta_json) + 256 > limit:
            return "oversize"
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = "image/png"
        props.UserProperty = [
            ("sample_id", str(meta.get("sample_id", ""))),
            ("reason", str(meta.get("reason", ""))),
            ("sample", meta_json),
        ]
        info = client.publish(self.topics.sample, png, qos=1, retain=False, properties=props)
        return info if info.rc == mqtt.MQTT_ERR_SUCCESS else None

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every alert in the outbox was acknowledged (True) or ``timeout`` passed."""
        if self._sender is None:
            return self.outbox.depth() == 0
        return self._sender.flush(timeout)

    def stop(self, timeout: float = 3.0) -> None:
        """Wait up to ``timeout`` for in-flight acks, publish retained ``offline``, disconnect.

        Undelivered alerts stay in the outbox for the next start.
        """
        if self._sender is None or self._setup is None or not self._sender.started:
            return
        self.defect(False)  # a clean stop leaves ``OFF``; the last will leaves only ``status`` offline
        self._sender.stop(timeout)
        self._setup.release_logs()

    def __repr__(self) -> str:
        return f"Publisher({self.cfg.host}:{self.cfg.port}, station={self.station!r}, connected={self.connected})"
