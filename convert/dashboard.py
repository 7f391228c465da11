"""``python -m convert dashboard``: one web page for every station on a broker, made for a TV on the floor.

Why a page of its own: the alert JSON carries the heatmap as a path on the Pi's disk, so nobody on
the floor could see *why* a seam was flagged, whether a station is up, or its camera healthy. This
command subscribes to every station's topics (ARCHITECTURE.md §6), keeps a small bounded state per
station and serves it on a local page (no asset from the internet: the page, its script and its
style are in ``convert/static``). Operators answer alerts there (Confirm / False alarm / Missed
defect); the answers go to ``<prefix>/<station>/feedback`` at QoS 1.

Everything is bounded: the number of stations, the alerts kept per station, payload sizes (the
broker is told our maximum packet size, MQTT 5), the labels per station. What does not fit the
contract is counted (``/metrics``) and logged once per topic kind and reason, never raised.

Security: it listens on 127.0.0.1 unless ``--bind`` says otherwise, and any other address needs a
``--token``, checked on every request (cookie, ``Authorization: Bearer``, ``X-SeamQC-Token`` or
``?token=``). Without a token, requests must name a loopback host (a DNS-rebinding page cannot
reach it). Feedback is accepted as JSON only, for stations seen on the broker.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import Counter, deque
from datetime import UTC, datetime
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from convert.brokerargs import read_password
from edge.errors import ConfigError

LOG = logging.getLogger("seamqc.dashboard")
STATIC = Path(__file__).resolve().parent / "static"
_STATIC_FILES = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}

KINDS = ("status", "stats", "health", "defect", "alert", "heatmap")
MAX_STATIONS = 500
MAX_ALERTS = 50  # kept per station (the page shows the newest PAGE_ALERTS)
PAGE_ALERTS = 6
MAX_LABELS = 16  # distinct labels counted per station
MAX_JSON_BYTES = 64 * 1024
MAX_JPEG_BYTES = 256 * 1024  # the contract's heatmap is ≤ 60 KB; room for other producers, no more
MAX_PACKET = 1024 * 1024  # told to the broker (MQTT 5): it drops anything larger before sending it
FEEDBACK_MAX = 4096  # the feedback topic's contract (ARCHITECTURE.md §6)
TREND_BUCKETS = 12
TREND_BUCKET_S = 300.0  # 12 × 5 min: the last hour
MIN_RATE_WINDOW_S = 60.0  # a rate over less than this would shout 720/h after two alerts
TOKEN_COOKIE = "seamqc_dashboard_token"
TOKEN_ENV = "SEAMQC_DASHBOARD_TOKEN"
_STATION_RE = re.compile(r"^[^/+#\s\x00-\x1f\x7f]{1,64}$")
_EVENT_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_METRIC_RE = re.compile(r"[^a-zA-Z0-9_]")
VERDICTS = ("confirmed", "false_alarm")


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _number(v: Any) -> float | None:
    """A finite JSON number (bools count as 0/1), else None."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


