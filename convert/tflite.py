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

Quantize = Literal["none", "dynamic", "int8"]


def keras_to_tflite(
    model,
    height: int,
    width: int,
    quantize: Quantize = "none",
    representative: Callable[[], Iterable[list[np.ndarray]]] | None = None,
) -> bytes:
    """Convert a Keras model (one image input, one or more outputs) to TFLite bytes.

    ``dynamic``: dynamic-range int8 weights (float activations). ``int8``: full integer
    quantisation with ``representative`` yielding ``[x]`` batches of shape ``[1, H, W, 3]``;
    float32 input and output are kept so callers need no (de)quantisation.
    """
    import keras
    import tensorflow as tf

    spec = tf.TensorSpec([1, height, width, 3], tf.float32, name="image")

    def serve(image):
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
