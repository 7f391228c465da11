"""Grad-CAM with TensorFlow (the seeds' algorithm, GradientTape), for any Keras model.

The workstation's Grad-CAM (``convert heatmaps --method tf``, ``convert localize``, the bench) and
the reference the Pi's numpy/LiteRT path (``edge.gradcam``) is tested against. ``KerasGradCAM``
is the algorithm on a Keras model and a named layer; ``TFGradCAM`` adds loading a ``.keras`` with
its labels and choosing the layer automatically (``convert.explainer.find_gradcam_layer``:
``block5_conv3`` for VGG16, ``Conv_1`` for MobileNetV2). The Pi has no TensorFlow path
(ARCHITECTURE.md §9): a bundle whose head the numpy path cannot describe is explained here.

The score is the class's PRE-activation logit (Selvaraju et al.; sigmoid/softmax saturate and
flatten the gradient): when the model ends in a Dense with a sigmoid/softmax activation, the
tape differentiates ``dense_input @ kernel + bias``; when it ends in an Activation/Softmax
layer, that layer's input. Then, per class: channel weights = spatial mean of d score /
d features; map = ReLU(Σ_c weight_c · features_c); divided by its maximum (guarded, raw peak
kept); resized to the image with bilinear interpolation. One forward pass serves all classes
(persistent tape). This is the reference the numpy/LiteRT path (``edge.gradcam``) must match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError
from edge.gradcam import Heatmap, label_indices, resize_cam, strength, top_indices
from edge.preprocess import check_mode, preprocess
from edge.seam import SEAM_LABELS


def load_keras(path: str | Path) -> tuple[Any, dict]:
    """``.keras`` → (model, meta with labels/task); a bad file is one ``ModelError`` line."""
    from convert.models import load_keras as _load

    return _load(path)


def _logits_parts(model: Any) -> tuple[Any, Any, Any]:
    """(graph tensor, kernel, bias) with logits = tensor @ kernel + bias (or the tensor itself).

    A final Dense with sigmoid/softmax → its input and weights; a final Activation/Softmax
    layer → its input; anything else is taken as already linear.
    """
    if len(model.outputs) != 1:
        raise ModelError(f"model {model.name!r} has {len(model.outputs)} outputs; Grad-CAM needs one")
    hist = model.outputs[0]._keras_history
    layer, node = hist.operation, hist.node_index
    kind = type(layer).__name__
    act = getattr(getattr(layer, "activation", None), "__name__", None)
    nodes = getattr(layer, "_inbound_nodes", None) or []
    inbound = nodes[node].input_tensors if len(nodes) > node else []
    if kind == "Dense" and act in ("sigmoid", "softmax") and len(inbound) == 1:
        return inbound[0], layer.kernel, (layer.bias if layer.use_bias else None)
    if (kind == "Softmax" or (kind == "Activation" and act in ("sigmoid", "softmax"))) and len(inbound) == 1:
        return inbound[0], None, None
    return model.outputs[0], None, None


class KerasGradCAM:
    """The seeds' Grad-CAM with ``tf.GradientTape`` on a Keras model (TensorFlow loaded lazily).

    Score = the class's PRE-activation logit. Only the head (feature map → logits) is put on
    the tape: the convolutions are never differentiated (faster, and TF 2.21's oneDNN
    Conv2DBackpropFilter crashes on 1×1 stride-2 convolutions). One forward pass serves all
    classes (persistent tape). ``TFGradCAM`` adds layer auto-detection.
    """

    def __init__(
        self,
        model: Any,
        layer: str,
        labels: Sequence[str],
        height: int | None = None,
        width: int | None = None,
        preprocess: str = "seam",
    ) -> None:
        import keras

        try:
            self.preprocess = check_mode(preprocess)  # edge.preprocess mode: what the model was trained on
        except ValueError as e:
            raise ModelError(str(e)) from None
        self.model = model
        self.layer = layer
        try:
            feat = model.get_layer(layer)
        except ValueError:
            raise ModelError(f"model {model.name!r} has no layer {layer!r}") from None
        if len(feat.output.shape) != 4:
            raise ModelError(f"layer {layer!r} output {tuple(feat.output.shape)} is not a 4-D feature map")
        pre, self._kernel, self._bias = _logits_parts(model)
        self._feat_model = keras.Model(model.inputs[0], feat.output)
        self._head_model: Any = None  # features → (logits, output), or None: tape the whole model
        self._grad_model: Any = None
        try:
            self._head_model = keras.Model(feat.output, [pre, model.outputs[0]])
        except Exception:  # noqa: BLE001 - the head also reads earlier tensors: tape the whole model
            self._grad_model = keras.Model(model.inputs[0], [feat.output, pre, model.outputs[0]])
        n = int(model.outputs[0].shape[-1])
        if len(labels) != n:
            raise ModelError(f"{len(labels)} labels ({', '.join(labels)}) but the model has {n} outputs")
        self.labels = tuple(labels)
        shape = model.inputs[0].shape
        self.height = int(height or shape[1])
        self.width = int(width or shape[2])

    def explain_array(
        self, x: np.ndarray, class_indices: Sequence[int] | None, top_k: int | None = None
    ) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, float]]]:
        """Preprocessed ``x[H,W,3]`` → (scores[n], {class: (cam at feature resolution 0..1, raw peak)}).

        ``class_indices`` None: the ``top_k`` best-scoring classes of this forward pass (best first)."""
        import tensorflow as tf

        xb = tf.convert_to_tensor(np.asarray(x, np.float32)[None])
        if self._head_model is not None:
            feats = self._feat_model(xb, training=False)
        with tf.GradientTape(persistent=True, watch_accessed_variables=self._head_model is None) as tape:
            if self._head_model is not None:
                tape.watch(feats)
                pre, out = self._head_model(feats, training=False)
            else:
                feats, pre, out = self._grad_model(xb, training=False)
            logits = pre
            if self._kernel is not None:
                logits = tf.matmul(pre, self._kernel)
                if self._bias is not None:
                    logits = logits + self._bias
            if class_indices is None:
                class_indices = top_indices(np.asarray(out[0]), top_k or 1)
            scores = [logits[0, int(k)] for k in class_indices]
        result = {}
        for k, s in zip(class_indices, scores):
            grads = tape.gradient(s, feats)
            if grads is None:
                grads = tf.zeros_like(feats)
            weights = tf.reduce_mean(grads, axis=(1, 2))  # [1, c]
            raw = tf.reduce_sum(feats * weights[:, None, None, :], axis=-1)[0]
            cam = tf.nn.relu(raw)
            peak = float(tf.reduce_max(cam))
            scale = float(tf.reduce_max(tf.abs(raw)))
            if not np.isfinite(peak) or peak <= 1e-6 * scale + 1e-12:  # same guard as gradcam_map
                result[int(k)] = (np.zeros(tuple(raw.shape), np.float32), peak if np.isfinite(peak) else 0.0)
            else:
                result[int(k)] = ((cam / peak).numpy().astype(np.float32), peak)
        del tape
        return np.asarray(out[0], np.float32), result

    def explain(
        self,
        frame_bgr: np.ndarray,
        labels: Sequence[str] | None = None,
        peak_ref: Mapping[str, float | None] | None = None,
        top_k: int | None = None,
    ) -> dict[str, Heatmap]:
        """Label → Heatmap at the frame's size (same contract as ``Explainer.explain``, ``top_k`` too)."""
        if labels is None and top_k is not None:
            idx = None
        else:
            idx = label_indices(list(self.labels if labels is None else labels), self.labels)
        x = preprocess(frame_bgr, self.height, self.width, self.preprocess)
        scores, maps = self.explain_array(x, idx, top_k)
        if idx is None:
            idx = list(maps)
        h, w = frame_bgr.shape[:2]
        return {
            self.labels[k]: Heatmap(
                self.labels[k],
                resize_cam(maps[k][0], h, w),
                maps[k][1],
                float(scores[k]),
                strength(maps[k][1], (peak_ref or {}).get(self.labels[k])),
            )
            for k in idx
        }


