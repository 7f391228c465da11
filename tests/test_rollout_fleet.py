"""The fleet (issue 16 #4): 20 daemons on one real Mosquitto, a signed rollout of a ~1 MB bundle to all.

* 19 stations ``fl-00`` … ``fl-18`` get ``convert deploy --stations 'fl-*'``; one of them,
  ``fl-07``, is SIGKILLed mid-download and restarted: it resumes and ends ``active``;
* ``fl-13`` runs the float classifier (``model.role: classifier_fp32``) and the bundle's fp32
  self-check is off by 0.3: it ends ``failed: … self-check failed`` on v1, and the rollback that
  follows leaves it on v1 with a working model;
* ``fx-corrupt`` gets the same bundle at the same time with one chunk corrupted: it refuses
  (sha256) and stays on v1.

Every station classifies a looping 5 fps noise video with ``decision.thresholds.error: 0`` (an
alert every 2 s), so alerts flow through the whole rollout: every alert a daemon logged (it logs
one only once it is in its outbox) reaches the subscriber, each ``event_id`` once after
de-duplication, none unknown (but for at most one of the SIGKILLed daemon's boot: stored, so
delivered, and killed before its log line); no station waits more than 1 s for a frame at its swap; and the
rollout itself is timed (target: ≤ 30 s for 20 stations on loopback).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from convert.__main__ import main as convert_main
from convert.deploy import begin_messages, pack
from edge.signing import sign_bundle
from tests.support.daemon import daemon_config, start_daemon, wait_exit
from tests.support.mqtt import MOSQUITTO, SKIP_REASON
from tests.support.rollout import keypair, low_fps_video, private, raw_publish, shift_selfcheck, signed_variant

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]

N_DEPLOYED = int(os.environ.get("SEAMQC_FLEET_N", "20")) - 1  # plus fx-corrupt
KILLED, BAD_CHECK, CORRUPT = "fl-07", "fl-13", "fx-corrupt"
ROLLOUT_TARGET_S = 30.0


def test_fleet_rollout_with_a_crash_a_corrupted_chunk_and_a_failing_selfcheck(
    tmp_path, tiny_bundle, mqtt_broker, mqtt_subscriber, capsys
):
    priv, pub = keypair(tmp_path / "keys")
    small = signed_variant(tiny_bundle, tmp_path / "work" / "probe", "probe", priv)
    pad = max(0, (1 << 20) - len(pack(small)))  # v2's tar ~1 MB
    v2 = signed_variant(tiny_bundle, tmp_path / "work" / "v2", "v2", None, pad=pad)
    shift_selfcheck(v2, "classifier_fp32")  # only fl-13 runs the fp32 classifier
    sign_bundle(v2, priv)  # deploy signs it again; the corrupted copy is sent without deploy
    video = low_fps_video(tmp_path / "v.mp4")
    names = [f"fl-{i:02d}" for i in range(N_DEPLOYED)] + [CORRUPT]
    sub = mqtt_subscriber(mqtt_broker, "seamqc/#").wait_subscribed()
    procs, cfgs, models, logged = {}, {}, {}, {}
    t0 = time.monotonic()
    for name in names:
        home = tmp_path / name
        models[name] = home / "models"
        signed_variant(tiny_bundle, models[name] / "v1", "v1", priv)
        os.symlink("v1", models[name] / "current")
        cfgs[name] = daemon_config(
            home,
            models[name] / "current",
            video,
            mqtt_broker,
            station=name,
            camera={"loop": True, "realtime": True, "width": 320, "height": 240, "roi": [40, 0, 240, 240]},
            model={
                "bundle": str(models[name] / "current"),
                "threads": 1,
                "watch_s": 0,
                "trusted_keys": [str(pub)],
                "rollout": True,
                **({"role": "classifier_fp32"} if name == BAD_CHECK else {}),
            },
            decision={"thresholds": {"error": 0.0}, "max_event_frames": 10},
            heatmaps={"enabled": False},
            health={"enabled": False},
            stats_interval=5,
        )
        procs[name] = start_daemon(cfgs[name])

    def state(name: str, pred, timeout: float = 60) -> dict:
        return sub.wait_for(f"seamqc/{name}/model/state", lambda m: pred(m.json()), timeout=timeout).json()

    try:
        for name in names:
            state(name, lambda s: s["state"] == "active" and s["model"]["version"] == "v1", timeout=240)
        started_s = time.monotonic() - t0

        # the corrupted copy to fx-corrupt, a window at a time, while deploy sends to the others
        begin, chunks, end = begin_messages(pack(v2), "corrupt", private(priv), "tiny", "v2", 64 << 10)
        head, _, data = chunks[3].partition(b"\n")
        chunks[3] = head + b"\n" + data[:-1] + bytes([data[-1] ^ 0x55])

        def corrupt() -> None:
            raw_publish(mqtt_broker, f"seamqc/{CORRUPT}/model/set", [begin])
            state(CORRUPT, lambda s: s.get("rollout", {}).get("id") == "corrupt")
            for at in range(0, len(chunks), 16):
                raw_publish(mqtt_broker, f"seamqc/{CORRUPT}/model/set", chunks[at : at + 16])
                n = min(at + 16, len(chunks))
                state(CORRUPT, lambda s, n=n: s.get("rollout", {}).get("id") == "corrupt" and s["rollout"]["next"] >= n)
            raw_publish(mqtt_broker, f"seamqc/{CORRUPT}/model/set", [end])

        result: dict = {}
        args = ["--broker", mqtt_broker.host, "--port", str(mqtt_broker.port), "--key", str(priv)]
        args += ["--stations", "fl-*", "--discover-s", "1", "--timeout", "120", "--chunk-kb", "16"]
        deployer = threading.Thread(
            target=lambda: result.update(rc=convert_main(["deploy", str(v2), *args]), s=time.monotonic()),
            daemon=True,
        )
        corrupter = threading.Thread(target=corrupt, daemon=True)
        t_deploy = time.monotonic()
        deployer.start()
        corrupter.start()
        # SIGKILL fl-07 mid-download, restart it at once
        at = state(KILLED, lambda s: s["state"] == "downloading" and s["rollout"]["next"] >= 8)
        procs[KILLED].kill()
        procs[KILLED].wait(10)
        assert at["rollout"]["next"] < at["rollout"]["chunks"]
        killed_boot = at["rollout"]["boot"]  # also the boot part of that daemon's event ids
        logged[KILLED] = [e.get("event_id") for e in procs[KILLED].snapshot() if e.name == "alert"]
        procs[KILLED] = start_daemon(cfgs[KILLED])
        deployer.join(180)
        corrupter.join(60)
        rollout_s = result["s"] - t_deploy
        out = capsys.readouterr().out
        assert result["rc"] == 1, out  # fl-13 failed its self-check
        assert f"{N_DEPLOYED - 1} of {N_DEPLOYED} stations done; failed: {BAD_CHECK}" in out, out
        # each station's outcome, waited for: deploy's own subscriber can see fl-07's `active` before
        # this one does (two subscribers, one broker), so the last message seen here may still be
        # `verifying` (seen once on a loaded 2-core run)
        for name in names:
            if name == BAD_CHECK:
                s = state(name, lambda s: "self-check failed" in s["state"], timeout=30)
                assert s["model"]["version"] == "v1", s
            elif name == CORRUPT:
                s = state(name, lambda s: "sha256 of the received bundle" in s["state"], timeout=30)
                assert s["model"]["version"] == "v1", s
            else:
                s = state(name, lambda s: s["state"] == "active" and s["model"]["version"] == "v2", timeout=30)
        resumed = [
            m.json()["rollout"]["next"]
            for m in sub.on(f"seamqc/{KILLED}/model/state")
            if m.json().get("rollout", {}).get("boot") not in (None, at["rollout"]["boot"])
        ]
        assert resumed and resumed[0] >= 8  # the restarted daemon went on from its chunks

        # rollback everywhere: back to v1; fl-13 never left it and keeps a working model
        assert convert_main(["deploy", str(v2), *args, "--rollback"]) == 0, capsys.readouterr().out
        for name in names[:-1]:
            s = state(name, lambda s: s["state"] == "rolled_back")
            assert s["model"]["version"] == "v1" and s["rollout"]["changed"] is (name != BAD_CHECK), (name, s)
        time.sleep(2.5)  # a few more alerts on v1 everywhere
        for name in names:
            assert procs[name].poll() is None, name
            assert sub.on(f"seamqc/{name}/alert")[-1].json()["model"]["version"] == "v1", name
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = {name: wait_exit(p, 60) for name, p in procs.items()}
    assert set(codes.values()) == {0}, codes

    # alerts: every one logged (= stored in the outbox) arrived, each event_id once after de-duplication
    received: dict[str, list[str]] = {}
    for m in sub.messages:
        if m.topic.endswith("/alert"):
            received.setdefault(m.topic.split("/")[1], []).append(m.json()["event_id"])
    total = dupes = 0
    for name in names:
        events = procs[name].snapshot()
        ids = logged.get(name, []) + [e.get("event_id") for e in events if e.name == "alert"]
        assert len(ids) == len(set(ids)) and ids, name
        got = received.get(name, [])
        unlogged = set(got) - set(ids)
        if name == KILLED:  # the daemon stores an alert, then logs it: SIGKILL may fall in between
            assert len(unlogged) <= 1 and all(e.startswith(f"{KILLED}-{killed_boot}-") for e in unlogged), unlogged
            unlogged = set()
        assert set(ids) <= set(got) and not unlogged, (name, set(ids) - set(got), unlogged)
        total, dupes = total + len(ids), dupes + len(got) - len(set(got))
        for sw in (e for e in events if e.name == "model_swap"):
            assert sw.get("classify_gap_ms") < 1000 and sw.get("capture_gap_ms") < 1000, (name, sw.data)
    print(
        f"\nfleet: {len(names)} daemons up in {started_s:.1f} s; rollout of {len(pack(v2))} bytes to "
        f"{N_DEPLOYED} stations in {rollout_s:.1f} s (target {ROLLOUT_TARGET_S:g} s); {total} alerts, "
        f"{dupes} duplicates removed, 0 lost"
    )
    assert rollout_s <= ROLLOUT_TARGET_S * 2  # the target is for an idle machine; 2x leaves room for load
