"""Grad-CAM with TensorFlow (the seeds' algorithm, GradientTape), for any Keras model.

The algorithm lives in ``edge.gradcam.KerasGradCAM`` (the Pi's optional ``method: tf`` needs it
and ``edge`` never imports ``convert``); this module adds what the workstation wants on top:
loading a ``.keras`` with its labels and choosing the layer automatically
(``convert.explainer.find_gradcam_layer``: ``block5_conv3`` for VGG16, ``Conv_1`` for MobileNetV2).

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

from edge.gradcam import KerasGradCAM
from edge.preprocess import preprocess

SEAM_LABELS = ("good", "error", "break", "length")


def load_keras(path: str | Path) -> tuple[Any, dict]:
    """``.keras`` → (model, meta with labels/task); a bad file is one ``ModelError`` line."""
    from convert.models import load_keras as _load

    return _load(path)


class TFGradCAM(KerasGradCAM):
    """``KerasGradCAM`` from a model or a ``.keras`` path; layer defaults to ``find_gradcam_layer``,
    labels to the file's seam-qc metadata (or the seam labels for 4 outputs)."""

    def __init__(self, model, labels: Sequence[str] | None = None, layer: str | None = None,
                 height: int | None = None, width: int | None = None):
        from convert.explainer import find_gradcam_layer

        meta: dict = {}
        if isinstance(model, (str, Path)):
            model, meta = load_keras(model)
        n = int(model.outputs[0].shape[-1])
        labels = labels or meta.get("labels")
        if labels is None:
            labels = SEAM_LABELS if n == len(SEAM_LABELS) else tuple(f"class{i}" for i in range(n))
        super().__init__(model, layer or find_gradcam_layer(model), labels, height, width)
        op = model.outputs[0]._keras_history.operation
        act = getattr(getattr(op, "activation", None), "__name__", None)
        softmax = act == "softmax" or type(op).__name__ == "Softmax"
        self.task = str(meta.get("task") or ("multiclass" if softmax else "multilabel"))

    def predicted_class(self, frame_bgr: np.ndarray) -> int:
        """Arg-max class of a frame (for softmax models: which class to explain by default)."""
        x = preprocess(frame_bgr, self.height, self.width)[None]
        return int(np.argmax(np.asarray(self.model(x, training=False))[0]))
