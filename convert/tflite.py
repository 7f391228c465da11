"""Keras → TFLite with the traps avoided (ARCHITECTURE.md §3).

* fixed ``[1, H, W, 3]`` input: open batch sizes fall off XNNPACK;
* ``supported_ops=[TFLITE_BUILTINS]`` only: ``model.export(format="litert")`` silently enables
  Flex ops that LiteRT cannot run;
* never ``from_concrete_functions([cf], model)`` (writes NaN models silently): the model is
  saved as a SavedModel with a batch-1 signature and converted from there.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from edge.errors import ModelError

Quantize = Literal["none", "dynamic", "int8"]

#: Test-time flips baked into a classifier (``convert export --tta``): the NHWC axes each view
#: reverses, the image itself first. A seam's labels do not change when the view is mirrored, and
#: averaging the mirrored views is a small ensemble at 2× (``lr``) or 4× (``flips``) the cost.
TTA_VIEWS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "lr": ((), (2,)),
    "flips": ((), (2,), (1,), (1, 2)),
}


def tta_views(mode: str) -> tuple[tuple[int, ...], ...]:
    """The views of a ``--tta`` mode; any other is one ``ModelError`` line naming the modes (the one
    check of ``export``, ``evaluate`` and ``ship``)."""
    if mode not in TTA_VIEWS:
        raise ModelError(f"--tta {mode!r}: choose {', '.join(TTA_VIEWS)}")
    return TTA_VIEWS[mode]


def tta_predict(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, mode: str) -> np.ndarray:
    """``predict`` averaged over the views of ``mode`` (a batch ``[N, H, W, C]``): the reference the
    exported classifier, which does the same inside its graph, is checked against."""
    views = tta_views(mode)
    outs = [predict(np.ascontiguousarray(np.flip(x, axes)) if axes else x) for axes in views]
    return np.stack(outs).astype(np.float64).mean(axis=0).astype(np.float32) if len(outs) > 1 else outs[0]


def keras_to_tflite(
    model,
    height: int,
    width: int,
    quantize: Quantize = "none",
    representative: Callable[[], Iterable[list[np.ndarray]]] | None = None,
    tta: str = "none",
) -> bytes:
    """Convert a Keras model (one image input, one or more outputs) to TFLite bytes.

    ``dynamic``: dynamic-range int8 weights (float activations). ``int8``: full integer
    quantisation with ``representative`` yielding ``[x]`` batches of shape ``[1, H, W, 3]``;
    float32 input and output are kept so callers need no (de)quantisation. ``tta``: the views of
    ``TTA_VIEWS[tta]`` run as one batch inside the graph and their outputs averaged (one output
    only), so the Pi runs it as any classifier.
    """
    import keras
    import tensorflow as tf

    spec = tf.TensorSpec([1, height, width, 3], tf.float32, name="image")

    views = tta_views(tta)
    if len(views) > 1 and len(model.outputs) != 1:
        raise ValueError(f"--tta {tta}: a model with {len(model.outputs)} outputs cannot be averaged")

    def serve(image):
        if len(views) > 1:
            batch = tf.concat([tf.reverse(image, axis=list(axes)) if axes else image for axes in views], 0)
            return {"output_0": tf.reduce_mean(model(batch, training=False), axis=0, keepdims=True)}
        out = model(image, training=False)
        if isinstance(out, (list, tuple)):
            return {f"output_{i}": o for i, o in enumerate(out)}
        return {"output_0": out}

    # ExportArchive tracks Keras 3 variables explicitly (a plain tf.Module does not, and the
    # converter then bakes uninitialised weights: NaN outputs).
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=serve, input_signature=[spec])
    with tempfile.TemporaryDirectory() as tmp:
        saved = str(Path(tmp) / "saved")
        archive.write_out(saved, verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(saved)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize == "dynamic":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantize == "int8":
            if representative is None:
                raise ValueError("full int8 quantisation needs representative data")
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = representative
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        elif quantize != "none":
            raise ValueError(f"unknown quantize mode {quantize!r}")
        return conv.convert()


def outputs_by_shape(interpreter) -> dict[tuple[int, ...], int]:
    """TFLite lists outputs in its own order: map each output's shape to its tensor index."""
    return {tuple(int(v) for v in d["shape"]): d["index"] for d in interpreter.get_output_details()}