class TFGradCAM(KerasGradCAM):
    """``KerasGradCAM`` from a model or a ``.keras`` path; layer defaults to ``find_gradcam_layer``,
    labels to the file's seam-qc metadata (or the seam labels for 4 outputs)."""

    def __init__(
        self,
        model: Any,
        labels: Sequence[str] | None = None,
        layer: str | None = None,
        height: int | None = None,
        width: int | None = None,
        preprocess: str | None = None,
    ) -> None:
        from convert.explainer import find_gradcam_layer

        meta: dict = {}
        if isinstance(model, (str, Path)):
            model, meta = load_keras(model)
        n = int(model.outputs[0].shape[-1])
        labels = labels or meta.get("labels")
        if labels is None:
            labels = SEAM_LABELS if n == len(SEAM_LABELS) else tuple(f"class{i}" for i in range(n))
        mode = preprocess or str(meta.get("preprocess") or "seam")
        super().__init__(model, layer or find_gradcam_layer(model), labels, height, width, mode)
        op = model.outputs[0]._keras_history.operation
        act = getattr(getattr(op, "activation", None), "__name__", None)
        softmax = act == "softmax" or type(op).__name__ == "Softmax"
        self.task = str(meta.get("task") or ("multiclass" if softmax else "multilabel"))

    def predicted_class(self, frame_bgr: np.ndarray) -> int:
        """Arg-max class of a frame (for softmax models: which class to explain by default)."""
        x = preprocess(frame_bgr, self.height, self.width, self.preprocess)[None]
        return int(np.argmax(np.asarray(self.model(x, training=False))[0]))
