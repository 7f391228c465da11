"""The outbox sender: drains the durable outbox through one paho client, in order, and deletes an
alert only when the broker acknowledged it.

Contract (ARCHITECTURE.md §6): ``<prefix>/<station>/status`` gets ``online`` (QoS 1, retained) on
every connect and ``offline`` on a clean stop; each alert is published with QoS 1 from the outbox
and deleted only in answer to the PUBACK of its message id.

Who owns what. Three kinds of thread touch a sender, and each field has exactly one writer:

* paho's network thread runs the callbacks. It writes only the *link* fields: ``connected``,
  ``session`` (successful connects so far), ``max_packet`` (the CONNACK's MaximumPacketSize) and
  its log-once memory (``_last_logged``, ``_last_error``, ``_connack_refused``). Everything the
  sender must act on goes through ``_events``, one FIFO: ``_Online(session, mid)`` from each
  connect, then ``_Ack(mid, reason)`` per PUBACK, in the order paho saw them.
* the sender thread (``mqtt-sender``) is the only writer of the delivery state (the in-flight
  window, the outbox cursor, the refused and oversize alerts, the session it is ready in) and
  the only caller of ``client.publish`` for alerts and of ``Outbox.pending``/``ack_many``. For
  other threads it keeps plain ints and bools up to date (``inflight``, ``oversize``, ``kept``,
  ``refused``, ``delivered``, ``drained``, ``failure``); nobody else iterates its containers.
* the caller's threads (the daemon) add alerts with ``Outbox.put`` (the outbox has its own lock)
  and ``wake()``, and ``stop()`` sets ``_stopping`` and ``_exit``; ``flush``/``stop`` only read.
  Once the sender thread has exited, ``stop`` processes late acknowledgements itself: the
  delivery state then has no other owner.

Why one sender thread: paho calls ``on_publish`` while holding its own message lock, so publishing
from the caller's thread while also taking our lock in callbacks would dead-lock; and a single
writer is what keeps alerts in order. Callbacks never block and never touch the outbox.

Why MQTT 5 by default: a 3.1.1 broker acknowledges a publish its ACL refuses and drops it, so the
outbox would delete an alert nobody received. With MQTT 5 the PUBACK carries the refusal (``Not
authorized``, ``Quota exceeded``): the alert stays in the outbox, one error line says why, and
refused alerts are offered again every ``reconnect_max_s`` until the broker takes them.

Why the sender waits for the PUBACK of ``online`` after each connect: paho re-sends the messages
that were in flight when the connection dropped *after* ``on_connect`` returns. The ``online``
acknowledgement is processed by paho's network thread only after that re-send, so publishing the
rest of the outbox after it keeps the broker-side order equal to the outbox order. The sender is
ready only in the session whose ``online`` was acknowledged, so a reconnect stops it at once.

Why ``before_online`` runs first on each connect: it sends the SUBSCRIBEs. ``convert deploy`` answers
a station's ``online`` with a ``begin`` at once; a SUBSCRIBE queued after ``online`` could reach the
broker after that ``begin``, which the broker would then drop.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.mqtt_client import connack_hint
from edge.outbox import Item, Outbox, OutboxError

if TYPE_CHECKING:  # the config module is only needed for type hints
    from edge.config import MqttConfig

# the alert payload of ARCHITECTURE.md §6; any other field is optional
ALERT_CORE = ("event_id", "station", "ts", "frame", "labels", "scores", "heatmap", "model")


def _json_default(o: Any) -> Any:
    """numpy scalars/arrays, paths and datetimes in payloads, without importing numpy."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def encode(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (what subscribers get byte for byte)."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return text.encode("utf-8")


def publish_size(topic: str, payload: bytes, qos: int = 1, v5: bool = True) -> int:
    """Bytes of the PUBLISH packet paho sends (no properties), to compare with the broker's limit.

    Why: a broker disconnects a client that sends a packet over its ``max_packet_size``; paho
    does not check the limit MQTT 5 announces in CONNACK, so the same alert would be re-sent on
    every reconnect, for ever.
    """
    rest = 2 + len(topic.encode("utf-8")) + (2 if qos else 0) + (1 if v5 else 0) + len(payload)
    n, v = 1, rest
    while v >= 128:
        v //= 128
        n += 1
    return 1 + n + rest


