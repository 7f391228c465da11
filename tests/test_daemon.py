"""The daemon as a subprocess against a real Mosquitto: alerts, status, stats, heatmaps, stop, errors.

Runs go through the shared harness (tests/support/daemon.py → ``convert.harness``) with
``--log-format json``: assertions read log events, not prose. The strict accuracy criterion with the
shipped model lives in ``test_shipped_model_alerts_each_defect_once`` (skipped until
``edge/models/default`` exists).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from convert.demo import match_alerts, read_truth
from tests.support.daemon import (
    ROOT,
    SHIPPED,
    check_alert_payload,
    copy_bundle,
    daemon_config,
    daemon_log,
    log_alerts,
    log_events,
    log_summary,
    notify_messages,
    notify_socket,
    seam_video,
    start_daemon,
    wait_exit,
)
from tests.support.mqtt import port_open, start_mosquitto_sub
from tests.support.wait import wait_until

LOG_FIELDS = {"ts", "level", "logger", "msg"}


def read_lines(proc: subprocess.Popen, n: int, timeout: float = 10.0) -> tuple[list[str], str]:
    """The first ``n`` lines of ``proc``'s stdout as they arrive (no sleeps), and any partial rest.

    Reads the pipe's file descriptor directly: a buffered reader would hold lines that ``select``
    then never reports.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (got := buf.count(b"\n")) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"{got}/{n} lines within {timeout} s: {buf[-500:]!r}"
            if sel.select(left):
                chunk = os.read(fd, 65536)
                assert chunk, f"EOF after {got}/{n} lines: {buf[-500:]!r}"
                buf += chunk
    *lines, rest = buf.decode().split("\n")
    return lines, rest


