"""The TensorFlow side of the bench, in worker subprocesses (``python -m convert.bench --worker SPEC``).

TF fixes its intra-op pool size once it starts, so there is one worker per thread count; the bench
process itself never imports TensorFlow, so TF's thread pools never disturb the LiteRT numbers.
Workers: ``tf`` (Keras eager / ``tf.function`` latencies, TFLite exports of the model variants,
multiply-adds, the full-TF Grad-CAM cost), ``tf_gradcam_rss`` (the memory of a process holding the
full-TF Grad-CAM), ``tf_train`` (a training step of the bundle's architecture, with and without
XLA) and ``fallback`` (an untrained bundle when none is shipped yet).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError
from edge.seam import SEAM_LABELS

from .common import ROOT, read_frame, subprocess_env, summary_ms, time_interleaved


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one forward pass (Conv2D, DepthwiseConv2D, Dense; the rest is small)."""
    macs = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "DepthwiseConv2D", "Dense"):
            k = tuple(int(v) for v in layer.kernel.shape)
            out = tuple(int(v) for v in layer.output.shape[1:-1])
            pos = int(np.prod(out)) if out else 1
            macs += pos * int(np.prod(k))
        elif hasattr(layer, "layers"):  # nested model
            macs += count_macs(layer)
    return int(macs)


