"""What a fleet does to one broker (issue 16 #5): N daemons on a private Mosquitto, then a rollout to all.

Each daemon classifies a looping 5 fps noise video with ``decision.thresholds.error: 0`` and
``max_event_frames: 10`` (an alert every 2 s per station, stats every 2 s, health on, heatmaps off),
so the broker carries what a line of stations would, several times over. Measured over a steady
window: the broker's message rate in (every message the loopback subscriber on ``seamqc/#`` got),
the alert rate, the broker's CPU (its process's user + system time over the window, % of one core)
and RSS; over the whole run: alert delivery (the daemon's ``alert`` log event, written once the
alert is in its outbox, → the subscriber; both wall clocks of this machine, ms), alerts lost (logged
but never received) and duplicates. Then ``convert deploy`` sends a ~1 MB bundle to every station
(``model.rollout``, signed with a fresh key) and the time until all report ``active`` is taken.

The bundle sent is the bench bundle reduced to what a station without heatmaps needs (manifest,
int8 classifier, self-check) and padded to ``ROLLOUT_BYTES`` with an extra listed file, so the
rollout size does not depend on which bundle is benched.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from ..harness import DaemonProcess, MqttSubscriber
from .common import ROOT, iso_to_epoch, pct, say, subprocess_env
from .daemon import LocalBroker

ROLLOUT_BYTES = 1 << 20
FPS = 5


def _video(path: Path, frames: int = 20) -> Path:
    import cv2
    import numpy as np

    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (320, 240))
    rng = np.random.default_rng(3)
    for _ in range(frames):
        w.write(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    w.release()
    return path


def _station_bundle(src: Path, dst: Path, version: str, key: Path, pad: int = 0) -> Path:
    """``src`` reduced to manifest + int8 classifier + self-check, with ``version`` and ``pad`` bytes, signed."""
    from edge.bundle import MANIFEST, write_manifest
    from edge.signing import sign_bundle

    m = json.loads((src / MANIFEST).read_text())
    keep = [r for r in ("classifier_int8", "selfcheck") if r in m["files"]]
    dst.mkdir(parents=True)
    files = {}
    for role in keep:
        rel = m["files"][role]["path"]
        shutil.copy2(src / rel, dst / rel)
        files[role] = rel
    if pad > 0:
        (dst / "padding.bin").write_bytes(os.urandom(pad))
        files["padding"] = "padding.bin"
    for k in ("files", "gradcam"):
        m.pop(k, None)
    m.update(version=version, classifier="classifier_int8")
    write_manifest(dst, m, files)
    sign_bundle(dst, key)
    return dst


def _config(work: Path, name: str, link: Path, video: Path, port: int, pub: Path) -> Path:
    import yaml

    cfg = {
        "station": name,
        "camera": {
            "source": "file",
            "device": str(video),
            "width": 320,
            "height": 240,
            "fps": FPS,
            "roi": [40, 0, 240, 240],
            "realtime": True,
            "loop": True,
        },
        "model": {"bundle": str(link), "threads": 1, "watch_s": 0, "trusted_keys": [str(pub)], "rollout": True},
        "decision": {
            "expected_length": "any",
            "min_frames": 1,
            "window": 1,
            "thresholds": {"error": 0.0},
            "max_event_frames": 10,
        },
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 1},
        "heatmaps": {"enabled": False, "dir": str(work / f"heatmaps-{name}")},
        "outbox": str(work / f"outbox-{name}.sqlite"),
        "stats_interval": 2,
    }
    p = work / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def fleet_bench(work: Path, bundle: Path, stations: int, steady_s: float) -> dict[str, Any]:
    """Run the fleet (module doc) → the ``fleet`` section of ``bench-results.json``."""
    import psutil

    from convert.__main__ import main as convert_main
    from convert.deploy import pack
    from edge.signing import generate

    work = Path(work) / "fleet"
    work.mkdir(parents=True, exist_ok=True)
    priv, pub = generate(work / "keys", "deploy")
    probe = _station_bundle(Path(bundle), work / "probe", "probe", priv)
    v2 = _station_bundle(
        Path(bundle), work / "v2", "fleet-v2", priv, pad=max(0, ROLLOUT_BYTES - len(pack(probe)) - 2048)
    )
    tar_bytes = len(pack(v2))
    video = _video(work / "fleet.mp4")
    names = [f"fleet-{i:02d}" for i in range(stations)]
    broker = LocalBroker(work)
    sub = MqttSubscriber("127.0.0.1", broker.port, "seamqc/#", client_id=f"seamqc-bench-fleet-{os.getpid()}")
    procs: dict[str, DaemonProcess] = {}
    bproc = psutil.Process(broker.broker.pid) if broker.broker.pid else None

    def active_on(version: str) -> set[str]:
        out = set()
        for n in names:
            msgs = sub.on(f"seamqc/{n}/model/state")
            if msgs:
                s = msgs[-1].json()
                if s.get("state") == "active" and s.get("model", {}).get("version") == version:
                    out.add(n)
        return out

    def wait_all(version: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(active_on(version)) == len(names):
                return True
            time.sleep(0.1)
        return False

    res: dict[str, Any] = {"stations": stations, "fps_each": FPS, "rollout_bytes": tar_bytes}
    try:
        sub.wait_subscribed(5)
        say(f"fleet: {stations} daemons on one broker")
        t0 = time.monotonic()
        for n in names:
            models = work / n
            _station_bundle(Path(bundle), models / "v1", "fleet-v1", priv)
            os.symlink("v1", models / "current")
            cfg = _config(work, n, models / "current", video, broker.port, pub)
            procs[n] = DaemonProcess(cfg, log_path=work / f"{n}.log", env=subprocess_env(), cwd=ROOT)
        if not wait_all("fleet-v1", 180):
            raise RuntimeError(f"fleet: only {len(active_on('fleet-v1'))} of {stations} daemons came up")
        res["startup_all_s"] = round(time.monotonic() - t0, 2)
        time.sleep(2.0)  # past the start-up burst (retained states, discovery)

        say(f"fleet: steady window {steady_s:g} s")
        n0, c0, w0 = len(sub.messages), bproc.cpu_times() if bproc else None, time.monotonic()
        time.sleep(steady_s)
        n1, c1, w1 = len(sub.messages), bproc.cpu_times() if bproc else None, time.monotonic()
        window = sub.messages[n0:n1]
        dt = w1 - w0
        res["window_s"] = round(dt, 2)
        res["msgs_per_s"] = round(len(window) / dt, 1)
        res["alerts_per_s"] = round(sum(1 for m in window if m.topic.endswith("/alert")) / dt, 2)
        res["bytes_per_s"] = round(sum(len(m.payload) for m in window) / dt, 1)
        if bproc is not None and c0 is not None and c1 is not None:
            busy = (c1.user - c0.user) + (c1.system - c0.system)
            res["broker_cpu_pct"] = round(100.0 * busy / dt, 2)
            res["broker_rss_mb"] = round(bproc.memory_info().rss / 2**20, 1)

        say(f"fleet: convert deploy of {tar_bytes} bytes to {stations} stations")
        out = io.StringIO()
        t_dep = time.monotonic()
        with contextlib.redirect_stdout(out):
            rc = convert_main(
                [
                    "deploy",
                    str(v2),
                    "--broker",
                    "127.0.0.1",
                    "--port",
                    str(broker.port),
                    "--stations",
                    "fleet-*",
                    "--key",
                    str(priv),
                    "--discover-s",
                    "1",
                    "--timeout",
                    "120",
                ]
            )
        # from the command's start (its 1 s discovery included) to every station active on the bundle
        res["rollout_s"] = round(time.monotonic() - t_dep, 2)
        res["rollout_rc"] = rc
        res["rollout_active"] = len(active_on("fleet-v2"))
        if rc != 0:
            res["rollout_output_tail"] = out.getvalue()[-2000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(60)
            except Exception:  # noqa: BLE001 - a stuck daemon must not hide the numbers
                p.kill()
        time.sleep(0.5)
        sub.close()
        broker.stop()

    # alert delivery: logged (stored in the outbox) → received; lost = logged, never received
    first_rx: dict[str, float] = {}
    received = 0
    for m in sub.messages:
        if m.topic.endswith("/alert"):
            received += 1
            eid = m.json().get("event_id")
            first_rx.setdefault(eid, m.wall)
    delays, lost, logged = [], 0, 0
    for p in procs.values():
        for e in p.snapshot():
            if e.name != "alert":
                continue
            logged += 1
            rx = first_rx.get(e.get("event_id"))
            if rx is None:
                lost += 1
            elif isinstance(e.get("ts"), str):
                delays.append((rx - iso_to_epoch(e.get("ts"))) * 1000.0)
    res["alerts_logged"] = logged
    res["alerts_lost"] = lost
    res["alerts_duplicates"] = received - len(first_rx)
    res["alert_delivery_ms"] = (
        {"p50": round(pct(delays, 50), 2), "p99": round(pct(delays, 99), 2), "max": round(max(delays), 2)}
        if delays
        else {"p50": None, "p99": None, "max": None}
    )
    res["alert_delivery_ms"]["n"] = len(delays)
    shutil.rmtree(work, ignore_errors=True)
    return res