def shrink_alert(payload: bytes, fits: Callable[[bytes], bool]) -> tuple[bytes, list[str]] | None:
    """A trimmed alert that ``fits`` and the fields it lost, or None when even the core does not fit.

    Why: an alert is a few hundred bytes; one over a broker's packet limit has grown in what
    matters least. Fields outside the §6 contract go first, then the heatmap path (null, as when
    the worker refused the job); ``"trimmed": true`` tells the subscriber.
    """
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    lost: list[str] = []
    for keys in ([k for k in body if k not in ALERT_CORE and k != "trimmed"], ["heatmap"]):
        for k in keys:
            if body.get(k) is not None:
                lost.append(k)
            if k == "heatmap":
                body[k] = None
            else:
                body.pop(k, None)
        if lost:
            data = encode({**body, "trimmed": True})
            if fits(data):
                return data, lost
    return None


@dataclass(frozen=True)
class _Online:
    """Connected in ``session``; ``mid`` is the message id of its ``online`` (None: not sent)."""

    session: int
    mid: int | None


@dataclass(frozen=True)
class _Ack:
    """The broker's PUBACK for ``mid`` (``reason.is_failure``: refused, MQTT 5 only)."""

    mid: int
    reason: Any


class OutboxSender:
    """Publishes the outbox through ``client`` from its own thread; see the module docstring for
    which thread writes which field.

    ``client`` is a configured paho client (``edge.mqtt_client.make_client``); the sender sets
    its callbacks and, in ``start``, connects it. It calls only ``publish``, ``connect_async``,
    ``loop_start``, ``disconnect`` and ``loop_stop`` on it, and what ``publish`` returns
    (``rc``, ``mid``, ``wait_for_publish``, ``is_published``).
    """

    def __init__(
        self,
        client: mqtt.Client,
        outbox: Outbox,
        cfg: MqttConfig,
        status_topic: str,
        *,
        client_id: str,
        v5: bool,
        log: logging.Logger,
        paho_log: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_session: Callable[[mqtt.Client], None] | None = None,
        before_online: Callable[[mqtt.Client], None] | None = None,
    ):
        self.client = client
        self.outbox = outbox
        self.cfg = cfg
        self.status_topic = status_topic
        self.client_id = client_id
        self.v5 = v5
        self.log = log
        self.paho_log = paho_log or logging.getLogger(f"{log.name}.paho")
        self._clock = clock  # for the retry of refused alerts (a test passes its own)
        # called in paho's network thread after each connect's `online` (Home Assistant discovery)
        self._on_session = on_session
        # called there just before `online`: the SUBSCRIBEs, so whoever reacts to `online` (convert
        # deploy sends its `begin` at once) publishes to a topic the broker already routes to us
        self._before_online = before_online
        # -- link: written by paho's network thread only (read by everyone)
        self.connected = False
        self.session = 0
        self.max_packet: int | None = None
        self._last_logged: tuple[str, ...] | None = None
        self._last_error: str | None = None  # paho's last error/warning log line (the reason text)
        self._connack_refused = False  # the last CONNACK was a refusal
        self._events: queue.SimpleQueue[_Online | _Ack] = queue.SimpleQueue()
        # -- delivery: written by the sender thread only
        self._ready_session: int | None = None  # the session whose `online` was acknowledged
        self._online: _Online | None = None  # the connect whose `online` PUBACK is awaited
        self._inflight: dict[int, tuple[str, str]] = {}  # mid -> (event_id, topic) handed to paho
        self._inflight_ev: set[str] = set()
        self._cursor = 0  # highest outbox seq handed to paho since the sender became ready
        self._rejected: set[str] = set()  # event ids the broker refused (kept in the outbox)
        self._retry_at = 0.0  # monotonic time to offer refused alerts again
        self._refusing: str | None = None  # the reason while the broker refuses alerts
        self._oversize: set[str] = set()  # alerts over max_packet even trimmed (kept in the outbox)
        self._said: set[tuple[str, int]] = set()  # (what, limit) already logged
        # ... and what it publishes for other threads (plain values, single assignments)
        self.inflight = 0  # alerts handed to paho, not acknowledged yet
        self.oversize = 0  # len(_oversize)
        self.kept = 0  # refused or oversize alerts the sender will not offer again for now
        self.refused = 0  # PUBACKs with a failure reason code (stats)
        self.delivered = 0
        self.drained = False  # the last look at the outbox found nothing more to send
        self.failure: BaseException | None = None
        # -- caller: written by start()/stop() only
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False  # no more pumping (stop() in progress)
        self._exit = False  # the sender thread exits

        client.on_log = self._on_log
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish

    # -- caller's thread ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the sender thread and connect in the background; returns at once."""
        if self._thread is not None:
            return
        self._stopping = self._exit = False
        self._thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self._thread.start()
        cfg = self.cfg
        self.log.info(
            "MQTT %s connecting to %s:%d%s as %s (outbox: %d pending)",
            "5" if self.v5 else "3.1.1",
            cfg.host,
            cfg.port,
            " (TLS)" if cfg.tls else "",
            self.client_id,
            self.outbox.depth(),
        )
        if self.v5:
            self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive, clean_start=True)
        else:
            self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
        self.client.loop_start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def wake(self) -> None:
        """Tell the sender that the outbox has something new."""
        self._wake.set()

    def raise_if_failed(self) -> None:
        """Raise ``OutboxError`` when the sender thread died (the daemon must stop loudly)."""
        failure = self.failure
        if failure is not None:
            raise failure if isinstance(failure, OutboxError) else OutboxError(f"MQTT sender stopped: {failure}")

    def ready(self) -> bool:
        """Connected, and this connection's ``online`` was acknowledged: alerts may go out."""
        return self.connected and self._ready_session is not None and self._ready_session == self.session

    def _is_flushed(self) -> bool:
        return not self.inflight and self.drained and self._events.empty()

    def only_refused_left(self) -> bool:
        """Everything was offered and what is left in the outbox is what the broker refused (or too large)."""
        kept = self.kept
        return bool(kept) and self._is_flushed() and self.outbox.depth() <= kept

    def _wait_idle(self, deadline: float) -> None:
        self._wake.set()
        with self._idle:
            self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic())))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every alert in the outbox was acknowledged (True) or ``timeout`` passed.

        False at once when only alerts the broker refused (or that are too large) are left.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready() and self._is_flushed() and self.outbox.depth() == 0:
                return True
            if self.failure is not None or self.only_refused_left():
                return False
            self._wait_idle(deadline)
        return self.outbox.depth() == 0

    def stop(self, timeout: float = 3.0) -> None:
        """Wait up to ``timeout`` for in-flight acks, publish retained ``offline``, disconnect.

        Undelivered alerts stay in the outbox for the next start.
        """
        thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + timeout
        # 1. let the sender finish what is in flight (and the backlog, while time allows)
        while self.connected and time.monotonic() < deadline and self.failure is None:
            if self.ready() and self._is_flushed() and (self.outbox.depth() == 0 or self.only_refused_left()):
                break
            self._wait_idle(deadline)
        self._stopping = True  # the sender publishes nothing new from here on, but still processes acks
        # 2. offline, retained, acknowledged
        if self.connected:
            info = self.client.publish(self.status_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
            if not info.is_published():
                self.log.warning("MQTT: `offline` was not acknowledged within the stop timeout")
        # 3. stop the sender, then the network loop
        self._exit = True
        self._wake.set()
        thread.join(max(1.0, deadline - time.monotonic()))
        self.client.disconnect()
        self.client.loop_stop()
        if not thread.is_alive():  # the delivery state is ours now: late acks still delete their alerts
            try:
                self._process_events()
            except OutboxError as e:
                self.log.error("%s", e)
            self._recount()
        self._thread = None
        pending = self.outbox.depth()
        if pending:
            self.log.warning("MQTT stopped with %d alert(s) kept in the outbox %s", pending, self.outbox.path)
        else:
            self.log.info("MQTT stopped; outbox empty")

    # -- paho's network thread: no blocking, no outbox I/O ---------------------------------------
    def _log_state(self, level: int, key: tuple[str, ...], msg: str, *args: Any) -> None:
        """Log a connection-state change once, not on every retry."""
        if key != self._last_logged:
            self._last_logged = key
            self.log.log(level, msg, *args)

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        if level in (mqtt.MQTT_LOG_ERR, mqtt.MQTT_LOG_WARNING):
            self._last_error = buf
        self.paho_log.debug("%s", buf)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode, properties: Properties | None
    ) -> None:
        cfg = self.cfg
        if reason_code.is_failure:
            self._connack_refused = True  # the broker closes the socket next: that disconnect is not news
            self._log_state(
                logging.ERROR,
                ("refused", str(reason_code)),
                "MQTT connection to %s:%d refused: %s%s (retrying; alerts kept in the outbox)",
                cfg.host,
                cfg.port,
                reason_code,
                connack_hint(reason_code, self.v5),
            )
            return
        limit = getattr(properties, "MaximumPacketSize", None) if self.v5 else None
        self.max_packet = int(limit) if isinstance(limit, int) and limit > 0 else None
        self.session += 1
        self.connected = True
        self._last_error = None
        self._log_state(logging.INFO, ("connected",), "MQTT connected to %s:%d (%s)", cfg.host, cfg.port, reason_code)
        if self._before_online is not None:
            try:
                self._before_online(client)
            except Exception as e:  # noqa: BLE001 - an extra must never cost the alerts their link
                self.log.error("MQTT: on-connect hook failed: %s", e)
        # Published from inside on_connect so it goes out before any other publication of this session.
        info = client.publish(self.status_topic, "online", qos=1, retain=True)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._events.put(_Online(self.session, info.mid))
        else:  # never stall the alerts on the status message
            self.log.error("MQTT: cannot publish `online` (%s)", mqtt.error_string(info.rc))
            self._events.put(_Online(self.session, None))
        if self._on_session is not None:
            try:
                self._on_session(client)
            except Exception as e:  # noqa: BLE001 - an extra must never cost the alerts their link
                self.log.error("MQTT: on-connect hook failed: %s", e)
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        exc = sys.exc_info()[1]  # paho calls us from inside its `except OSError` block
        reason = f"{type(exc).__name__}: {exc}" if exc else "connection failed"
        cfg = self.cfg
        self._log_state(
            logging.WARNING,
            ("unreachable", reason),
            "MQTT broker %s:%d unreachable: %s (retrying with backoff %g..%g s; alerts kept in the outbox)",
            cfg.host,
            cfg.port,
            reason,
            cfg.reconnect_min_s,
            cfg.reconnect_max_s,
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Properties | None
    ) -> None:
        was = self.connected
        self.connected = False  # ready() is false from here: the sender stops publishing at once
        cfg = self.cfg
        if self._stopping:
            self._log_state(logging.INFO, ("stopped",), "MQTT disconnected (clean stop)")
        elif was:
            self._log_state(
                logging.WARNING,
                ("disconnected", str(reason_code)),
                "MQTT disconnected from %s:%d: %s (reconnecting; alerts kept in the outbox)",
                cfg.host,
                cfg.port,
                self._last_error or reason_code,
            )
        elif not self._connack_refused:  # dropped before CONNACK, e.g. a TLS 1.3 client-certificate alert
            reason = self._last_error or str(reason_code)
            self._log_state(
                logging.WARNING,
                ("failed", reason),
                "MQTT connection to %s:%d failed: %s (retrying with backoff %g..%g s; alerts kept in the outbox)",
                cfg.host,
                cfg.port,
                reason,
                cfg.reconnect_min_s,
                cfg.reconnect_max_s,
            )
        self._last_error = None
        self._connack_refused = False
        self._wake.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self._events.put(_Ack(mid, reason_code))
        self._wake.set()

    # -- the sender thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(0.5)
                self._wake.clear()
                self.step()
                self._notify_idle()
                if self._exit:
                    break
        except OutboxError as e:
            self.failure = e
            self.log.error("%s", e)
        except Exception as e:  # noqa: BLE001 - a dead sender must be visible, not silent
            self.failure = e
            self.log.exception("MQTT sender failed: %s", e)
        finally:
            self._notify_idle()

    def step(self) -> None:
        """One round of the sender: acknowledgements, the retry of refused alerts, publishing.

        Only the sender thread calls it (or a test that drives a sender it never started, playing
        paho's network thread itself: the same single writer, without the timing).
        """
        self._process_events()
        if self._retry_at and self._clock() >= self._retry_at and self.ready():
            # offer the refused alerts again, in outbox order (the broker's ACL may be fixed)
            self._retry_at = 0.0
            self._rejected.clear()
            self._cursor = 0
        if not self._stopping:
            self._pump()
        self._recount()

    def _notify_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()

    def _recount(self) -> None:
        """Publish the counts other threads read (they never iterate the sender's containers)."""
        self.inflight = len(self._inflight)
        self.oversize = len(self._oversize)
        self.kept = len(self._rejected | self._oversize)

    def _process_events(self) -> None:
        done: list[str] = []
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                break
            if isinstance(ev, _Online):
                if ev.mid is None:  # `online` could not be sent: do not wait for it
                    self._ready_in(ev.session)
                else:
                    self._online = ev
                continue
            if self._online is not None and ev.mid == self._online.mid:
                self._ready_in(self._online.session)
                self._online = None
                continue
            sent = self._inflight.get(ev.mid)
            if sent is None:
                continue  # status/stats
            event_id, topic = sent
            rc = ev.reason
            if rc is not None and getattr(rc, "is_failure", False):
                self._inflight.pop(ev.mid, None)
                self._inflight_ev.discard(event_id)
                self._rejected.add(event_id)
                self.refused += 1
                if not self._retry_at:
                    self._retry_at = self._clock() + self.cfg.reconnect_max_s
                if self._refusing != str(rc):
                    self._refusing = str(rc)
                    self.log.error(
                        "MQTT broker refused alert %s on %s: %s (check the broker's ACL/quota for "
                        "client %s); refused alerts stay in the outbox and are offered again "
                        "every %g s (logged once)",
                        event_id,
                        topic,
                        rc,
                        self.client_id,
                        self.cfg.reconnect_max_s,
                    )
                continue
            self._rejected.discard(event_id)
            done.append(event_id)
        if done and self._refusing is not None:
            self.log.info("MQTT broker accepts alerts again (%d refusals so far)", self.refused)
            self._refusing = None
        if done:
            self.outbox.ack_many(done)  # one fsync for a burst of acks
            acked = set(done)
            for mid in [m for m, (e, _) in self._inflight.items() if e in acked]:
                del self._inflight[mid]
            self._inflight_ev.difference_update(acked)
            self.delivered += len(done)

    def _ready_in(self, session: int) -> None:
        self._ready_session = session
        self._cursor = 0  # resend everything not already in flight, in order

    def _pump(self) -> None:
        window = max(1, int(self.cfg.max_inflight))
        while self.ready() and not self._stopping and len(self._inflight) < window:
            items = self.outbox.pending(limit=window, after_seq=self._cursor)
            if not items:
                self.drained = True
                return
            for it in items:
                if it.event_id in self._inflight_ev:
                    self._cursor = it.seq
                    continue
                if len(self._inflight) >= window or not self.ready() or self._stopping:
                    return
                payload = self._fit(it)
                if payload is None:  # kept in the outbox, counted; the alerts after it go on
                    self._cursor = it.seq
                    continue
                info = self.client.publish(it.topic, payload, qos=1, retain=False)
                if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                    # NO_CONN: paho keeps it and sends it on reconnect; either way it is paho's now
                    self._inflight[info.mid] = (it.event_id, it.topic)
                    self._inflight_ev.add(it.event_id)
                    self._cursor = it.seq
                    self.drained = False
                else:  # queue full: try again after the next ack
                    return

    def _once(self, key: tuple[str, int], msg: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            self.log.warning(msg, *args)

    def _fit(self, it: Item) -> bytes | None:
        """The payload to send for outbox item ``it`` under the broker's packet limit, or None.

        Why: a packet over the limit makes the broker drop the connection; re-sent after each
        reconnect, one alert would block every later one and make ``status`` flap for ever.
        """
        limit = self.max_packet
        if limit is None or publish_size(it.topic, it.payload, 1, self.v5) <= limit:
            self._oversize.discard(it.event_id)
            return it.payload
        small = shrink_alert(it.payload, lambda b: publish_size(it.topic, b, 1, self.v5) <= limit)
        if small is not None:
            self._oversize.discard(it.event_id)
            self._once(
                ("trimmed", limit),
                "MQTT alert %s is %d bytes, over the broker's maximum packet size "
                'of %d: sent without %s ("trimmed": true; logged once)',
                it.event_id,
                len(it.payload),
                limit,
                ", ".join(small[1]),
            )
            return small[0]
        self._oversize.add(it.event_id)
        self._once(
            ("oversize", limit),
            "MQTT alert %s is %d bytes, over the broker's maximum packet size of "
            "%d even trimmed: not sent, kept in the outbox %s (counted in stats as mqtt_oversize); "
            "later alerts go on (logged once)",
            it.event_id,
            len(it.payload),
            limit,
            self.outbox.path,
        )
        return None
