"""``convert dashboard`` without a browser: the bounded state, junk, /metrics, feedback, the token.

The page itself is driven in headless Chromium by tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from convert import dashboard as dash
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def alert(i: int, labels: tuple[str, ...] = ("error",), station: str = "st1") -> bytes:
    return json.dumps(
        {
            "event_id": f"evt-{i}",
            "station": station,
            "ts": "2026-01-02T03:04:05.678Z",
            "labels": list(labels),
            "scores": {"error": 0.9, "break": 0.2},
            "heatmap": None,
        }
    ).encode()


JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 200 + b"\xff\xd9"


def test_state_caps_alerts_dedups_counts_rates_and_trends() -> None:
    clock = Clock()
    s = dash.DashboardState(clock=clock)
    s.on_message("seamqc/st1/status", b"online")
    for i in range(200):
        s.on_message("seamqc/st1/alert", alert(i, ("error", "break") if i % 4 == 0 else ("error",)))
        clock.t += 10.0  # 2000 s in all: the rate covers it, the trend has 7 buckets
    s.on_message("seamqc/st1/alert", alert(199))  # QoS 1 may deliver twice
    st = s.stations["st1"]
    assert len(st.alerts) == dash.MAX_ALERTS and len(st.by_id) == dash.MAX_ALERTS
    assert st.alerts_total == 200
    snap = json.loads(json.dumps(s.snapshot()))  # what the page gets is plain JSON
    (one,) = snap["stations"]
    assert [a["event_id"] for a in one["alerts"]] == [f"evt-{i}" for i in range(199, 199 - dash.PAGE_ALERTS, -1)]
    assert one["status"] == "online" and one["alerts_total"] == 200
    assert sum(one["trend"]["error"]) == 200 and sum(one["trend"]["break"]) == 50
    assert len(one["trend"]["error"]) == dash.TREND_BUCKETS
    window = clock.t - s.started
    assert one["rates"]["error"] == pytest.approx(200 * 3600 / window, abs=0.1)
    clock.t += 2 * 3600  # two quiet hours: the trend and the rates empty out
    one = s.snapshot()["stations"][0]
    assert one["rates"] == {"error": 0.0, "break": 0.0} and sum(one["trend"]["error"]) == 0


def test_junk_is_counted_per_reason_logged_once_and_never_kept(caplog: pytest.LogCaptureFixture) -> None:
    s = dash.DashboardState(clock=Clock())
    junk = [
        ("seamqc/st1/stats", b"{not json"),
        ("seamqc/st1/stats", b"[1, 2]"),
        ("seamqc/st1/health", b'{"no": "state"}'),
        ("seamqc/st1/status", b"maybe"),
        ("seamqc/st1/defect", b"1"),
        ("seamqc/st1/alert", b'{"labels": ["error"]}'),
        ("seamqc/st1/alert", json.dumps({"event_id": "e", "labels": ["<script>"]}).encode()),
        ("seamqc/st1/heatmap", b"GIF89a" + b"\0" * 100),
        ("seamqc/st1/heatmap", b"\xff\xd8" + b"\0" * (dash.MAX_JPEG_BYTES + 1)),
        ("seamqc/st1/stats", b"{" + b" " * dash.MAX_JSON_BYTES + b"}"),
        ("seamqc/a/b/status", b"online"),
        ("seamqc/st1/alert", b"\xff\xfe\x00"),
    ]
    with caplog.at_level(logging.WARNING, logger="seamqc.dashboard"):
        for _ in range(3):
            for topic, payload in junk:
                s.on_message(topic, payload)
    assert sum(s.junk.values()) == 3 * len(junk)
    assert all(n % 3 == 0 for n in s.junk.values())
    assert len(caplog.records) == len(s.junk)  # one line per kind and reason, however often
    assert s.stations == {}  # junk alone creates no station
    assert s.junk[("heatmap", f"oversized image (> {dash.MAX_JPEG_BYTES} bytes)")] == 3
    s.on_message("seamqc/st1/heatmap", JPEG, {"event_id": "evt-9"})
    s.on_message("seamqc/st1/heatmap", b"GIF89a" + b"\0" * 100)  # junk does not replace the image
    assert s.heatmap("st1") == JPEG and s.stations["st1"].heatmap_event == "evt-9"
    s.on_message("seamqc/st1/heatmap", b"")  # a cleared retained image
    assert s.heatmap("st1") is None


def test_station_count_is_capped() -> None:
    s = dash.DashboardState(clock=Clock())
    for i in range(dash.MAX_STATIONS + 5):
        s.on_message(f"seamqc/st{i}/status", b"online")
    assert len(s.stations) == dash.MAX_STATIONS
    assert s.junk[("status", f"more than {dash.MAX_STATIONS} stations")] == 5


def test_metrics_text_parses_with_stats_health_and_own_counters() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    s = dash.DashboardState(clock=Clock())
    s.on_message("seamqc/st1/status", b"online")
    s.on_message("seamqc/st2/status", b"offline")
    s.on_message("seamqc/st1/defect", b"ON")
    stats = {"fps": 29.5, "frames": 1234, "outbox_depth": 3, "health_ok": True, "camera": "ok", "bad": float("nan")}
    s.on_message("seamqc/st1/stats", json.dumps(stats).encode())
    s.on_message("seamqc/st2/stats", json.dumps({"fps": 0.0, "station_up": 7}).encode())
    health = {"state": "blurred,idle", "conditions": ["blurred", "idle"], "metrics": {"sharpness_ratio": 0.31}}
    s.on_message("seamqc/st2/health", json.dumps(health).encode())
    s.on_message("seamqc/st1/alert", alert(1, ("break",)))
    s.on_message('seamqc/st"x/stats', b"nope")  # a label value that needs escaping
    text = s.metrics_text().decode()
    samples = {
        (smp.name, tuple(sorted(smp.labels.items()))): smp.value
        for fam in text_string_to_metric_families(text)
        for smp in fam.samples
    }

    def v(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert v("seamqc_station_up", station="st1") == 1 and v("seamqc_station_up", station="st2") == 0
    assert v("seamqc_station_defect", station="st1") == 1
    assert v("seamqc_fps", station="st1") == 29.5 and v("seamqc_fps", station="st2") == 0
    assert v("seamqc_frames", station="st1") == 1234 and v("seamqc_outbox_depth", station="st1") == 3
    assert v("seamqc_health_ok", station="st1") == 1 and v("seamqc_health_ok", station="st2") == 0
    assert v("seamqc_health_sharpness_ratio", station="st2") == pytest.approx(0.31)
    assert v("seamqc_health_condition", station="st2", condition="idle") == 1
    assert v("seamqc_stats_station_up", station="st2") == 7  # a stats key never shadows ours
    assert v("seamqc_dashboard_alerts_received_total", station="st1") == 1
    assert v("seamqc_dashboard_defects_per_hour", station="st1", label="break") > 0
    assert v("seamqc_dashboard_junk_messages_total", kind="stats", reason="not JSON") == 1
    assert ("seamqc_camera", (("station", "st1"),)) not in samples  # strings are not metrics
    assert ("seamqc_bad", (("station", "st1"),)) not in samples  # nor NaN from a station
    assert text.endswith("\n") and "# TYPE seamqc_fps gauge" in text


class FakeLink:
    """Records publishes; the real broker path is tested end to end below."""

    def __init__(self, why: str | None = None) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.why = why

    def publish(self, topic: str, payload: bytes, timeout: float = 5.0) -> str | None:
        self.sent.append((topic, json.loads(payload)))
        return self.why


def test_feedback_requests_become_exactly_the_contract_payloads() -> None:
    s = dash.DashboardState(clock=Clock())
    s.on_message("seamqc/st1/alert", alert(7))
    link = FakeLink()
    app = dash.Dashboard(s, link, None, "line-3-tv")  # type: ignore[arg-type]
    assert (
        app.feedback({"station": "st1", "event_id": "evt-7", "verdict": "false_alarm", "labels": ["error"]})[0] == 200
    )
    assert app.feedback({"station": "st1", "missed": True, "labels": ["break"]})[0] == 200
    assert link.sent[0] == (
        "seamqc/st1/feedback",
        {"event_id": "evt-7", "verdict": "false_alarm", "labels": ["error"], "by": "line-3-tv"},
    )
    topic, missed = link.sent[1]
    assert topic == "seamqc/st1/feedback" and set(missed) == {"missed", "by"}
    assert missed["missed"]["labels"] == ["break"] and missed["missed"]["ts"].endswith("Z")
    assert s.snapshot()["stations"][0]["alerts"][0]["verdict"] == "false_alarm"
    for bad in (
        {"station": "nope", "event_id": "evt-7", "verdict": "confirmed"},
        {"station": "st1/#", "event_id": "evt-7", "verdict": "confirmed"},
        {"station": "st1", "event_id": "evt-7", "verdict": "maybe"},
        {"station": "st1", "event_id": "", "verdict": "confirmed"},
        {"station": "st1", "missed": True},
        {"station": "st1", "missed": True, "labels": ["a b"]},
        ["not", "an", "object"],
    ):
        assert app.feedback(bad)[0] == 400, bad
    assert len(link.sent) == 2
    failing = dash.Dashboard(s, FakeLink("not connected to the broker"), None, None)  # type: ignore[arg-type]
    status, answer = failing.feedback({"station": "st1", "event_id": "evt-7", "verdict": "confirmed"})
    assert status == 503 and "not connected" in answer["error"]
    assert s.feedback == {"published": 2, "failed": 1}


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:8080", True),
        ("localhost:8080", True),
        ("[::1]:8080", True),
        ("evil.example:8080", False),
        ("10.0.0.5:8080", False),
        ("", False),
    ],
)
def test_without_a_token_only_loopback_host_headers_pass(host: str, ok: bool) -> None:
    assert dash._host_is_loopback(host) is ok  # DNS rebinding cannot reach a token-less dashboard


def test_bind_beyond_localhost_without_token_is_one_line_exit_78() -> None:
    cmd = [sys.executable, "-m", "convert", "dashboard", "--broker", "127.0.0.1", "--bind", "0.0.0.0"]
    env = {k: v for k, v in os.environ.items() if k != dash.TOKEN_ENV}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 78, out
    assert out.stderr.strip().splitlines() == [
        "error: --bind 0.0.0.0: listening beyond this machine needs --token T (or $SEAMQC_DASHBOARD_TOKEN); "
        "without one, keep the default 127.0.0.1"
    ]
    short = subprocess.run([*cmd, "--token", "abc"], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert short.returncode == 78 and "--token: at least 8 characters" in short.stderr


# ------------------------------------------------------------------ end to end: broker + process


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    req = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, json.loads(body) if e.headers.get("Content-Type") == "application/json" else body


@pytest.mark.slow
def test_token_is_checked_on_every_request_when_bound_beyond_localhost(mqtt_broker) -> None:
    from tests.support.stations import DashboardProcess

    token = "s3cret-floor-tv"
    d = DashboardProcess(mqtt_broker.host, mqtt_broker.port, "--bind", "0.0.0.0", "--token", token)
    try:
        base = f"http://127.0.0.1:{d.port}"
        for path in ("/", "/dashboard.js", "/api/state", "/heatmap?station=x", "/metrics", "/nothing"):
            assert _get(base + path)[0] == 401, path
            assert _get(base + path, {"Authorization": "Bearer wrong-token"})[0] == 401, path
        assert _post(base + "/api/feedback", {"station": "x"})[0] == 401
        assert _get(base + "/metrics", {"Authorization": f"Bearer {token}"})[0] == 200  # Prometheus' way
        assert _get(base + "/api/state", {"X-SeamQC-Token": token})[0] == 200
        assert _get(base + f"/api/state?token={token}")[0] == 200
        status, _, headers = _get(base + f"/?token={token}")  # the TV's first visit: cookie, clean URL
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        status, body, _ = _get(base + "/", {"Cookie": cookie.split(";")[0]})
        assert status == 200 and b"dashboard.js" in body
        assert _get(base + "/", {"Cookie": f"{dash.TOKEN_COOKIE}=nope"})[0] == 401
    finally:
        d.stop()


@pytest.mark.slow
def test_dashboard_process_metrics_junk_and_feedback_over_a_real_broker(mqtt_broker, mqtt_subscriber) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tests.support.stations import DashboardProcess, Fleet

    feedback = mqtt_subscriber(mqtt_broker, "seamqc/+/feedback")
    fleet = Fleet(mqtt_broker.host, mqtt_broker.port, 3).wait_connected()
    d = DashboardProcess(mqtt_broker.host, mqtt_broker.port, "--by", "test-tv").wait_subscribed()
    try:
        fleet.start()
        st = fleet.stations["sim-02"]
        for _ in range(3):  # junk on every topic kind, three times
            st.publish("stats", b"\x00garbage")
            st.publish("health", b"[]")
            st.publish("alert", b"{}", qos=1)
            st.publish("heatmap", b"\xff\xd8" + b"\0" * (dash.MAX_JPEG_BYTES + 10))
            st.publish("status", b"sleeping")
        base = d.url

        def metrics() -> dict[tuple[str, tuple], float]:
            text = _get(base + "/metrics")[1].decode()
            return {
                (smp.name, tuple(sorted(smp.labels.items()))): smp.value
                for fam in text_string_to_metric_families(text)
                for smp in fam.samples
            }

        wait_until(
            lambda: sum(v for (n, _), v in metrics().items() if n == "seamqc_dashboard_junk_messages_total") >= 15,
            timeout=10,
            what="15 junk messages counted",
        )

        def complete() -> bool:  # each station's messages come on its own connection, in no global order
            got = json.loads(_get(base + "/api/state")[1])["stations"]
            return len(got) == 3 and all(s["alerts"] and s["heatmap"] and s["health"] for s in got)

        wait_until(complete, timeout=10, what="every station's first round on the dashboard")
        m = metrics()
        for name in ("sim-01", "sim-02", "sim-03"):
            assert m[("seamqc_station_up", (("station", name),))] == 1
            assert m[("seamqc_fps", (("station", name),))] == 29.5
        assert m[("seamqc_health_ok", (("station", "sim-03"),))] == 0  # the fleet's third camera is blurred
        assert m[("seamqc_dashboard_broker_connected", ())] == 1
        state = json.loads(_get(base + "/api/state")[1])
        assert [s["name"] for s in state["stations"]] == ["sim-01", "sim-02", "sim-03"]
        status, img, headers = _get(base + "/heatmap?station=sim-01")
        assert status == 200 and img == fleet.jpegs[0] and headers["Content-Type"] == "image/jpeg"
        event = state["stations"][0]["alerts"][0]["event_id"]
        status, answer = _post(base + "/api/feedback", {"station": "sim-01", "event_id": event, "verdict": "confirmed"})
        assert status == 200, answer
        got = feedback.wait_for("seamqc/sim-01/feedback")
        assert got.qos == 1 and got.json() == {"event_id": event, "verdict": "confirmed", "by": "test-tv"}
        assert _post(base + "/api/feedback", {"station": "sim-09", "event_id": event, "verdict": "confirmed"})[0] == 400
        assert d.proc.poll() is None  # alive after all of it
    finally:
        err = d.stop()
        fleet.close()
    warnings = [ln for ln in err.splitlines() if ln.startswith("WARNING: ignoring")]
    assert len(warnings) == 5, err  # one line per kind and reason, not one per message
