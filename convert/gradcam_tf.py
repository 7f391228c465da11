"""Grad-CAM with TensorFlow (the seeds' algorithm, GradientTape), for any Keras model.

The score is the class's PRE-activation logit (Selvaraju et al.; sigmoid/softmax saturate and
flatten the gradient): when the model ends in a Dense with a sigmoid/softmax activation, the
tape differentiates ``dense_input @ kernel + bias``; when it ends in an Activation/Softmax
layer, that layer's input. Then, per class: channel weights = spatial mean of d score /
d features; map = ReLU(Σ_c weight_c · features_c); divided by its maximum (guarded, raw peak
kept); resized to the image with bilinear interpolation. One forward pass serves all classes
(persistent tape). This is the reference the numpy/LiteRT path (``edge.gradcam``) must match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge.errors import ModelError
from edge.gradcam import Heatmap, resize_cam
from edge.preprocess import preprocess

SEAM_LABELS = ("good", "error", "break", "length")


def load_keras(path: str | Path):
    """Load a ``.keras``/``.h5`` model for inference (no compile) or raise ``ModelError``."""
    import keras

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: Keras model file not found")
    try:
        return keras.models.load_model(str(p), compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many kinds; the user needs one line
        raise ModelError(f"{p}: cannot load Keras model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _logits_parts(model) -> tuple[Any, Any, Any]:
    """(tensor to take from the graph, kernel, bias): logits = tensor @ kernel + bias, or tensor."""
    if len(model.outputs) != 1:
        raise ModelError(f"model {model.name!r} has {len(model.outputs)} outputs; Grad-CAM needs one")
    hist = model.outputs[0]._keras_history
    layer, node = hist.operation, hist.node_index
    kind = type(layer).__name__
    act = getattr(getattr(layer, "activation", None), "__name__", None)
    inbound = layer._inbound_nodes[node].input_tensors if getattr(layer, "_inbound_nodes", None) else []
    if kind == "Dense" and act in ("sigmoid", "softmax") and len(inbound) == 1:
        return inbound[0], layer.kernel, (layer.bias if layer.use_bias else None)
    if (kind == "Softmax" or (kind == "Activation" and act in ("sigmoid", "softmax"))) and len(inbound) == 1:
        return inbound[0], None, None
    return model.outputs[0], None, None  # already linear (or unknown): differentiate the output


class TFGradCAM:
    """Full-TF Grad-CAM for a Keras model; ``layer`` defaults to ``find_gradcam_layer``."""

    def __init__(self, model, labels: Sequence[str] | None = None, layer: str | None = None,
                 height: int | None = None, width: int | None = None):
        import keras

        from convert.explainer import find_gradcam_layer

        if isinstance(model, (str, Path)):
            model = load_keras(model)
        self.model = model
        self.layer = layer or find_gradcam_layer(model)
        try:
            feat = model.get_layer(self.layer)
        except ValueError:
            raise ModelError(f"model {model.name!r} has no layer {self.layer!r}") from None
        if len(feat.output.shape) != 4:
            raise ModelError(f"layer {self.layer!r} output {tuple(feat.output.shape)} is not a 4-D feature map")
        pre, self._kernel, self._bias = _logits_parts(model)
        # Two models: only the head (feature map → logits) goes on the tape, so the tape never
        # back-propagates into the convolutions (faster; and TF 2.21's oneDNN Conv2DBackpropFilter
        # crashes on 1×1 stride-2 convolutions such as ResNet shortcuts).
        self._feat_model = keras.Model(model.inputs[0], feat.output)
        try:
            self._head_model = keras.Model(feat.output, [pre, model.outputs[0]])
        except Exception:  # noqa: BLE001 - the head also reads earlier tensors: tape the whole model
            self._head_model = None
            self._grad_model = keras.Model(model.inputs[0], [feat.output, pre, model.outputs[0]])
        n = int(model.outputs[0].shape[-1])
        if labels is None:
            labels = SEAM_LABELS if n == len(SEAM_LABELS) else tuple(f"class{i}" for i in range(n))
        if len(labels) != n:
            raise ModelError(f"{len(labels)} labels given ({', '.join(labels)}) but the model has {n} outputs")
        self.labels = tuple(labels)
        shape = model.inputs[0].shape
        self.height = int(height or shape[1])
        self.width = int(width or shape[2])

    def explain_array(self, x: np.ndarray, class_indices: Sequence[int]) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, float]]]:
        """Preprocessed ``x[H,W,3]`` → (scores[n], {class: (cam at feature resolution 0..1, raw peak)})."""
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
            if not np.isfinite(peak) or peak <= 1e-6 * scale + 1e-12:
                result[int(k)] = (np.zeros(tuple(raw.shape), np.float32), peak if np.isfinite(peak) else 0.0)
            else:
                result[int(k)] = ((cam / peak).numpy().astype(np.float32), peak)
        del tape
        return np.asarray(out[0], np.float32), result

    def explain(self, frame_bgr: np.ndarray, labels: Sequence[str] | None = None) -> dict[str, Heatmap]:
        """Same contract as ``edge.gradcam.Explainer.explain``: label → Heatmap at the frame's size."""
        labels = list(self.labels if labels is None else labels)
        for lab in labels:
            if lab not in self.labels:
                raise ModelError(f"label {lab!r} is not one of the model's labels {list(self.labels)}")
        idx = [self.labels.index(lab) for lab in labels]
        scores, maps = self.explain_array(preprocess(frame_bgr, self.height, self.width), idx)
        h, w = frame_bgr.shape[:2]
        return {lab: Heatmap(lab, resize_cam(maps[k][0], h, w), maps[k][1], float(scores[k]))
                for lab, k in zip(labels, idx)}

    def predicted_class(self, frame_bgr: np.ndarray) -> int:
        """Arg-max class of a frame (for softmax models: which class to explain by default)."""
        x = preprocess(frame_bgr, self.height, self.width)[None]
        return int(np.argmax(np.asarray(self.model(x, training=False))[0]))
