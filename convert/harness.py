"""The one harness that runs the daemon from outside: a private Mosquitto, ``python -m edge`` with
``--log-format json`` and its parsed events, and an MQTT subscriber.

Why one: the demo, the bench and the tests each used to start their own broker and parse the daemon's
log prose (" ALERT ", "stopping (1 frames)"); every rewording of a message broke one of them. The
daemon's JSON lines (``edge.logfmt``: ``event`` plus fields) are the contract now, and this module is
their only reader.

* ``Broker(workdir).start()``: Mosquitto on a free loopback port, generated config, ``restart``/``kill``.
* ``DaemonProcess(config, *args)``: the daemon as a subprocess; ``events``, ``wait_event``, iteration
  as events arrive, ``alerts``/``summary``/``errors``; Popen-like ``wait``/``poll``/``send_signal``.
* ``MqttSubscriber(host, port, topic)``: paho client collecting every message (``wait_for``,
  ``wait_count``, ``payloads``), optionally calling ``on_message`` for each.
* ``parse_log(text)`` and ``alerts``/``summary``/``errors`` of saved JSON logs.

The tests import it (tests/support); nothing in ``edge`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)
NO_MOSQUITTO = "mosquitto not installed (apt-get install mosquitto mosquitto-clients)"


class HarnessError(RuntimeError):
    """A broker that does not start, a daemon event that does not come."""


# ----------------------------------------------------------------------------- broker


_HANDED_OUT: set[int] = set()
_PORTS_LOCK = threading.Lock()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports (Linux default 32768..60999)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def port_span(low: int, high: int, worker: str | None = None, workers: str | None = None) -> tuple[int, int]:
    """The ports this process may hand out: those below the ephemeral range ``low..high`` (above it
    where too few lie below), and under pytest-xdist (``worker`` "gw3" of ``workers`` "8") only the
    worker's own equal share, so two workers never pick the same port between its bind check and the
    broker's bind, and a worker's leftover client never reaches another worker's broker."""
    first, last = (10000, low - 1) if low > 11000 else (high + 1, 65535)
    if worker and worker.startswith("gw") and worker[2:].isdigit() and (workers or "").isdigit():
        index, count = int(worker[2:]), int(workers or 1)
        if 0 <= index < count:
            share = (last - first + 1) // count
            first, last = first + index * share, first + (index + 1) * share - 1
    return first, last