def _tf_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a subprocess: TF latencies (+ exports, FLOPs, TF Grad-CAM) at ``spec['threads']``."""
    threads = int(spec["threads"])
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    from convert.models import build_model, read_meta
    from convert.tflite import Quantize, keras_to_tflite

    out_dir = Path(spec["out_dir"])
    h, w, filters, n = int(spec["height"]), int(spec["width"]), int(spec["filters"]), int(spec["n_labels"])
    res: dict[str, Any] = {"threads": threads, "models": {}, "latency": {}}
    views = int(spec.get("bundle_views") or 1)  # export --tta: the bundle's classifier runs each view
    models: dict[str, Any] = {}
    keras.utils.set_random_seed(0)
    for arch in spec.get("archs", []):
        models[arch] = build_model(arch, n, h, w, filters)
    if spec.get("bundle_keras"):
        models["bundle"] = keras.models.load_model(spec["bundle_keras"], compile=False)
    if spec.get("mobilenet"):
        models["mobilenet_v2"] = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)
    ref: dict[str, Any] = spec.get("reference") or {}  # the classifier budget's yardstick (common.REFERENCE)
    if ref:  # untrained: the cost is the architecture's
        models["reference"] = build_model(ref["arch"], n, h, w, int(ref["filters"]))
    for name, m in models.items():
        ih, iw = (int(v) for v in m.inputs[0].shape[1:3])
        info: dict[str, Any] = {"macs": count_macs(m), "params": int(m.count_params()), "height": ih, "width": iw}
        if name == "bundle":
            info["meta"] = read_meta(spec["bundle_keras"])
            info["views"] = views
            info["macs"] *= views
        if name == "reference":
            info.update(arch=ref["arch"], filters=int(ref["filters"]))
        if spec.get("export") and name != "bundle":
            quants: tuple[tuple[str, Quantize], ...] = (("fp32", "none"), ("int8", "dynamic"))
            for kind, q in quants:
                p = out_dir / f"{name}.{kind}.tflite"
                p.write_bytes(keras_to_tflite(m, ih, iw, q))
                info[f"tflite_{kind}"] = str(p)
                info[f"tflite_{kind}_bytes"] = p.stat().st_size
        res["models"][name] = info
    fns = {}
    rng = np.random.default_rng(0)
    for name, m in models.items():
        if name == "reference" or (name == "mobilenet_v2" and not spec.get("time_mobilenet")):
            continue  # the reference is timed as LiteRT int8 only, beside the bundle's classifier
        ih, iw = (int(v) for v in m.inputs[0].shape[1:3])
        # the bundle's Keras arms do the classifier's work: one batch of its --tta views
        batch = views if name == "bundle" else 1
        xt = tf.constant(rng.standard_normal((batch, ih, iw, 3)).astype(np.float32))
        fn = tf.function(lambda t, _m=m: _m(t, training=False))
        fns[f"{name}|keras"] = lambda _m=m, _x=xt: _m(_x, training=False).numpy()
        fns[f"{name}|tf.function"] = lambda _f=fn, _x=xt: _f(_x).numpy()
    times = time_interleaved(fns, int(spec["iters"]), int(spec["warmup"]), int(spec["rounds"]))
    for k, v in times.items():
        name, rt = k.split("|")
        res["latency"].setdefault(name, {})[rt] = summary_ms(v)

    if spec.get("heatmap_bundle"):
        from edge.preprocess import preprocess

        from .litert import measure_cost

        frame = read_frame(spec["frame"])
        cost = measure_cost(
            spec["heatmap_bundle"],
            frame,
            list(spec["labels"]),
            threads=int(spec["hm_threads"]),
            repeats=int(spec["hm_repeats"]),
            method="tf",
        )
        m = models.get("bundle") or keras.models.load_model(spec["bundle_keras"], compile=False)
        ih, iw = (int(v) for v in m.inputs[0].shape[1:3])
        x = tf.constant(preprocess(frame, ih, iw)[None])
        fwd = time_interleaved({"k": lambda: m(x, training=False).numpy()}, int(spec["hm_repeats"]), 2, 1)["k"]
        res["heatmap_tf"] = {
            "explain_ms": cost["explain_ms"],
            "forward_litert_fp32_ms": cost["forward_ms"],
            "forward_keras_ms": float(np.median(fwd)),
        }
    return res


def _tf_gradcam_rss_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Subprocess: the memory of a process holding the full-TF Grad-CAM on the bundle's Keras model.

    What ``heatmaps.method: tf`` added to a Pi daemon before the Pi dropped it (ARCHITECTURE.md §9).
    RSS is sampled after each explanation for ``seconds``; ``first_heatmap_after_s`` counts from the
    process start (TensorFlow's import included).
    """
    import psutil

    proc = psutil.Process()
    from convert.gradcam_tf import TFGradCAM
    from edge.bundle import load_bundle

    b = load_bundle(spec["bundle"])
    tg = TFGradCAM(b.path("keras"), labels=b.labels, layer=b.gradcam.get("layer"), height=b.height, width=b.width)
    frame = read_frame(spec["frame"])
    labels = list(spec["labels"])
    tg.explain(frame, labels)
    first = time.time() - proc.create_time()
    rss: list[float] = []
    end = time.monotonic() + float(spec["seconds"])
    while time.monotonic() < end or not rss:
        tg.explain(frame, labels)
        rss.append(proc.memory_info().rss / 2**20)
    return {
        "max": round(max(rss), 1),
        "median": round(float(np.median(rss)), 1),
        "samples": len(rss),
        "first_heatmap_after_s": round(first, 2),
    }


