"""Grad-CAM on the Pi without TensorFlow: LiteRT for the features, numpy for the head's gradient.

TensorFlow's GradientTape cannot be converted to a LiteRT-runnable model (AvgPoolGrad needs
Flex ops, ARCHITECTURE.md §3), but the gradient of a class logit with respect to the Grad-CAM
feature map only runs through the model's *head* (pooling → flatten → one Dense), which is small and
almost linear. So ``convert export`` ships a float "explainer" TFLite model that returns the
predictions *and* the feature map in one forward pass, plus ``head.npz`` (written by
``convert.explainer``) describing the head; numpy then back-propagates the chosen class's
PRE-activation logit through the head in closed form:

* Dense: the gradient of logit ``k`` w.r.t. its input is kernel column ``k``;
* Flatten: reshaped back to ``[h', w', c]`` (Keras channels-last = C order);
* average pooling: each window gets its output's gradient divided by the window size;
  positions outside every VALID window get 0; global average pooling: ``kernel / (h*w)``;
* max pooling: the gradient goes to the window's (first) maximum;
* BatchNormalization (inference) and ReLU/ReLU6 before the pooling: per-channel scale and the
  activation's mask, both computed from the float features.

This is exactly what ``tf.GradientTape`` computes (``convert.gradcam_tf``, the workstation's
full-TF path); the two agree to ~1e-6 on the normalised maps (tests/test_gradcam.py asserts
r ≥ 0.999, max |Δ| ≤ 1e-3). There is no TensorFlow path on the Pi (ARCHITECTURE.md §9).

What is explained: the *flagged condition*. For a defect label that is the label's logit. For
``length`` it depends on ``decision.expected_length`` (``explained_sign``): the model's
``length`` output is "2 mm stitches", so with ``expected_length: 2mm`` a wrong-length frame
(4 mm) is explained with the NEGATED logit (evidence against 2 mm), with ``4mm`` with the logit.

Cost: one float forward pass for *all* labels (the head gradients are a few µs each), so
heatmaps for every flagged label of a frame cost about one forward pass (``make bench``).

Weak maps: a heatmap is normalised to 0..1 by its own maximum, so a map whose raw maximum
(``Heatmap.peak``, in logit units per feature cell) is tiny would look as hot as a strong one.
Each Heatmap therefore carries ``strength = min(1, peak / peak_ref)`` and the overlays
(``edge.overlay``) scale their opacity by it. ``peak_ref`` is the bundle's per-label reference
(``manifest.gradcam.peak_ref``: the median peak over the calibration images the model flagged,
written by ``convert.explainer.export_explainer(..., calibration=...)``) or, for bundles
without it, the largest peak this ``Explainer`` has seen for that label so far (so the very
first map of a label is drawn at full strength). A negated map is measured against the same
label's reference: both are logit evidence per feature cell.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import ModelError
from .preprocess import preprocess

HEAD_FORMAT = 1


# ----------------------------------------------------------------------------- head math


_MAX_FEATURE_CELLS = 1 << 24  # a feature map larger than this is not a head's input but garbage


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:200]


def load_head(path: str | Path, n_outputs: int | None = None) -> dict[str, Any]:
    """Read and check ``head.npz`` → ``{"spec": dict, <array name>: ndarray, ...}`` (no pickle).

    The head is run once, on a zero feature map, forwards and backwards: a garbage or mismatched
    file is one ``ModelError`` line naming it at load (the daemon's start-up), never a traceback
    per heatmap later. ``n_outputs`` (the bundle's label count) is checked when given.
    """
    try:
        with np.load(str(path), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        spec = json.loads(str(arrays.pop("spec")))
    except Exception as e:  # noqa: BLE001 - np.load raises OSError, ValueError, EOFError, BadZipFile, ...
        raise ModelError(f"{path}: not a valid Grad-CAM head file ({_first_line(e)})") from None
    if not isinstance(spec, dict):
        raise ModelError(f"{path}: not a valid Grad-CAM head file (spec is not an object)")
    if spec.get("format") != HEAD_FORMAT:
        raise ModelError(f"{path}: head format {spec.get('format')!r} is not supported (expected {HEAD_FORMAT})")
    head = {"spec": spec, **arrays}
    _check_head(path, head, n_outputs)
    return head


def _check_head(path: str | Path, head: dict[str, Any], n_outputs: int | None) -> None:
    spec = head["spec"]
    try:
        n = int(spec["n_outputs"])
        shape = tuple(int(v) for v in spec["feature_shape"])
        steps = spec["steps"]
        ok = (
            n > 0
            and len(shape) == 3
            and min(shape) > 0
            and int(np.prod(shape)) <= _MAX_FEATURE_CELLS
            and isinstance(steps, list)
            and all(isinstance(st, dict) for st in steps)
        )
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ModelError(
            f"{path}: not a valid Grad-CAM head file (spec needs n_outputs, feature_shape "
            "[h, w, c] and a list of steps)"
        )
    if n_outputs is not None and n != n_outputs:
        raise ModelError(f"{path}: the head has {n} outputs but the manifest lists {n_outputs} labels")
    try:
        feats = np.zeros(shape, np.float32)
        with np.errstate(all="ignore"):
            logits, inputs = head_forward(feats, head)
            grads = [head_gradient(feats, head, k, inputs) for k in range(n)]
        usable = (
            logits.shape == (n,)
            and np.isfinite(logits).all()
            and all(g.shape == shape and np.isfinite(g).all() for g in grads)
        )
        why = "non-finite or misshapen outputs"
    except ModelError as e:
        usable, why = False, str(e)
    except Exception as e:  # noqa: BLE001 - missing arrays, wrong shapes: whatever numpy raises
        usable, why = False, _first_line(e)
    if not usable:
        raise ModelError(f"{path}: not a usable Grad-CAM head ({why}); re-export the bundle")


def _windows(n: int, k: int, s: int) -> int:
    return (n - k) // s + 1 if n >= k else 0


def _step_forward(step: Mapping[str, Any], x: np.ndarray, head: Mapping[str, Any]) -> np.ndarray:
    kind = step["kind"]
    if kind == "identity":
        return x
    if kind == "bn":
        return x * head[step["scale"]] + head[step["shift"]]
    if kind == "relu":
        return _relu(x, step)
    if kind in ("avg_pool", "max_pool"):
        (kh, kw), (sh, sw) = step["pool"], step["strides"]
        oh, ow = _windows(x.shape[0], kh, sh), _windows(x.shape[1], kw, sw)
        if (kh, kw) == (sh, sw):  # non-overlapping windows: one reshape
            blocks = x[: oh * kh, : ow * kw].reshape(oh, kh, ow, kw, x.shape[2])
            red = blocks.mean(axis=(1, 3)) if kind == "avg_pool" else blocks.max(axis=(1, 3))
            return red.astype(x.dtype)
        out = np.empty((oh, ow, x.shape[2]), x.dtype)
        red = np.mean if kind == "avg_pool" else np.max
        for i in range(oh):
            for j in range(ow):
                out[i, j] = red(x[i * sh : i * sh + kh, j * sw : j * sw + kw], axis=(0, 1))
        return out
    if kind == "global_avg_pool":
        return x.mean(axis=(0, 1), keepdims=bool(step.get("keepdims")))
    if kind == "global_max_pool":
        return x.max(axis=(0, 1), keepdims=bool(step.get("keepdims")))
    if kind == "flatten":
        return x.reshape(-1)
    if kind == "dense":
        return x @ head[step["kernel"]] + head[step["bias"]]
    raise ModelError(f"head step {kind!r} is not supported by this runtime")


def _relu_params(step: Mapping[str, Any]) -> tuple[float, float, Any]:
    return float(step.get("threshold", 0.0)), float(step.get("negative_slope", 0.0)), step.get("max_value")


def _relu(x: np.ndarray, step: Mapping[str, Any]) -> np.ndarray:
    t, slope, mx = _relu_params(step)
    y = np.where(x >= t, x, slope * (x - t) if slope else 0.0)
    if mx is not None:
        y = np.minimum(y, float(mx))
    return y.astype(x.dtype, copy=False)


def _step_backward(step: Mapping[str, Any], x: np.ndarray, g: np.ndarray, head: Mapping[str, Any]) -> np.ndarray:
    """Gradient w.r.t. the step's input ``x`` given the gradient ``g`` w.r.t. its output."""
    kind = step["kind"]
    if kind == "identity":
        return g
    if kind == "bn":
        return g * head[step["scale"]]
    if kind == "relu":
        t, slope, mx = _relu_params(step)
        d = np.where(x > t, 1.0, slope).astype(x.dtype)
        if mx is not None:
            d = np.where(x >= float(mx), 0.0, d).astype(x.dtype)
        return g * d
    if kind == "avg_pool":
        (kh, kw), (sh, sw) = step["pool"], step["strides"]
        gi = np.zeros_like(x)
        share = g / float(kh * kw)
        if (kh, kw) == (sh, sw):  # non-overlapping windows (the seed's AveragePooling2D(4)): no loop
            oh, ow = g.shape[:2]
            gi[: oh * kh, : ow * kw] = np.repeat(np.repeat(share, kh, axis=0), kw, axis=1)
            return gi
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                gi[i * sh : i * sh + kh, j * sw : j * sw + kw] += share[i, j]
        return gi
    if kind == "max_pool":
        (kh, kw), (sh, sw) = step["pool"], step["strides"]
        gi = np.zeros_like(x)
        c = x.shape[2]
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                win = x[i * sh : i * sh + kh, j * sw : j * sw + kw].reshape(-1, c)
                a = win.argmax(axis=0)
                di, dj = np.divmod(a, kw)
                gi[i * sh + di, j * sw + dj, np.arange(c)] += g[i, j]
        return gi
    if kind == "global_avg_pool":
        h, w = x.shape[:2]
        return np.broadcast_to(g.reshape(1, 1, -1) / float(h * w), x.shape).astype(x.dtype)
    if kind == "global_max_pool":
        h, w, c = x.shape
        gi = np.zeros_like(x)
        a = x.reshape(-1, c).argmax(axis=0)
        di, dj = np.divmod(a, w)
        gi[di, dj, np.arange(c)] = g.reshape(-1)
        return gi
    if kind == "flatten":
        return g.reshape(x.shape)
    if kind == "dense":
        return head[step["kernel"]] @ g
    raise ModelError(f"head step {kind!r} is not supported by this runtime")


def head_forward(features: np.ndarray, head: Mapping[str, Any]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run the head on ``features[h,w,c]`` → (logits[n], the inputs of every step)."""
    x = np.asarray(features, np.float32)
    if x.ndim == 4:
        x = x[0]
    inputs = []
    for step in head["spec"]["steps"]:
        inputs.append(x)
        x = _step_forward(step, x, head)
    return x.astype(np.float32), inputs


def head_activation(logits: np.ndarray, head: Mapping[str, Any]) -> np.ndarray:
    """Apply the model's output activation (sigmoid / softmax / linear) to the head's logits."""
    act = head["spec"].get("activation", "linear")
    z = np.asarray(logits, np.float64)
    if act == "sigmoid":
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    if act == "softmax":
        e = np.exp(z - z.max())
        return (e / e.sum()).astype(np.float32)
    return z.astype(np.float32)


def head_gradient(
    features: np.ndarray,
    head: Mapping[str, Any],
    class_index: int,
    _inputs: list[np.ndarray] | None = None,
) -> np.ndarray:
    """d logit[class_index] / d features, shape ``[h, w, c]`` (closed form through the head)."""
    steps = head["spec"]["steps"]
    if _inputs is None:
        _, _inputs = head_forward(features, head)
    n = int(head["spec"]["n_outputs"])
    if not 0 <= class_index < n:
        raise IndexError(f"class index {class_index} out of range for a head with {n} outputs")
    g = np.zeros(n, np.float32)
    g[class_index] = 1.0
    for step, x in zip(reversed(steps), reversed(_inputs)):
        g = _step_backward(step, x, g, head)
    return np.asarray(g, np.float32)


def gradcam_map(features: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, float]:
    """Grad-CAM from features and gradients ``[h, w, c]`` → (cam[h, w] in 0..1, raw peak).

    Channel weights are the spatial mean of the gradients; the map is the ReLU of the
    weighted channel sum, divided by its maximum. A flat or all-negative map, or one whose
    peak is round-off (below 1e-6 of the largest |term|), is returned as zeros: never a
    divide by zero, never noise blown up to full scale.
    """
    g = np.asarray(grads, np.float32)
    if g.ndim == 4:
        g = g[0]
    return cam_from_weights(features, g.mean(axis=(0, 1)))


LINEAR_STEPS = frozenset({"identity", "bn", "avg_pool", "global_avg_pool", "flatten", "dense"})


def channel_weights(head: Mapping[str, Any], class_index: int) -> np.ndarray | None:
    """Grad-CAM channel weights ``[c]`` of a class when the head is linear in the features
    (BN, average pooling, flatten, Dense: the gradient does not depend on the frame), else None.
    The Explainer computes them once per class: a frame's maps then cost one matmul each."""
    if any(s["kind"] not in LINEAR_STEPS for s in head["spec"]["steps"]):
        return None
    zeros = np.zeros(tuple(head["spec"]["feature_shape"]), np.float32)
    return head_gradient(zeros, head, class_index).mean(axis=(0, 1)).astype(np.float32)


def cam_from_weights(features: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """ReLU(Σ_c weights_c · features_c) / max, guarded (see ``gradcam_map``) → (cam, raw peak)."""
    f = np.asarray(features, np.float32)
    if f.ndim == 4:
        f = f[0]
    raw = f @ np.asarray(weights, np.float32)
    cam = np.maximum(raw, 0.0)
    peak = float(cam.max()) if cam.size else 0.0
    scale = float(np.abs(raw).max()) if raw.size else 0.0
    if not np.isfinite(peak) or peak <= 1e-6 * scale + 1e-12:
        return np.zeros(raw.shape, np.float32), peak if np.isfinite(peak) else 0.0
    return (cam / peak).astype(np.float32), peak


def resize_cam(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Feature-resolution map → image resolution (bilinear, as the seed), clipped to 0..1."""
    out = cv2.resize(np.asarray(cam, np.float32), (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------- heatmaps


@dataclass(frozen=True)
class Heatmap:
    """One label's Grad-CAM for one frame.

    ``cam``: float32 at the frame's resolution, 0..1. ``peak``: the raw maximum before
    normalisation (logit units per feature cell). ``score``: the model's output for the label
    (probability for sigmoid/softmax models). ``strength``: ``min(1, peak / peak_ref)``, the
    overlay opacity factor (1.0 when no reference is known), so weak maps are drawn faint.
    """

    label: str
    cam: np.ndarray = field(repr=False)
    peak: float
    score: float
    strength: float = 1.0
    sign: int = 1  # -1: the negated logit was explained (``explained_sign``)


def strength(peak: float, ref: float | None) -> float:
    """Opacity factor 0..1: ``peak / ref`` capped at 1 (1 when there is no usable reference)."""
    if ref is None or not np.isfinite(ref) or ref <= 0:
        return 1.0
    return float(np.clip(peak / ref, 0.0, 1.0)) if np.isfinite(peak) else 0.0


def top_indices(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, best first (ties: the lower index first)."""
    s = np.asarray(scores, np.float64).reshape(-1)
    return [int(i) for i in np.argsort(-s, kind="stable")[: max(1, int(k))]]


def label_indices(labels: Sequence[str], known: Sequence[str]) -> list[int]:
    """Positions of ``labels`` in the model's ``known`` labels; an unknown one is a ``ModelError``."""
    out = []
    for lab in labels:
        if lab not in known:
            raise ModelError(f"label {lab!r} is not one of the model's labels {list(known)}")
        out.append(list(known).index(lab))
    return out


def explained_sign(label: str, expected_length: str = "any") -> int:
    """+1 to explain the label's logit, -1 its negation: the *flagged condition*, not the label.

    The model's ``length`` output means "2 mm stitches". With ``expected_length: 2mm`` a
    ``length`` alert is a 4 mm frame, so its evidence is the negated logit; the +logit map would
    show evidence for the expected 2 mm (faint or empty). Everything else: +1.
    """
    return -1 if label == "length" and expected_length == "2mm" else 1


def negated_labels(expected_length: str) -> frozenset[str]:
    """The labels ``Explainer(negate=...)`` explains with the negated logit for this line."""
    return frozenset(lab for lab in ("length",) if explained_sign(lab, expected_length) < 0)


# ----------------------------------------------------------------------------- explainer


def _resolve_bundle(bundle: Any) -> Any:
    from .bundle import Bundle, load_bundle

    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


class Explainer:
    """Grad-CAM for a bundle (the Pi path): ``explain(frame, labels) -> {label: Heatmap}``.

    Loads the bundle's float ``explainer`` model and ``head.npz`` once; ONE forward pass for all
    labels, a numpy head gradient per label. ``negate``: labels explained with their negated
    logit (``negated_labels(expected_length)``; the daemon passes its line's). Not thread-safe:
    one Explainer per worker thread.
    """

    def __init__(self, bundle: Any, threads: int = 2, negate: Collection[str] = ()) -> None:
        self.bundle = _resolve_bundle(bundle)
        gc = self.bundle.gradcam
        self.labels = tuple(self.bundle.labels)
        self.negate = frozenset(negate)
        refs = gc.get("peak_ref")
        self.peak_ref: dict[str, float | None] = (
            {lab: (None if r is None else float(r)) for lab, r in zip(self.labels, refs)} if refs else {}
        )
        self._calibrated = bool(refs)
        self._init_litert(gc, threads)

    def _init_litert(self, gc: Mapping[str, Any], threads: int) -> None:
        from .classify import open_interpreter

        if not gc:
            raise ModelError(f"{self.bundle.root}: manifest has no 'gradcam' section (bundle without explainer)")
        if not gc.get("explainer") or not gc.get("head"):
            raise ModelError(
                f"{self.bundle.root}: this bundle has no LiteRT Grad-CAM explainer "
                f"({gc.get('litert') or 'not exported'}); explain it on a workstation with "
                "python -m convert heatmaps --method tf, or set heatmaps.enabled: false"
            )
        self.layer = str(gc.get("layer", "?"))
        self.head = load_head(self.bundle.path(gc.get("head", "head")), len(self.labels))
        epath = self.bundle.path(gc.get("explainer", "explainer"))
        self.interpreter, self.runtime = open_interpreter(str(epath), threads)
        n = int(self.head["spec"]["n_outputs"])
        inp = self.interpreter.get_input_details()
        if len(inp) != 1 or inp[0]["dtype"] != np.float32:
            raise ModelError(f"{epath}: expected one float32 input")
        self._in = inp[0]["index"]
        self._pred = self._feat = None
        fshape = tuple(int(v) for v in self.head["spec"]["feature_shape"])
        for d in self.interpreter.get_output_details():  # TFLite orders outputs its own way: by shape
            shape = tuple(int(v) for v in d["shape"])
            if len(shape) == 4 and shape[1:] == fshape:
                self._feat = d["index"]
            elif len(shape) == 2 and shape[-1] == n:
                self._pred = d["index"]
        if self._feat is None or self._pred is None:
            dims = ",".join(map(str, fshape))
            raise ModelError(f"{epath}: needs a [1,{n}] prediction output and a [1,{dims}] feature output")
        # Linear heads (the seed's): the channel weights do not depend on the frame → once per class.
        self._weights = [channel_weights(self.head, k) for k in range(n)]

    def forward(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One float forward pass (LiteRT) → (scores[n], features[h, w, c])."""
        x = preprocess(frame_bgr, self.bundle.height, self.bundle.width, self.bundle.preprocess_mode)
        self.interpreter.set_tensor(self._in, x[None])
        self.interpreter.invoke()
        pred = np.array(self.interpreter.get_tensor(self._pred)[0], np.float32)
        feat = np.array(self.interpreter.get_tensor(self._feat)[0], np.float32)
        return pred, feat

    def explain(
        self, frame_bgr: np.ndarray, labels: Sequence[str] | None = None, top_k: int | None = None
    ) -> dict[str, Heatmap]:
        """Heatmaps for ``labels`` (default: all; with ``top_k``: the k highest-scoring labels, best
        first, chosen after the one forward pass) at the frame's resolution."""
        pred, feat = self.forward(frame_bgr)
        if labels is None and top_k is not None:
            labels = [self.labels[int(i)] for i in top_indices(pred, top_k)]
        labels = list(self.labels if labels is None else labels)
        idx = label_indices(labels, self.labels)
        inputs = None
        h, w = frame_bgr.shape[:2]
        out = {}
        for lab, k in zip(labels, idx):
            sign = -1 if lab in self.negate else 1
            weights = self._weights[k]
            if weights is not None:
                cam, peak = cam_from_weights(feat, sign * weights)
            else:
                if inputs is None:
                    _, inputs = head_forward(feat, self.head)
                cam, peak = gradcam_map(feat, sign * head_gradient(feat, self.head, k, inputs))
            out[lab] = Heatmap(
                lab, resize_cam(cam, h, w), peak, float(pred[k]), strength(peak, self.peak_ref.get(lab)), sign
            )
        if not self._calibrated:  # no bundle reference: the strongest map seen so far per label
            for lab, hm in out.items():
                if np.isfinite(hm.peak) and hm.peak > (self.peak_ref.get(lab) or 0.0):
                    self.peak_ref[lab] = hm.peak
        return out
