"""MQTT fixtures (owned by the publish/outbox area): a real Mosquitto on a free loopback port.

The broker and subscriber are ``convert.harness``'s (the demo and the bench use the same ones).

Why real processes: the outbox guarantee ("an alert is never lost") is only worth something if it
survives a real broker going away, restarting and replaying persisted sessions. A fake broker would
test our assumptions, not paho's or Mosquitto's behaviour.

Fixtures
--------
``mqtt_broker``           a started broker (function-scoped), anonymous, persistence on.
``mqtt_broker_factory``   ``factory(listener_lines=(), global_lines=(), anonymous=True)`` → started
                          broker with extra config (TLS, password files …); all stopped at teardown.
``mqtt_subscriber``       ``factory(broker, topic="#", **kw)`` → connected ``MqttSubscriber``.
``mqtt_publisher``        ``factory(broker, station="st1", outbox=None, start=True, **mqtt_cfg)`` →
                          ``edge.publish.Publisher`` with fast reconnects; stopped at teardown.

Helpers: ``MqttSubscriber`` (paho client collecting messages per topic, ``wait_for``),
``mosquitto_sub(broker, topic, count, timeout)`` (plain ``mosquitto_sub`` subprocess, blocking) and
``start_mosquitto_sub(...)`` (background ``Popen``).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

from convert.harness import MOSQUITTO, Broker, MqttSubscriber, Msg, free_port, port_open

__all__ = [
    "MOSQUITTO",
    "MOSQUITTO_SUB",
    "SKIP_REASON",
    "Broker",
    "alert_payload",
    "Msg",
    "MqttSubscriber",
    "free_port",
    "mosquitto_sub",
    "mqtt_config",
    "port_open",
    "start_mosquitto_sub",
]

MOSQUITTO_SUB = shutil.which("mosquitto_sub")
SKIP_REASON = "mosquitto not installed (apt-get install mosquitto mosquitto-clients; `make test` does it)"


def alert_payload(i: int, station: str = "st1") -> dict:
    """A §6 alert payload with event id ``evt-<i>`` (numpy scores on purpose: the publisher must cope)."""
    return {
        "event_id": f"evt-{i:04d}",
        "station": station,
        "ts": "2026-01-02T03:04:05.678Z",
        "frame": 100 + i,
        "labels": ["error"],
        "scores": {"good": np.float32(0.1), "error": np.float32(0.93), "break": 0.02, "length": 0.7},
        "heatmap": None,
        "model": {"name": "default", "sha256": "ab" * 32},
    }


def mosquitto_sub(
    broker: Broker, topic: str, count: int = 1, timeout: int = 10, extra: Iterable[str] = ()
) -> list[str]:
    """Run plain ``mosquitto_sub`` until ``count`` messages or ``timeout`` s.

    Returns lines '<topic> <retain> <payload>'.

    Proves interoperability with a non-paho client (what a Node-RED or shell user would see).
    """
    if MOSQUITTO_SUB is None:
        pytest.skip("mosquitto_sub not installed (apt-get install mosquitto-clients)")
    cmd = [
        MOSQUITTO_SUB,
        "-h",
        broker.host,
        "-p",
        str(broker.port),
        "-t",
        topic,
        "-q",
        "1",
        "-C",
        str(count),
        "-W",
        str(timeout),
        "-F",
        "%t %r %p",
        *extra,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5)
    return [line for line in out.stdout.splitlines() if line]


def start_mosquitto_sub(broker: Broker, topic: str, extra: Iterable[str] = ()) -> subprocess.Popen:
    """Background ``mosquitto_sub -F '%t %r %p'``; the caller terminates it and reads stdout."""
    if MOSQUITTO_SUB is None:
        pytest.skip("mosquitto_sub not installed (apt-get install mosquitto-clients)")
    cmd = [MOSQUITTO_SUB, "-h", broker.host, "-p", str(broker.port), "-t", topic, "-q", "1", "-F", "%t %r %p", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def mqtt_broker_factory(tmp_path_factory):
    """``factory(listener_lines=(), global_lines=(), anonymous=True)`` → started Broker."""
    if MOSQUITTO is None:
        pytest.skip(SKIP_REASON)
    brokers: list[Broker] = []

    def make(
        listener_lines: Iterable[str] = (), global_lines: Iterable[str] = (), anonymous: bool = True, start: bool = True
    ) -> Broker:
        b = Broker(tmp_path_factory.mktemp("mosquitto"), listener_lines, global_lines, anonymous)
        brokers.append(b)
        return b.start() if start else b

    yield make
    for b in brokers:
        b.kill()


@pytest.fixture
def mqtt_broker(mqtt_broker_factory) -> Broker:
    """A real Mosquitto on a free loopback port (anonymous, persistence on)."""
    return mqtt_broker_factory()


@pytest.fixture
def mqtt_subscriber():
    """``factory(broker, topic="#", **kw)`` → subscribed MqttSubscriber; closed at teardown."""
    subs: list[MqttSubscriber] = []

    def make(broker: Broker, topic: str | Iterable[str] = "#", **kw) -> MqttSubscriber:
        s = MqttSubscriber(broker.host, broker.port, topic, **kw)
        subs.append(s)
        return s.wait_subscribed()

    yield make
    for s in subs:
        s.close()


def mqtt_config(broker: Broker | None = None, **kw):
    """An ``edge.config.MqttConfig`` for ``broker`` with test-friendly (fast) reconnect delays."""
    from edge.config import MqttConfig

    base: dict[str, Any] = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5}
    if broker is not None:
        base.update(host=broker.host, port=broker.port)
    base.update(kw)
    return MqttConfig(**base)


@pytest.fixture
def mqtt_publisher(tmp_path_factory):
    """``factory(broker, station="st1", outbox=None, start=True, log=None, **mqtt_cfg)`` → Publisher."""
    from edge.outbox import Outbox
    from edge.publish import Publisher

    made: list = []
    owned: list = []

    def make(broker: Broker | None, station: str = "st1", outbox=None, start: bool = True, log=None, **kw):
        if outbox is None:
            outbox = Outbox(tmp_path_factory.mktemp("outbox") / "outbox.sqlite")
            owned.append(outbox)
        p = Publisher(mqtt_config(broker, **kw), station, outbox, log=log)
        made.append(p)
        return p.start() if start else p

    yield make
    for p in made:
        with contextlib.suppress(Exception):
            p.stop(timeout=1.0)
    for ob in owned:
        ob.close()
