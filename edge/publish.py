"""MQTT publisher with a durable outbox: alerts survive broker outages and daemon restarts.

Contract (ARCHITECTURE.md §6): ``<prefix>/<station>/status`` (QoS 1, retained: ``online`` on every connect,
``offline`` as last will and on clean stop), ``/alert`` (QoS 1, JSON, written to the outbox first and
deleted only in ``on_publish`` for its message id), ``/stats`` (QoS 0, retained, skipped offline).

Why one sender thread: paho calls ``on_publish`` while holding its own message lock, so publishing
from the caller's thread while also taking our lock in callbacks would dead-lock; and a single
writer is what keeps alerts in order. ``alert()`` only commits to the outbox and wakes the sender;
callbacks only push acknowledgements onto a queue.

Why MQTT 5 by default: a 3.1.1 broker acknowledges a publish its ACL refuses and drops it, so
the outbox would delete an alert nobody received. With MQTT 5 the PUBACK carries the refusal
(``Not authorized``, ``Quota exceeded``): the alert stays in the outbox, one error line says why,
and refused alerts are offered again every ``reconnect_max_s`` until the broker takes them.

Why the sender waits for the PUBACK of ``online`` after each connect: paho re-sends the messages
that were in flight when the connection dropped *after* ``on_connect`` returns. The ``online``
acknowledgement is processed by paho's network thread only after that re-send, so publishing the
rest of the outbox after it keeps the broker-side order equal to the outbox order.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from edge.errors import ConfigError
from edge.outbox import Outbox, OutboxError

if TYPE_CHECKING:  # the config module is only needed for type hints
    from edge.config import MqttConfig

CREDENTIAL_NAME = "mqtt-password"  # systemd: LoadCredential=mqtt-password:/etc/seam-qc/mqtt-password


@dataclass(frozen=True)
class Topics:
    status: str
    alert: str
    stats: str


def resolve_problem(cfg: MqttConfig) -> str | None:
    """Why ``mqtt.host`` cannot be resolved right now, or None when it can (or MQTT is off).

    ``--check-config`` treats a problem as a config error (a typo is the likely cause); the
    running daemon only warns, once, and keeps classifying into the outbox: a DNS outage must not
    stop quality control.
    """
    if not cfg.enabled:
        return None
    try:
        socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        return f"{cfg.host!r} does not resolve ({getattr(e, 'strerror', None) or e})"
    return None


def connack_hint(reason_code: Any, v5: bool) -> str:
    """A hint for a refused connection that a config change fixes (empty when there is none)."""
    value = getattr(reason_code, "value", reason_code)
    if v5 and value in (1, 0x84):  # 3.1.1 "unacceptable protocol version" / 5 "unsupported protocol"
        return " (this broker does not speak MQTT 5: set mqtt.protocol: 3.1.1)"
    if value in (4, 5, 0x86, 0x87):  # bad user name or password / not authorised
        return " (check mqtt.username and the password file)"
    return ""


def topics(prefix: str, station: str) -> Topics:
    """The three topics of a station: ``<prefix>/<station>/status|alert|stats``."""
    for name, value in (("mqtt.prefix", prefix), ("station", station)):
        if not value or any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            raise ConfigError(f"{name}: {value!r} is not a valid MQTT topic part (no '+', '#', empty or edge '/')")
    if "/" in station:
        raise ConfigError(f"station: {station!r} must not contain '/'")
    base = f"{prefix}/{station}"
    return Topics(f"{base}/status", f"{base}/alert", f"{base}/stats")


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


def encode(payload: dict) -> bytes:
    """Compact UTF-8 JSON (what subscribers get byte for byte)."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return text.encode("utf-8")


# the alert payload of ARCHITECTURE.md §6; any other field is optional
ALERT_CORE = ("event_id", "station", "ts", "frame", "labels", "scores", "heatmap", "model")


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


