"""The bench run: inputs, the TF workers, LiteRT timings, the daemon suite, and the result dict
(the JSON keys listed in ARCHITECTURE.md §4)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError

from .common import (
    DEFAULT_BUNDLE,
    LABELS_EXPLAINED,
    REFERENCE,
    ROI,
    ROOT,
    Plan,
    iso_to_epoch,
    machine_info,
    make_plan,
    pct,
    read_frame,
    say,
)
from .daemon import (
    SAMPLES_FLOOD,
    DaemonRun,
    JunkFlood,
    Listener,
    LocalBroker,
    daemon_config,
    last_stats,
    run_daemon,
    stats_fps,
    steady_rss,
)
from .litert import BoundProbe, litert_latency, measure_cost, pipeline_costs
from .report import evaluate_targets, pi_estimates
from .tfworker import run_worker


def bundle_info(bundle: Path) -> dict[str, Any]:
    """What the report says about the bundle (arch, size, int8 kind, roles)."""
    from convert.models import read_meta
    from edge.bundle import load_bundle

    b = load_bundle(bundle)
    meta = read_meta(b.path("keras")) if b.has("keras") else {}
    src = b.manifest.get("source") or {}
    filters = meta.get("filters")
    return {
        "path": str(bundle),
        "name": b.name,
        "height": b.height,
        "width": b.width,
        "labels": list(b.labels),
        "arch": src.get("arch") or meta.get("arch"),
        "filters": filters,
        "int8_quantization": ((b.manifest.get("parity") or {}).get("int8") or {}).get("quantization"),
        "roles": list(b.files),
        "has_keras": b.has("keras"),
        "has_explainer": bool(b.gradcam),
        # export --tta: the classifiers run the model on this many views of each frame
        "tta": (b.manifest.get("tta") or {}).get("mode", "none"),
        "tta_views": int((b.manifest.get("tta") or {}).get("views", 1)),
    }


def resolve_bundle(arg: str | None, work_root: Path) -> tuple[Path, str]:
    """``--bundle``, else the shipped one, else an untrained export (so a fresh checkout can bench)."""
    if arg:
        p = Path(arg)
        if not (p / "manifest.json").is_file():
            raise ModelError(f"--bundle {p}: no manifest.json there (not a model bundle)")
        return p.resolve(), "given"
    shipped = ROOT / DEFAULT_BUNDLE
    if (shipped / "manifest.json").is_file():
        return shipped, "shipped"
    fb = work_root / "fallback-bundle"
    if not (fb / "manifest.json").is_file():
        say(
            f"{DEFAULT_BUNDLE} is not shipped yet: exporting an untrained int8-friendly ResNet "
            f"(128×128, filters 8, as `convert ship`) to {fb}"
        )
        work_root.mkdir(parents=True, exist_ok=True)
        run_worker({"kind": "fallback", "out": str(fb), "size": 128, "filters": 8}, work_root, "fallback")
    return fb, "fallback (untrained, shipped bundle missing)"


def make_inputs(work: Path, frames: int, seed: int = 5) -> tuple[Path, Path, list]:
    """The synthetic seam video (dense defects) and one ROI frame with a defect, for heatmaps."""
    import cv2

    from convert.synth import write_video

    video = work / f"seam-{frames}.mp4"
    truth_csv = video.with_suffix(".truth.csv")
    if not (video.is_file() and truth_csv.is_file()):
        write_video(video, frames, seed=seed, defect_every_mm=36)
    import csv

    truth = list(csv.DictReader(open(truth_csv)))
    defects = [r for r in truth if r["label"] in ("error", "break")] or truth
    idx = (int(defects[0]["first_frame"]) + int(defects[0]["last_frame"])) // 2 if defects else frames // 2
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
    ok, img = cap.read()
    cap.release()
    if not ok:
        raise ModelError(f"{video}: cannot read frame {idx}")
    x, y, w, h = ROI
    frame = work / "frame.png"
    cv2.imwrite(str(frame), img[y : y + h, x : x + w])
    return video, frame, truth


# ----------------------------------------------------------------------------- the bench


def bench(bundle_arg: str | None, quick: bool, work_root: Path, json_path: Path | None) -> dict[str, Any]:
    """The whole run, in an order that keeps runtimes apart (package doc) → the result dict."""
    t_start = time.monotonic()
    phases: dict[str, float] = {}
    last = [t_start]

    def _lap() -> float:
        now = time.monotonic()
        d, last[0] = round(now - last[0], 1), now
        return d

    work_root = Path(work_root).resolve()  # the daemon resolves config paths against the config's folder
    machine = machine_info()
    cores = int(machine["usable_cores"] or 1)
    plan = make_plan(quick, cores)
    work_root.mkdir(parents=True, exist_ok=True)
    bundle, bundle_src = resolve_bundle(bundle_arg, work_root)
    binfo = bundle_info(bundle)
    binfo["source"] = bundle_src
    binfo["untrained"] = bundle_src.startswith("fallback")
    h, w = binfo["height"], binfo["width"]
    filters = int(binfo["filters"] or 8)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=str(work_root)))
    hm_threads = 1 if cores <= 2 else 2  # the worker must not starve capture + classify
    labels = [lab for lab in LABELS_EXPLAINED if lab in binfo["labels"]] or list(binfo["labels"])
    notes: list[str] = [
        "TF runs in worker subprocesses (one per thread count: TF fixes its pools at start); LiteRT and "
        "numpy Grad-CAM in the bench process, which never imports TensorFlow.",
    ]
    say(
        f"{'quick' if quick else 'full'} run on {machine['cpu']} ({cores} cores), bundle {bundle} "
        f"({bundle_src}, {h}x{w}, filters {filters}); work dir {work}"
    )

    say("writing the synthetic seam video")
    video, frame_png, _ = make_inputs(work_root, plan.video_frames)
    phases["setup"] = _lap()

    # ---- 1. TF side (subprocesses)
    tf_res: dict[int, dict] = {}
    for i, t in enumerate(sorted(plan.tf_threads, reverse=True)):
        first = i == 0
        say(f"TF worker, {t} thread(s){': export + FLOPs + TF Grad-CAM' if first else ''}")
        spec = {
            "kind": "tf",
            "threads": t,
            "out_dir": str(work),
            "height": h,
            "width": w,
            "filters": filters,
            "n_labels": len(binfo["labels"]),
            "archs": list(plan.archs),
            "export": first,
            "bundle_keras": str(Path(bundle) / "model.keras") if binfo["has_keras"] else None,
            "bundle_views": binfo["tta_views"],
            "mobilenet": plan.mobilenet and first,
            "reference": REFERENCE if first else None,
            "time_mobilenet": False,
            "iters": plan.iters,
            "warmup": plan.warmup,
            "rounds": plan.rounds,
        }
        if first and binfo["has_keras"]:
            spec.update(
                heatmap_bundle=str(bundle),
                frame=str(frame_png),
                labels=labels,
                hm_threads=hm_threads,
                hm_repeats=plan.heatmap_repeats,
            )
        if not binfo["has_keras"]:
            spec["bundle_keras"] = None
        tf_res[t] = run_worker(spec, work, f"tf{t}")
    # the workstation side: a training step of the bundle's architecture, XLA on and off (train's on a CPU)
    from convert.models import ARCHS

    arch = binfo["arch"] if binfo.get("arch") in ARCHS else "resnet-s2"
    say(f"TF workers: a training step of {arch}, XLA on and off, glibc's malloc as train sets it and left alone")
    step_spec = {
        "kind": "tf_train",
        "arch": arch,
        "height": h,
        "width": w,
        "filters": filters,
        "n_labels": len(binfo["labels"]),
        "batch": 32,
        "steps": plan.train_steps,
        "rounds": plan.train_rounds,
    }
    train_step = run_worker(dict(step_spec, malloc=True), work, "tftrain")
    untuned = run_worker(dict(step_spec, malloc=False), work, "tftrain-malloc-default")
    train_step["malloc_default"] = {k: untuned[k] for k in ("plain", "xla")}
    train_step["malloc_speedup"] = round(untuned["plain"]["p50"] / train_step["plain"]["p50"], 3)
    phases["tf_workers"] = _lap()
    models = tf_res[max(tf_res)]["models"] if tf_res else {}  # the first worker (most threads) exports

    # ---- 2. LiteRT latencies (this process)
    from edge.bundle import load_bundle

    b = load_bundle(bundle)
    files = {"bundle|litert-int8": str(b.path("classifier_int8"))}
    if b.has("classifier_fp32"):
        files["bundle|litert-fp32"] = str(b.path("classifier_fp32"))
    for name, info in models.items():
        if "tflite_fp32" in info:
            if name != "reference":  # the budget's yardstick: int8 only
                files[f"{name}|litert-fp32"] = info["tflite_fp32"]
            files[f"{name}|litert-int8"] = info["tflite_int8"]
    say(f"LiteRT latencies: {len(files)} models × threads {list(plan.lite_threads)}")
    latency = litert_latency(files, plan.lite_threads, plan)
    for t, r in tf_res.items():
        for name, rts in r["latency"].items():
            for rt, s in rts.items():
                latency.setdefault(name, {}).setdefault(rt, {})[str(t)] = s
    ratios = latency_ratios(latency)
    phases["litert_latency"] = _lap()

    # one core is left to capture (decode + ROI) and the heatmap worker, as the README advises for
    # model.threads; the bound is taken at the same thread count
    daemon_threads = max(1, cores - 1)
    frame = read_frame(frame_png)
    pipeline = pipeline_costs(bundle, video, frame, daemon_threads, plan)

    # ---- 3. heatmap cost, LiteRT path (this process)
    heatmap_ms: dict[str, Any] = {"labels": labels, "threads": hm_threads}
    if binfo["has_explainer"]:
        say("Grad-CAM cost, LiteRT path")
        c = measure_cost(bundle, frame, labels, threads=hm_threads, repeats=plan.heatmap_repeats, method="litert")
        heatmap_ms.update(
            litert=round(c["explain_ms"], 3),
            forward_litert_fp32=round(c["forward_ms"], 3),
            ratio_litert=round(c["ratio"], 3),
        )
    tfh = (tf_res.get(max(tf_res)) or {}).get("heatmap_tf") if tf_res else None
    if tfh:
        heatmap_ms.update(
            tf=round(tfh["explain_ms"], 3),
            forward_keras=round(tfh["forward_keras_ms"], 3),
            ratio_tf=round(tfh["explain_ms"] / tfh["forward_keras_ms"], 3),
            ratio_tf_vs_litert_forward=(
                round(tfh["explain_ms"] / heatmap_ms["forward_litert_fp32"], 3)
                if heatmap_ms.get("forward_litert_fp32")
                else None
            ),
        )

    phases["litert_heatmaps"] = _lap()
    # ---- 4. the daemon
    broker = LocalBroker(work)
    listener = None
    try:
        listener = Listener(broker.port)
        probe = BoundProbe(str(b.path("classifier_int8")), daemon_threads)
        daemon = run_daemon_suite(
            plan,
            work,
            bundle,
            video,
            broker.port,
            listener,
            daemon_threads,
            hm_threads,
            binfo,
            probe,
            frame_png,
            labels,
        )
        from .swap import swap_bench

        model_swap = swap_bench(plan, work, bundle, video, broker.port, listener, daemon_threads, hm_threads)
    finally:
        if listener is not None:
            listener.close()
        broker.stop()
    phases["daemon"] = _lap()
    # ---- 5. a fleet on one broker, and a rollout to it (its own broker: its CPU is the fleet's)
    from .fleet import fleet_bench

    fleet = fleet_bench(work, bundle, plan.fleet_stations, plan.fleet_s)
    phases["fleet"] = _lap()

    e2e = daemon["e2e"]
    bound_ms = e2e["bound_ms_p50"]
    bound_fps = round(1000.0 / bound_ms, 2) if bound_ms else None
    e2e_fps = e2e["fps"]
    result: dict[str, Any] = {
        "format": 1,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine,
        "bundle": binfo,
        "settings": {
            "iters": plan.iters,
            "warmup": plan.warmup,
            "rounds": plan.rounds,
            "daemon_threads": daemon_threads,
            "heatmap_threads": hm_threads,
            "video_frames": plan.video_frames,
            "steady_s": plan.steady_s,
            "stats_interval": plan.stats_interval,
            "latency_pairs": plan.latency_pairs,
            "junk_messages": plan.junk_messages,
        },
        "models": models,
        "latency_ms": latency,
        "ratios": ratios,
        "classifier_budget": classifier_budget(latency, models, binfo),
        "bound_fps": bound_fps,
        "e2e_fps": e2e_fps,
        "e2e": {
            **e2e,
            "ratio_to_bound": round(e2e_fps / bound_fps, 3) if e2e_fps and bound_fps else None,
            "ratio_to_overlapped_bound": (round(e2e_fps / pipeline["overlapped_bound_fps"], 3) if e2e_fps else None),
        },
        "pipeline_ms": pipeline,
        "heatmaps_e2e": daemon["heatmaps_e2e"],
        "heatmap_ms": heatmap_ms,
        "rss_mb": daemon["rss_mb"],
        "startup_s": daemon["startup_s"],
        "startup": daemon["startup"],
        "alert_latency_ms": daemon["alert_latency_ms"],
        "defect_on_latency_ms": daemon["defect_on_latency_ms"],
        "heatmap_mqtt_latency": daemon["heatmap_mqtt_latency"],
        "health_cost": daemon["health_cost"],
        "samples_cost": daemon["samples_cost"],
        "samples_rss_mb": daemon["samples_rss_mb"],
        "samples_flood_latency": daemon["samples_flood_latency"],
        "feedback_junk": daemon["feedback_junk"],
        "fleet": fleet,
        "model_swap": model_swap,
        "train_step_ms": train_step,
        "notes": notes + daemon["notes"],
    }
    result["pi_estimates"] = pi_estimates(result)
    result["targets"] = evaluate_targets(result)
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    result["phases_s"] = phases
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return result


def classifier_budget(latency: dict, models: dict, binfo: dict) -> dict[str, Any] | None:
    """The shipped classifier's int8 p50 (all its ``--tta`` views) over the reference's
    (``common.REFERENCE``), both LiteRT at 1 thread in the same interleaved rounds."""
    b = latency.get("bundle", {}).get("litert-int8", {}).get("1")
    r = latency.get("reference", {}).get("litert-int8", {}).get("1")
    if not (b and r and r["p50"] > 0):
        return None
    return {
        "reference": f"{REFERENCE['arch']}, {REFERENCE['filters']} filters (untrained: the cost is the architecture's)",
        "threads": 1,
        "views": binfo["tta_views"],
        "bundle_int8_p50": b["p50"],
        "reference_int8_p50": r["p50"],
        "ratio": round(b["p50"] / r["p50"], 3),
        "bundle_macs": (models.get("bundle") or {}).get("macs"),
        "reference_macs": (models.get("reference") or {}).get("macs"),
    }


def latency_ratios(latency: dict) -> dict[str, dict[str, float]]:
    """Keras p50 / runtime p50 at the same thread count (> 1: faster than Keras eager)."""
    out: dict[str, dict[str, float]] = {}
    for name, rts in latency.items():
        ref = rts.get("keras") or {}
        for rt, per in rts.items():
            if rt == "keras":
                continue
            for t, s in per.items():
                if t in ref and s["p50"] > 0:
                    out.setdefault(name, {})[f"{rt}@{t}"] = round(ref[t]["p50"] / s["p50"], 2)
    return out


def run_daemon_suite(
    plan: Plan,
    work: Path,
    bundle: Path,
    video: Path,
    port: int,
    listener: Listener,
    threads: int,
    hm_threads: int,
    binfo: dict,
    probe: BoundProbe,
    frame_png: Path,
    labels: list[str],
) -> dict[str, Any]:
    """Start-up, end to end, heatmaps on/off, RSS and alert-latency runs of the real daemon."""
    notes: list[str] = []
    si = plan.stats_interval

    def cfg(tag: str, **kw: Any) -> tuple[Path, str]:
        kw.setdefault("stats_interval", si)
        return daemon_config(work, tag, bundle, video, port, threads=threads, hm_threads=hm_threads, **kw)

    # start-up: process start → first classified frame (the "stopping" event, frames 1, follows it at once)
    starts, to_running, tf_maps = [], [], []
    for i in range(plan.startup_runs):
        c, _ = cfg(f"start{i}", realtime=False, loop=False, forced_every=None, heatmaps=None)
        say(f"daemon start-up run {i + 1}/{plan.startup_runs}")
        r = run_daemon(c, f"start{i}", work, max_frames=1, timeout=60)
        t1 = r.event_time("stopping", lambda e: e.get("frames") == 1)
        if t1 is not None:
            starts.append(t1 - r.t_spawn)
        tr = r.event_time("ready")
        if tr is not None:
            to_running.append(tr - r.t_spawn)
    startup_s = round(float(np.median(starts)), 3) if starts else None

    # end to end, heatmaps off, the bundle's own decisions, health checks on (the default). Each e2e
    # run has three twins that differ in one thing: health off (the health checks' cost), samples
    # flooding (SAMPLES_FLOOD: sampling + publishing's fps cost and RSS), and junk flooding the
    # feedback topic (plan.junk_messages); the four run in one order, then in the reverse, so the
    # machine's drift hits each pair alike
    e2e_runs = []
    nohealth: list[dict] = []
    samp: list[tuple[DaemonRun, dict, dict]] = []  # (run, fps, last stats)
    junk: list[tuple[dict, dict, JunkFlood]] = []  # (fps, last stats, flood)
    arms = ("e2e", "nohealth", "samples", "junk")
    for i in range(plan.e2e_runs):
        probe.burst(max(15, plan.iters // 2))
        for arm in arms if i % 2 == 0 else arms[::-1]:
            tag = f"{arm}{i}"
            c, st_nat = cfg(
                tag,
                realtime=False,
                loop=True,
                forced_every=None,
                heatmaps=None,
                health=arm != "nohealth",
                samples=SAMPLES_FLOOD if arm == "samples" else None,
            )
            what = {
                "e2e": "health on",
                "nohealth": "health off",
                "samples": "health on, samples flooding",
                "junk": f"health on, {plan.junk_messages:,} junk feedback messages",
            }[arm]
            say(f"daemon e2e run (heatmaps off, {what}), {plan.steady_s:.0f} s steady ({i + 1}/{plan.e2e_runs})")
            flood = None
            if arm == "junk":
                flood = JunkFlood(port, st_nat, listener, plan.junk_messages, plan.steady_s, binfo["labels"]).start()
            try:
                r = run_daemon(c, tag, work, steady_s=plan.steady_s + si, timeout=plan.steady_s + 90)
            finally:
                if flood is not None:
                    flood.stop()
            f = stats_fps(listener, st_nat, r)
            if arm == "e2e":
                r_nat = r
                e2e_runs.append((r, f))
            elif arm == "nohealth":
                nohealth.append(f)
            elif arm == "samples":
                samp.append((r, f, last_stats(listener, st_nat, r)))
            else:
                assert flood is not None
                junk.append((f, last_stats(listener, st_nat, r), flood))
    probe.burst(max(15, plan.iters // 2))
    ok = [f for _, f in e2e_runs if str(f["source"]).startswith("stats")]
    sec = sum(f["seconds"] for f in ok)
    if sec:
        fps = {
            "fps": round(sum(f["frames"] for f in ok) / sec, 2),
            "frames": sum(f["frames"] for f in ok),
            "seconds": round(sec, 2),
            "source": "stats (Δframes/Δuptime)",
            "per_run_fps": [f["fps"] for f in ok],
        }
    else:
        fps = e2e_runs[-1][1]
    r_nat = e2e_runs[-1][0]
    bound_ms = pct(probe.samples, 50)
    e2e = {
        **fps,
        "alerts": r_nat.summary.get("alerts"),
        "dropped_frames": r_nat.summary.get("dropped_frames"),
        "threads": threads,
        "inference_ms": r_nat.summary.get("inference_ms"),
        "bound_ms_p50": round(bound_ms, 3),
        "bound_samples": len(probe.samples),
        "config": "file source, realtime false, loop, heatmaps off, bundle thresholds, "
        "expected_length 2mm; bound sampled in bursts before and after each run",
    }
    rss_nohm = steady_rss(r_nat, r_nat.event_time("ready"))
    h_ok = [f for f in nohealth if str(f["source"]).startswith("stats")]
    h_sec = sum(f["seconds"] for f in h_ok)
    fps_nohealth = round(sum(f["frames"] for f in h_ok) / h_sec, 2) if h_sec else None
    fps_health = fps.get("fps") if str(fps.get("source")).startswith("stats") else None
    health_cost = {
        "fps_on": fps_health,
        "fps_off": fps_nohealth,
        "ratio": round(fps_health / fps_nohealth, 3) if fps_health and fps_nohealth else None,
        "cost": round(1 - fps_health / fps_nohealth, 3) if fps_health and fps_nohealth else None,
        "pairs": plan.e2e_runs,
        "per_run_fps": {"on": [f["fps"] for f in ok], "off": [f["fps"] for f in h_ok]},
        "config": "the e2e runs (health.enabled true, the default: every 10th frame measured) against "
        "the same runs with health.enabled false, in alternating order; file source at full speed",
    }
    tf_maps.append(r_nat.tf_mapped)
    samples_cost, samples_rss = _samples_cost(fps_health, samp, [r for r, _ in e2e_runs], plan)
    feedback_junk = _junk_cost(fps_health, junk, plan)

    # heatmaps on ~5 % of frames (forced: one event / alert / heatmap every 20 frames), against the
    # same forced alerts with heatmaps off; off/on runs alternate so the machine's drift hits both
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    r_hm = None
    for i in range(plan.hm_pairs):
        for kind in ("off", "on"):
            tag = f"hm{kind}{i}"
            c, st = cfg(
                tag,
                realtime=False,
                loop=True,
                forced_every=20,
                heatmaps="litert" if kind == "on" else None,
                homeassistant=True,
            )
            say(f"daemon e2e run, alerts on 5 % of frames, heatmaps {kind} ({i + 1}/{plan.hm_pairs})")
            r = run_daemon(c, tag, work, steady_s=plan.hm_steady_s + si, timeout=plan.hm_steady_s + 90)
            runs[kind].append(
                {
                    **stats_fps(listener, st, r),
                    "alerts": r.summary.get("alerts"),
                    "frames_total": r.summary.get("frames"),
                    "heatmaps": r.summary.get("heatmaps"),
                }
            )
            if kind == "on":
                r_hm = r
                tf_maps.append(r.tf_mapped)

    def pooled(rs: list[dict]) -> float | None:
        ok = [x for x in rs if str(x["source"]).startswith("stats")]
        sec = sum(x["seconds"] or 0 for x in ok)
        return round(sum(x["frames"] or 0 for x in ok) / sec, 2) if sec else None

    fps_on, fps_off = pooled(runs["on"]), pooled(runs["off"])
    al = sum(x["alerts"] or 0 for x in runs["on"])
    fr = sum(x["frames_total"] or 0 for x in runs["on"])
    heatmaps_e2e = {
        "fps_on": fps_on,
        "fps_off": fps_off,
        "loss": round(1 - fps_on / fps_off, 3) if fps_on and fps_off else None,
        "pairs": plan.hm_pairs,
        "per_run_fps": {k: [x["fps"] for x in v] for k, v in runs.items()},
        "alerts": al,
        "frames": fr,
        "alert_fraction": round(al / fr, 3) if fr else None,
        "heatmaps_saved": sum((x["heatmaps"] or {}).get("saved") or 0 for x in runs["on"]),
        "heatmaps_dropped": sum((x["heatmaps"] or {}).get("dropped") or 0 for x in runs["on"]),
        "heatmap_worker_ms_p50": [(x["heatmaps"] or {}).get("ms_p50") for x in runs["on"]],
        "heatmap_threads": hm_threads,
        "model_threads": threads,
        "config": "decision.thresholds.error 0, min_frames 1, window 1, max_event_frames 20 (an alert "
        "every 20 frames) in both; heatmaps litert on / off; off and on runs alternate",
    }
    assert r_hm is not None
    rss_lite = steady_rss(r_hm, r_hm.first_heatmap_t or r_hm.event_time("ready"))

    # memory of the full-TF Grad-CAM path (the Pi has none: this is the reason, ARCHITECTURE.md §9):
    # a worker process holding it, explaining the frame for 1-2 s after its first heatmap
    rss_tf: dict[str, Any] = {"max": None}
    tf_first_s = None
    if binfo["has_keras"]:
        say("full-TF Grad-CAM process (RSS)")
        rss_tf = run_worker(
            {
                "kind": "tf_gradcam_rss",
                "bundle": str(bundle),
                "frame": str(frame_png),
                "labels": labels,
                "seconds": 1.0 if plan.quick else 2.0,
            },
            work,
            "tfgradcam",
            timeout=300,
        )
        tf_first_s = rss_tf.get("first_heatmap_after_s")
        notes.append(
            "rss_mb.tf: a process holding only the full-TF Grad-CAM on the bundle's Keras model "
            "(what heatmaps.method tf added to a daemon before the Pi dropped it); "
            "tf_first_heatmap_after_s counts from that process's start"
        )

    # alert and defect-ON latency: the video at its real 30 fps, the bundle's decisions, heatmaps on
    # (LiteRT), published on MQTT or not
    alert, defect_on, hm_mqtt, flood_lat = alert_latency(
        plan, cfg, work, listener, notes, natural=not binfo.get("untrained")
    )

    rss_mb = {
        "litert": rss_lite["max"],
        "litert_median": rss_lite["median"],
        "litert_no_heatmaps": rss_nohm["max"],
        "tf": rss_tf["max"],
        "tf_median": rss_tf.get("median"),
        "tf_first_heatmap_after_s": tf_first_s,
        "tensorflow_mapped_in_litert_daemon": any(bool(x) for x in tf_maps if x is not None),
    }
    startup = {
        "runs_s": [round(s, 3) for s in starts],
        "to_running_line_s": [round(s, 3) for s in to_running],
        "how": "spawn of `python -m edge --max-frames 1` → its 'stopping' log event (frames 1) "
        "(logged right after the first frame is classified); TensorFlow not imported",
    }
    return {
        "e2e": e2e,
        "heatmaps_e2e": heatmaps_e2e,
        "rss_mb": rss_mb,
        "startup_s": startup_s,
        "startup": startup,
        "alert_latency_ms": alert,
        "defect_on_latency_ms": defect_on,
        "heatmap_mqtt_latency": hm_mqtt,
        "health_cost": health_cost,
        "samples_cost": samples_cost,
        "samples_rss_mb": samples_rss,
        "samples_flood_latency": flood_lat,
        "feedback_junk": feedback_junk,
        "notes": notes,
    }


def _pooled_fps(fs: list[dict]) -> float | None:
    """Frames / seconds over the runs whose fps came from the stats messages."""
    ok = [f for f in fs if str(f["source"]).startswith("stats")]
    sec = sum(f["seconds"] or 0 for f in ok)
    return round(sum(f["frames"] or 0 for f in ok) / sec, 2) if sec else None


def _samples_cost(
    fps_off: float | None, samp: list[tuple[DaemonRun, dict, dict]], off_runs: list[DaemonRun], plan: Plan
) -> tuple[dict[str, Any], dict[str, Any]]:
    """fps and RSS of the samples-flooding twins against the e2e runs (samples off) → (samples_cost, samples_rss_mb)."""
    fps_on = _pooled_fps([f for _, f, _ in samp])
    secs = sum(f["seconds"] or 0 for _, f, _ in samp)

    def total(k: str) -> int:
        return sum(int(st.get(k) or 0) for _, _, st in samp)

    cost = {
        "fps_on": fps_on,
        "fps_off": fps_off,
        "ratio": round(fps_on / fps_off, 3) if fps_on and fps_off else None,
        "cost": round(1 - fps_on / fps_off, 3) if fps_on and fps_off else None,
        "pairs": plan.e2e_runs,
        "per_run_fps": {"on": [f["fps"] for _, f, _ in samp]},
        "samples_saved": total("samples_saved"),
        "samples_published": total("samples_published"),
        "samples_dropped": total("samples_dropped"),
        "saved_per_s": round(total("samples_saved") / secs, 2) if secs else None,
        "ring_frames": max((int(st.get("samples_ring_frames") or 0) for _, _, st in samp), default=0),
        "config": "the e2e runs (samples off) against the same runs with samples.enabled, uncertain_per_h and "
        "random_good_per_h 36,000 (the most the config allows: 10 + 10 a second), ring 16 MB (the default) "
        "every 2nd crop, queue 16, published on MQTT 5 (nobody subscribed to sample: the collector is elsewhere); "
        "file source at full speed; counters from each run's last stats message (up to the stop)",
    }

    def rss(runs: list[DaemonRun]) -> list[float]:
        return [x for x in (steady_rss(r, r.event_time("ready"))["max"] for r in runs) if x is not None]

    on, off = rss([r for r, _, _ in samp]), rss(off_runs)
    m_on = round(float(np.median(on)), 1) if on else None
    m_off = round(float(np.median(off)), 1) if off else None
    rss_res = {
        "on": m_on,
        "off": m_off,
        "added": round(m_on - m_off, 1) if m_on is not None and m_off is not None else None,
        "per_run_max": {"on": on, "off": off},
        "ring_frames": cost["ring_frames"],
        "how": "median over the runs of each run's max RSS after its ready event (psutil, MiB), samples "
        "flooding (the ring buffer full after ~0.3 s at this fps) vs off; the same runs as samples_cost",
    }
    return cost, rss_res


def _junk_cost(fps_off: float | None, junk: list[tuple[dict, dict, JunkFlood]], plan: Plan) -> dict[str, Any]:
    """fps of the junk-flooded twins against the e2e runs, and what the stations counted → feedback_junk."""
    fps_on = _pooled_fps([f for f, _, _ in junk])

    def total(k: str) -> int:
        return sum(int(st.get(k) or 0) for _, st, _ in junk)

    spans = [fl.finished - fl.started for _, _, fl in junk if fl.started is not None and fl.finished is not None]
    return {
        "fps_with": fps_on,
        "fps_without": fps_off,
        "ratio": round(fps_on / fps_off, 3) if fps_on and fps_off else None,
        "cost": round(1 - fps_on / fps_off, 3) if fps_on and fps_off else None,
        "pairs": plan.e2e_runs,
        "per_run_fps": [f["fps"] for f, _, _ in junk],
        "messages_per_run": plan.junk_messages,
        "sent": sum(fl.sent for _, _, fl in junk),
        "flood_s": [round(x, 2) for x in spans],
        "received": total("feedback_received"),
        "junk": total("feedback_junk"),
        "dropped": total("feedback_dropped"),
        # the flood breaker (mqtt.feedback_junk_limit): how often the stations unsubscribed; "junk" is
        # then what they processed before pausing plus what Mosquitto had already sent or queued
        "pauses": total("feedback_pauses"),
        "paused_at_end": total("feedback_paused"),
        "unknown": total("feedback_unknown"),
        "errors": [fl.error for _, _, fl in junk if fl.error],
        "config": "the e2e runs against the same runs while mosquitto_pub -l (QoS 1) sends junk to "
        "seamqc/<station>/feedback, spread over the steady window from the station's online: 9 in 10 refused by "
        "the parser (random bytes, not UTF-8, > 4 KB, not an object, unknown keys, bad verdict, unknown label, "
        "bad time, control characters), 1 in 10 well-formed on an event_id the station never raised; "
        "counters from each run's last stats message (what had arrived by then)",
    }


def _latency_summary(got: list[dict], mode: str) -> dict[str, Any]:
    if not got:
        return {"p50": None, "p99": None, "n": 0, "mode": mode}
    tot = [g["total"] for g in got]
    aft = [g["after_close"] for g in got]
    bef = [g["before_close"] for g in got]
    return {
        "p50": round(pct(tot, 50), 1),
        "p99": round(pct(tot, 99), 1),
        "n": len(got),
        "mode": mode,
        "after_close_p50": round(pct(aft, 50), 1),
        "after_close_p99": round(pct(aft, 99), 1),
        "before_close_p50": round(pct(bef, 50), 1),
    }


def alert_latency(
    plan: Plan, cfg: Callable, work: Path, listener: Listener, notes: list[str], natural: bool = True
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Capture → MQTT subscriber latency of live alerts and of the early ``defect`` ``ON`` (forced
    events when the bundle raises too few), with heatmaps published on MQTT and not, and with samples
    flooding (``SAMPLES_FLOOD``), side by side → (alert latency, defect-ON latency, heatmaps.mqtt on vs
    off, samples flooding vs off)."""

    def collect(run: DaemonRun, station: str) -> list[dict]:
        # when the daemon closed each event (before its durable write and publish), not when the log line
        # was read: that can come after the subscriber already has the alert
        emit = {e.get("event_id"): e.data["closed_at"] for e in run.events if e.name == "alert"}
        stop_line = run.event_time("stopping")
        seen, out = set(), []
        for t, a in listener.of(station, "alert"):
            eid = a.get("event_id")
            if eid in seen or eid not in emit:
                continue
            seen.add(eid)
            if stop_line is not None and emit[eid] >= stop_line:
                continue  # flushed at shutdown: not a live alert
            ts = iso_to_epoch(a["ts"])
            out.append(
                {"total": (t - ts) * 1e3, "after_close": (t - emit[eid]) * 1e3, "before_close": (emit[eid] - ts) * 1e3}
            )
        return out

    def collect_on(run: DaemonRun, station: str) -> list[float]:
        """ms from the capture of the frame that opened an event (the daemon's ``defect`` event,
        ``capture_ts``) to the ``ON`` reaching the subscriber; QoS 1 from one client keeps order, so
        the n-th live ``ON`` is the n-th ``on`` event."""
        opened = [float(e.get("capture_ts")) for e in run.events if e.name == "defect" and e.get("on")]
        arrived = [m.wall for m in listener.sub.on(f"seamqc/{station}/defect") if m.text == "ON" and not m.retain]
        if len(arrived) != len(opened):
            notes.append(
                f"defect ON latency, run {run.tag}: {len(opened)} ON events logged, {len(arrived)} ON "
                "received; paired in order"
            )
        # an ON queued by paho before the daemon's first connect waited for the connection, not the
        # pipeline: only events opened after the station's first ``online`` count
        online = [m.wall for m in listener.sub.on(f"seamqc/{station}/status") if m.text.startswith("online")]
        t_online = online[0] if online else None
        return [(t - c) * 1e3 for c, t in zip(opened, arrived) if t_online is None or c >= t_online]

    # arms: "mqtt" (heatmaps on MQTT, the default: the alert latency), "nohm" (heatmaps.mqtt off),
    # "flood" (as "mqtt", with samples flooding); one order, then the reverse
    arms = ("mqtt", "nohm", "flood")
    got: dict[str, list[dict]] = {a: [] for a in arms}
    ons: dict[str, list[float]] = {a: [] for a in arms}
    flood_stats: list[dict] = []
    mode = "natural: bundle thresholds, expected_length 2mm, min_frames 2 of window 3, video replayed at 30 fps"
    forced = not natural
    need = plan.min_alerts + 2  # forced runs stop after this many alerts
    for i in range(plan.latency_pairs):
        for arm in arms if i % 2 == 0 else arms[::-1]:
            hm_mqtt = arm != "nohm"
            samples = SAMPLES_FLOOD if arm == "flood" else None
            tag = f"alert{'' if arm == 'mqtt' else '-' + arm}{i}"
            what = {"mqtt": "heatmaps on MQTT on", "nohm": "heatmaps on MQTT off", "flood": "samples flooding"}[arm]
            if not forced:
                c, st = cfg(
                    tag,
                    realtime=True,
                    loop=False,
                    forced_every=None,
                    heatmaps="litert",
                    hm_mqtt=hm_mqtt,
                    samples=samples,
                )
                say(
                    f"daemon alert-latency run: the video at 30 fps ({plan.video_frames} frames, bundle decisions), "
                    f"{what} ({i + 1}/{plan.latency_pairs})"
                )
                r = run_daemon(c, tag, work, timeout=plan.video_frames / 30 + 60)
                g = collect(r, st)
                if i == 0 and arm == "mqtt" and len(g) < plan.min_alerts:
                    notes.append(
                        f"alert latency: the bundle raised {len(g)} live alert(s) on the video "
                        f"(< {plan.min_alerts}); measured on forced alerts instead (an event closes "
                        "every 10 frames)"
                    )
                    forced = True
                else:
                    got[arm] += g
                    ons[arm] += collect_on(r, st)
                    if arm == "flood":
                        flood_stats.append(last_stats(listener, st, r))
                    continue
            if forced:
                c, st = cfg(
                    tag + "f",
                    realtime=True,
                    loop=True,
                    forced_every=10,
                    heatmaps="litert",
                    hm_mqtt=hm_mqtt,
                    samples=samples,
                )
                say(
                    f"daemon alert-latency run, forced alerts (every 10 frames at 30 fps), {what} "
                    f"({i + 1}/{plan.latency_pairs})"
                )

                def enough(station: str = st) -> bool:
                    return len(listener.of(station, "alert")) >= need

                r = run_daemon(c, tag + "f", work, timeout=60, stop_when=enough)
                got[arm] += collect(r, st)
                ons[arm] += collect_on(r, st)
                if arm == "flood":
                    flood_stats.append(last_stats(listener, st, r))
    if forced:
        if not natural:
            notes.append(
                "alert latency: the bundle is untrained, so its alerts mean nothing; measured on "
                "forced alerts (an event closes every 10 frames)"
            )
        mode = (
            "forced: every frame flags error, an event closes every 10 frames (max_event_frames 10), "
            "video replayed at 30 fps"
        )
    alert = _latency_summary(got["mqtt"], mode)
    alert["how"] = (
        "heatmaps litert, published on MQTT (the default); receive time at a loopback paho subscriber − "
        "the alert's ts (wall-clock capture time of the event's best frame); includes the debounce's "
        "wait for the event to close. after_close = receive − the daemon's alert log event (event "
        "closed → outbox → MQTT)."
    )
    on = ons["mqtt"]
    defect_on: dict[str, Any] = {
        "p50": round(pct(on, 50), 1) if on else None,
        "p99": round(pct(on, 99), 1) if on else None,
        "max": round(max(on), 1) if on else None,
        "n": len(on),
        "mode": mode,
        "how": "receive time of the retained QoS 1 ON on <prefix>/<station>/defect at the loopback "
        "subscriber − capture_ts of the frame that opened the event (the daemon's `defect` log event, "
        "logged right after the publish); same runs as the alert latency (heatmaps on MQTT); events "
        "opened before the station's first `online` (queued while connecting) are left out",
    }
    off = _latency_summary(got["nohm"], mode)
    a_on = alert

    def ratio(k: str, a: dict = a_on, b: dict = off) -> float | None:
        return round(a[k] / b[k], 3) if a.get(k) and b.get(k) else None

    hm_mqtt_res = {
        "on": {k: a_on.get(k) for k in ("p50", "p99", "n", "after_close_p50", "after_close_p99")},
        "off": {k: off.get(k) for k in ("p50", "p99", "n", "after_close_p50", "after_close_p99")},
        "ratio_p50": ratio("p50"),
        "ratio_p99": ratio("p99"),
        "ratio_after_close_p50": ratio("after_close_p50"),
        "ratio_after_close_p99": ratio("after_close_p99"),
        "defect_on_off_arm": {
            "p50": round(pct(ons["nohm"], 50), 1) if ons["nohm"] else None,
            "p99": round(pct(ons["nohm"], 99), 1) if ons["nohm"] else None,
            "n": len(ons["nohm"]),
        },
        "pairs": plan.latency_pairs,
        "config": "the alert-latency runs with heatmaps.mqtt true vs false (heatmaps litert on in both), "
        "same video at 30 fps, alternating order",
    }
    fl = _latency_summary(got["flood"], mode)
    keys = ("p50", "p99", "n", "after_close_p50", "after_close_p99")

    def total(k: str) -> int:
        return sum(int(st.get(k) or 0) for st in flood_stats)

    flood_res = {
        "on": {k: fl.get(k) for k in keys},
        "off": {k: a_on.get(k) for k in keys},
        "ratio_p50": ratio("p50", fl, a_on),
        "ratio_p99": ratio("p99", fl, a_on),
        "ratio_after_close_p50": ratio("after_close_p50", fl, a_on),
        "ratio_after_close_p99": ratio("after_close_p99", fl, a_on),
        "defect_on": {
            "p50": round(pct(ons["flood"], 50), 1) if ons["flood"] else None,
            "p99": round(pct(ons["flood"], 99), 1) if ons["flood"] else None,
            "n": len(ons["flood"]),
        },
        "samples_saved": total("samples_saved"),
        "samples_published": total("samples_published"),
        "samples_dropped": total("samples_dropped"),
        "pairs": plan.latency_pairs,
        "config": "the alert-latency runs (heatmaps litert on MQTT) with samples.enabled at the config's highest "
        "rates (uncertain_per_h, random_good_per_h 36,000: up to 20 samples a second from a 30 fps video, the "
        "writer and publisher kept busy) vs samples off, same video at 30 fps, alternating order; counters from "
        "each flood run's last stats message",
    }
    return alert, defect_on, hm_mqtt_res, flood_res
