"""Classify preprocessed frames with a TFLite model from the bundle (LiteRT on the Pi).

Runtimes, tried in order: ``ai_edge_litert`` (maintained, numpy 2, runs dynamic-range int8; 64-bit
wheels only, hence a 64-bit Raspberry Pi OS), then ``tensorflow.lite`` (imported only as the
fallback, so the Pi never pays for TensorFlow). The legacy ``tflite_runtime`` is not tried: it needs
numpy < 2, which the ``numpy>=2`` pin rules out. The interpreter is built once with ``num_threads``.

Outputs are picked by shape (TFLite orders multiple outputs its own way). Float and int8
input/output tensors are both handled: int8 tensors are (de)quantised with their own scale and
zero point, so callers always see float32 probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle, load_bundle
from .errors import ModelError
from .preprocess import preprocess

_TFLITE_MAGIC = b"TFL3"


def _interpreter_class() -> tuple[Any, str]:
    """(Interpreter class, runtime name), first available runtime wins."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        import tensorflow as tf  # last resort: heavy import

        return tf.lite.Interpreter, "tensorflow.lite"
    except ImportError:
        raise ModelError("no TFLite runtime found: pip install ai-edge-litert") from None


def open_interpreter(path: str | Path, threads: int = 4) -> tuple[Any, str]:
    """Load a ``.tflite`` file → ``(interpreter, runtime_name)``, tensors allocated.

    A missing file or one that is not a TFLite model is one ``ModelError`` line.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: TFLite model not found")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != _TFLITE_MAGIC:
        raise ModelError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier)")
    cls, runtime = _interpreter_class()
    try:
        interp = cls(model_path=str(path), num_threads=max(1, int(threads)))
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{path}: {runtime} cannot load this model ({msg[:200]})") from None
    return interp, runtime


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32, copy=False)
    scale, zero = detail.get("quantization", (0.0, 0))
    if not scale:
        raise ModelError(f"input tensor {detail.get('name')!r} is {np.dtype(dtype).name} without quantisation")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if y.dtype == np.float32:
        return y
    scale, zero = detail.get("quantization", (0.0, 0))
    if not scale:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


class TFLiteModel:
    """One interpreter with a ``[1, H, W, 3]`` image input; ``run(x)`` → outputs by shape."""

    def __init__(self, path: str | Path, threads: int = 4, height: int | None = None, width: int | None = None):
        self.path = Path(path)
        self.interpreter, self.runtime = open_interpreter(self.path, threads)
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1:
            raise ModelError(f"{self.path}: expected one image input, found {len(inputs)}")
        self.input = inputs[0]
        shape = tuple(int(v) for v in self.input["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise ModelError(f"{self.path}: input shape {list(shape)} is not [1, H, W, 3]")
        if height is not None and width is not None and shape[1:3] != (height, width):
            raise ModelError(
                f"{self.path}: input shape {list(shape)} does not match the manifest's input {height}x{width}"
            )
        self.input_shape = shape
        self.outputs = self.interpreter.get_output_details()
        # (shape, tensor index, detail) once, not per frame: the classifier thread runs this 1,000×/s
        self._outs = [(tuple(int(v) for v in d["shape"]), d["index"], d) for d in self.outputs]

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """``x``: ``[H, W, 3]`` or ``[1, H, W, 3]`` float32 → the input tensor (shaped, quantised).

        Pure and thread-safe, so the capture thread can do it while the interpreter runs.
        """
        return _quantize(np.asarray(x, np.float32).reshape(self.input_shape), self.input)

    def run(self, x: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
        """``x``: ``[H, W, 3]`` or ``[1, H, W, 3]`` float32 → {output shape: float32 array}."""
        return self.run_prepared(self.prepare(x))

    def run_prepared(self, tensor: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
        """An input tensor from ``prepare`` → {output shape: float32 array}."""
        self.interpreter.set_tensor(self.input["index"], tensor)
        self.interpreter.invoke()
        get = self.interpreter.get_tensor
        return {shape: _dequantize(get(index), d) for shape, index, d in self._outs}

    def output_with_shape(self, outs: dict[tuple[int, ...], np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        if shape not in outs:
            raise ModelError(f"{self.path}: no output of shape {list(shape)} (has {[list(s) for s in outs]})")
        return outs[shape]


class Classifier:
    """The bundle's classifier: ``predict(x)`` on a preprocessed input, ``classify(frame_bgr)`` on a frame."""

    def __init__(self, bundle: Bundle | str | Path, role: str | None = None, threads: int = 4):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.role = role or self.bundle.classifier_role
        self.labels = self.bundle.labels
        self.height, self.width = self.bundle.height, self.bundle.width
        self.model = TFLiteModel(self.bundle.path(self.role), threads, self.height, self.width)
        self.runtime = self.model.runtime
        self.input_shape = self.model.input_shape
        self._out_shape = (1, len(self.labels))
        outs = {tuple(int(v) for v in d["shape"]) for d in self.model.outputs}
        if self._out_shape not in outs:
            raise ModelError(
                f"{self.model.path}: no output of shape {list(self._out_shape)} for labels "
                f"{list(self.labels)} (has {[list(s) for s in outs]})"
            )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed ``[H, W, 3]`` float32 → probabilities ``[n_labels]`` float32."""
        outs = self.model.run(x)
        return outs[self._out_shape].reshape(-1).astype(np.float32)

    def classify(self, frame_bgr: np.ndarray) -> np.ndarray:
        """A BGR frame (already cropped to the ROI) → probabilities ``[n_labels]``."""
        return self.predict(preprocess(frame_bgr, self.height, self.width, self.bundle.preprocess_mode))

    def prepare(self, frame_bgr: np.ndarray) -> np.ndarray:
        """A BGR frame → the interpreter's input tensor: ``preprocess`` and quantise, no interpreter.

        The daemon runs this in the capture thread, so the thread that owns the interpreter does
        nothing but ``invoke`` and the decision (pipelining: on a Pi 4 the camera thread has spare
        time while XNNPACK runs).
        """
        return self.model.prepare(preprocess(frame_bgr, self.height, self.width, self.bundle.preprocess_mode))

    def classify_prepared(self, tensor: np.ndarray) -> np.ndarray:
        """A tensor from ``prepare`` → probabilities ``[n_labels]`` (same numbers as ``classify``)."""
        return self.model.run_prepared(tensor)[self._out_shape].reshape(-1).astype(np.float32)
