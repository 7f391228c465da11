"""LiteRT timings in the bench process: model latencies, the daemon's per-thread step costs, the
bare interpreter bound sampled around the daemon runs, and the Grad-CAM cost."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import ROI, Plan, pct, summary_ms, time_interleaved


def litert_latency(files: dict[str, str], threads: tuple[int, ...], plan: Plan) -> dict[str, dict[str, dict]]:
    """{name|runtime: path} → {name: {runtime: {threads: summary}}}, interleaved per thread count."""
    from edge.classify import open_interpreter

    out: dict[str, dict[str, dict]] = {}
    rng = np.random.default_rng(1)
    for t in threads:
        fns = {}
        for key, path in files.items():
            interp, _ = open_interpreter(path, t)
            d = interp.get_input_details()[0]
            o = interp.get_output_details()[0]["index"]
            x = rng.standard_normal(tuple(d["shape"])).astype(np.float32)
            if d["dtype"] != np.float32:  # full-int8 input
                x = np.zeros(tuple(d["shape"]), d["dtype"])

            def call(_i=interp, _x=x, _n=d["index"], _o=o):
                _i.set_tensor(_n, _x)
                _i.invoke()
                return _i.get_tensor(_o)

            fns[key] = call
        for key, v in time_interleaved(fns, plan.iters, plan.warmup, plan.rounds).items():
            name, rt = key.split("|")
            out.setdefault(name, {}).setdefault(rt, {})[str(t)] = summary_ms(v)
    return out


def pipeline_costs(bundle: Path, video: Path, frame: np.ndarray, threads: int, plan: Plan) -> dict[str, Any]:
    """Per-frame ms of the daemon's two threads' steps, interleaved.

    Capture thread: decode + ROI copy (one FFmpeg thread, the daemon's default), then ``prepare``
    (preprocess + quantise). Classifier thread: ``classify_prepared`` (set_tensor + invoke + read).
    ``classify`` (all of it in one thread, as before the split) is timed for comparison.
    """
    import cv2

    from edge.classify import Classifier

    clf = Classifier(bundle, threads=threads)
    params = [cv2.CAP_PROP_N_THREADS, 1] if hasattr(cv2, "CAP_PROP_N_THREADS") else []
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, params)
    x, y, w, h = ROI
    tensor = clf.prepare(frame)

    def decode() -> np.ndarray:
        ok, img = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, img = cap.read()
        return np.ascontiguousarray(img[y : y + h, x : x + w]).copy()

    try:
        fns = {
            "decode_roi": decode,
            "prepare": lambda: clf.prepare(frame),
            "classify_prepared": lambda: clf.classify_prepared(tensor),
            "classify": lambda: clf.classify(frame),
        }
        t = time_interleaved(fns, plan.iters, plan.warmup, plan.rounds)
    finally:
        cap.release()
    p50 = {k: round(pct(v, 50), 3) for k, v in t.items()}
    capture_ms = p50["decode_roi"] + p50["prepare"]
    return {
        "ms_p50": p50,
        "threads": threads,
        "capture_thread_ms": round(capture_ms, 3),
        "serial_bound_fps": round(1000 / (capture_ms + p50["classify_prepared"]), 1),
        "overlapped_bound_fps": round(1000 / max(capture_ms, p50["classify_prepared"]), 1),
    }


class BoundProbe:
    """The bare interpreter bound, sampled in bursts right before and after each e2e daemon run.

    The machine's load changes from minute to minute, so the bound that the daemon's frame rate is
    compared with is measured interleaved with the daemon runs, not minutes earlier.
    """

    def __init__(self, path: str, threads: int) -> None:
        from edge.classify import open_interpreter

        self.interp, _ = open_interpreter(path, threads)
        d = self.interp.get_input_details()[0]
        self.i_in, self.dtype, self.shape = d["index"], d["dtype"], tuple(d["shape"])
        self.i_out = self.interp.get_output_details()[0]["index"]
        self.x = (
            np.random.default_rng(2).standard_normal(self.shape).astype(np.float32)
            if self.dtype == np.float32
            else np.zeros(self.shape, self.dtype)
        )
        self.samples: list[float] = []

    def burst(self, n: int, warmup: int = 5) -> None:
        """``n`` timed calls right now, added to ``samples``."""

        def call() -> None:
            self.interp.set_tensor(self.i_in, self.x)
            self.interp.invoke()
            self.interp.get_tensor(self.i_out)

        self.samples += time_interleaved({"b": call}, n, warmup, 1)["b"]


def measure_cost(
    bundle: Any,
    frame_bgr: np.ndarray,
    labels: Sequence[str] | None = None,
    threads: int = 2,
    repeats: int = 20,
    method: str = "litert",
) -> dict[str, float]:
    """Median ms of a Grad-CAM of all ``labels`` vs one ``classifier_fp32`` forward pass.

    ``heatmap_ms`` of the bench: returns ``{"explain_ms", "forward_ms", "ratio"}``; both include
    preprocessing, ``threads`` is used for both interpreters. ``method="litert"`` times the Pi's
    ``edge.gradcam.Explainer``; ``"tf"`` the workstation's full-TF path on the bundle's Keras model
    and its Grad-CAM layer (TensorFlow imported only then: the bench's TF worker).
    """
    from edge.bundle import Bundle, load_bundle
    from edge.classify import open_interpreter
    from edge.preprocess import preprocess

    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    explain: Callable[[], Any]
    if method == "tf":
        from convert.gradcam_tf import TFGradCAM

        tg = TFGradCAM(b.path("keras"), labels=b.labels, layer=b.gradcam.get("layer"), height=b.height, width=b.width)
        explain = lambda: tg.explain(frame_bgr, labels)  # noqa: E731
    else:
        from edge.gradcam import Explainer

        ex = Explainer(b, threads=threads)
        explain = lambda: ex.explain(frame_bgr, labels)  # noqa: E731
    role = "classifier_fp32" if b.has("classifier_fp32") else b.classifier_role
    interp, _ = open_interpreter(str(b.path(role)), threads)
    i_in = interp.get_input_details()[0]["index"]
    i_out = interp.get_output_details()[0]["index"]

    def fwd() -> Any:
        interp.set_tensor(i_in, preprocess(frame_bgr, b.height, b.width)[None])
        interp.invoke()
        return interp.get_tensor(i_out)

    def med(fn: Callable[[], Any]) -> float:
        fn()  # warm-up
        ts = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(ts))

    f_ms = med(fwd)
    e_ms = med(explain)
    return {"explain_ms": e_ms, "forward_ms": f_ms, "ratio": e_ms / f_ms if f_ms > 0 else float("inf")}
