"""The paho client factory: one configured ``paho.mqtt.client.Client`` for a station.

Why a factory of its own: what the broker connection needs from the config (protocol, TLS files,
user name and password, the last will, paho's backoff and queue limits) is checked and applied
once, here, before any thread starts; a problem the user must fix is one ``ConfigError`` line
naming the key (exit 78), never a paho traceback at connect. Delivery (the outbox, acknowledgements,
order) is the sender's business (``edge/outbox_sender.py``); this module sets no callbacks.

Reliability is paho's own: ``reconnect_delay_set`` (exponential backoff between the configured
bounds), ``max_inflight_messages_set``/``max_queued_messages_set`` (paho re-sends what was in
flight after a reconnect) and ``will_set`` (the broker publishes the retained ``offline``).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.errors import ConfigError
from edge.homeassistant import DISCOVERY_CONFIGS

if TYPE_CHECKING:  # the config module is only needed for type hints
    from edge.config import MqttConfig

CREDENTIAL_NAME = "mqtt-password"  # systemd: LoadCredential=mqtt-password:/etc/seam-qc/mqtt-password


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


@dataclass
class ClientSetup:
    """What ``make_client`` built: the client and the facts the sender and the logs need.

    ``paho_log`` (``<log>.paho``) is where paho's own log lines go, at DEBUG. While a password is
    in use, ``redact`` is installed on both loggers; ``release_logs`` removes it.
    """

    client: mqtt.Client
    client_id: str
    v5: bool
    log: logging.Logger
    paho_log: logging.Logger
    redact: RedactFilter | None

    def release_logs(self) -> None:
        """Remove the redaction filter from the loggers (at stop: loggers outlive publishers)."""
        if self.redact is not None:
            self.log.removeFilter(self.redact)
            self.paho_log.removeFilter(self.redact)


def make_client(cfg: MqttConfig, station: str, will_topic: str, log: logging.Logger) -> ClientSetup:
    """A paho ``Client`` configured from ``cfg`` (not connected, no callbacks set).

    Raises ``ConfigError`` naming the key for a host, port, TLS file or password the user must fix.
    """
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
    password = read_password(cfg)
    redact = RedactFilter(password) if password else None
    # paho's own log (packets, never the password) goes to <our logger>.paho at DEBUG only: it
    # repeats its errors on every retry; the sender logs each state change once.
    paho_log = logging.getLogger(f"{log.name}.paho")
    if redact is not None:
        log.addFilter(redact)
        paho_log.addFilter(redact)

    client_id = cfg.client_id or f"seamqc-{station}"
    v5 = str(getattr(cfg, "protocol", "5")) == "5"
    if v5:  # a clean start on every connect (the sender's connect_async), as clean_session=True does for 3.1.1
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
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
        client.username_pw_set(cfg.username, password)
    client.will_set(will_topic, "offline", qos=1, retain=True)
    # paho annotates the delays as int, but only adds and compares them with time.monotonic()
    # floats; sub-second backoff (reconnect_min_s: 0.1) is a supported setting.
    client.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)  # type: ignore[arg-type]
    # +2: room for `online`/`offline` next to a full window of alerts, so paho never has to queue
    # an alert behind the window (a queued one could be overtaken after a reconnect); with Home
    # Assistant discovery, room for one announcement too (its configs are QoS 1); and room for the
    # one training sample the samples worker may have in flight (edge.samples), so that it never
    # takes an alert's place.
    room = 3 + (DISCOVERY_CONFIGS if cfg.homeassistant else 0)
    client.max_inflight_messages_set(cfg.max_inflight + room)
    client.max_queued_messages_set(max(cfg.max_queued, cfg.max_inflight + room + 2))
    return ClientSetup(client, client_id, v5, log, paho_log, redact)