def _tf_train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Subprocess: one training step of the bundle's architecture, Keras ``fit`` as ``convert train``
    runs it (a ``PyDataset`` of ``batch`` images, Adam, binary cross-entropy), with XLA and without it
    (``train.use_xla`` picks one by the hardware: a GPU, AVX-512), side by side: the two
    models train in alternating rounds of ``steps`` steps, and each round's first step is left out.
    ``spec["malloc"]``: whether glibc keeps freed memory as ``train`` sets it (``train.keep_freed_memory``;
    process-wide, so the bench runs one worker each way)."""
    import keras

    from convert.models import build_model
    from convert.train import keep_freed_memory

    kept = keep_freed_memory() if spec.get("malloc", True) else False

    h, w, filters, n = int(spec["height"]), int(spec["width"]), int(spec["filters"]), int(spec["n_labels"])
    batch, steps, rounds = int(spec["batch"]), int(spec["steps"]), int(spec["rounds"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, h, w, 3)).astype(np.float32)
    y = (rng.random((batch, n)) < 0.3).astype(np.float32)

    class Batches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return steps

        def __getitem__(self, k: int):
            return x, y

    class StepTimes(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.ms: list[float] = []

        def on_train_batch_begin(self, b, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, b, logs=None):
            if b > 0:  # the first step of a round: the iterator starting (and, once, the trace)
                self.ms.append(1000.0 * (time.perf_counter() - self.t0))

    keras.utils.set_random_seed(0)
    arms = {}
    for name, jit in (("plain", False), ("xla", True)):
        m = build_model(str(spec["arch"]), n, h, w, filters)
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy(), jit_compile=jit)
        t0 = time.perf_counter()
        m.fit(Batches(), epochs=1, verbose=0)  # warm-up: trace (and XLA-compile) the step
        arms[name] = (m, StepTimes(), round(time.perf_counter() - t0, 2))
    for _ in range(rounds):
        for m, times, _ in arms.values():
            m.fit(Batches(), epochs=1, verbose=0, callbacks=[times])
    res: dict[str, Any] = {
        name: {**summary_ms(times.ms), "first_fit_s": first} for name, (_, times, first) in arms.items()
    }
    res.update(
        arch=spec["arch"],
        batch=batch,
        height=h,
        width=w,
        xla_speedup=round(res["plain"]["p50"] / res["xla"]["p50"], 3),
        malloc_kept=kept,
    )
    return res


def _fallback_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Subprocess: an untrained int8-friendly ResNet exported as a bundle (when none is shipped yet)."""
    import keras

    from convert.export import export_bundle
    from convert.models import build_model, save_model
    from convert.synth import write_dataset

    out = Path(spec["out"])
    work = out.parent / (out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    keras.utils.set_random_seed(0)
    size, filters = int(spec["size"]), int(spec["filters"])
    labels = list(SEAM_LABELS)
    model = build_model("resnet-int8", len(labels), size, size, filters)
    kpath = work / "untrained.keras"
    save_model(
        model,
        kpath,
        {
            "labels": labels,
            "task": "multilabel",
            "arch": "resnet-int8",
            "height": size,
            "width": size,
            "filters": filters,
            "trained_on": "untrained (bench fallback)",
        },
    )
    write_dataset(work / "cal", 48, seed=7)
    export_bundle(kpath, work / "cal" / "data.csv", out, force=True, name="bench-untrained", int8="dynamic")
    shutil.rmtree(work, ignore_errors=True)
    return {"bundle": str(out)}


def worker_main(spec_path: str) -> int:
    """The worker process: read the spec, run its kind, write the result JSON."""
    spec = json.loads(Path(spec_path).read_text())
    fn = {
        "tf": _tf_worker,
        "tf_gradcam_rss": _tf_gradcam_rss_worker,
        "tf_train": _tf_train_worker,
        "fallback": _fallback_worker,
    }[spec["kind"]]
    res = fn(spec)
    Path(spec["result"]).write_text(json.dumps(res))
    return 0


def run_worker(spec: dict[str, Any], work: Path, tag: str, timeout: float = 900) -> dict[str, Any]:
    """Run one worker subprocess and return its result; a failure is one line naming its log."""
    spec = dict(spec, result=str(work / f"{tag}.result.json"))
    sp = work / f"{tag}.spec.json"
    sp.write_text(json.dumps(spec))
    log = work / f"{tag}.log"
    env = dict(subprocess_env(), TF_CPP_MIN_LOG_LEVEL="2")
    with open(log, "w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "convert.bench", "--worker", str(sp)],
            stdout=f,
            stderr=f,
            env=env,
            cwd=str(ROOT),
            timeout=timeout,
        ).returncode
    if rc != 0:
        tail = [ln for ln in log.read_text().strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
        raise ModelError(f"bench worker {tag} failed (exit {rc}): {tail[0][:300]} (log: {log})")
    return json.loads(Path(spec["result"]).read_text())