@pytest.fixture(scope="module")
def video(tmp_path_factory, tiny_valid):
    d = tmp_path_factory.mktemp("video")
    p = d / "seam.mp4"
    truth = seam_video(p, tiny_valid)
    return p, truth


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_end_to_end_alerts_status_stats_heatmaps(tmp_path, tiny_bundle, video, mqtt_broker, mqtt_subscriber):
    """Real broker, real model, real video: every alert is published (paho and mosquitto_sub see the
    same ids), payloads follow §6, each has its heatmap, status goes online → offline. The JSON log:
    every line parses, has ts/level/logger/msg, and tells the run's story in events."""
    vpath, truth = video
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/#").wait_subscribed()
    msub = start_mosquitto_sub(mqtt_broker, "seamqc/test-st/alert", extra=["-i", "msub-e2e"])
    # subscribed = the broker acknowledged it (its own log says so), not "some time passed"
    wait_until(lambda: "Sending SUBACK to msub-e2e" in mqtt_broker.log_text(), what="mosquitto_sub's SUBACK")
    cfg = daemon_config(tmp_path, tiny_bundle, vpath, mqtt_broker)
    proc = start_daemon(cfg)
    assert wait_exit(proc) == 0, daemon_log(cfg)[-3000:]
    text = daemon_log(cfg)
    assert "Traceback" not in text
    lines = text.splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object (LiteRT's too)
    assert lines and all(isinstance(d, dict) and LOG_FIELDS <= set(d) for d in parsed), lines[:3]
    assert all(d["ts"].endswith("Z") and d["level"] in ("DEBUG", "INFO", "WARNING", "ERROR") for d in parsed)
    events = [e.name for e in log_events(text) if e.name]
    story = [n for n in events if n not in ("alert", "stats", "health", "defect")]
    assert story == ["start", "ready", "stopping", "summary", "stopped", "exit"], events
    # the camera's health is told once at start (before ready), then only when it changes
    assert events.index("health") < events.index("ready"), events
    first_health = next(e for e in log_events(text) if e.name == "health")
    assert first_health.get("health", {}).get("state"), first_health
    stopping = next(e for e in log_events(text) if e.name == "stopping")
    assert stopping.get("reason") == "end of file" and stopping.get("frames") == 30 * 6
    assert [e.get("exit_code") for e in log_events(text) if e.name == "exit"] == [0]
    summary = log_summary(text)
    logged = log_alerts(text)
    assert summary["frames"] == 30 * 6 and summary["alerts"] == len(logged)
    # everything below checks alerts, so a run without one would test nothing (the tiny model found
    # 7 of the video's 23 defects, with 0 false alerts, when this was written)
    assert len(logged) >= 3, f"the tiny model raised {len(logged)} alerts on the test video"
    # the early defect signal is logged only when it changes (ON, OFF, ON, …), and an alert opens an event
    ons = [e.get("on") for e in log_events(text) if e.name == "defect"]
    assert ons == [i % 2 == 0 for i in range(len(ons))] and bool(ons) == bool(logged), (ons, events)
    assert summary["runtime"] and summary["inference_ms"]["p50"] > 0
    assert summary["outbox_depth"] == 0  # everything acknowledged
    status = [m.text for m in sub.on("seamqc/test-st/status")]
    assert status[0] == "online" and status[-1] == "offline"
    got = sub.wait_count("seamqc/test-st/alert", len(logged), timeout=10) if logged else []
    alerts = [m.json() for m in got]
    assert [a["event_id"] for a in alerts] == [a["event_id"] for a in logged]
    assert len({a["event_id"] for a in alerts}) == len(alerts)
    assert all(m.qos == 1 and not m.retain for m in got)
    # each alert event says when its event closed: after its best frame, before the subscriber had it
    closed = {e.get("event_id"): e.get("closed_at") for e in log_events(text) if e.name == "alert"}
    for m, a in zip(got, alerts):
        best = datetime.fromisoformat(a["ts"].replace("Z", "+00:00")).timestamp()
        assert best - 0.001 <= closed[a["event_id"]] <= m.wall, (a["ts"], closed[a["event_id"]], m.wall)
    labels = ("good", "error", "break", "length")
    for a in alerts:
        check_alert_payload(a, "test-st", labels)
        assert a["heatmap"] and Path(a["heatmap"]).is_file()  # the worker wrote it
        side = json.loads(Path(a["heatmap"].replace(".overlay.jpg", ".json")).read_text())
        assert side["event_id"] == a["event_id"] and side["labels"] == a["labels"]
    assert summary["heatmaps"]["saved"] == len(alerts) and summary["heatmaps"]["dropped"] == 0
    stats = [m for m in sub.on("seamqc/test-st/stats")]
    assert stats and all(m.qos == 0 for m in stats)
    st = stats[-1].json()
    assert {
        "fps",
        "frames",
        "alerts",
        "dropped_frames",
        "inference_ms",
        "outbox_depth",
        "uptime_s",
        "camera",
        "runtime",
        "heatmaps",
    } <= set(st)
    assert st["mqtt_refused"] == 0 and st["mqtt_connected"] is True
    # a plain mosquitto_sub client saw the same alerts: read as many lines as were logged, then no more
    got_lines, partial = read_lines(msub, len(alerts))
    msub.terminate()
    rest, _ = msub.communicate(timeout=5)
    more = (partial + rest).splitlines()
    ids = [json.loads(line.split(" ", 2)[2])["event_id"] for line in got_lines + more if line.strip()]
    assert ids == [a["event_id"] for a in alerts]
    # each alert is the decision the bundle's thresholds make on the frames it names: its best frame
    # lies in its event, inside the video, and its scores flag at least one of its labels
    thr = json.loads((tiny_bundle / "manifest.json").read_text())["thresholds"]
    for a in alerts:
        assert 0 <= a["first_frame"] <= a["frame"] <= a["last_frame"] < 30 * 6, a
        assert any(a["scores"][lab] >= thr[lab] for lab in a["labels"]), (a, thr)
    # against the truth (the tiny model is weak, so no recall bound): an alert counts as a detection
    # exactly when its frames come within 5 of a defect still of its family
    res = match_alerts(alerts, truth)
    fam = {"error": "defect", "break": "defect"}
    for a in alerts:
        near = [
            t
            for t in truth
            if a["first_frame"] <= t["last_frame"] + 5
            and a["last_frame"] >= t["first_frame"] - 5
            and fam.get(t["label"]) in {fam.get(lab) for lab in a["labels"]}
        ]
        assert (a["event_id"] not in res.false_alerts) == bool(near), (a, near, res)
    print(f"tiny model vs truth: {len(res.detected)}/{res.defects} defects, {len(res.false_alerts)} false alerts")


@pytest.mark.slow
def test_sigterm_stops_cleanly_with_stopping_sent(tmp_path, tiny_bundle, video, mqtt_broker, mqtt_subscriber):
    vpath, _ = video
    sock, addr = notify_socket(tmp_path)
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/status").wait_subscribed()
    cfg = daemon_config(
        tmp_path, tiny_bundle, vpath, mqtt_broker, camera={"loop": True, "realtime": True}
    )  # runs until told to stop
    proc = start_daemon(cfg, env={"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "1000000"})
    msgs = notify_messages(sock, until="READY=1")
    assert any(m.startswith("READY=1") for m in msgs), daemon_log(cfg)
    sub.wait_for("seamqc/test-st/status", lambda m: m.text == "online")
    msgs += notify_messages(sock, until="WATCHDOG=1", timeout=10)  # pinged while frames flow
    assert "WATCHDOG=1" in msgs
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=5)  # the contract: within 5 s
    stop_s = time.monotonic() - t0
    print(f"SIGTERM → exit in {stop_s:.2f} s")
    assert rc == 0
    rest = notify_messages(sock)
    assert any(m.startswith("STOPPING=1") for m in rest)
    sub.wait_for("seamqc/test-st/status", lambda m: m.text == "offline")
    stopping = [e for e in log_events(daemon_log(cfg)) if e.name == "stopping"]
    assert [e.get("reason") for e in stopping] == ["SIGTERM"], daemon_log(cfg)[-2000:]
    sock.close()


@pytest.mark.slow
def test_sigkill_leaves_offline_via_last_will(tmp_path, tiny_bundle, video, mqtt_broker, mqtt_subscriber):
    vpath, _ = video
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/status").wait_subscribed()
    cfg = daemon_config(tmp_path, tiny_bundle, vpath, mqtt_broker, camera={"loop": True, "realtime": True})
    proc = start_daemon(cfg)
    sub.wait_for("seamqc/test-st/status", lambda m: m.text == "online", timeout=60)
    proc.kill()
    proc.wait(10)
    sub.wait_for("seamqc/test-st/status", lambda m: m.text == "offline", timeout=30)
    # and it is retained: a new subscriber gets `offline`
    late = mqtt_subscriber(mqtt_broker, "seamqc/test-st/status").wait_subscribed()
    assert late.wait_for("seamqc/test-st/status").text == "offline"


@pytest.mark.slow
def test_max_frames_and_outbox_only(tmp_path, tiny_bundle, video):
    """No broker configured: the daemon classifies, alerts wait in the outbox, clean exit."""
    vpath, _ = video
    cfg = daemon_config(
        tmp_path, tiny_bundle, vpath, None, decision={"thresholds": {"error": 0.0}, "max_event_frames": 10}
    )
    proc = start_daemon(cfg, "--max-frames", "50")
    assert wait_exit(proc) == 0, daemon_log(cfg)[-2000:]
    text = daemon_log(cfg)
    s = log_summary(text)
    assert s["frames"] == 50
    alerts = log_alerts(text)
    assert len(alerts) == 5 and s["alerts"] == 5  # error always flagged: one per 10 frames
    assert s["outbox_depth"] == 5
    from edge.outbox import Outbox

    with Outbox(tmp_path / "outbox.sqlite") as ob:
        pending = ob.pending()
        assert [it.event_id for it in pending] == [a["event_id"] for a in alerts]
        assert json.loads(pending[0].payload)["station"] == "test-st"


@pytest.mark.slow
def test_check_config_verifies_bundle(tmp_path, tiny_bundle, video):
    vpath, _ = video
    cfg = daemon_config(tmp_path, tiny_bundle, vpath, None)
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(cfg), "--check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "tiny" in r.stdout


@pytest.mark.slow
def test_unresolvable_broker_host_fails_check_config_but_not_the_daemon(tmp_path, tiny_bundle, video):
    """A broker host that does not resolve: --check-config says so in one line and exits 78 (a typo
    is the likely cause); the running daemon warns once and keeps classifying into the outbox (a DNS
    outage must not stop quality control)."""
    vpath, _ = video

    class NoBroker:  # an address under the reserved .invalid TLD never resolves (RFC 6761)
        host, port = "broker.no-such-host.invalid", 1883

    cfg = daemon_config(tmp_path, tiny_bundle, vpath, NoBroker())
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(cfg), "--check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 78 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "mqtt.host" in err[0] and "broker.no-such-host.invalid" in err[0] and "does not resolve" in err[0]
    proc = start_daemon(cfg, "--max-frames", "60")
    assert wait_exit(proc) == 0
    text = daemon_log(cfg)
    warn = [line for line in text.splitlines() if "does not resolve" in line]
    assert len(warn) == 1 and "mqtt.host" in warn[0] and "Traceback" not in text
    assert log_summary(text)["frames"] == 60


def _bad_bundle(tmp_path: Path, tiny_bundle: Path, how: str) -> Path:
    b = copy_bundle(tiny_bundle, tmp_path / f"bundle-{how}")
    m = json.loads((b / "manifest.json").read_text())
    role = m.get("classifier", "classifier_int8")
    f = b / m["files"][role]["path"]
    if how == "missing":
        f.unlink()
    elif how == "sha":
        f.write_bytes(f.read_bytes() + b"\0")
    elif how == "not-tflite":
        f.write_bytes(b"this is not a flatbuffer at all" * 10)
        from edge.bundle import sha256_file

        m["files"][role]["sha256"] = sha256_file(f)
        (b / "manifest.json").write_text(json.dumps(m))
    elif how == "shape":
        m["input"]["height"] = m["input"]["width"] = 32
        (b / "manifest.json").write_text(json.dumps(m))
    elif how == "no-manifest":
        (b / "manifest.json").unlink()
    return b


@pytest.mark.slow
@pytest.mark.parametrize(
    "how, words",
    [
        ("missing", "missing (listed as files."),
        ("sha", "does not match files."),
        ("not-tflite", "TFLite model"),
        ("shape", "does not match the manifest's input 32x32"),
        ("no-manifest", "manifest.json: not found"),
    ],
)
def test_bad_model_is_one_line_exit_78(tmp_path, tiny_bundle, video, how, words):
    vpath, _ = video
    b = _bad_bundle(tmp_path, tiny_bundle, how)
    cfg = daemon_config(tmp_path, b, vpath, None)
    for extra in ([], ["--check-config"]):
        r = subprocess.run(
            [sys.executable, "-m", "edge", "--config", str(cfg), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 78, r.stderr
        err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
        assert words in err[0] and str(cfg) in err[0] and "model.bundle" in err[0], err[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "over, words",
    [
        ({"camera": {"fps": "abc"}}, "camera.fps: 'abc' is not a valid number"),
        ({"camera": {"fsp": 30}}, "camera.fsp: unknown key"),
        (
            {"mqtt": {"tls": {"ca": "/nonexistent/ca.pem"}}},
            "mqtt.tls.ca: '/nonexistent/ca.pem': CA certificate file not found",
        ),
        ({"decision": {"thresholds": {"eror": 0.5}}}, "decision.thresholds.eror: 'eror' is not a label of the model"),
        (
            {"camera": {"device": "/nonexistent/video.mp4"}},
            ":4: camera.device: '/nonexistent/video.mp4': video file not found",
        ),
        (
            {"model": {"bundle": "/nonexistent/bundle", "threads": 1}},
            ":15: model.bundle: /nonexistent/bundle: model bundle directory not found",
        ),
    ],
)
def test_bad_config_is_one_line_exit_78(tmp_path, tiny_bundle, video, over, words):
    vpath, _ = video
    cfg = daemon_config(tmp_path, tiny_bundle, vpath, None, **over)
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(cfg)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 78, r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert words in err[0] and str(cfg) in err[0], err[0]


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "manifest.json").exists(), reason="shipped bundle edge/models/default not built yet")
def test_shipped_model_alerts_each_defect_once(tmp_path, mqtt_broker, mqtt_subscriber):
    """The product criterion on the real moving-seam video, through a real broker: ≥ 95 % of the
    injected defects alerted, each exactly once, ≤ 1 false alert per 1000 frames, a heatmap for
    every alert, and the subscriber sees exactly the alerts the daemon sent."""
    from convert.demo import make_video

    vpath = tmp_path / "seam.mp4"
    truth = make_video(vpath, 900, seed=3)
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/alert")
    from edge.config import DecisionConfig

    default = DecisionConfig()  # the shipped bundle with the daemon's default debounce
    decision = {"expected_length": "2mm", "min_frames": default.min_frames, "window": default.window}
    cfg = daemon_config(tmp_path, SHIPPED, vpath, mqtt_broker, decision=decision)
    proc = start_daemon(cfg)
    assert wait_exit(proc, 600) == 0, daemon_log(cfg)[-2000:]
    text = daemon_log(cfg)
    logged, s = log_alerts(text), log_summary(text)
    got = sub.wait_count("seamqc/test-st/alert", len(logged), timeout=10) if logged else []
    alerts = [m.json() for m in got]
    assert sorted(a["event_id"] for a in alerts) == sorted(a["event_id"] for a in logged)
    res = match_alerts(alerts, truth)
    print(
        f"defects {res.defects}, detected {len(res.detected)}, false {len(res.false_alerts)}, "
        f"frames {s['frames']}, per defect {res.per_defect}"
    )
    assert res.defects >= 10
    assert res.recall >= 0.95, res
    assert all(n == 1 for d, n in res.per_defect.items() if d in res.detected), res.per_defect
    assert res.false_per_1000(s["frames"]) <= 1.0, res.false_alerts
    for a in alerts:
        assert a["heatmap"] and Path(a["heatmap"]).is_file(), a


# --------------------------------------------------------------------------- demo + matcher


def test_match_alerts_scores_alerts_against_truth():
    truth = [
        {"defect_id": 0, "label": "error", "first_frame": 10, "last_frame": 20},
        {"defect_id": 1, "label": "break", "first_frame": 50, "last_frame": 60},
        {"defect_id": 2, "label": "length", "first_frame": 100, "last_frame": 200},
    ]
    alerts = [
        {"event_id": "a", "frame": 15, "first_frame": 12, "last_frame": 19, "labels": ["error"]},
        {"event_id": "b", "frame": 55, "first_frame": 52, "last_frame": 58, "labels": ["error", "break"]},
        {"event_id": "c", "frame": 58, "first_frame": 57, "last_frame": 59, "labels": ["break"]},
        {"event_id": "d", "frame": 80, "labels": ["error"]},  # nothing there
        {"event_id": "e", "frame": 150, "labels": ["error"]},
    ]  # wrong family
    res = match_alerts(alerts, truth)
    assert res.per_defect == {0: 1, 1: 2, 2: 0}
    assert res.detected == [0, 1] and res.missed == [2] and res.false_alerts == ["d", "e"]
    assert res.recall == pytest.approx(2 / 3) and res.false_per_1000(1000) == 2.0
    assert match_alerts(alerts, truth, same_label=False).per_defect[2] == 1


@pytest.mark.slow
def test_demo_with_and_without_broker(tmp_path, tiny_bundle, mqtt_broker, capsys):
    """`python -m convert demo` end to end (tiny bundle instead of the shipped one): the video, the
    daemon subprocess, alerts from MQTT when the configured broker is up; when it is not, a private
    Mosquitto for the run (alerts over MQTT, the dashboard command, the broker stopped after); and
    with --no-broker, alerts from the log that wait in the outbox."""
    from convert.demo import demo

    src = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    src["mqtt"]["port"] = mqtt_broker.port
    src["mqtt"]["host"] = mqtt_broker.host
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(src))
    res = demo(cfg, tmp_path / "up", frames=120, seed=1, bundle=str(tiny_bundle), quiet=True)
    assert res["via"] == "mqtt" and res["frames"] == 120 and res["defects"] >= 1
    assert res["broker"] == {"host": mqtt_broker.host, "port": mqtt_broker.port, "private": False}
    assert res["heatmaps"]["overlays"] == res["alerts"]
    assert (tmp_path / "up" / "seam.truth.csv").is_file() and (tmp_path / "up" / "summary.json").is_file()
    assert res["alerts"] == len(log_alerts((tmp_path / "up" / "daemon.log").read_text()))
    mqtt_broker.stop()

    # no broker answers: the demo brings its own, prints alerts as they arrive over MQTT, stops it
    capsys.readouterr()
    res2 = demo(cfg, tmp_path / "private", frames=120, seed=1, bundle=str(tiny_bundle))
    printed = capsys.readouterr().out
    b = res2["broker"]
    assert b["private"] and b["host"] == "127.0.0.1" and b["port"] != mqtt_broker.port
    assert res2["via"] == "mqtt" and res2["frames"] == 120 and res2["alerts"] > 0
    logged = log_alerts((tmp_path / "private" / "daemon.log").read_text())
    assert res2["alerts"] == len(logged) and res2["alerts_missing_on_mqtt"] == 0
    assert res2["outbox"]["depth"] == 0  # delivered, not waiting
    assert f"python -m convert dashboard --broker 127.0.0.1 --port {b['port']}" in printed
    for a in logged:  # each alert printed from the subscriber, before the summary
        assert f"ALERT {a['event_id']} " in printed.split("demo summary:")[0]
    assert "demo summary:" in printed and f"alerts: {res2['alerts']} (via mqtt)" in printed
    assert f"private Mosquitto on 127.0.0.1:{b['port']} stopped" in printed
    assert not port_open("127.0.0.1", b["port"])  # stopped at the end

    # --no-broker: alerts from the log, kept in the outbox (the behaviour without Mosquitto)
    res3 = demo(cfg, tmp_path / "down", frames=120, seed=1, bundle=str(tiny_bundle), quiet=True, private_broker=False)
    assert res3["via"].startswith("daemon log") and res3["frames"] == 120 and res3["broker"] is None
    assert res3["outbox"]["depth"] == res3["alerts"] > 0
    # a second run into the same directory counts its own heatmaps, not the earlier run's too
    res4 = demo(cfg, tmp_path / "down", frames=120, seed=1, bundle=str(tiny_bundle), quiet=True, private_broker=False)
    assert res4["heatmaps"]["overlays"] == res4["alerts"] == res3["alerts"]
    assert read_truth(tmp_path / "down" / "seam.truth.csv")
    # a private broker then delivers what those runs left in the outbox; the score counts this run's
    res5 = demo(cfg, tmp_path / "down", frames=120, seed=1, bundle=str(tiny_bundle), quiet=True)
    assert res5["via"] == "mqtt" and res5["outbox"]["depth"] == 0
    assert res5["earlier_alerts"] == res3["alerts"] + res4["alerts"] and res5["alerts"] == res3["alerts"]