class Station:
    """What the page and /metrics know about one station; every collection in it is bounded."""

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.status: str | None = None  # "online" / "offline" / None: not seen yet
        self.last_seen = now
        self.stats: dict[str, Any] | None = None
        self.health: dict[str, Any] | None = None
        self.defect: bool | None = None
        self.alerts: deque[dict[str, Any]] = deque(maxlen=MAX_ALERTS)
        self.by_id: dict[str, dict[str, Any]] = {}
        self.alerts_total = 0
        self.buckets: dict[str, deque[list[float]]] = {}  # label → [[bucket index, count], …]
        self.heatmap: bytes | None = None
        self.heatmap_seq = 0
        self.heatmap_event: str | None = None

    def add_alert(self, alert: dict[str, Any], now: float) -> bool:
        """Keep the alert (newest first); False for a duplicate (QoS 1 may deliver twice)."""
        if alert["event_id"] in self.by_id:
            return False
        if len(self.alerts) == self.alerts.maxlen:
            self.by_id.pop(self.alerts[-1]["event_id"], None)
        self.alerts.appendleft(alert)
        self.by_id[alert["event_id"]] = alert
        self.alerts_total += 1
        index = int(now // TREND_BUCKET_S)
        for label in alert["labels"]:
            if label not in self.buckets and len(self.buckets) >= MAX_LABELS:
                continue
            b = self.buckets.setdefault(label, deque(maxlen=TREND_BUCKETS + 1))
            if b and b[-1][0] == index:
                b[-1][1] += 1
            else:
                b.append([index, 1])
        return True

    def trend(self, now: float) -> dict[str, list[int]]:
        """Alerts per label in each of the last TREND_BUCKETS buckets, oldest first."""
        last = int(now // TREND_BUCKET_S)
        out = {}
        for label, b in sorted(self.buckets.items()):
            counts = [0] * TREND_BUCKETS
            for index, n in b:
                age = last - int(index)
                if 0 <= age < TREND_BUCKETS:
                    counts[TREND_BUCKETS - 1 - age] = int(n)
            out[label] = counts
        return out


class DashboardState:
    """Every station's state behind one lock: paho's thread writes, the HTTP threads read."""

    def __init__(self, prefix: str = "seamqc", clock: Any = time.time) -> None:
        self.prefix = prefix
        self.clock = clock
        self.started = clock()
        self.lock = threading.Lock()
        self.stations: dict[str, Station] = {}
        self.junk: Counter[tuple[str, str]] = Counter()
        self._logged: set[tuple[str, str]] = set()
        self.feedback: Counter[str] = Counter()
        self.messages = 0
        self.version = 0
        self.broker_connected = False
        self.broker = ""

    # ------------------------------------------------------------------ input (paho's thread)

    def _junk(self, kind: str, reason: str, topic: str) -> None:
        """Count a message that breaks the contract; log the first of each kind and reason only."""
        self.junk[(kind, reason)] += 1
        if (kind, reason) not in self._logged:
            self._logged.add((kind, reason))
            LOG.warning(
                "ignoring a message on %s: %s (counted in /metrics as seamqc_dashboard_junk_messages_total; "
                "further %s messages like it are not logged)",
                topic[:200],
                reason,
                kind,
            )

    def _station(self, name: str, topic: str, kind: str, now: float) -> Station | None:
        st = self.stations.get(name)
        if st is None:
            if len(self.stations) >= MAX_STATIONS:
                self._junk(kind, f"more than {MAX_STATIONS} stations", topic)
                return None
            st = self.stations[name] = Station(name, now)
        st.last_seen = now
        return st

    def on_message(self, topic: str, payload: bytes, user: dict[str, str] | None = None) -> None:
        """One MQTT message: parsed against the contract, kept, or counted as junk. Never raises."""
        try:
            with self.lock:
                self.messages += 1
                self._handle(topic, bytes(payload), user or {})
        except Exception as e:  # noqa: BLE001 - a bug here must not kill paho's thread
            with self.lock:
                self._junk("any", f"unexpected {type(e).__name__}", topic)

    def _json(self, kind: str, topic: str, payload: bytes) -> dict[str, Any] | None:
        if len(payload) > MAX_JSON_BYTES:
            self._junk(kind, f"oversized (> {MAX_JSON_BYTES} bytes)", topic)
            return None
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self._junk(kind, "not JSON", topic)
            return None
        if not isinstance(data, dict):
            self._junk(kind, "not a JSON object", topic)
            return None
        return data

    def _handle(self, topic: str, payload: bytes, user: dict[str, str]) -> None:
        parts = topic.split("/")
        kind = parts[-1] if parts else "?"
        if len(parts) != 3 or parts[0] != self.prefix or kind not in KINDS:
            self._junk("topic", "unexpected topic", topic)
            return
        name = parts[1]
        if not _STATION_RE.match(name):
            self._junk(kind, "bad station name", topic)
            return
        now = self.clock()
        if not payload and kind in ("status", "stats", "health", "defect", "heatmap"):
            st = self.stations.get(name)  # a retained message was cleared
            if st is not None and kind == "heatmap":
                st.heatmap, st.heatmap_event = None, None
                st.heatmap_seq += 1
                self.version += 1
            return
        if kind == "status":
            text = payload.decode("utf-8", "replace").strip()
            if text not in ("online", "offline"):
                self._junk(kind, "not online/offline", topic)
                return
            st = self._station(name, topic, kind, now)
            if st is not None:
                st.status = text
        elif kind == "defect":
            text = payload.decode("utf-8", "replace").strip()
            if text not in ("ON", "OFF"):
                self._junk(kind, "not ON/OFF", topic)
                return
            st = self._station(name, topic, kind, now)
            if st is not None:
                st.defect = text == "ON"
        elif kind in ("stats", "health"):
            data = self._json(kind, topic, payload)
            if data is None:
                return
            if kind == "health" and not isinstance(data.get("state"), str):
                self._junk(kind, "no state", topic)
                return
            st = self._station(name, topic, kind, now)
            if st is not None:
                setattr(st, kind, data)
        elif kind == "alert":
            data = self._json(kind, topic, payload)
            if data is None:
                return
            alert = self._alert(data)
            if alert is None:
                self._junk(kind, "no event_id or labels", topic)
                return
            st = self._station(name, topic, kind, now)
            if st is not None:
                alert["received"] = now
                st.add_alert(alert, now)
        else:  # heatmap
            if len(payload) > MAX_JPEG_BYTES:
                self._junk(kind, f"oversized image (> {MAX_JPEG_BYTES} bytes)", topic)
                return
            if not (payload.startswith(b"\xff\xd8") and len(payload) > 64):
                self._junk(kind, "not a JPEG", topic)
                return
            st = self._station(name, topic, kind, now)
            if st is not None:
                st.heatmap = payload
                st.heatmap_seq += 1
                ev = user.get("event_id")
                st.heatmap_event = ev if isinstance(ev, str) and _EVENT_RE.match(ev) else None
        self.version += 1

    @staticmethod
    def _alert(data: dict[str, Any]) -> dict[str, Any] | None:
        """The fields the page shows, checked; None when the alert breaks the contract."""
        ev, labels = data.get("event_id"), data.get("labels")
        if not (isinstance(ev, str) and _EVENT_RE.match(ev)):
            return None
        if not (isinstance(labels, list) and 0 < len(labels) <= MAX_LABELS):
            return None
        if not all(isinstance(lb, str) and _LABEL_RE.match(lb) for lb in labels):
            return None
        scores = data.get("scores")
        if not isinstance(scores, dict):
            scores = {}
        kept = {lb: round(s, 3) for lb in labels if (s := _number(scores.get(lb))) is not None}
        ts = data.get("ts") if isinstance(data.get("ts"), str) else None
        return {"event_id": ev, "labels": list(labels), "scores": kept, "ts": ts and ts[:40], "verdict": None}

    def set_connected(self, connected: bool) -> None:
        with self.lock:
            self.broker_connected = connected
            self.version += 1

    # ------------------------------------------------------------------ output (HTTP threads)

    def snapshot(self) -> dict[str, Any]:
        """The page's state: every station, newest alerts first, rates and trends per label."""
        with self.lock:
            now = self.clock()
            window = min(TREND_BUCKETS * TREND_BUCKET_S, max(MIN_RATE_WINDOW_S, now - self.started))
            stations = []
            for name in sorted(self.stations):
                st = self.stations[name]
                stats = st.stats or {}
                health = st.health or {}
                trend = st.trend(now)
                stations.append(
                    {
                        "name": name,
                        "status": st.status,
                        "fps": _number(stats.get("fps")),
                        "stats_defects_per_hour": _number(stats.get("defects_per_hour")),
                        "outbox_depth": _number(stats.get("outbox_depth")),
                        "health": health.get("state") if st.health else None,
                        "conditions": [str(c)[:32] for c in health.get("conditions", [])[:8]]
                        if isinstance(health.get("conditions"), list)
                        else [],
                        "defect": st.defect,
                        "rates": {lb: round(sum(c) * 3600.0 / window, 1) for lb, c in trend.items()},
                        "trend": trend,
                        "alerts": [
                            {k: a[k] for k in ("event_id", "labels", "scores", "ts", "verdict")}
                            for a in list(st.alerts)[:PAGE_ALERTS]
                        ],
                        "alerts_total": st.alerts_total,
                        "heatmap": st.heatmap_seq if st.heatmap is not None else None,
                        "heatmap_event": st.heatmap_event,
                        "age_s": round(now - st.last_seen, 1),
                    }
                )
            return {
                "version": self.version,
                "broker": {"connected": self.broker_connected, "address": self.broker},
                "prefix": self.prefix,
                "trend_bucket_s": TREND_BUCKET_S,
                "junk": sum(self.junk.values()),
                "stations": stations,
            }

    def heatmap(self, name: str) -> bytes | None:
        with self.lock:
            st = self.stations.get(name)
            return st.heatmap if st is not None else None

    def known(self, name: str) -> bool:
        with self.lock:
            return name in self.stations

    def mark_verdict(self, name: str, event_id: str, verdict: str) -> None:
        with self.lock:
            st = self.stations.get(name)
            alert = st.by_id.get(event_id) if st is not None else None
            if alert is not None:
                alert["verdict"] = verdict
                self.version += 1

    def metrics_text(self) -> bytes:
        """Prometheus text exposition of every station's stats and health, and our own counters."""
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry)


class _Collector:
    """prometheus_client collector over a ``DashboardState`` (read under its lock, at scrape time)."""

    def __init__(self, state: DashboardState) -> None:
        self.state = state

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.state
        with s.lock:
            now = s.clock()
            window = min(TREND_BUCKETS * TREND_BUCKET_S, max(MIN_RATE_WINDOW_S, now - s.started))
            up = GaugeMetricFamily("seamqc_station_up", "1 while the station's status is online", labels=["station"])
            defect = GaugeMetricFamily("seamqc_station_defect", "1 while a defect event is open", labels=["station"])
            seen = GaugeMetricFamily(
                "seamqc_station_last_message_age_seconds", "seconds since any message", labels=["station"]
            )
            alerts = CounterMetricFamily(
                "seamqc_dashboard_alerts_received", "alerts received since the dashboard started", labels=["station"]
            )
            rate = GaugeMetricFamily(
                "seamqc_dashboard_defects_per_hour",
                "alerts per hour per label over the last hour (dashboard's count)",
                labels=["station", "label"],
            )
            cond = GaugeMetricFamily(
                "seamqc_health_condition", "1 for each current health condition", labels=["station", "condition"]
            )
            values: dict[str, dict[str, float]] = {}  # metric name → station → value
            for name in sorted(s.stations):
                st = s.stations[name]
                up.add_metric([name], 1.0 if st.status == "online" else 0.0)
                if st.defect is not None:
                    defect.add_metric([name], float(st.defect))
                seen.add_metric([name], max(0.0, now - st.last_seen))
                alerts.add_metric([name], float(st.alerts_total))
                for label, counts in st.trend(now).items():
                    rate.add_metric([name, label], sum(counts) * 3600.0 / window)
                flat: dict[str, float] = {}
                for key, v in (st.stats or {}).items():
                    num = _number(v)
                    if num is not None and isinstance(key, str):
                        flat[_metric_name(key)] = num
                if st.health is not None:
                    flat["health_ok"] = 1.0 if st.health.get("state") == "ok" else 0.0
                    metrics = st.health.get("metrics")
                    for key, v in metrics.items() if isinstance(metrics, dict) else ():
                        num = _number(v)
                        if num is not None and isinstance(key, str):
                            flat[_metric_name(f"health_{key}")] = num
                    conditions = st.health.get("conditions")
                    for c in (conditions if isinstance(conditions, list) else [])[:16]:
                        cond.add_metric([name, str(c)[:32]], 1.0)
                for key, num in flat.items():
                    if key in values or len(values) < 256:
                        values.setdefault(key, {})[name] = num
            junk = CounterMetricFamily(
                "seamqc_dashboard_junk_messages",
                "messages that broke the topic contract, ignored",
                labels=["kind", "reason"],
            )
            for (kind, reason), n in sorted(s.junk.items()):
                junk.add_metric([kind, reason], float(n))
            fb = CounterMetricFamily("seamqc_dashboard_feedback", "feedback publishes by result", labels=["result"])
            for result in ("published", "failed"):
                fb.add_metric([result], float(s.feedback[result]))
            conn = GaugeMetricFamily("seamqc_dashboard_broker_connected", "1 while connected to the broker")
            conn.add_metric([], 1.0 if s.broker_connected else 0.0)
            msgs = CounterMetricFamily("seamqc_dashboard_messages", "MQTT messages received")
            msgs.add_metric([], float(s.messages))
        yield from (up, defect, seen, alerts, rate, cond)
        for key in sorted(values):
            g = GaugeMetricFamily(f"seamqc_{key}", f"{key} from the station's stats/health topics", labels=["station"])
            for name, num in sorted(values[key].items()):
                g.add_metric([name], num)
            yield g
        yield from (junk, fb, conn, msgs)


_RESERVED = ("station_", "dashboard_", "health_condition")


def _metric_name(key: str) -> str:
    """A stats key as a Prometheus name part; ours (``station_*``, ``dashboard_*``) get ``stats_``."""
    name = _METRIC_RE.sub("_", key)[:80] or "_"
    if name[0].isdigit() or name.startswith(_RESERVED):
        name = "stats_" + name
    return name


# ---------------------------------------------------------------------------------------- MQTT


class BrokerLink:
    """The paho client: subscribes to every station's topics, publishes feedback at QoS 1 with bounded waits."""

    def __init__(
        self,
        state: DashboardState,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.state = state
        self.host, self.port = host, port
        self._acks: dict[int, Any] = {}
        self._acked = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"seamqc-dashboard-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=15)
        self.client.max_queued_messages_set(64)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self._connect_props = Properties(PacketTypes.CONNECT)
        self._connect_props.MaximumPacketSize = MAX_PACKET
        self._stopping = False
        state.broker = f"{host}:{port}"

    def start(self) -> BrokerLink:
        self.client.connect_async(self.host, self.port, keepalive=15, properties=self._connect_props)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self._stopping = True
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            LOG.warning("broker %s refused the connection: %s", self.state.broker, reason_code)
            return
        client.subscribe([(f"{self.state.prefix}/+/{kind}", 1) for kind in KINDS])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        # "connected" once the broker confirmed the subscriptions: from then on no alert is missed
        refused = [str(rc) for rc in reason_codes if getattr(rc, "is_failure", False)]
        if refused:
            LOG.warning("broker %s refused the subscriptions (%s); check its ACL", self.state.broker, refused[0])
        self.state.set_connected(True)
        LOG.info("connected to %s", self.state.broker)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self.state.broker_connected and not self._stopping:
            LOG.warning("lost the broker %s (%s); reconnecting", self.state.broker, reason_code)
        self.state.set_connected(False)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        user = {}
        for pair in getattr(getattr(msg, "properties", None), "UserProperty", None) or ():
            if isinstance(pair, tuple | list) and len(pair) == 2:
                user[str(pair[0])] = str(pair[1])
        self.state.on_message(msg.topic, msg.payload, user)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._acked:
            self._acks[mid] = reason_code
            while len(self._acks) > 256:
                self._acks.pop(next(iter(self._acks)))
            self._acked.notify_all()

    def publish(self, topic: str, payload: bytes, timeout: float = 5.0) -> str | None:
        """Publish at QoS 1 and wait (at most ``timeout`` s) for the broker's PUBACK; None or why not."""
        if not self.client.is_connected():
            return "not connected to the broker"
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != 0:
            return f"publish failed (paho rc {info.rc})"
        deadline = time.monotonic() + timeout
        with self._acked:
            while info.mid not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"no acknowledgement from the broker within {timeout:g} s"
                self._acked.wait(left)
            code = self._acks.pop(info.mid)
        if getattr(code, "is_failure", False):
            return f"the broker refused it ({code}; check its ACL)"
        return None


# ---------------------------------------------------------------------------------------- HTTP


class Dashboard:
    """The state, the broker link and the settings the HTTP handler needs."""

    def __init__(self, state: DashboardState, link: BrokerLink | None, token: str | None, by: str | None) -> None:
        self.state = state
        self.link = link
        self.token = token
        self.by = by

    def feedback(self, body: Any) -> tuple[int, dict[str, Any]]:
        """Check a feedback request from the page, publish it; (HTTP status, JSON answer)."""
        if not isinstance(body, dict):
            return HTTPStatus.BAD_REQUEST, {"error": "expected a JSON object"}
        name = body.get("station")
        if not (isinstance(name, str) and _STATION_RE.match(name) and self.state.known(name)):
            return HTTPStatus.BAD_REQUEST, {"error": "unknown station"}
        labels = body.get("labels")
        if labels is not None and not (
            isinstance(labels, list)
            and len(labels) <= MAX_LABELS
            and all(isinstance(x, str) and _LABEL_RE.match(x) for x in labels)
        ):
            return HTTPStatus.BAD_REQUEST, {"error": "bad labels"}
        out: dict[str, Any]
        if "missed" in body:
            if not labels:
                return HTTPStatus.BAD_REQUEST, {"error": "a missed defect needs its labels"}
            out = {"missed": {"ts": _now_iso(), "labels": labels}}
        else:
            ev, verdict = body.get("event_id"), body.get("verdict")
            if not (isinstance(ev, str) and _EVENT_RE.match(ev)) or verdict not in VERDICTS:
                return HTTPStatus.BAD_REQUEST, {"error": "needs event_id and verdict confirmed|false_alarm"}
            out = {"event_id": ev, "verdict": verdict}
            if labels:
                out["labels"] = labels
        if self.by:
            out["by"] = self.by
        payload = json.dumps(out, separators=(",", ":")).encode("utf-8")
        if len(payload) > FEEDBACK_MAX:
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"feedback over {FEEDBACK_MAX} bytes"}
        why = self.link.publish(f"{self.state.prefix}/{name}/feedback", payload) if self.link else "no broker"
        with self.state.lock:
            self.state.feedback["failed" if why else "published"] += 1
        if why:
            LOG.warning("feedback for %s not delivered: %s", name, why)
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": why}
        if "verdict" in out:
            self.state.mark_verdict(name, out["event_id"], out["verdict"])
        return HTTPStatus.OK, {"ok": True, "sent": out}


_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


def _host_is_loopback(host_header: str) -> bool:
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host.split("]", 1)[0] + "]"
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_handler(app: Dashboard) -> type[BaseHTTPRequestHandler]:
    """The request handler: every request authorised first, then static files, state, images, metrics, feedback."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "seam-qc-dashboard"
        timeout = 20  # a client that stops sending frees its thread

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # one line per poll would drown the terminal

        def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj: Any, status: int = 200) -> None:
            self._send(status, json.dumps(obj, separators=(",", ":")).encode("utf-8"), "application/json")

        def _token_given(self, query: dict[str, list[str]]) -> tuple[str | None, bool]:
            """(the token the request carries, whether it came in the URL)."""
            auth = self.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                return auth[7:].strip(), False
            if self.headers.get("X-SeamQC-Token"):
                return self.headers["X-SeamQC-Token"].strip(), False
            if "token" in query:
                return query["token"][0], True
            cookie = SimpleCookie()
            try:
                cookie.load(self.headers.get("Cookie", ""))
            except Exception:  # noqa: BLE001 - a malformed cookie header is no token
                return None, False
            morsel = cookie.get(TOKEN_COOKIE)
            return (morsel.value if morsel else None), False

        def _authorised(self, path: str, query: dict[str, list[str]]) -> bool:
            """Refuse (and answer) a request without the token; with one in the URL, set the cookie."""
            if app.token is None:
                if _host_is_loopback(self.headers.get("Host", "")):
                    return True
                self._send(
                    HTTPStatus.FORBIDDEN,
                    b"forbidden: this dashboard answers to localhost only\n",
                    "text/plain; charset=utf-8",
                )
                return False
            given, in_url = self._token_given(query)
            if given is None or not hmac.compare_digest(given.encode("utf-8", "replace"), app.token.encode("utf-8")):
                self._send(
                    HTTPStatus.UNAUTHORIZED,
                    b"token required: open /?token=<token> once on this screen (or send Authorization: Bearer)\n",
                    "text/plain; charset=utf-8",
                    {"WWW-Authenticate": 'Bearer realm="seam-qc dashboard"'},
                )
                return False
            if in_url and self.command in ("GET", "HEAD") and path == "/":
                cookie = f"{TOKEN_COOKIE}={quote(app.token)}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000"
                self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": "/", "Set-Cookie": cookie})
                return False  # answered: the page loads again without the token in its URL
            return True

        def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if not self._authorised(url.path, query):
                return
            if url.path in _STATIC_FILES:
                name, ctype = _STATIC_FILES[url.path]
                self._send(200, (STATIC / name).read_bytes(), ctype)
            elif url.path == "/api/state":
                self._json(app.state.snapshot())
            elif url.path == "/heatmap":
                img = app.state.heatmap(query.get("station", [""])[0])
                if img is None:
                    self._send(404, b"no heatmap", "text/plain")
                else:
                    self._send(200, img, "image/jpeg")
            elif url.path == "/metrics":
                self._send(200, app.state.metrics_text(), "text/plain; version=0.0.4; charset=utf-8")
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            url = urlsplit(self.path)
            if not self._authorised(url.path, parse_qs(url.query)):
                return
            # JSON only: a cross-site form cannot send it without a CORS preflight we never allow.
            if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                self._json({"error": "expected application/json"}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= FEEDBACK_MAX:
                self._json({"error": f"body over {FEEDBACK_MAX} bytes"}, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except (ValueError, UnicodeDecodeError):
                self._json({"error": "bad JSON"}, HTTPStatus.BAD_REQUEST)
                return
            if url.path != "/api/feedback":
                self._json({"error": "unknown request"}, HTTPStatus.NOT_FOUND)
                return
            status, answer = app.feedback(body)
            self._json(answer, status)

    return Handler


# ---------------------------------------------------------------------------------------- CLI


def _is_loopback_bind(addr: str) -> bool:
    if addr == "localhost":
        return True
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def check_settings(args: argparse.Namespace) -> str | None:
    """The token in force (None: none); a ``ConfigError`` (exit 78) for settings that cannot be served safely."""
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if token is not None and (len(token) < 8 or any(c.isspace() or ord(c) < 32 for c in token)):
        raise ConfigError("--token: at least 8 characters, no spaces or control characters")
    if not _is_loopback_bind(args.bind) and token is None:
        raise ConfigError(
            f"--bind {args.bind}: listening beyond this machine needs --token T (or ${TOKEN_ENV}); "
            "without one, keep the default 127.0.0.1"
        )
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: not a TCP port (1-65535)")
    if not 0 <= args.http_port <= 65535:
        raise ConfigError(f"--http-port {args.http_port}: expected 0..65535 (0 = any free port)")
    if not _STATION_RE.match(args.prefix):
        raise ConfigError(f"--prefix {args.prefix!r}: one topic level, no / + # or spaces")
    try:
        socket.getaddrinfo(args.broker, args.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--broker {args.broker!r} does not resolve ({getattr(e, 'strerror', None) or e})") from None
    if args.by is not None and not (0 < len(args.by) <= 64 and args.by.isprintable()):
        raise ConfigError("--by: 1 to 64 printable characters")
    return token


def serve(app: Dashboard, host: str, port: int) -> ThreadingHTTPServer:
    """Bind the HTTP server (port 0 = any free port); the caller runs ``serve_forever``."""
    cls = ThreadingHTTPServer
    if ":" in host:  # an IPv6 address (the stdlib server is IPv4 unless told)

        class _Server6(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        cls = _Server6
    try:
        server = cls((host, port), make_handler(app))
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --http-port") from None
    server.daemon_threads = True
    return server


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    token = check_settings(args)
    password = read_password(args)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s: %(message)s", stream=sys.stderr)
    state = DashboardState(args.prefix)
    link = BrokerLink(state, args.broker, args.port, args.username, password)
    app = Dashboard(state, link, token, args.by)
    server = serve(app, args.bind, args.http_port)
    host, port = str(server.server_address[0]), server.server_address[1]  # TCP: never bytes
    shown = f"[{host}]" if ":" in host else host
    link.start()
    signal.signal(signal.SIGTERM, _stop)
    print(f"dashboard of {args.prefix}/+ on {args.broker}:{args.port}", flush=True)
    if token is not None:
        print(f"open http://{shown}:{port}/?token=<token> once per screen (the cookie keeps it)", flush=True)
    print(f"open http://{shown}:{port}/", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        link.stop()
    return 0


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dashboard",
        help="the factory-floor web page for every station on a broker (+ /metrics for Prometheus)",
        description="Subscribe to every station on the broker and serve one page for a TV on the floor: "
        "online/offline, fps, health, defects per hour per label with a trend, the latest heatmap and the "
        "alerts with Confirm / False alarm / Missed defect (published to <prefix>/<station>/feedback). "
        "/metrics serves Prometheus text. Listens on 127.0.0.1 unless --bind (which needs --token).",
    )
    p.add_argument("--broker", required=True, help="MQTT broker host")
    p.add_argument("--port", type=_int, default=1883, help="MQTT broker port (default 1883)")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1; others need --token)")
    p.add_argument("--http-port", type=_int, default=8080, help="HTTP port (default 8080; 0 = any free port)")
    p.add_argument("--token", default=None, help=f"access token, required with --bind (or ${TOKEN_ENV})")
    p.add_argument("--prefix", default="seamqc", help="topic prefix (default seamqc)")
    p.add_argument("--username", default=None, help="MQTT user name (a dashboard user the ACL lets publish feedback)")
    p.add_argument("--password-file", default=None, help="file holding the MQTT password")
    p.add_argument("--by", default=None, help="the 'by' field of feedback sent from this screen (e.g. line-3-tv)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.set_defaults(func=run)
