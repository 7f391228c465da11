"""A station simulator that speaks the MQTT contract (ARCHITECTURE.md §6) for the dashboard's tests.

Why not daemons: 20 real daemons (LiteRT, camera threads) do not fit a 2-core test machine next to
the rest of the suite; what the dashboard reads is the topics, so each simulated station is its own
paho client with the daemon's last will (retained ``offline`` on ``status``) and publishes the exact
payload shapes: ``status`` online, retained ``stats`` (flat numbers), retained ``health``, retained
``defect``, QoS 1 ``alert`` JSON, and a retained JPEG on ``heatmap`` with the ``event_id`` user property.

``kill(name)`` closes a station's socket without DISCONNECT, as a crash or a pulled cable does: the
broker then publishes its will.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from typing import Any, cast

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

LABELS = ("error", "break", "length")


def heatmap_jpeg(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    """A small overlay-like JPEG (a seam line and a coloured blob), a few KB like the daemon's."""
    w, h = size
    rng = np.random.default_rng(seed)
    img: np.ndarray = np.full((h, w, 3), 60, np.uint8)
    img[:, :] += rng.integers(0, 30, (h, w, 1), dtype=np.uint8)
    cv2.line(img, (0, h // 2), (w, h // 2), (200, 200, 200), 3)
    cx, cy = int(rng.integers(20, w - 20)), int(rng.integers(20, h - 20))
    cv2.circle(img, (cx, cy), 18, (0, 0, 255), -1)
    img = cv2.GaussianBlur(img, (9, 9), 0)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return buf.tobytes()


class SimStation:
    """One station: its own MQTT 5 client with the daemon's will, and counters for its payloads."""

    def __init__(self, host: str, port: int, name: str, prefix: str = "seamqc") -> None:
        self.name = name
        self.base = f"{prefix}/{name}"
        self.alerts = 0
        self.frames = 0
        self.started = time.monotonic()
        self.connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sim-{name}-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5
        )
        self.client.will_set(f"{self.base}/status", "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        client.publish(f"{self.base}/status", "online", qos=1, retain=True)
        client.publish(f"{self.base}/defect", "OFF", qos=1, retain=True)
        self.connected.set()

    def publish(self, kind: str, payload: bytes | str, qos: int = 0, retain: bool = False, **user: str) -> Any:
        props = None
        if user:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = list(user.items())
        return self.client.publish(f"{self.base}/{kind}", payload, qos=qos, retain=retain, properties=props)

    def stats(self, fps: float = 29.5) -> dict[str, Any]:
        """The daemon's flat stats (a subset of its keys, same names and types)."""
        up = time.monotonic() - self.started
        self.frames += int(fps)
        payload = {
            "station": self.name,
            "fps": fps,
            "frames": self.frames,
            "alerts": self.alerts,
            "dropped_frames": 0,
            "camera": "ok",
            "inference_ms_p50": 12.5,
            "inference_ms_p99": 20.25,
            "outbox_depth": 0,
            "mqtt_refused": 0,
            "heatmaps_saved": self.alerts,
            "heatmaps_dropped": 0,
            "uptime_s": round(up, 1),
            "defects_per_hour": round(self.alerts * 3600.0 / max(1.0, up), 2),
            "health_state": "ok",
            "health_ok": True,
            "health_sharpness_ratio": 1.02,
            "health": {"state": "ok"},
        }
        self.publish("stats", json.dumps(payload), qos=0, retain=True)
        return payload

    def health(self, conditions: tuple[str, ...] = ()) -> dict[str, Any]:
        payload = {
            "state": ",".join(conditions) or "ok",
            "conditions": list(conditions),
            "metrics": {"sharpness_ratio": 0.4 if "blurred" in conditions else 1.01, "mean": 118.0},
            "baseline": {"sharpness": 310.0},
            "frames": self.frames,
            "station": self.name,
            "ts": "2026-01-02T03:04:05.678Z",
        }
        self.publish("health", json.dumps(payload), qos=1, retain=True)
        return payload

    def alert(self, labels: tuple[str, ...] = ("error",)) -> dict[str, Any]:
        self.alerts += 1
        payload = {
            "event_id": f"{self.name}-evt-{self.alerts:06d}",
            "station": self.name,
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z",
            "frame": 100 * self.alerts,
            "labels": list(labels),
            "scores": {"good": 0.05, "error": 0.2, "break": 0.12, "length": 0.3, **{lb: 0.91 for lb in labels}},
            "heatmap": None,
            "model": {"name": "default", "sha256": "ab" * 32},
            "first_frame": 100 * self.alerts - 3,
            "last_frame": 100 * self.alerts + 2,
            "track": None,
        }
        self.publish("alert", json.dumps(payload), qos=1)
        return payload

    def heatmap(self, event_id: str, jpeg: bytes) -> None:
        self.publish("heatmap", jpeg, qos=0, retain=True, event_id=event_id)

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker publishes the will."""
        # a real (TCP or TLS) socket: paho types it as its SocketLike protocol, which has no shutdown()
        sock = cast("socket.socket | None", self.client.socket())
        self.client.loop_stop()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


class Fleet:
    """``n`` simulated stations ``sim-01``…; ``tick`` publishes one round of stats (and more)."""

    def __init__(self, host: str, port: int, n: int, prefix: str = "seamqc") -> None:
        self.stations = {}
        for i in range(1, n + 1):
            st = SimStation(host, port, f"sim-{i:02d}", prefix)
            self.stations[st.name] = st
        self.jpegs = [heatmap_jpeg(i) for i in range(4)]

    def wait_connected(self, timeout: float = 10.0) -> Fleet:
        deadline = time.monotonic() + timeout
        for st in self.stations.values():
            if not st.connected.wait(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"{st.name} did not connect within {timeout} s")
        return self

    def start(self) -> Fleet:
        """Each station's first round: stats, health, one alert and its heatmap."""
        for i, st in enumerate(self.stations.values()):
            st.stats()
            st.health(("blurred",) if i == 2 else ())
            a = st.alert((LABELS[i % 3],))
            st.heatmap(a["event_id"], self.jpegs[i % len(self.jpegs)])
        return self

    def close(self) -> None:
        for st in self.stations.values():
            st.close()


class DashboardProcess:
    """``python -m convert dashboard`` in a subprocess on a free HTTP port; ``url`` once it listens."""

    def __init__(self, broker_host: str, broker_port: int, *extra: str, env: dict[str, str] | None = None) -> None:
        import os
        import subprocess
        import sys
        from pathlib import Path

        root = Path(__file__).resolve().parents[2]
        cmd = [sys.executable, "-m", "convert", "dashboard", "--broker", broker_host, "--port", str(broker_port)]
        self.proc = subprocess.Popen(
            [*cmd, "--http-port", "0", *extra],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.head: list[str] = []
        self.url = ""
        self.stderr = ""
        deadline = time.monotonic() + 60
        while not self.url and time.monotonic() < deadline:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line:
                break
            self.head.append(line)
            if line.startswith("open http://") and "token=" not in line:
                self.url = line.split()[1].rstrip("/")
        if not self.url:
            raise AssertionError(f"the dashboard printed no URL: {self.head} {self.stop()}")

    def wait_subscribed(self, headers: dict[str, str] | None = None, timeout: float = 15.0) -> DashboardProcess:
        """Until the dashboard's subscriptions are acknowledged: alerts (not retained) sent before are lost."""
        import urllib.request

        from tests.support.wait import wait_until

        def subscribed() -> bool:
            req = urllib.request.Request(self.url + "/api/state", headers=headers or {})
            with urllib.request.urlopen(req, timeout=5) as r:
                return bool(json.loads(r.read())["broker"]["connected"])

        wait_until(subscribed, timeout=timeout, what="the dashboard subscribed", every=0.05)
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> str:
        """Stop it (SIGTERM, then SIGKILL) and return what it printed on stderr."""
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr and not self.proc.stderr.closed:
            self.stderr = self.proc.stderr.read()
            self.proc.stderr.close()
        if self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()
        return self.stderr
