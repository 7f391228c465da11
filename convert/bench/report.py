"""Targets, Raspberry Pi estimates (from published figures, not measurements) and the markdown table."""

from __future__ import annotations

from typing import Any

MOBILENET_V2_MACS = 300e6  # multiply-adds at 224×224 (Sandler et al. 2018)

# XNNPACK README (google/XNNPACK, benchmarked Feb 8 2022, end2end-bench, 4 threads,
# Raspberry Pi 4 BCM2711 ARM64): MobileNet v2 1.0 FP32 46 ms, INT8 (per-channel) 17 ms.
PI4_MNV2_MS = {"fp32": 46.0, "int8": 17.0}
PI5_OVER_PI4 = (2.0, 3.0)  # Raspberry Pi 5 announcement: "2-3x the CPU performance" of Pi 4

TARGETS = {  # name: (json path, comparison, value, text)
    "classifier_cost_vs_reference": (
        "<=",
        3.0,
        "classifier int8 p50 at 1 thread, every --tta view / the single-look model's (8-filter resnet-int8-gap)",
    ),
    "e2e_over_bound": (">=", 0.90, "daemon fps / bare interpreter bound"),
    "heatmap_throughput_loss": ("<=", 0.10, "fps loss with heatmaps on ~5 % of frames"),
    "heatmap_ratio_litert": ("<=", 1.5, "LiteRT Grad-CAM (all labels) / one float forward"),
    "rss_litert_mb": ("<=", 150.0, "daemon RSS, everything on: LiteRT heatmaps (file + MQTT), health, HA (MB)"),
    "startup_s": ("<=", 2.0, "process start → first classified frame (s), no TF"),
    "defect_on_p99_ms": ("<=", 100.0, "defect ON: capture of the event's opening frame → subscriber, p99 (ms)"),
    "health_fps_cost": ("<=", 0.03, "fps cost of the health checks (1 − fps on / off)"),
    "heatmap_mqtt_latency_ratio": ("<=", 1.10, "alert latency p99, heatmaps on MQTT / off"),
    "samples_fps_cost": ("<=", 0.05, "fps cost of samples flooding, kept and published (1 − fps on / off)"),
    "samples_flood_latency_ratio": ("<=", 1.10, "alert latency p99, samples flooding / off"),
    "samples_rss_added_mb": ("<=", 20.0, "RSS added by samples flooding: ring buffer + queue (MB)"),
    "feedback_junk_fps_cost": ("<=", 0.05, "fps cost of junk flooding the feedback topic (1 − fps with / without)"),
    "fleet_rollout_s": ("<=", 30.0, "convert deploy of a 1 MB bundle to every fleet station, until all active (s)"),
    "fleet_alerts_lost": ("<=", 0, "alerts a fleet station logged (stored) that never reached the subscriber"),
    "swap_stall_ms": ("<=", 33.3, "hot swap at 30 fps: longest frame gap around a swap − the 33.3 ms interval (ms)"),
    "swap_dropped_frames": ("<=", 0, "frames dropped around the hot swaps (30 fps)"),
}


