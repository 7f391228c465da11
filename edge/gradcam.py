"""Grad-CAM on the Pi without TensorFlow: LiteRT for the features, numpy for the head's gradient.

TensorFlow's GradientTape cannot be converted to a LiteRT-runnable model (AvgPoolGrad needs
Flex ops, DESIGN §3), but the gradient of a class logit with respect to the Grad-CAM feature
map only runs through the model's *head* (pooling → flatten → one Dense), which is small and
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

This is exactly what ``tf.GradientTape`` computes (``convert.gradcam_tf``); the two paths
agree to ~1e-6 on the normalised maps (tests/test_gradcam.py asserts r ≥ 0.999, max |Δ| ≤ 1e-3).

Cost: one float forward pass for *all* labels (the head gradients are a few µs each), so
heatmaps for every flagged label of a frame cost about one forward pass (``measure_cost``).

Weak maps: a heatmap is normalised to 0..1 by its own maximum, so a map whose raw maximum
(``Heatmap.peak``, in logit units per feature cell) is tiny would look as hot as a strong one.
The overlays therefore scale their opacity by ``min(1, peak / peak_ref)``; ``peak_ref`` is the
bundle's per-label reference (``manifest.gradcam.peak_ref``: the median peak over the
calibration images the model flagged, written by ``convert.explainer``) or, for bundles
without it, the largest peak this ``Explainer`` has seen for that label so far.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from .errors import ModelError
from .preprocess import preprocess

HEAD_FORMAT = 1

# BGR colours of the seed figures: error blue, break green, length red.
LABEL_COLORS: dict[str, tuple[int, int, int]] = {
    "error": (255, 0, 0),
    "break": (0, 255, 0),
    "length": (0, 0, 255),
}
# Distinct colours for other labels (multiclass models, "good"), in the models' label order.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 215, 255),   # gold
    (255, 0, 255),   # magenta
    (255, 255, 0),   # cyan
    (0, 128, 255),   # orange
    (180, 105, 255), # pink
    (128, 0, 128),   # purple
    (0, 255, 128),   # lime
    (255, 128, 0),   # azure
    (128, 128, 0),   # teal
    (60, 20, 220),   # crimson
)


# ----------------------------------------------------------------------------- head math


def load_head(path: str | Path) -> dict[str, Any]:
    """Read ``head.npz`` → ``{"spec": dict, <array name>: ndarray, ...}`` (no pickle)."""
    try:
        with np.load(str(path), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        spec = json.loads(str(arrays.pop("spec")))
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{path}: not a valid Grad-CAM head file ({e})") from None
    if spec.get("format") != HEAD_FORMAT:
        raise ModelError(f"{path}: head format {spec.get('format')!r} is not supported (expected {HEAD_FORMAT})")
    return {"spec": spec, **arrays}


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
        out = np.empty((oh, ow, x.shape[2]), x.dtype)
        red = np.mean if kind == "avg_pool" else np.max
        for i in range(oh):
            for j in range(ow):
                out[i, j] = red(x[i * sh:i * sh + kh, j * sw:j * sw + kw], axis=(0, 1))
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


def _relu(x: np.ndarray, step: Mapping[str, Any]) -> np.ndarray:
    t, slope, mx = float(step.get("threshold", 0.0)), float(step.get("negative_slope", 0.0)), step.get("max_value")
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
        t, slope, mx = float(step.get("threshold", 0.0)), float(step.get("negative_slope", 0.0)), step.get("max_value")
        d = np.where(x > t, 1.0, slope).astype(x.dtype)
        if mx is not None:
            d = np.where(x >= float(mx), 0.0, d).astype(x.dtype)
        return g * d
    if kind == "avg_pool":
        (kh, kw), (sh, sw) = step["pool"], step["strides"]
        gi = np.zeros_like(x)
        share = g / float(kh * kw)
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                gi[i * sh:i * sh + kh, j * sw:j * sw + kw] += share[i, j]
        return gi
    if kind == "max_pool":
        (kh, kw), (sh, sw) = step["pool"], step["strides"]
        gi = np.zeros_like(x)
        c = x.shape[2]
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                win = x[i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(-1, c)
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
    f = np.asarray(features, np.float32)
    g = np.asarray(grads, np.float32)
    if f.ndim == 4:
        f, g = f[0], g[0]
    weights = g.mean(axis=(0, 1))
    raw = f @ weights
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