def read_password(cfg: MqttConfig) -> str | None:
    """The broker password from ``mqtt.password_file`` or ``$CREDENTIALS_DIRECTORY/mqtt-password``.

    Only a trailing newline is stripped (``echo secret > file``). Never logged.
    """
    path: Path | None = None
    key = "mqtt.password_file"
    if cfg.password_file is not None:
        path = Path(cfg.password_file)
    elif cfg.username and os.environ.get("CREDENTIALS_DIRECTORY"):
        cand = Path(os.environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        if cand.exists():
            path, key = cand, "$CREDENTIALS_DIRECTORY/" + CREDENTIAL_NAME
    if path is None:
        return None
    if not cfg.username:
        raise ConfigError(f"{key}: {path} is set but mqtt.username is not (MQTT needs a user name with a password)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: {path} is not readable: {getattr(e, 'strerror', None) or e}") from None
    pw = text.rstrip("\r\n")
    if not pw:
        raise ConfigError(f"{key}: {path} is empty")
    return pw


def _check_file(key: str, path: Path | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{key}: {p} not found")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{key}: {p} is not readable")
    return str(p)


class RedactFilter(logging.Filter):
    """Replaces secrets in log records (message and args) with ``***``; belt and braces."""

    def __init__(self, *secrets: str):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = record.getMessage()
            if any(s in msg for s in self.secrets):
                for s in self.secrets:
                    msg = msg.replace(s, "***")
                record.msg, record.args = msg, None
        return True


class Publisher:
    """Publishes a station's status, alerts and stats; alerts go through the durable ``Outbox``.

    ``start()`` never blocks (broker down or unknown host is fine: paho retries with backoff).
    With ``cfg.enabled`` false the publisher is an outbox-only sink.
    """

    def __init__(self, cfg: MqttConfig, station: str, outbox: Outbox, log: logging.Logger | None = None):
        self.cfg = cfg
        self.station = station
        self.topics = topics(cfg.prefix, station)
        self.outbox = outbox
        self.log = log or logging.getLogger("edge.publish")
        self.enabled = bool(cfg.enabled)
        self._client = None
        self._password: str | None = None
        self._redact: RedactFilter | None = None
        # state shared with paho's thread (plain attributes: single assignments are atomic)
        self._connected = False
        self._ready = False  # connected and `online` acked: the sender may publish alerts
        self._online_mid: int | None = None
        self._last_logged: tuple | None = None
        self._last_error: str | None = None  # paho's last error/warning log line (the reason text)
        self._refused = False  # the last CONNACK was a refusal
        # sender-thread state
        self._acks: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._inflight: dict[int, str] = {}  # mid -> event_id handed to paho, not acked yet
        self._inflight_ev: set[str] = set()
        self._cursor = 0  # highest outbox seq handed to paho since the last (re)connect
        self._rejected: set[str] = set()  # event ids the broker refused (kept in the outbox)
        self._retry_at = 0.0  # monotonic time to offer refused alerts again
        self.refused = 0  # PUBACKs with a failure reason code (stats)
        self._refusing: str | None = None  # the reason while the broker refuses alerts
        self._max_packet: int | None = None  # the broker's MaximumPacketSize (MQTT 5 CONNACK)
        self._oversize: set[str] = set()  # alerts over it even trimmed (kept in the outbox)
        self._said: set[tuple] = set()  # (what, limit) already logged
        self._drained = False  # sender found nothing more to send
        self._sender: threading.Thread | None = None
        self._stop = False  # no more pumping (stop() in progress)
        self._stop_sender = False  # sender thread exits
        self._failure: BaseException | None = None
        self.delivered = 0
        if self.enabled:
            self._build_client()

    # -- set-up -------------------------------------------------------------------------------
    def _build_client(self) -> None:
        cfg = self.cfg
        # paho raises a bare ValueError at connect on these: one line naming the key instead
        host = cfg.host if isinstance(cfg.host, str) else ""
        if not host.strip() or any(c.isspace() for c in host) or len(host) > 253:
            raise ConfigError(f"mqtt.host: {cfg.host!r} is not a host name or address")
        if isinstance(cfg.port, bool) or not isinstance(cfg.port, int) or not 1 <= cfg.port <= 65535:
            raise ConfigError(f"mqtt.port: {cfg.port!r} is not a TCP port (1-65535)")
        tls = cfg.tls
        ca = cert = key = None
        if tls is not None:
            ca = _check_file("mqtt.tls.ca", tls.ca)
            cert = _check_file("mqtt.tls.cert", tls.cert)
            key = _check_file("mqtt.tls.key", tls.key)
        self._password = read_password(cfg)
        if self._password:
            self._redact = RedactFilter(self._password)
            self.log.addFilter(self._redact)

        self.client_id = cfg.client_id or f"seamqc-{self.station}"
        self.v5 = str(getattr(cfg, "protocol", "5")) == "5"
        if self.v5:  # a clean start on every connect (below), as clean_session=True does for 3.1.1
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True, protocol=mqtt.MQTTv311
            )
        if tls is not None:
            try:
                client.tls_set(ca_certs=ca, certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
            except (ssl.SSLError, OSError, ValueError) as e:
                bad = "mqtt.tls.cert" if cert else "mqtt.tls.ca"
                raise ConfigError(f"{bad}: cannot load TLS files ({ca}, {cert}, {key}): {e}") from None
            if tls.insecure:
                client.tls_insecure_set(True)
        if cfg.username:
            client.username_pw_set(cfg.username, self._password)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)
        # +2: room for `online`/`offline` next to a full window of alerts, so paho never has to queue
        # an alert behind the window (a queued one could be overtaken after a reconnect).
        client.max_inflight_messages_set(cfg.max_inflight + 2)
        client.max_queued_messages_set(max(cfg.max_queued, cfg.max_inflight + 4))
        # paho's own log (packets, never the password) goes to <our logger>.paho at DEBUG only: it
        # repeats its errors on every retry; we log each state change once, with paho's last error.
        self._paho_log = logging.getLogger(f"{self.log.name}.paho")
        if self._redact is not None:
            self._paho_log.addFilter(self._redact)
        client.on_log = self._on_log
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    def start(self) -> Publisher:
        """Connect in the background and start the sender; returns at once."""
        if not self.enabled:
            self.log.info(
                "MQTT disabled: alerts are kept in the outbox %s (%d pending)", self.outbox.path, self.outbox.depth()
            )
            return self
        if self._sender is not None:
            return self
        self._stop = self._stop_sender = False
        self._sender = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self._sender.start()
        self.log.info(
            "MQTT %s connecting to %s:%d%s as %s (outbox: %d pending)",
            "5" if self.v5 else "3.1.1",
            self.cfg.host,
            self.cfg.port,
            " (TLS)" if self.cfg.tls else "",
            self.client_id,
            self.outbox.depth(),
        )
        if self.v5:
            self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive, clean_start=True)
        else:
            self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self._client.loop_start()
        return self

    # -- paho callbacks (network thread): no blocking, no outbox I/O ---------------------------
    def _log_state(self, level: int, key: tuple, msg: str, *args) -> None:
        """Log a connection-state change once, not on every retry."""
        if key != self._last_logged:
            self._last_logged = key
            self.log.log(level, msg, *args)

    def _on_log(self, client, userdata, level, buf) -> None:
        if level in (mqtt.MQTT_LOG_ERR, mqtt.MQTT_LOG_WARNING):
            self._last_error = buf
        self._paho_log.debug("%s", buf)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = True  # the broker closes the socket next: that disconnect is not news
            self._log_state(
                logging.ERROR,
                ("refused", str(reason_code)),
                "MQTT connection to %s:%d refused: %s%s (retrying; alerts kept in the outbox)",
                self.cfg.host,
                self.cfg.port,
                reason_code,
                connack_hint(reason_code, self.v5),
            )
            return
        limit = getattr(properties, "MaximumPacketSize", None) if self.v5 else None
        self._max_packet = int(limit) if isinstance(limit, int) and limit > 0 else None
        self._connected = True
        self._last_error = None
        self._log_state(
            logging.INFO, ("connected",), "MQTT connected to %s:%d (%s)", self.cfg.host, self.cfg.port, reason_code
        )
        # Published from inside on_connect so it goes out before anything else of this session.
        info = client.publish(self.topics.status, "online", qos=1, retain=True)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._online_mid = info.mid
        else:  # never stall the alerts on the status message
            self.log.error("MQTT: cannot publish `online` (%s)", mqtt.error_string(info.rc))
            self._ready, self._cursor = True, 0
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        exc = sys.exc_info()[1]  # paho calls us from inside its `except OSError` block
        reason = f"{type(exc).__name__}: {exc}" if exc else "connection failed"
        self._log_state(
            logging.WARNING,
            ("unreachable", reason),
            "MQTT broker %s:%d unreachable: %s (retrying with backoff %g..%g s; alerts kept in the outbox)",
            self.cfg.host,
            self.cfg.port,
            reason,
            self.cfg.reconnect_min_s,
            self.cfg.reconnect_max_s,
        )

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected
        self._connected = False
        self._ready = False
        self._online_mid = None
        if self._stop:
            self._log_state(logging.INFO, ("stopped",), "MQTT disconnected (clean stop)")
        elif was:
            self._log_state(
                logging.WARNING,
                ("disconnected", str(reason_code)),
                "MQTT disconnected from %s:%d: %s (reconnecting; alerts kept in the outbox)",
                self.cfg.host,
                self.cfg.port,
                self._last_error or reason_code,
            )
        elif not self._refused:  # dropped before CONNACK, e.g. a TLS 1.3 client-certificate alert
            reason = self._last_error or str(reason_code)
            self._log_state(
                logging.WARNING,
                ("failed", reason),
                "MQTT connection to %s:%d failed: %s (retrying with backoff %g..%g s; alerts kept in the outbox)",
                self.cfg.host,
                self.cfg.port,
                reason,
                self.cfg.reconnect_min_s,
                self.cfg.reconnect_max_s,
            )
        self._last_error = None
        self._refused = False
        self._wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.put((mid, reason_code))
        self._wake.set()

    # -- sender thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(0.5)
                self._wake.clear()
                self._process_acks()
                if self._retry_at and time.monotonic() >= self._retry_at and self._ready:
                    # offer the refused alerts again, in outbox order (the broker's ACL may be fixed)
                    self._retry_at = 0.0
                    self._rejected.clear()
                    self._cursor = 0
                if self._ready and not self._stop:
                    self._pump()
                self._update_idle()
                if self._stop_sender:
                    break
        except OutboxError as e:
            self._failure = e
            self.log.error("%s", e)
        except Exception as e:  # noqa: BLE001 - a dead sender must be visible, not silent
            self._failure = e
            self.log.exception("MQTT sender failed: %s", e)
        finally:
            self._update_idle()

    def _process_acks(self) -> None:
        done: list[str] = []
        while True:
            try:
                mid, rc = self._acks.get_nowait()
            except queue.Empty:
                break
            if mid == self._online_mid and self._connected:
                self._online_mid = None
                self._ready = True
                self._cursor = 0  # resend everything not already in flight, in order
                continue
            ev = self._inflight.get(mid)
            if ev is None:
                continue  # status/stats
            if rc is not None and getattr(rc, "is_failure", False):
                self._inflight.pop(mid, None)
                self._inflight_ev.discard(ev)
                self._rejected.add(ev)
                self.refused += 1
                if not self._retry_at:
                    self._retry_at = time.monotonic() + self.cfg.reconnect_max_s
                if self._refusing != str(rc):
                    self._refusing = str(rc)
                    self.log.error(
                        "MQTT broker refused alert %s on %s: %s (check the broker's ACL/quota for "
                        "client %s); refused alerts stay in the outbox and are offered again "
                        "every %g s (logged once)",
                        ev,
                        self.topics.alert,
                        rc,
                        self.client_id,
                        self.cfg.reconnect_max_s,
                    )
                continue
            self._rejected.discard(ev)
            done.append(ev)
        if done and self._refusing is not None:
            self.log.info("MQTT broker accepts alerts again (%d refusals so far)", self.refused)
            self._refusing = None
        if done:
            self.outbox.ack_many(done)  # one fsync for a burst of acks
            acked = set(done)
            for mid in [m for m, e in self._inflight.items() if e in acked]:
                del self._inflight[mid]
            self._inflight_ev.difference_update(acked)
            self.delivered += len(done)

    def _pump(self) -> None:
        window = max(1, int(self.cfg.max_inflight))
        while self._ready and not self._stop and len(self._inflight) < window:
            items = self.outbox.pending(limit=window, after_seq=self._cursor)
            if not items:
                self._drained = True
                return
            for it in items:
                if it.event_id in self._inflight_ev:
                    self._cursor = it.seq
                    continue
                if len(self._inflight) >= window or not self._ready or self._stop:
                    return
                payload = self._fit(it)
                if payload is None:  # kept in the outbox, counted; the alerts after it go on
                    self._cursor = it.seq
                    continue
                info = self._client.publish(it.topic, payload, qos=1, retain=False)
                if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                    # NO_CONN: paho keeps it and sends it on reconnect; either way it is paho's now
                    self._inflight[info.mid] = it.event_id
                    self._inflight_ev.add(it.event_id)
                    self._cursor = it.seq
                    self._drained = False
                else:  # queue full: try again after the next ack
                    return

    def _once(self, key: tuple, msg: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            self.log.warning(msg, *args)

    def _fit(self, it: Any) -> bytes | None:
        """The payload to send for outbox item ``it`` under the broker's packet limit, or None.

        Why: a packet over the limit makes the broker drop the connection; re-sent after each
        reconnect, one alert would block every later one and make ``status`` flap for ever.
        """
        limit = self._max_packet
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

    def _update_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()

    def _is_flushed(self) -> bool:
        return not self._inflight and self._drained and self._acks.empty()

    def _only_refused_left(self) -> bool:
        """Everything was offered and what is left in the outbox is what the broker refused (or too large)."""
        kept = len(self._rejected | self._oversize)
        return bool(kept) and self._is_flushed() and self.outbox.depth() <= kept

    # -- public API ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def inflight(self) -> int:
        """Alerts handed to the MQTT client and still waiting for the broker's PUBACK."""
        return len(self._inflight)

    @property
    def oversize(self) -> int:
        """Alerts kept in the outbox because they exceed the broker's maximum packet size even trimmed."""
        return len(self._oversize)

    @property
    def max_packet(self) -> int | None:
        """The broker's maximum packet size from the last CONNACK (MQTT 5), None when unlimited."""
        return self._max_packet

    @property
    def outbox_depth(self) -> int:
        return self.outbox.depth()

    def alert(self, payload: dict) -> str:
        """Commit the alert to the outbox, then hand it to the sender; returns its ``event_id``.

        Raises ``OutboxError`` when it cannot be stored (the daemon must stop loudly).
        """
        if self._failure is not None:
            raise (
                OutboxError(f"MQTT sender stopped: {self._failure}")
                if not isinstance(self._failure, OutboxError)
                else self._failure
            )
        body = dict(payload)
        event_id = str(body.get("event_id") or uuid.uuid4().hex)
        body["event_id"] = event_id
        body.setdefault("station", self.station)
        self.outbox.put(event_id, self.topics.alert, encode(body))
        if self.enabled:
            self._drained = False
            self._wake.set()
        return event_id

    def stats(self, payload: dict) -> bool:
        """QoS 0 retained stats; skipped (False) when not connected or disabled."""
        if not self.enabled or not self._connected or self._client is None:
            return False
        data, limit = encode(payload), self._max_packet
        if limit is not None and publish_size(self.topics.stats, data, 0, self.v5) > limit:
            # over the limit the broker would drop the connection (and the alerts in flight with it)
            self._once(
                ("stats", limit),
                "MQTT stats are %d bytes, over the broker's maximum packet size of %d: not published (logged once)",
                len(data),
                limit,
            )
            return False
        info = self._client.publish(self.topics.stats, data, qos=0, retain=True)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every alert in the outbox was acknowledged (True) or ``timeout`` passed."""
        if not self.enabled:
            return self.outbox.depth() == 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._connected and self._ready and self._is_flushed() and self.outbox.depth() == 0:
                return True
            if self._failure or self._only_refused_left():
                return False
            self._wake.set()
            with self._idle:
                self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.outbox.depth() == 0

    def stop(self, timeout: float = 3.0) -> None:
        """Wait up to ``timeout`` for in-flight acks, publish retained ``offline``, disconnect.

        Undelivered alerts stay in the outbox for the next start.
        """
        if not self.enabled or self._client is None or self._sender is None:
            return
        deadline = time.monotonic() + timeout
        # 1. let the sender finish what is in flight (and the backlog, while time allows)
        while self._connected and time.monotonic() < deadline and not self._failure:
            if self._ready and self._is_flushed() and (self.outbox.depth() == 0 or self._only_refused_left()):
                break
            self._wake.set()
            with self._idle:
                self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        self._stop = True  # the sender publishes nothing new from here on, but still processes acks
        # 2. offline, retained, acknowledged
        if self._connected:
            info = self._client.publish(self.topics.status, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass
            if not info.is_published():
                self.log.warning("MQTT: `offline` was not acknowledged within the stop timeout")
        # 3. stop the sender, then the network loop
        self._stop_sender = True
        self._wake.set()
        self._sender.join(max(1.0, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()
        if not self._sender.is_alive():
            self._process_acks_late()
        self._sender = None
        pending = self.outbox.depth()
        if pending:
            self.log.warning("MQTT stopped with %d alert(s) kept in the outbox %s", pending, self.outbox.path)
        else:
            self.log.info("MQTT stopped; outbox empty")
        if self._redact is not None:
            self.log.removeFilter(self._redact)
            self._paho_log.removeFilter(self._redact)

    def _process_acks_late(self) -> None:
        """Acks that arrived after the sender exited still delete their alerts."""
        try:
            self._process_acks()
        except OutboxError as e:
            self.log.error("%s", e)

    def __repr__(self) -> str:
        return f"Publisher({self.cfg.host}:{self.cfg.port}, station={self.station!r}, connected={self._connected})"