def pi_estimates(res: dict) -> dict[str, Any]:
    """Pi 4 / Pi 5 latency estimates from XNNPACK's published MobileNet v2 figures (not measurements)."""
    out: dict[str, Any] = {
        "source": "XNNPACK README (Feb 2022): Raspberry Pi 4 (BCM2711, ARM64, 4 threads) "
        "MobileNet v2 1.0 224²: FP32 46 ms, INT8 17 ms; Pi 5 = Pi 4 / 2…3 "
        "(Raspberry Pi's stated CPU speed-up)",
        "mobilenet_v2_macs": MOBILENET_V2_MACS,
        "models": {},
    }
    lat = res["latency_ms"]
    mn = lat.get("mobilenet_v2", {})
    for name, info in res["models"].items():
        if name == "mobilenet_v2" or not info.get("macs"):
            continue
        r = info["macs"] / MOBILENET_V2_MACS
        e: dict[str, Any] = {"macs": info["macs"], "mac_ratio": round(r, 4)}
        for kind in ("fp32", "int8"):
            pi4 = PI4_MNV2_MS[kind] * r
            e[f"pi4_{kind}_ms_flops"] = round(pi4, 2)
            e[f"pi5_{kind}_ms_flops"] = [round(pi4 / PI5_OVER_PI4[1], 2), round(pi4 / PI5_OVER_PI4[0], 2)]
        # measured-ratio estimate (fp32 only): our model / MobileNet v2, both LiteRT fp32 at the same
        # threads on THIS machine, times the Pi 4 figure. Not for int8 directly: our int8 is dynamic-range,
        # XNNPACK's published int8 is full-integer, and dynamic-range MobileNet v2 runs slower than its
        # fp32 here; the int8 figure is the fp32 one divided by our int8 speed-up measured here.
        ours, ref = lat.get(name, {}).get("litert-fp32", {}), mn.get("litert-fp32", {})
        t = max((k for k in ours if k in ref), key=int, default=None)
        if t is not None and ref[t]["p50"] > 0:
            q = ours[t]["p50"] / ref[t]["p50"]
            e["ratio_to_mobilenet_v2_here_fp32"] = round(q, 4)
            e["pi4_fp32_ms_measured_ratio"] = round(PI4_MNV2_MS["fp32"] * q, 2)
            i8 = lat.get(name, {}).get("litert-int8", {}).get(t)
            if i8 and i8["p50"] > 0:  # scale by the int8 speed-up measured here
                e["int8_speedup_here"] = round(ours[t]["p50"] / i8["p50"], 3)
                e["pi4_int8_ms_measured_ratio"] = round(e["pi4_fp32_ms_measured_ratio"] / e["int8_speedup_here"], 2)
        out["models"][name] = e
    return out


def evaluate_targets(res: dict) -> list[dict[str, Any]]:
    """Each target with its value and PASS / MISS (n/a when not measured)."""
    e2e = res["e2e"].get("ratio_to_bound")
    vals = {
        "classifier_cost_vs_reference": (res.get("classifier_budget") or {}).get("ratio"),
        "e2e_over_bound": e2e,
        "heatmap_throughput_loss": res["heatmaps_e2e"].get("loss"),
        "heatmap_ratio_litert": res["heatmap_ms"].get("ratio_litert"),
        "rss_litert_mb": res["rss_mb"].get("litert"),
        "startup_s": res["startup_s"],
        "defect_on_p99_ms": (res.get("defect_on_latency_ms") or {}).get("p99"),
        "health_fps_cost": (res.get("health_cost") or {}).get("cost"),
        "heatmap_mqtt_latency_ratio": (res.get("heatmap_mqtt_latency") or {}).get("ratio_p99"),
        "samples_fps_cost": (res.get("samples_cost") or {}).get("cost"),
        "samples_flood_latency_ratio": (res.get("samples_flood_latency") or {}).get("ratio_p99"),
        "samples_rss_added_mb": (res.get("samples_rss_mb") or {}).get("added"),
        "feedback_junk_fps_cost": (res.get("feedback_junk") or {}).get("cost"),
        "fleet_rollout_s": (res.get("fleet") or {}).get("rollout_s"),
        "fleet_alerts_lost": (res.get("fleet") or {}).get("alerts_lost"),
        "swap_stall_ms": (res.get("model_swap") or {}).get("stall_max_ms"),
        "swap_dropped_frames": (res.get("model_swap") or {}).get("dropped"),
    }
    out = []
    for name, (op, target, text) in TARGETS.items():
        v = vals.get(name)
        ok = None if v is None else (v >= target if op == ">=" else v <= target)
        out.append(
            {
                "name": name,
                "what": text,
                "value": v,
                "target": f"{op} {target}",
                "result": "n/a" if ok is None else ("PASS" if ok else "MISS"),
            }
        )
    return out


