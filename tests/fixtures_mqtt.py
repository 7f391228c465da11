"""MQTT fixtures (owned by the publish/outbox area): a real Mosquitto on a free loopback port.

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

Helpers: ``MqttSubscriber`` (paho client collecting messages per topic, ``wait_for``), ``wait_until``,
``mosquitto_sub(broker, topic, count, timeout)`` (plain ``mosquitto_sub`` subprocess, blocking) and
``start_mosquitto_sub(...)`` (background ``Popen``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)
MOSQUITTO_SUB = shutil.which("mosquitto_sub")
SKIP_REASON = "mosquitto not installed (apt-get install mosquitto mosquitto-clients; `make test` does it)"


def free_port() -> int:
    """A currently free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Broker:
    """One Mosquitto process with a generated config; ``restart()`` keeps port and persistence."""

    def __init__(
        self,
        workdir: Path,
        listener_lines: Iterable[str] = (),
        global_lines: Iterable[str] = (),
        anonymous: bool = True,
        port: int | None = None,
    ):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        lines = [
            f"listener {self.port} {self.host}",
            *listener_lines,
            f"allow_anonymous {'true' if anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.dir}/",
            "persistence_file mosquitto.db",
            # Save every second too, so a SIGKILLed broker loses at most ~1 s of retained state.
            "autosave_interval 1",
            f"log_dest file {self.log}",
            "log_type all",
            "connection_messages true",
            "max_queued_messages 100000",
            *global_lines,
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # otherwise Mosquitto drops to `mosquitto`, which cannot write here
        self.conf.write_text("\n".join(lines) + "\n")

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> Broker:
        if self.running:
            return self
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}\n{self.log_text()[-2000:]}")
            if port_open(self.host, self.port):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"mosquitto did not accept connections on {self.port} within {timeout}s\n{self.log_text()[-2000:]}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: a clean shutdown that writes the persistence file."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash; nothing is flushed."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self, timeout: float = 10.0) -> Broker:
        self.stop()
        return self.start(timeout)

    def _signal(self, sig: int, timeout: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        deadline = time.monotonic() + timeout
        while port_open(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def saves(self) -> int:
        """How many times the broker wrote its persistence file (autosave runs every second)."""
        return self.log_text().count("Saving in-memory database")

    def wait_saved(self, timeout: float = 10.0) -> None:
        """Wait for the next autosave, so state created before this call survives a SIGKILL."""
        n = self.saves()
        deadline = time.monotonic() + timeout
        while self.saves() <= n:
            if time.monotonic() > deadline:
                raise AssertionError(f"mosquitto did not autosave within {timeout}s")
            time.sleep(0.05)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"Broker({self.host}:{self.port}, running={self.running})"


# -- subscribers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    t: float  # time.monotonic() at arrival

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")

    def json(self):
        import json

        return json.loads(self.payload)


class MqttSubscriber:
    """A paho client that collects every message, per topic, and reconnects by itself.

    ``persistent=True`` uses a clean_session=False session with a fixed client id and QoS-1
    subscriptions, so messages published while this subscriber is disconnected (e.g. during a broker
    restart, before it reconnects) are queued by the broker and still delivered.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic: str | Iterable[str] = "#",
        qos: int = 1,
        persistent: bool = False,
        client_id: str | None = None,
        tls: dict | None = None,
        username: str | None = None,
        password: str | None = None,
    ):
        import paho.mqtt.client as mqtt

        self.topics = [topic] if isinstance(topic, str) else list(topic)
        self.qos = qos
        self.messages: list[Msg] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{uuid.uuid4().hex[:8]}",
            clean_session=not persistent,
        )
        if tls:
            self.client.tls_set(**tls)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            client.subscribe([(t, self.qos) for t in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._subscribed.set()

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append(Msg(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.monotonic()))
            self._cond.notify_all()

    def wait_subscribed(self, timeout: float = 10.0) -> MqttSubscriber:
        if not self._subscribed.wait(timeout):
            raise AssertionError(f"subscriber did not get SUBACK within {timeout:.1f}s")
        return self

    def on(self, topic: str) -> list[Msg]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, topic: str, predicate: Callable[[Msg], bool] = lambda m: True, timeout: float = 10.0) -> Msg:
        """First message on ``topic`` (already received or arriving) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if m.topic == topic and predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(m.topic, m.payload[:80], m.retain) for m in self.messages[-10:]]
                    raise AssertionError(f"no matching message on {topic!r} within {timeout}s; last seen: {seen}")
                self._cond.wait(left)

    def wait_count(
        self, topic: str, n: int, timeout: float = 10.0, predicate: Callable[[Msg], bool] = lambda m: True
    ) -> list[Msg]:
        """Wait until at least ``n`` matching messages arrived on ``topic``; returns them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [m for m in self.messages if m.topic == topic and predicate(m)]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(got)}/{n} messages on {topic!r} within {timeout}s")
                self._cond.wait(left)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond`` every 20 ms; an AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


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

    base = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5}
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