def free_port() -> int:
    """A free TCP port on the loopback interface, below the kernel's ephemeral range.

    A port from the ephemeral range (what ``bind(0)`` returns) can be taken before the broker
    binds it: a client retrying a connect to that port with nothing listening can be handed the
    same port as its own source port and connect to itself (TCP self-connect; paho then reads its
    own CONNECT, "Unrecognised command 16"), and any other outgoing connection may get it too.
    Ports below the range are never handed out as source ports. Each port is given out once per
    process, and each xdist worker draws from its own share (``port_span``), so a test's leftover
    client cannot reach the next test's broker."""
    first, last = port_span(
        *ephemeral_range(), os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    )
    rng = random.SystemRandom()
    with _PORTS_LOCK:
        for _ in range(2000):
            port = rng.randint(first, last)
            if port in _HANDED_OUT:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    raise HarnessError(f"no free loopback port in {first}..{last}")


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True once something accepts TCP connections on ``host:port``."""
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
        persistence: bool = True,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        store = (
            [
                "persistence true",
                f"persistence_location {self.dir}/",
                "persistence_file mosquitto.db",
                # save every second too, so a SIGKILLed broker loses at most ~1 s of retained state
                "autosave_interval 1",
            ]
            if persistence
            else ["persistence false"]
        )
        lines = [
            f"listener {self.port} {self.host}",
            *listener_lines,
            f"allow_anonymous {'true' if anonymous else 'false'}",
            *store,
            f"log_dest file {self.log}",
            "log_type all",
            "connection_messages true",
            "max_queued_messages 100000",
            *global_lines,
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # otherwise Mosquitto drops to `mosquitto`, which cannot write here
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> Broker:
        """Start (if not running) and wait until it accepts connections."""
        if self.running:
            return self
        if MOSQUITTO is None:
            raise HarnessError(NO_MOSQUITTO)
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise HarnessError(f"mosquitto exited with {self.proc.returncode}: {err}\n{self.log_text()[-2000:]}")
            if port_open(self.host, self.port):
                return self
            time.sleep(0.05)
        self.kill()
        raise HarnessError(
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


# ----------------------------------------------------------------------------- subscriber


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    t: float  # time.monotonic() at arrival
    wall: float = 0.0  # time.time() at arrival (to compare with an alert's ``ts``)
    user: tuple[tuple[str, str], ...] = ()  # MQTT 5 user properties (the heatmap's ``event_id``)

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttSubscriber:
    """A paho client that collects every message, per topic, and reconnects by itself.

    ``persistent=True`` uses a clean_session=False session with a fixed client id and QoS-1
    subscriptions, so messages published while this subscriber is disconnected (e.g. during a broker
    restart, before it reconnects) are queued by the broker and still delivered. ``on_message`` is
    called (in paho's thread) with each message as it arrives.
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
        on_message: Callable[[Msg], None] | None = None,
        v5: bool = False,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topics = [topic] if isinstance(topic, str) else list(topic)
        self.qos = qos
        self.messages: list[Msg] = []
        self.on_message = on_message
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"seamqc-sub-{uuid.uuid4().hex[:8]}",
            # MQTT 5 (``v5``) to see user properties; it has clean_start at connect instead
            clean_session=None if v5 else not persistent,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if tls:
            self.client.tls_set(**tls)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]  # annotated int; a float sleeps too
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            client.subscribe([(t, self.qos) for t in self.topics])

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reason_codes: Any, properties: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        user = tuple(tuple(p) for p in (getattr(msg.properties, "UserProperty", None) or ()))
        m = Msg(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.monotonic(), time.time(), user)
        with self._cond:
            self.messages.append(m)
            self._cond.notify_all()
        if self.on_message is not None:
            self.on_message(m)

    def wait_subscribed(self, timeout: float = 10.0) -> MqttSubscriber:
        if not self._subscribed.wait(timeout):
            raise AssertionError(f"subscriber did not get SUBACK within {timeout:.1f}s")
        return self

    def on(self, topic: str) -> list[Msg]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[tuple[float, Any]]:
        """(wall-clock receive time, parsed JSON) of every message on ``topic`` that is JSON."""
        out = []
        for m in self.on(topic):
            try:
                out.append((m.wall, m.json()))
            except ValueError:
                continue
        return out

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


# ----------------------------------------------------------------------------- daemon events


@dataclass(frozen=True)
class LogEvent:
    """One line of the daemon's JSON log; a line that is not JSON keeps its text in ``msg``."""

    t: float  # time.time() when the line was read (0 for a saved log)
    data: dict[str, Any]
    line: str

    @property
    def name(self) -> str | None:
        """The ``event`` field (``alert``, ``stopping`` …), None for plain log records."""
        return self.data.get("event")

    @property
    def msg(self) -> str:
        return str(self.data.get("msg", ""))

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