def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def render_table(res: dict) -> str:
    """The markdown table ``make bench`` prints (the README's performance tables come from it)."""
    m = res["machine"]
    b = res["bundle"]
    L = [
        f"### seam-qc bench ({'quick' if res['quick'] else 'full'}) — {m['cpu']}, "
        f"{m['usable_cores']} cores, Python {m['python']}, TF {m['tensorflow']}, "
        f"LiteRT {m['ai_edge_litert']}",
        "",
        f"Bundle `{b['name']}` ({b['source']}): {b['arch']} {b['height']}×{b['width']}, "
        f"filters {b['filters']}, int8 = {b['int8_quantization']}"
        + (f", tta = {b['tta']} ({b['tta_views']} views a frame, MMACs for all)" if b.get("tta_views", 1) > 1 else "")
        + ". "
        f"Load average at start {m.get('loadavg_start')}, "
        f"at end {m.get('loadavg_end')}.",
        "",
        "| model | MMACs | runtime | threads | p50 ms | p99 ms | × faster than Keras |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    order = ["keras", "tf.function", "litert-fp32", "litert-int8"]
    for name, rts in res["latency_ms"].items():
        macs = (res["models"].get(name) or {}).get("macs")
        for rt in sorted(rts, key=lambda r: order.index(r) if r in order else 9):
            for t in sorted(rts[rt], key=int):
                s = rts[rt][t]
                ratio = (res["ratios"].get(name) or {}).get(f"{rt}@{t}")
                L.append(
                    f"| {name} | {_f(macs / 1e6 if macs else None, 1)} | {rt} | {t} | {s['p50']:.2f} | "
                    f"{s['p99']:.2f} | {_f(ratio) if ratio else ('1.00' if rt == 'keras' else '–')} |"
                )
    e, hm, hms = res["e2e"], res["heatmaps_e2e"], res["heatmap_ms"]
    rss, al = res["rss_mb"], res["alert_latency_ms"]
    don, hc = res.get("defect_on_latency_ms") or {}, res.get("health_cost") or {}
    hq = res.get("heatmap_mqtt_latency") or {}
    sc, sr = res.get("samples_cost") or {}, res.get("samples_rss_mb") or {}
    sq, fj = res.get("samples_flood_latency") or {}, res.get("feedback_junk") or {}
    fl = res.get("fleet") or {}
    ts = res.get("train_step_ms") or {}
    fld = fl.get("alert_delivery_ms") or {}
    ms = res.get("model_swap") or {}
    mq = ms.get("quiet_gap_ms") or {}
    at_swap = [p.get("classify_gap_ms") for p in ms.get("per_swap") or [] if p.get("classify_gap_ms") is not None]
    loss = hm.get("loss")
    pl = res["pipeline_ms"]["ms_p50"]
    L += [
        "",
        "| measure | value |",
        "|---|---|",
        f"| bare interpreter bound (bundle int8, {res['settings']['daemon_threads']} threads, sampled "
        f"around the e2e runs) | {_f(res['bound_fps'], 1)} fps ({_f(e.get('bound_ms_p50'))} ms) |",
        f"| daemon end to end (file source, heatmaps off) | {_f(res['e2e_fps'], 1)} fps ({e.get('source')}) |",
        f"| e2e / bound | {_f(e.get('ratio_to_bound'), 3)} |",
        f"| per frame p50: capture thread decode+ROI / prepare, classifier thread invoke | "
        f"{pl['decode_roi']:.2f} / {pl['prepare']:.2f}, {pl['classify_prepared']:.2f} ms → bound with "
        f"the threads overlapped "
        f"{_f(res['pipeline_ms']['overlapped_bound_fps'], 1)} fps "
        f"(e2e = {_f(e.get('ratio_to_overlapped_bound'), 3)} of it) |",
        f"| heatmaps on {_f((hm.get('alert_fraction') or 0) * 100, 1)} % of frames | "
        f"{_f(hm.get('fps_on'), 1)} fps vs {_f(hm.get('fps_off'), 1)} fps → loss "
        f"{_f(loss * 100 if loss is not None else None, 1)} % |",
        f"| Grad-CAM, LiteRT path ({len(hms.get('labels', []))} labels) | {_f(hms.get('litert'))} ms = "
        f"{_f(hms.get('ratio_litert'))} × float forward ({_f(hms.get('forward_litert_fp32'))} ms) |",
        f"| Grad-CAM, full-TF path | {_f(hms.get('tf'))} ms = {_f(hms.get('ratio_tf'))} × Keras forward "
        f"({_f(hms.get('forward_keras'))} ms), {_f(hms.get('ratio_tf_vs_litert_forward'))} × LiteRT fp32 "
        f"forward |",
        f"| daemon RSS, LiteRT (everything on: heatmaps + MQTT, health, HA / heatmaps off) | "
        f"{_f(rss.get('litert'), 1)} MB / "
        f"{_f(rss.get('litert_no_heatmaps'), 1)} MB (TensorFlow mapped: "
        f"{rss.get('tensorflow_mapped_in_litert_daemon')}) |",
        f"| daemon RSS, heatmaps.method tf | {_f(rss.get('tf'), 1)} MB |",
        f"| workstation: one training step of {ts.get('arch')} (batch {ts.get('batch')}, Keras fit), "
        "XLA / without (train's default on a CPU: XLA without AVX-512, none with it; SEAMQC_TRAIN_XLA forces) | "
        f"{_f((ts.get('xla') or {}).get('p50'), 1)} / "
        f"{_f((ts.get('plain') or {}).get('p50'), 1)} ms → XLA {_f(ts.get('xla_speedup'))} × faster |",
        "| the same step without XLA, glibc malloc keeping freed memory (train's default) / left alone "
        f"(SEAMQC_TRAIN_MALLOC=0) | {_f((ts.get('plain') or {}).get('p50'), 1)} / "
        f"{_f(((ts.get('malloc_default') or {}).get('plain') or {}).get('p50'), 1)} ms → "
        f"{_f(ts.get('malloc_speedup'))} × faster |",
        f"| start-up to first classified frame | {_f(res['startup_s'])} s (runs {res['startup'].get('runs_s')}) |",
        f"| alert latency p50 / p99 (n={al.get('n')}) | {_f(al.get('p50'), 1)} / {_f(al.get('p99'), 1)} "
        f"ms; after the event closed {_f(al.get('after_close_p50'), 1)} / "
        f"{_f(al.get('after_close_p99'), 1)} ms |",
        f"| defect ON latency p50 / p99 (n={don.get('n')}), opening frame's capture → subscriber, 30 fps | "
        f"{_f(don.get('p50'), 1)} / {_f(don.get('p99'), 1)} ms (max {_f(don.get('max'), 1)}) |",
        f"| health checks on / off (pairs {hc.get('pairs')}) | {_f(hc.get('fps_on'), 1)} vs "
        f"{_f(hc.get('fps_off'), 1)} fps → ratio {_f(hc.get('ratio'), 3)} |",
        f"| alert latency p50 / p99, heatmaps on MQTT vs off (n={hq.get('on', {}).get('n')} / "
        f"{hq.get('off', {}).get('n')}) | {_f(hq.get('on', {}).get('p50'), 1)} / {_f(hq.get('on', {}).get('p99'), 1)}"
        f" vs {_f(hq.get('off', {}).get('p50'), 1)} / {_f(hq.get('off', {}).get('p99'), 1)} ms → ratio "
        f"{_f(hq.get('ratio_p50'), 3)} / {_f(hq.get('ratio_p99'), 3)}; after the event closed "
        f"{_f(hq.get('on', {}).get('after_close_p50'), 1)} / {_f(hq.get('on', {}).get('after_close_p99'), 1)} vs "
        f"{_f(hq.get('off', {}).get('after_close_p50'), 1)} / {_f(hq.get('off', {}).get('after_close_p99'), 1)} ms |",
        f"| samples flooding on / off (pairs {sc.get('pairs')}; {_f(sc.get('saved_per_s'), 1)} saved/s, "
        f"{sc.get('samples_published')} published, {sc.get('samples_dropped')} dropped) | "
        f"{_f(sc.get('fps_on'), 1)} vs {_f(sc.get('fps_off'), 1)} fps → ratio {_f(sc.get('ratio'), 3)} |",
        f"| RSS, samples flooding / off (ring {sr.get('ring_frames')} crops) | {_f(sr.get('on'), 1)} / "
        f"{_f(sr.get('off'), 1)} MB → added {_f(sr.get('added'), 1)} MB |",
        f"| alert latency p50 / p99, samples flooding vs off (n={sq.get('on', {}).get('n')} / "
        f"{sq.get('off', {}).get('n')}; {sq.get('samples_saved')} saved, {sq.get('samples_published')} published) | "
        f"{_f(sq.get('on', {}).get('p50'), 1)} / {_f(sq.get('on', {}).get('p99'), 1)} vs "
        f"{_f(sq.get('off', {}).get('p50'), 1)} / {_f(sq.get('off', {}).get('p99'), 1)} ms → ratio "
        f"{_f(sq.get('ratio_p50'), 3)} / {_f(sq.get('ratio_p99'), 3)}; after the event closed "
        f"{_f(sq.get('on', {}).get('after_close_p50'), 1)} / {_f(sq.get('on', {}).get('after_close_p99'), 1)} vs "
        f"{_f(sq.get('off', {}).get('after_close_p50'), 1)} / {_f(sq.get('off', {}).get('after_close_p99'), 1)} ms |",
        f"| {fj.get('messages_per_run')} junk feedback messages a run, with / without (pairs {fj.get('pairs')}; "
        f"station counted {fj.get('received')} of {fj.get('sent')}: {fj.get('junk')} junk, {fj.get('unknown')} "
        f"unknown, {fj.get('dropped')} dropped; flood breaker paused {fj.get('pauses')} times) | "
        f"{_f(fj.get('fps_with'), 1)} vs {_f(fj.get('fps_without'), 1)} "
        f"fps → ratio {_f(fj.get('ratio'), 3)} |",
        f"| fleet: {fl.get('stations')} daemons ({fl.get('fps_each')} fps, an alert every 2 s each) on one broker | "
        f"{_f(fl.get('msgs_per_s'), 1)} msg/s in ({_f(fl.get('alerts_per_s'), 1)} alerts/s, "
        f"{_f((fl.get('bytes_per_s') or 0) / 1024, 1)} KiB/s); broker CPU "
        f"{_f(fl.get('broker_cpu_pct'), 1)} % of a core, "
        f"RSS {_f(fl.get('broker_rss_mb'), 1)} MB; alert delivery p50 / p99 "
        f"{_f(fld.get('p50'), 1)} / {_f(fld.get('p99'), 1)} ms (n={fld.get('n')}), lost {fl.get('alerts_lost')}, "
        f"duplicates {fl.get('alerts_duplicates')} |",
        f"| fleet: convert deploy of {fl.get('rollout_bytes')} bytes to all {fl.get('stations')} | "
        f"{_f(fl.get('rollout_s'), 1)} s until all active ({fl.get('rollout_active')} active, exit "
        f"{fl.get('rollout_rc')}) |",
        f"| hot swap: {ms.get('swaps')} swaps at 30 fps (a symlink renamed over model.bundle) | longest frame gap "
        f"around a swap {_f(ms.get('gap_max_ms'), 1)} ms → stall {_f(ms.get('stall_max_ms'), 1)} ms beyond the "
        f"{_f(ms.get('interval_ms'), 1)} ms interval (outside the swaps: p50 {_f(mq.get('p50'), 1)}, max "
        f"{_f(mq.get('max'), 1)} ms); at the swap itself ≤ {_f(max(at_swap) if at_swap else None, 1)} ms; "
        f"{ms.get('dropped')} frames dropped |",
        "",
        "| target | value | goal | result |",
        "|---|---:|---|---|",
    ]
    for t in res["targets"]:
        L.append(f"| {t['what']} | {_f(t['value'], 3)} | {t['target']} | {t['result']} |")
    pe = res.get("pi_estimates", {}).get("models", {})
    if pe:
        L += [
            "",
            "Raspberry Pi estimates (NOT measured: XNNPACK's MobileNet v2 figures scaled; see JSON pi_estimates):",
            "",
            "| model | MMACs | Pi 4 int8 ms (MAC-scaled) | Pi 4 fp32 ms (MAC-scaled) | Pi 4 fp32 ms (vs "
            "MobileNet v2 measured here) | Pi 4 dyn-int8 ms (same, × int8 speed-up here) | Pi 5 int8 ms "
            "(MAC-scaled) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, e2 in pe.items():
            p5 = e2.get("pi5_int8_ms_flops") or [None, None]
            L.append(
                f"| {name} | {e2['macs'] / 1e6:.1f} | {_f(e2.get('pi4_int8_ms_flops'))} | "
                f"{_f(e2.get('pi4_fp32_ms_flops'))} | {_f(e2.get('pi4_fp32_ms_measured_ratio'))} | "
                f"{_f(e2.get('pi4_int8_ms_measured_ratio'))} | "
                f"{_f(p5[0])}–{_f(p5[1])} |"
            )
    if res.get("notes"):
        L += [""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(L)
