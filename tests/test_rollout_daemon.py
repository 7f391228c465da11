"""Signed rollout over a real Mosquitto to real daemons (issue 16 #2 #3): ``convert deploy`` with a
canary, refusals that leave the old model running (unknown key, bad signature, corrupted chunk,
oversize), and ``deploy --rollback``.

Two daemons (``st-a``, ``st-b``) on a looping 30 fps noise video with the tiny model really
exported (``tiny_bundle``) and ``decision.thresholds.error: 0`` (an alert every ~0.3 s), each with
its own state directory ``<station>/models`` where ``current`` links to v1.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from convert.__main__ import main as convert_main
from convert.deploy import begin_messages, pack
from convert.harness import errors
from edge import rollout
from tests.support.daemon import daemon_config, noise_video, start_daemon, wait_exit
from tests.support.mqtt import MOSQUITTO, SKIP_REASON
from tests.support.rollout import keypair, private, raw_publish, signed_variant

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]
STATIONS = ("st-a", "st-b")


def unpacked_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.iterdir() if p.is_file())


def deploy(broker, bundle: Path, key: Path, *extra: str) -> int:
    return convert_main(
        [
            "deploy",
            str(bundle),
            "--broker",
            broker.host,
            "--port",
            str(broker.port),
            "--key",
            str(key),
            "--discover-s",
            "1",
            "--timeout",
            "60",
            *extra,
        ]
    )


def test_deploy_canary_refusals_and_rollback_on_two_daemons(
    tmp_path, tiny_bundle, mqtt_broker, mqtt_subscriber, capsys
):
    priv, pub = keypair(tmp_path / "keys")
    other, _ = keypair(tmp_path / "keys", "other")
    v2 = signed_variant(tiny_bundle, tmp_path / "work" / "v2", "v2", priv)  # deploy signs it again
    v3 = signed_variant(tiny_bundle, tmp_path / "work" / "v3", "v3", priv, pad=1 << 20)
    # st-b takes v2 but not v3 (1 MiB bigger)
    cap_mb = (max(len(pack(v2)), unpacked_size(v2)) + (256 << 10)) / (1 << 20)
    video = noise_video(tmp_path / "v.mp4", 30)
    sub = mqtt_subscriber(mqtt_broker, "seamqc/#").wait_subscribed()
    procs, models = {}, {}
    for name in STATIONS:
        home = tmp_path / name
        models[name] = home / "models"
        signed_variant(tiny_bundle, models[name] / "v1", "v1", priv)
        os.symlink("v1", models[name] / "current")
        cfg = daemon_config(
            home,
            models[name] / "current",
            video,
            mqtt_broker,
            station=name,
            camera={"loop": True, "realtime": True},
            model={
                "bundle": str(models[name] / "current"),
                "threads": 1,
                "watch_s": 0.5,
                "trusted_keys": [str(pub)],
                "rollout": True,
                **({"max_bundle_mb": round(cap_mb, 3)} if name == "st-b" else {}),
            },
            decision={"thresholds": {"error": 0.0}, "max_event_frames": 10},
            heatmaps={"enabled": False},
            health={"enabled": False},
        )
        procs[name] = start_daemon(cfg)

    def state(name: str, pred, timeout: float = 60) -> dict:
        return sub.wait_for(f"seamqc/{name}/model/state", lambda m: pred(m.json()), timeout=timeout).json()

    def alert_on(name: str, version: str, after: int = 0) -> None:
        topic = f"seamqc/{name}/alert"
        sub.wait_for(topic, lambda m: m.json()["model"]["version"] == version and m.t > after, timeout=30)

    try:
        for name in STATIONS:
            state(name, lambda s: s["state"] == "active" and s["model"]["version"] == "v1", timeout=90)
            alert_on(name, "v1")

        # 1. the rollout, canary first
        assert deploy(mqtt_broker, v2, priv, "--stations", "st-*", "--canary", "1", "--canary-s", "1") == 0
        out = capsys.readouterr().out
        assert "canary: st-a" in out and "2 of 2 stations done" in out, out
        assert out.index("st-a: active") < out.index("st-b: begin sent")  # the rest only after the canary
        rid = None
        for name in STATIONS:
            s = state(name, lambda s: s["state"] == "active" and s["model"]["version"] == "v2")
            assert s["model"]["signed_by"] and s["previous"]["version"] == "v1"
            rid = s["rollout"]["id"]
            assert os.readlink(models[name] / "current") == f"rollout-{rid}"
            alert_on(name, "v2")
        swaps = [e for e in procs["st-a"].snapshot() if e.name == "model_swap"]
        assert swaps and swaps[-1].get("frames_between") == 0 and swaps[-1].get("classify_gap_ms") < 1000

        # 2. refusals: each leaves v2 running, with a failed state naming why
        assert deploy(mqtt_broker, v3, other, "--stations", "st-*") == 1  # a key the stations do not trust
        assert "failed: signed by unknown key" in capsys.readouterr().out
        for name in STATIONS:
            s = state(name, lambda s: "unknown key" in s["state"])
            assert s["model"]["version"] == "v2"

        tar = pack(v3)
        begin, chunks, end = begin_messages(tar, "corrupt1", private(priv), "tiny", "v3", 64 << 10)
        head, _, data = chunks[1].partition(b"\n")
        chunks[1] = head + b"\n" + bytes([data[0] ^ 0xFF]) + data[1:]
        raw_publish(mqtt_broker, "seamqc/st-a/model/set", [begin])
        mine = lambda s: s.get("rollout", {}).get("id") == "corrupt1"  # noqa: E731
        state("st-a", lambda s: mine(s) and s["state"] == "downloading")
        for at in range(0, len(chunks), rollout.WINDOW):  # as deploy does: a window at a time
            raw_publish(mqtt_broker, "seamqc/st-a/model/set", chunks[at : at + rollout.WINDOW])
            n = min(at + rollout.WINDOW, len(chunks))
            state("st-a", lambda s, n=n: mine(s) and s["rollout"].get("next", 0) >= n)
        raw_publish(mqtt_broker, "seamqc/st-a/model/set", [end])
        s = state("st-a", lambda s: mine(s) and "failed" in s["state"])
        assert "sha256 of the received bundle" in s["state"] and s["model"]["version"] == "v2"

        h = json.loads(begin.partition(b"\n")[0])
        h["id"], h["sha256"] = "forged1", "0" * 64  # the signature no longer covers it
        raw_publish(mqtt_broker, "seamqc/st-a/model/set", [rollout.encode(h)])
        s = state("st-a", lambda s: s.get("rollout", {}).get("id") == "forged1")
        assert "bad signature" in s["state"] and s["model"]["version"] == "v2"

        assert deploy(mqtt_broker, v3, priv, "--stations", "st-b") == 1
        s = state("st-b", lambda s: "max_bundle_mb" in s["state"])
        assert s["state"].startswith("failed: ") and s["model"]["version"] == "v2"
        capsys.readouterr()
        for name in STATIONS:
            assert procs[name].poll() is None
            alert_on(name, "v2", after=sub.on(f"seamqc/{name}/model/state")[-1].t)  # the line goes on

        # 3. rollback: back to v1 everywhere
        assert deploy(mqtt_broker, v2, priv, "--stations", "st-*", "--rollback") == 0
        for name in STATIONS:
            s = state(name, lambda s: s["state"] == "rolled_back" and s["model"]["version"] == "v1")
            assert s["previous"]["version"] == "v2"
            assert os.readlink(models[name] / "current") == "v1"
            alert_on(name, "v1", after=sub.on(f"seamqc/{name}/model/state")[-1].t)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = {name: wait_exit(p, 30) for name, p in procs.items()}
    assert codes == {"st-a": 0, "st-b": 0}
    for name in STATIONS:
        text = "\n".join(e.line for e in procs[name].snapshot())
        assert "Traceback" not in text
        # inside the state directory: v1, the installed v2, the links; no download left behind
        installed = {"v1", "current", "current.previous", "current.issued", f"rollout-{rid}"}
        assert {p.name for p in models[name].iterdir()} == installed


def test_a_station_killed_mid_download_resumes_and_ends_active(tmp_path, tiny_bundle, mqtt_broker, mqtt_subscriber):
    """SIGKILL while the chunks arrive: the restarted daemon announces where it is, deploy goes on from there."""
    import threading

    priv, pub = keypair(tmp_path / "keys")
    v2 = signed_variant(tiny_bundle, tmp_path / "work" / "v2", "v2", priv, pad=1 << 20)  # ~300 chunks of 4 KiB
    models = tmp_path / "st-k" / "models"
    signed_variant(tiny_bundle, models / "v1", "v1", priv)
    os.symlink("v1", models / "current")
    cfg = daemon_config(
        tmp_path / "st-k",
        models / "current",
        noise_video(tmp_path / "v.mp4", 30),
        mqtt_broker,
        station="st-k",
        camera={"loop": True, "realtime": True},
        model={"bundle": str(models / "current"), "threads": 1, "trusted_keys": [str(pub)], "rollout": True},
        heatmaps={"enabled": False},
        health={"enabled": False},
    )
    sub = mqtt_subscriber(mqtt_broker, "seamqc/st-k/#").wait_subscribed()
    proc = start_daemon(cfg)
    topic = "seamqc/st-k/model/state"
    sub.wait_for(topic, lambda m: m.json()["state"] == "active", timeout=90)
    result: dict = {}
    args = ("--stations", "st-k", "--chunk-kb", "4", "--timeout", "120")
    t = threading.Thread(target=lambda: result.update(rc=deploy(mqtt_broker, v2, priv, *args)), daemon=True)
    t.start()
    at = sub.wait_for(topic, lambda m: m.json().get("rollout", {}).get("next", 0) >= 40, timeout=60).json()
    proc.kill()  # SIGKILL mid-download
    proc.wait(10)
    chunks = at["rollout"]["chunks"]
    assert at["rollout"]["next"] < chunks  # really in the middle
    proc = start_daemon(cfg)
    try:
        t.join(150)
        assert result.get("rc") == 0
        ev = proc.wait_event("model", lambda e: e.get("state") == "active" and e.get("model")["version"] == "v2")
        assert ev.get("rollout")["id"]
        resumed = [
            m.json()
            for m in sub.on(topic)
            if m.json().get("rollout", {}).get("boot") not in (None, at["rollout"]["boot"])
        ]
        assert resumed and resumed[0]["state"] == "downloading" and resumed[0]["rollout"]["next"] >= 40  # not from 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 30) == 0
    assert os.readlink(models / "current").startswith("rollout-")
    assert not list(models.glob(".rollout-*/*"))  # the download is gone once installed


def test_replays_are_refused_across_a_restart_and_a_corrupt_counter_file_stops_the_start(
    tmp_path, tiny_bundle, mqtt_broker, mqtt_subscriber
):
    """Replay protection (issue 16) on a real daemon and a real Mosquitto: ``convert deploy``'s signed
    messages, recorded off the broker and published again, are refused (``failed: replayed: …``, one
    log line, the running model stays); the older bundle deployed anew is accepted (a deliberate
    downgrade); the counter survives a restart; a corrupt counter file stops the start (exit 78, one
    line naming it)."""
    priv, pub = keypair(tmp_path / "keys")
    v2 = signed_variant(tiny_bundle, tmp_path / "work" / "v2", "v2", priv)
    v3 = signed_variant(tiny_bundle, tmp_path / "work" / "v3", "v3", priv)
    models = tmp_path / "st-r" / "models"
    signed_variant(tiny_bundle, models / "v1", "v1", priv)
    os.symlink("v1", models / "current")
    cfg = daemon_config(
        tmp_path / "st-r",
        models / "current",
        noise_video(tmp_path / "v.mp4", 30),
        mqtt_broker,
        station="st-r",
        camera={"loop": True, "realtime": True},
        model={"bundle": str(models / "current"), "threads": 1, "trusted_keys": [str(pub)], "rollout": True},
        heatmaps={"enabled": False},
        health={"enabled": False},
    )
    sub = mqtt_subscriber(mqtt_broker, "seamqc/st-r/#").wait_subscribed()  # records model/set as sent
    topic, set_topic = "seamqc/st-r/model/state", "seamqc/st-r/model/set"

    def state(pred, after: float = 0.0, timeout: float = 60) -> dict:
        return sub.wait_for(topic, lambda m: m.t > after and pred(m.json()), timeout=timeout).json()

    def recorded(rid: str) -> list[bytes]:
        """Every payload deploy published for rollout ``rid``, in order: what an eavesdropper kept."""
        return [m.payload for m in sub.on(set_topic) if json.loads(m.payload.partition(b"\n")[0])["id"] == rid]

    def replayed(rid: str, op: str, after: float) -> dict:
        s = state(lambda s: s.get("rollout", {}).get("id") == rid and s["state"].startswith("failed"), after)
        assert s["state"].startswith(f"failed: replayed: {op} issued at "), s["state"]
        return s

    proc = start_daemon(cfg)
    try:
        state(lambda s: s["state"] == "active" and s["model"]["version"] == "v1", timeout=90)
        st = ("--stations", "st-r")
        assert deploy(mqtt_broker, v2, priv, *st) == 0
        rid_v2 = state(lambda s: s["state"] == "active" and s["model"]["version"] == "v2")["rollout"]["id"]
        assert deploy(mqtt_broker, v3, priv, *st) == 0
        state(lambda s: s["state"] == "active" and s["model"]["version"] == "v3")

        # 1. the v2 rollout recorded off the wire (begin, chunks, end), sent again: refused, v3 runs on
        old_v2 = recorded(rid_v2)
        assert len(old_v2) >= 3
        t = sub.on(topic)[-1].t
        raw_publish(mqtt_broker, set_topic, old_v2)
        assert replayed(rid_v2, "begin", t)["model"]["version"] == "v3"

        # 2. a recorded rollback, sent again once v3 runs again: refused, v3 runs on
        assert deploy(mqtt_broker, v3, priv, *st, "--rollback") == 0
        s = state(lambda s: s["state"] == "rolled_back" and s["model"]["version"] == "v2")
        old_rb = recorded(s["rollout"]["id"])
        assert len(old_rb) == 1
        t = sub.on(topic)[-1].t
        assert deploy(mqtt_broker, v3, priv, *st) == 0  # v3 deployed anew
        state(lambda s: s["state"] == "active" and s["model"]["version"] == "v3", t)
        t = sub.on(topic)[-1].t
        raw_publish(mqtt_broker, set_topic, old_rb)
        assert replayed(s["rollout"]["id"], "rollback", t)["model"]["version"] == "v3"
        assert os.readlink(models / "current").startswith("rollout-")

        # 3. a deliberate downgrade: v2 deployed anew, with a new issue counter
        t = sub.on(topic)[-1].t
        assert deploy(mqtt_broker, v2, priv, *st) == 0
        state(lambda s: s["state"] == "active" and s["model"]["version"] == "v2", t)
        lines = [e.msg for e in proc.snapshot() if e.get("level") == "ERROR" and "replayed" in e.msg]
        assert len(lines) == 2, lines  # one line per refused message, not one per chunk
    finally:
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 30) == 0
    counters = json.loads((models / "current.issued").read_text())
    ((kid, last),) = counters["keys"].items()
    newest = max(json.loads(m.payload.partition(b"\n")[0]).get("issued_at", 0) for m in sub.on(set_topic))
    assert last["issued_at"] == newest  # the v2 deployed anew: the highest counter sent

    # 4. after a restart the counter is still there: both recordings are refused again
    t = sub.on(topic)[-1].t
    proc = start_daemon(cfg)
    try:
        state(lambda s: s["state"] == "active" and s["model"]["version"] == "v2", t, timeout=90)
        t = sub.on(topic)[-1].t
        raw_publish(mqtt_broker, set_topic, old_v2)
        assert replayed(rid_v2, "begin", t)["model"]["version"] == "v2"
        t = sub.on(topic)[-1].t
        raw_publish(mqtt_broker, set_topic, old_rb)
        rb_id = json.loads(old_rb[0].partition(b"\n")[0])["id"]
        assert replayed(rb_id, "rollback", t)["model"]["version"] == "v2"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 30) == 0

    # 5. a corrupt counter file: the daemon does not start (exit 78), one line naming the file
    (models / "current.issued").write_text('{"format": 1, "keys": {')
    proc = start_daemon(cfg)
    assert wait_exit(proc, 60) == 78
    errs = errors(proc.snapshot())
    assert len(errs) == 1 and f"{models / 'current.issued'}: corrupt (not JSON)" in errs[0], errs
    assert "Traceback" not in "\n".join(e.line for e in proc.snapshot())