def parse_line(line: str, t: float = 0.0) -> LogEvent | None:
    """A JSON log line → ``LogEvent``; a non-empty line that is not JSON → ``{"msg": line, "raw": True}``."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {"msg": line, "raw": True}
    return LogEvent(t, data, line)


def parse_log(text: str) -> list[LogEvent]:
    """Every record of a saved JSON log (e.g. ``DaemonProcess(log_path=…)``'s file)."""
    return [e for e in (parse_line(line) for line in text.splitlines()) if e is not None]


def alerts(events: Iterable[LogEvent]) -> list[dict[str, Any]]:
    """The alert payloads the daemon logged (each is in the outbox once logged), in order."""
    return [e.data["alert"] for e in events if e.name == "alert"]


def summary(events: Iterable[LogEvent]) -> dict[str, Any]:
    """The final stats of the run (the ``summary`` event), ``{}`` when it never got that far."""
    found = [e.data.get("stats") or {} for e in events if e.name == "summary"]
    return found[-1] if found else {}


def errors(events: Iterable[LogEvent]) -> list[str]:
    """The run's one-line errors as ``error: …`` (``exit`` events, or a plain line before JSON was on)."""
    out = []
    for e in events:
        if e.name == "exit" and e.get("error"):
            out.append(f"error: {e.get('error')}")
        elif e.get("raw") and e.msg.startswith("error:"):
            out.append(e.msg)
    return out


def first(events: Iterable[LogEvent], name: str, predicate: Callable[[LogEvent], bool] = lambda e: True) -> Any:
    """The first ``name`` event for which ``predicate`` holds (None: none)."""
    return next((e for e in events if e.name == name and predicate(e)), None)


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment: this checkout first on the import path, unbuffered output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


class DaemonProcess:
    """``python -m edge --config FILE --log-format json [args]`` with its events parsed as they arrive.

    stdout and stderr go through one pipe; a reader thread parses each line into a ``LogEvent``
    (receive time ``t``), appends it to ``events``, copies the raw line to ``log_path`` (flushed per
    line) and calls ``on_event``. ``wait`` returns once the process exited *and* every line was read.
    """

    def __init__(
        self,
        config: str | os.PathLike,
        *args: str,
        log_path: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = ROOT,
        on_event: Callable[[LogEvent], None] | None = None,
    ) -> None:
        self.config = Path(config)
        self.cmd = [sys.executable, "-m", "edge", "--config", str(config), "--log-format", "json", *args]
        self.log_path = Path(log_path) if log_path is not None else None
        self.on_event = on_event
        self.events: list[LogEvent] = []
        self._cond = threading.Condition()
        self._done = False
        self._logf: IO[str] | None = open(self.log_path, "w") if self.log_path else None  # noqa: SIM115
        self.t_spawn = time.time()
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=daemon_env(env),
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._read, name=f"daemon-{self.proc.pid}-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                ev = parse_line(line, time.time())
                if self._logf is not None:
                    self._logf.write(line if line.endswith("\n") else line + "\n")
                    self._logf.flush()
                if ev is None:
                    continue
                with self._cond:
                    self.events.append(ev)
                    self._cond.notify_all()
                if self.on_event is not None:
                    self.on_event(ev)
        finally:
            if self._logf is not None:
                self._logf.close()
            with self._cond:
                self._done = True
                self._cond.notify_all()

    # -- Popen-like
    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def terminate(self) -> None:
        self.proc.terminate()

    def kill(self) -> None:
        self.proc.kill()

    def wait(self, timeout: float | None = None) -> int:
        """The exit status once every output line is read; ``subprocess.TimeoutExpired`` as Popen."""
        rc = self.proc.wait(timeout)
        self._reader.join(timeout=10)
        return rc

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(30)

    # -- events
    def snapshot(self) -> list[LogEvent]:
        with self._cond:
            return list(self.events)

    def wait_event(
        self, name: str, predicate: Callable[[LogEvent], bool] = lambda e: True, timeout: float = 60.0
    ) -> LogEvent:
        """The first ``name`` event (already logged or coming) for which ``predicate`` holds.

        Raises ``HarnessError`` when the daemon exits without it or after ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = first(self.events, name, predicate)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    tail = "\n".join(e.line for e in self.events[-15:])
                    why = "the daemon exited" if self._done else f"{timeout} s passed"
                    raise HarnessError(f"no {name!r} event ({why}); last lines:\n{tail}")
                self._cond.wait(min(left, 1.0))

    def __iter__(self) -> Iterator[LogEvent]:
        """Every event, as it arrives, until the output ends (the process exited)."""
        i = 0
        while True:
            with self._cond:
                while i >= len(self.events) and not self._done:
                    self._cond.wait(1.0)
                if i >= len(self.events):
                    return
                ev = self.events[i]
            i += 1
            yield ev

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return alerts(self.snapshot())

    @property
    def summary(self) -> dict[str, Any]:
        return summary(self.snapshot())

    @property
    def errors(self) -> list[str]:
        return errors(self.snapshot())

    def tail(self, n: int = 15) -> str:
        """The last ``n`` lines, for error messages."""
        return "\n".join(e.line for e in self.snapshot()[-n:])
