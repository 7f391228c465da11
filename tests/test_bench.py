"""``python -m convert bench --quick`` end to end on the tiny bundle: every ARCHITECTURE.md §4 key, sane numbers.

No timing assertions (the machine is shared): only that each measurement exists, is finite and
positive, and is consistent with itself (p99 ≥ p50, ratios = quotients of the reported values).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.support.cli import run_convert
from tests.support.mqtt import MOSQUITTO, SKIP_REASON

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = (
    "latency_ms",
    "e2e_fps",
    "bound_fps",
    "heatmap_ms",
    "rss_mb",
    "startup_s",
    "alert_latency_ms",
    "defect_on_latency_ms",
    "heatmap_mqtt_latency",
    "health_cost",
    "samples_cost",
    "samples_rss_mb",
    "samples_flood_latency",
    "feedback_junk",
    "fleet",
    "model_swap",
    "train_step_ms",
    "machine",
    "ratios",
    "classifier_budget",
    "targets",
)


def _pos(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
def test_bench_quick_writes_every_measure(tiny_bundle, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_convert(
        "bench",
        "--quick",
        "--bundle",
        str(tiny_bundle),
        "--json",
        str(out),
        "--work",
        str(tmp_path / "work"),
        timeout=580,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for key in REQUIRED:
        assert key in res, key

    # latency: the bundle under Keras, tf.function and both LiteRT classifiers, p50 ≤ p99
    lat = res["latency_ms"]["bundle"]
    assert {"keras", "tf.function", "litert-fp32", "litert-int8"} <= set(lat)
    for rt, per in lat.items():
        for threads, s in per.items():
            assert int(threads) >= 1
            assert _pos(s["p50"]) and s["p99"] >= s["p50"], (rt, threads, s)
            assert s["n"] >= 30, (rt, threads, s)
    assert set(lat["litert-int8"]) >= {"1", str(res["settings"]["daemon_threads"])}
    keras_t = next(iter(lat["keras"]))
    assert res["ratios"]["bundle"][f"litert-int8@{keras_t}"] == pytest.approx(
        lat["keras"][keras_t]["p50"] / lat["litert-int8"][keras_t]["p50"], rel=0.02
    )

    # the classifier budget: the bundle's int8 classifier / the single-look architecture's, side by side at 1 thread
    cb = res["classifier_budget"]
    ref = res["latency_ms"]["reference"]
    assert set(ref) == {"litert-int8"} and ref["litert-int8"]["1"]["n"] >= 30, ref  # int8 only, timed as often
    assert (cb["bundle_int8_p50"], cb["reference_int8_p50"]) == (
        lat["litert-int8"]["1"]["p50"],
        ref["litert-int8"]["1"]["p50"],
    )
    assert cb["ratio"] == pytest.approx(cb["bundle_int8_p50"] / cb["reference_int8_p50"], abs=0.001)
    assert cb["views"] == 1 and cb["bundle_macs"] == res["models"]["bundle"]["macs"], cb
    assert (res["models"]["reference"]["arch"], res["models"]["reference"]["filters"]) == ("resnet-int8-gap", 8)
    assert _pos(cb["reference_macs"]) and cb["reference_macs"] == res["models"]["reference"]["macs"], cb
    budget = next(t for t in res["targets"] if t["name"] == "classifier_cost_vs_reference")
    assert budget["value"] == cb["ratio"] and budget["target"] == "<= 3.0", budget

    # the workstation's training step, XLA on and off (convert train's default on a CPU depends on AVX-512)
    ts = res["train_step_ms"]
    assert ts["arch"] == "resnet-int8" and ts["batch"] == 32, ts
    for arm in ("xla", "plain"):
        assert ts[arm]["n"] == 6 and _pos(ts[arm]["p50"]) and ts[arm]["p99"] >= ts[arm]["p50"], ts
    assert ts["xla_speedup"] == pytest.approx(ts["plain"]["p50"] / ts["xla"]["p50"], rel=0.01)
    assert "XLA / without (train's default on a CPU: XLA without AVX-512, none with it" in proc.stdout
    # and glibc's malloc keeping freed memory (train's default) against left alone, one worker each
    assert ts["malloc_kept"] is True  # Debian's glibc: the settings took
    for arm in ("xla", "plain"):
        d = ts["malloc_default"][arm]
        assert d["n"] == 6 and _pos(d["p50"]) and d["p99"] >= d["p50"], ts
    assert ts["malloc_speedup"] == pytest.approx(ts["malloc_default"]["plain"]["p50"] / ts["plain"]["p50"], rel=0.01)
    assert "glibc malloc keeping freed memory (train's default) / left alone" in proc.stdout

    # end to end vs the bare interpreter bound
    assert _pos(res["e2e_fps"]) and _pos(res["bound_fps"])
    assert res["e2e"]["source"].startswith("stats"), res["e2e"]
    assert res["bound_fps"] == pytest.approx(1000 / res["e2e"]["bound_ms_p50"], rel=0.01)
    assert res["e2e"]["ratio_to_bound"] == pytest.approx(res["e2e_fps"] / res["bound_fps"], rel=0.01)
    hm = res["heatmaps_e2e"]
    assert _pos(hm["fps_on"]) and _pos(hm["fps_off"]) and hm["heatmaps_saved"] > 0
    assert 0.02 <= hm["alert_fraction"] <= 0.08, hm  # one alert per 20 frames

    # heatmap cost on both paths, as ratios to a float forward pass
    hms = res["heatmap_ms"]
    for k in ("litert", "tf", "forward_litert_fp32", "forward_keras", "ratio_litert", "ratio_tf"):
        assert _pos(hms[k]), (k, hms)
    assert hms["labels"] == ["error", "break", "length"]

    # memory, start-up, alerts
    rss = res["rss_mb"]
    assert _pos(rss["litert"]) and _pos(rss["tf"]) and rss["tf"] > rss["litert"], rss
    assert rss["tensorflow_mapped_in_litert_daemon"] is False
    assert _pos(res["startup_s"])
    al = res["alert_latency_ms"]
    assert al["n"] >= 3 and _pos(al["p50"]) and al["p99"] >= al["p50"], al
    assert _pos(al["after_close_p50"]) and al["after_close_p50"] <= al["p99"], al

    # early signal: defect ON, opening frame's capture → subscriber, in the alert-latency runs
    don = res["defect_on_latency_ms"]
    assert don["n"] >= 1 and _pos(don["p50"]) and don["max"] >= don["p99"] >= don["p50"], don

    # costs, side by side: health checks on vs off (fps), heatmaps on MQTT vs off (alert latency)
    hc = res["health_cost"]
    assert _pos(hc["fps_on"]) and _pos(hc["fps_off"]), hc
    assert hc["ratio"] == pytest.approx(hc["fps_on"] / hc["fps_off"], rel=0.01)
    assert hc["cost"] == pytest.approx(1 - hc["ratio"], abs=0.002)
    hq = res["heatmap_mqtt_latency"]
    assert hq["on"]["n"] >= 3 and hq["off"]["n"] >= 3, hq
    assert hq["on"]["p99"] == al["p99"] and hq["on"]["n"] == al["n"]
    assert hq["ratio_p99"] == pytest.approx(hq["on"]["p99"] / hq["off"]["p99"], rel=0.01)
    assert hq["ratio_p50"] == pytest.approx(hq["on"]["p50"] / hq["off"]["p50"], rel=0.01)

    # training samples flooding (the config's highest rates) vs off: fps, RSS, alert latency
    sc = res["samples_cost"]
    assert _pos(sc["fps_on"]) and _pos(sc["fps_off"]) and sc["fps_off"] == hc["fps_on"], sc
    assert sc["ratio"] == pytest.approx(sc["fps_on"] / sc["fps_off"], rel=0.01)
    assert sc["cost"] == pytest.approx(1 - sc["ratio"], abs=0.002)
    assert sc["samples_saved"] > 0 and _pos(sc["saved_per_s"]) and sc["ring_frames"] > 0, sc
    assert 0 <= sc["samples_published"] <= sc["samples_saved"] and sc["samples_dropped"] >= 0, sc
    sr = res["samples_rss_mb"]
    assert _pos(sr["on"]) and _pos(sr["off"]), sr
    assert sr["added"] == pytest.approx(sr["on"] - sr["off"], abs=0.11), sr
    assert len(sr["per_run_max"]["on"]) == len(sr["per_run_max"]["off"]) == sc["pairs"], sr
    sq = res["samples_flood_latency"]
    assert sq["on"]["n"] >= 3 and _pos(sq["on"]["p50"]) and sq["on"]["p99"] >= sq["on"]["p50"], sq
    assert sq["off"]["p99"] == al["p99"] and sq["off"]["n"] == al["n"], sq  # the same baseline runs
    assert sq["ratio_p99"] == pytest.approx(sq["on"]["p99"] / sq["off"]["p99"], rel=0.01)
    assert sq["ratio_p50"] == pytest.approx(sq["on"]["p50"] / sq["off"]["p50"], rel=0.01)
    assert sq["samples_saved"] > 0, sq

    # junk on the feedback topic (quick: 2,000 a run): every message sent, the station counted them
    fj = res["feedback_junk"]
    assert _pos(fj["fps_with"]) and fj["fps_without"] == hc["fps_on"], fj
    assert fj["ratio"] == pytest.approx(fj["fps_with"] / fj["fps_without"], rel=0.01)
    assert fj["cost"] == pytest.approx(1 - fj["ratio"], abs=0.002)
    assert fj["errors"] == [] and fj["sent"] == fj["messages_per_run"] * fj["pairs"] == 2000, fj
    assert 0 < fj["junk"] + fj["dropped"] <= fj["received"] <= fj["sent"], fj
    assert fj["junk"] >= 0.8 * fj["received"], fj  # 9 in 10 are refused by the parser
    # the flood breaker unsubscribed each flooded station (> 200 refused within 10 s), so it did not take all
    assert fj["pauses"] >= fj["pairs"] and fj["received"] < fj["sent"], fj

    # a fleet on one broker (quick: 8 daemons), and a rollout to all of it
    fl = res["fleet"]
    assert fl["stations"] == 8 and fl["alerts_logged"] > 0 and fl["alerts_lost"] == 0, fl
    assert _pos(fl["msgs_per_s"]) and _pos(fl["alerts_per_s"]) and fl["broker_cpu_pct"] >= 0, fl
    d = fl["alert_delivery_ms"]
    assert d["n"] > 0 and d["max"] >= d["p99"] >= d["p50"], d
    assert fl["rollout_rc"] == 0 and fl["rollout_active"] == 8 and _pos(fl["rollout_s"]), fl
    assert 0.9e6 <= fl["rollout_bytes"] <= 1.1e6, fl

    # hot swaps at 30 fps (quick: 3): each one logged, measured from the daemon's stats, stall = gap − 33.3 ms
    ms = res["model_swap"]
    assert ms["complete"] is True and ms["error"] is None and ms["swaps"] == ms["swaps_logged"] == 3, ms
    assert ms["interval_ms"] == 33.3 and ms["dropped"] >= 0 and ms["quiet_gap_ms"]["n"] > 0, ms
    for p in ms["per_swap"]:
        assert _pos(p["gap_max_ms"]) and p["stats_intervals"] >= 1 and p["dropped"] >= 0, p
        assert p["gap_max_ms"] >= p["classify_gap_ms"] * 0.99, p  # the window holds the swap's own gap
        assert p["stall_ms"] == pytest.approx(max(0.0, p["gap_max_ms"] - 100 / 3), abs=0.06), p
    assert ms["gap_max_ms"] == max(p["gap_max_ms"] for p in ms["per_swap"]), ms
    assert ms["stall_max_ms"] == pytest.approx(max(0.0, ms["gap_max_ms"] - 100 / 3), abs=0.06), ms
    assert ms["dropped"] == sum(p["dropped"] for p in ms["per_swap"]), ms
    share = ms["stalled_share"]
    assert 0 <= share["swaps"] <= 1 and 0 <= share["quiet"] <= 1 and share["n_swaps"] >= 3, share

    # the printed table carries every target with its verdict
    assert {t["name"] for t in res["targets"]} >= {
        "classifier_cost_vs_reference",
        "e2e_over_bound",
        "heatmap_ratio_litert",
        "rss_litert_mb",
        "startup_s",
        "heatmap_throughput_loss",
        "defect_on_p99_ms",
        "health_fps_cost",
        "heatmap_mqtt_latency_ratio",
        "samples_fps_cost",
        "samples_flood_latency_ratio",
        "samples_rss_added_mb",
        "feedback_junk_fps_cost",
        "fleet_rollout_s",
        "fleet_alerts_lost",
        "swap_stall_ms",
        "swap_dropped_frames",
    }
    for t in res["targets"]:
        assert t["result"] in ("PASS", "MISS"), t
        assert f"| {t['target']} | {t['result']} |" in proc.stdout
    assert res["machine"]["cores"] >= 1 and res["machine"]["python"]
    assert res["pi_estimates"]["models"]["bundle"]["macs"] > 0
    # a bundle exported without --tta: one view a frame, its MACs the model's own
    assert (res["bundle"]["tta"], res["bundle"]["tta_views"], res["models"]["bundle"]["views"]) == ("none", 1, 1)
    from convert.bench.tfworker import count_macs
    from convert.models import load_keras

    assert res["models"]["bundle"]["macs"] == count_macs(load_keras(tiny_bundle / "model.keras")[0])
