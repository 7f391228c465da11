"""The bench's daemon runs, on the shared harness (``convert.harness``): a private Mosquitto, a loopback
subscriber, and ``python -m edge`` runs on generated configs, with their log events, RSS samples and
``stats`` messages.

Knobs used to load the daemon on purpose ("forced" runs): ``decision.thresholds.error: 0`` makes
every frame flag ``error`` and ``decision.max_event_frames: K`` then closes one event (one alert, one
heatmap) every K frames: K = 20 gives heatmaps on 5 % of frames. ``SAMPLES_FLOOD`` turns training
samples on at the highest rates the config allows, so that the sample path (ring buffer, queue, PNG
writes, publishing) is saturated; :class:`JunkFlood` floods a station's feedback topic with junk.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ConfigError, ModelError

from ..harness import MOSQUITTO, Broker, DaemonProcess, HarnessError, LogEvent, MqttSubscriber, errors, first, summary
from .common import ROI, ROOT, subprocess_env


class LocalBroker:
    """A private Mosquitto on a free loopback port (``convert.harness.Broker``, no persistence)."""

    def __init__(self, work: Path) -> None:
        if MOSQUITTO is None:
            raise ConfigError("bench: mosquitto not found (apt-get install mosquitto; `make bench` does it)")
        self.broker = Broker(work / "mosquitto", persistence=False)
        self.port = self.broker.port
        try:
            self.broker.start(timeout=5)
        except HarnessError:
            raise ConfigError(f"bench: mosquitto did not start on port {self.port} (log: {self.broker.log})") from None

    def stop(self) -> None:
        self.broker.stop(timeout=5)


# what the bench's subscriber reads: every station topic except ``sample`` (PNGs, up to 20 a second
# in the samples runs) and ``feedback`` (the junk flood): a collector and the floor's publisher live on
# other machines, and here their share of the 2 cores would be charged to the station being measured
LISTEN_KINDS = ("status", "alert", "stats", "defect", "heatmap", "health", "model/state")

# samples.enabled at the config's maximum rates (10 uncertain and 10 random good frames a second),
# the ring buffer (ring_mb default 16, every 2nd crop), queue and publishing at their defaults
SAMPLES_FLOOD: dict[str, Any] = {"uncertain_per_h": 36_000, "random_good_per_h": 36_000}


class Listener:
    """Loopback subscriber on the station topics of ``LISTEN_KINDS`` (``convert.harness.MqttSubscriber``):
    every message with its receive time."""

    def __init__(self, port: int) -> None:
        self.sub = MqttSubscriber(
            "127.0.0.1",
            port,
            [f"seamqc/+/{k}" for k in LISTEN_KINDS],
            client_id=f"seamqc-bench-{os.getpid()}",
        )
        try:
            self.sub.wait_subscribed(5)
        except AssertionError:
            self.sub.close()
            raise ConfigError(f"bench: cannot subscribe on the local broker (port {port})") from None

    def of(self, station: str, kind: str) -> list[tuple[float, dict]]:
        """(receive time, JSON payload) of every message on ``seamqc/<station>/<kind>``."""
        return self.sub.payloads(f"seamqc/{station}/{kind}")

    def close(self) -> None:
        self.sub.close()


@dataclass
class DaemonRun:
    tag: str
    rc: int
    t_spawn: float
    events: list[LogEvent]  # the daemon's JSON log events, each with its receive time
    rss: list[tuple[float, float]]  # (time, MB)
    tf_mapped: bool | None
    first_heatmap_t: float | None
    stop_t: float | None = None
    summary: dict = field(default_factory=dict)

    def event_time(self, name: str, predicate: Callable[[LogEvent], bool] = lambda e: True) -> float | None:
        """Receive time of the first ``name`` event for which ``predicate`` holds (None: never logged)."""
        ev = first(self.events, name, predicate)
        return ev.t if ev is not None else None


def daemon_config(
    work: Path,
    tag: str,
    bundle: Path,
    video: Path,
    port: int | None,
    *,
    threads: int,
    realtime: bool,
    loop: bool,
    forced_every: int | None,
    heatmaps: str | None,
    stats_interval: float,
    hm_threads: int,
    health: bool = True,
    hm_mqtt: bool = True,
    homeassistant: bool = False,
    samples: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
) -> tuple[Path, str]:
    """A daemon config for one run → (path, station); ``forced_every`` loads it on purpose (module doc);
    ``samples``: ``samples.enabled`` with these keys (e.g. ``SAMPLES_FLOOD``) in a folder of its own;
    ``model``: more ``model`` keys (the swap run's ``watch_s``)."""
    import yaml

    station = f"bench-{tag}"
    decision: dict[str, Any] = {"expected_length": "2mm", "min_frames": 2, "window": 3}
    if forced_every:
        decision = {
            "expected_length": "any",
            "min_frames": 1,
            "window": 1,
            "thresholds": {"error": 0.0},
            "max_event_frames": int(forced_every),
        }
    hm_dir = work / f"heatmaps-{tag}"
    shutil.rmtree(hm_dir, ignore_errors=True)
    cfg = {
        "station": station,
        "camera": {
            "source": "file",
            "device": str(video),
            "width": 640,
            "height": 480,
            "fps": 30,
            "roi": ROI,
            "realtime": realtime,
            "loop": loop,
        },
        "model": {"bundle": str(bundle), "threads": threads, **(model or {})},
        "decision": decision,
        "mqtt": (
            {
                "host": "127.0.0.1",
                "port": port,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1,
                "homeassistant": homeassistant,
            }
            if port
            else {"enabled": False}
        ),
        "heatmaps": (
            {
                "enabled": True,
                "dir": str(hm_dir),
                "method": heatmaps,
                "threads": hm_threads,
                "max_mb": 200,
                "mqtt": hm_mqtt,
            }
            if heatmaps
            else {"enabled": False, "dir": str(hm_dir)}
        ),
        "health": {"enabled": health},
        "outbox": str(work / f"outbox-{tag}.sqlite"),
        "stats_interval": stats_interval,
        "log_level": "INFO",
    }
    if samples is not None:
        s_dir = work / f"samples-{tag}"
        shutil.rmtree(s_dir, ignore_errors=True)  # a run's unpublished samples would be the next one's backlog
        cfg["samples"] = {"enabled": True, "dir": str(s_dir), **samples}
    for suffix in ("", "-wal", "-shm"):
        Path(str(cfg["outbox"]) + suffix).unlink(missing_ok=True)
    p = work / f"daemon-{tag}.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p, station


def run_daemon(
    cfg: Path,
    tag: str,
    work: Path,
    *,
    max_frames: int | None = None,
    steady_s: float | None = None,
    stop_after_heatmap_s: float | None = None,
    stop_when: Callable[[], bool] | None = None,
    timeout: float = 120.0,
) -> DaemonRun:
    """Run ``python -m edge`` until it exits, ``steady_s`` after its ``ready`` event, or a condition."""
    import psutil

    args = ["--max-frames", str(max_frames)] if max_frames else []
    hm_dir = work / f"heatmaps-{tag}"
    proc = DaemonProcess(cfg, *args, log_path=work / f"daemon-{tag}.log", env=subprocess_env(), cwd=ROOT)
    t_spawn = proc.t_spawn
    ps = psutil.Process(proc.pid)
    rss: list[tuple[float, float]] = []
    tf_mapped = None
    first_hm = None
    running_t = None
    stop_t = None
    try:
        while proc.poll() is None:
            now = time.time()
            try:
                rss.append((now, ps.memory_info().rss / 2**20))
            except psutil.Error:
                pass
            if running_t is None and first(proc.snapshot(), "ready") is not None:
                running_t = now
            if first_hm is None and hm_dir.is_dir() and any(hm_dir.glob("*.json")):
                first_hm = now
            if tf_mapped is None and running_t is not None and now - running_t > 0.5:
                try:
                    tf_mapped = any("site-packages/tensorflow/" in m.path for m in ps.memory_maps())
                except psutil.Error:
                    pass
            want_stop = (
                (steady_s is not None and running_t is not None and now - running_t >= steady_s)
                or (
                    stop_after_heatmap_s is not None and first_hm is not None and now - first_hm >= stop_after_heatmap_s
                )
                or (stop_when is not None and stop_when())
            )
            if want_stop and stop_t is None:
                stop_t = now
                proc.send_signal(signal.SIGTERM)
            if now - t_spawn > timeout:
                proc.kill()
                break
            time.sleep(0.1)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = proc.snapshot()
    run = DaemonRun(tag, rc, t_spawn, events, rss, tf_mapped, first_hm, stop_t, summary=summary(events))
    if rc not in (0, -signal.SIGTERM):
        tail = errors(events)[-1:] or [proc.tail(1) or "(no output)"]
        raise ModelError(
            f"bench: daemon run {tag} exited with {rc}: {tail[0][:300]} (log: {work / f'daemon-{tag}.log'})"
        )
    return run


def stats_fps(listener: Listener, station: str, run: DaemonRun) -> dict[str, Any]:
    """fps between the daemon's periodic stats messages (start-up and shutdown excluded)."""
    stop_line = run.event_time("stopping")
    msgs = [(t, m) for t, m in listener.of(station, "stats") if stop_line is None or t < stop_line]
    pts = [(float(m["uptime_s"]), int(m["frames"])) for _, m in msgs if m.get("frames", 0) > 0]
    if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
        (u0, f0), (u1, f1) = pts[0], pts[-1]
        return {
            "fps": round((f1 - f0) / (u1 - u0), 2),
            "frames": f1 - f0,
            "seconds": round(u1 - u0, 2),
            "source": "stats (Δframes/Δuptime)",
            "stats_messages": len(pts),
        }
    s = run.summary
    return {
        "fps": s.get("fps"),
        "frames": s.get("frames"),
        "seconds": s.get("uptime_s"),
        "source": "summary (includes start-up)",
        "stats_messages": len(pts),
    }


def steady_rss(run: DaemonRun, after: float | None) -> dict[str, float | None]:
    """Max / median RSS after ``after`` (start-up and model loading excluded)."""
    pts = [mb for t, mb in run.rss if after is None or t >= after]
    if not pts:
        return {"max": None, "median": None}
    return {"max": round(max(pts), 1), "median": round(float(np.median(pts)), 1), "samples": len(pts)}


def last_stats(listener: Listener, station: str, run: DaemonRun) -> dict[str, Any]:
    """The station's last periodic ``stats`` message before its shutdown line (counters of the run)."""
    stop_line = run.event_time("stopping")
    msgs = [m for t, m in listener.of(station, "stats") if stop_line is None or t < stop_line]
    return msgs[-1] if msgs else {}


def junk_payloads(n: int, labels: list[str], seed: int = 14) -> list[bytes]:
    """``n`` payloads a station must refuse on its feedback topic, one per line for ``mosquitto_pub -l``
    (no newline and no NUL inside: it sends each line as a C string); one in ten is well-formed feedback
    on an ``event_id`` the station never raised (it passes the parser: queue, ``feedback_unknown``)."""
    rng = random.Random(seed)
    lab = labels[0] if labels else "error"

    def one(i: int) -> bytes:
        k = i % 10
        if k == 0:
            return json.dumps(
                {"event_id": f"elsewhere-{i}", "verdict": "false_alarm", "labels": [], "by": "bench"}
            ).encode()
        if k == 1:
            return bytes(rng.choice(range(1, 256)) for _ in range(rng.randint(1, 200))).replace(b"\n", b"x")
        if k == 2:
            return b'{"event_id": "\xc3\x28", "verdict": "confirmed"}'  # not UTF-8
        if k == 3:
            return b"{" * 5000  # over 4 KB
        if k == 4:
            return rng.choice([b"[1, 2]", b'"confirmed"', b"42", b"null", b"{", b""])
        if k == 5:
            return json.dumps({"event_id": f"e-{i}", "verdict": "confirmed", "extra": 1}).encode()
        if k == 6:
            return json.dumps({"event_id": f"e-{i}", "verdict": "maybe"}).encode()
        if k == 7:
            return json.dumps({"event_id": f"e-{i}", "verdict": "false_alarm", "labels": ["no-such-label"]}).encode()
        if k == 8:
            return json.dumps({"missed": {"ts": "yesterday", "labels": [lab]}}).encode()
        return json.dumps({"event_id": "\u0007bell", "verdict": "confirmed", "by": 7}).encode()

    return [one(i) for i in range(n)]


class JunkFlood:
    """``n`` junk payloads (``junk_payloads``) on ``seamqc/<station>/feedback`` at QoS 1, spread evenly
    over ``duration_s`` once the station is online: fed line by line to ``mosquitto_pub -l``, so the
    publisher is a small C process and not Python in the bench's process."""

    def __init__(
        self, port: int, station: str, listener: Listener, n: int, duration_s: float, labels: list[str]
    ) -> None:
        mosquitto_pub = shutil.which("mosquitto_pub")
        if mosquitto_pub is None:
            raise ConfigError(
                "bench: mosquitto_pub not found (apt-get install mosquitto-clients; `make bench` does it)"
            )
        self.cmd = [mosquitto_pub, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-l"]
        self.cmd += ["-t", f"seamqc/{station}/feedback", "-i", f"seamqc-bench-junk-{os.getpid()}"]
        self.station = station
        self.listener = listener
        self.lines = junk_payloads(n, labels)
        self.duration_s = duration_s
        self.sent = 0
        self.started: float | None = None
        self.finished: float | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="junk-flood", daemon=True)

    def start(self) -> JunkFlood:
        self._thread.start()
        return self

    def _online(self) -> bool:
        return any(m.text.startswith("online") for m in self.listener.sub.on(f"seamqc/{self.station}/status"))

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while not self._online():
            if self._stop.is_set() or time.monotonic() > deadline:
                self.error = "the station never came online"
                return
            time.sleep(0.05)
        proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stdin is not None
        step = 0.05
        batches = max(1, int(self.duration_s / step))
        per = -(-len(self.lines) // batches)
        t0 = self.started = time.monotonic()
        try:
            for b in range(batches):
                if self._stop.is_set():
                    break
                chunk = self.lines[b * per : (b + 1) * per]
                if not chunk:
                    break
                proc.stdin.write(b"\n".join(chunk) + b"\n")
                proc.stdin.flush()
                self.sent += len(chunk)
                time.sleep(max(0.0, t0 + (b + 1) * step - time.monotonic()))
            proc.stdin.close()
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.error = f"mosquitto_pub: {e}"
            proc.kill()
            proc.wait()
        self.finished = time.monotonic()
        if proc.returncode not in (0, None) and self.error is None:
            err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
            self.error = f"mosquitto_pub exited with {proc.returncode}: {err[:200]}"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=40)
