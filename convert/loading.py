"""Loading every model form the CLI accepts, and one predictor over all of them.

``load_model_any``: ``.keras``, legacy full-model ``.h5``, weights-only ``.h5`` + ``--arch`` (weights
assigned by layer order, every shape checked), Keras 3 ``.weights.h5`` + ``--arch``, a TensorFlow
SavedModel directory, or a ``keras.applications`` name (``vgg16``, ``mobilenet_v2``) with Keras'
ImageNet weights or ``--weights FILE.h5`` (``convert.applications``). ``load_predictor`` adds bundles
and bare ``.tflite`` files, so that ``evaluate``, ``export`` and ``ship`` run a model the same way
without importing each other; ``--preprocess`` is resolved here for all of them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError

from .models import ARCHS, build_model, check_arch, infer_meta, load_keras, read_meta

# --- loading every model form ------------------------------------------------------------------


def first_line(e: Exception) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:200]


def _h5_weight_layers(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    """Legacy (Keras 2) HDF5 weights in layer order: [(layer name, [arrays])] for layers with weights."""
    import h5py

    try:
        f = h5py.File(str(path), "r")
    except OSError as e:
        raise ModelError(f"{path}: not an HDF5 file ({first_line(e)})") from None
    with f:
        g = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in g.attrs:
            raise ModelError(f"{path}: no 'layer_names' attribute (not a Keras weights file)")
        out = []
        for raw in g.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            wn = [w.decode() if isinstance(w, bytes) else str(w) for w in g[name].attrs.get("weight_names", [])]
            if wn:
                out.append((name, [np.asarray(g[name][w]) for w in wn]))
        return out


def _h5_is_full_model(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(str(path), "r") as f:
            return "model_config" in f.attrs
    except OSError as e:
        raise ModelError(f"{path}: not an HDF5 file ({first_line(e)})") from None


def load_weights_by_order(model, path: Path) -> None:
    """Assign a legacy weights file to ``model`` layer by layer (the seed's ``load_weights``),
    checking every shape; a mismatch is one line naming the layers."""
    saved = _h5_weight_layers(path)
    layers = [lyr for lyr in model.layers if lyr.weights]
    if len(saved) != len(layers):
        raise ModelError(
            f"{path}: {len(saved)} layers with weights, but architecture {model.name!r} has "
            f"{len(layers)} (wrong --arch?)"
        )
    for (sname, arrays), lyr in zip(saved, layers):
        if len(arrays) != len(lyr.weights):
            raise ModelError(
                f"{path}: layer {sname!r} has {len(arrays)} weights, model layer {lyr.name!r} "
                f"({type(lyr).__name__}) has {len(lyr.weights)}"
            )
        for a, w in zip(arrays, lyr.weights):
            if tuple(a.shape) != tuple(w.shape):
                raise ModelError(
                    f"{path}: layer {sname!r} weight shape {list(a.shape)} does not fit model layer "
                    f"{lyr.name!r} ({type(lyr).__name__}) {list(w.shape)} (wrong --arch, --size or "
                    f"--filters?)"
                )
    for (_, arrays), lyr in zip(saved, layers):
        lyr.set_weights(arrays)


def _weights_only(path: Path, arch: str | None, size: int, labels: list[str] | None, task: str):
    if not arch:
        raise ModelError(f"{path}: a weights-only file; say which architecture with --arch ({', '.join(ARCHS)})")
    check_arch(arch)
    if path.name.endswith(".weights.h5"):  # Keras 3 weights: need n_labels and filters from the caller
        n = len(labels or [])
        if not n:
            raise ModelError(f"{path}: Keras 3 weights need the labels; pass --calibration data")
        model = build_model(arch, n, size, size, 64, task)
        try:
            model.load_weights(str(path))
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"{path}: weights do not fit {arch!r} ({first_line(e)})") from None
        return model
    saved = _h5_weight_layers(path)
    if not saved:
        raise ModelError(f"{path}: no weights found")
    first, last = saved[0][1], saved[-1][1]
    # the first layer with a 4-D kernel gives the filters; the last Dense gives the label count
    kernels = [a[0] for _, a in saved if a[0].ndim == 4]
    filters = int(kernels[0].shape[-1]) if kernels else 64
    n = int(last[0].shape[-1]) if last[0].ndim == 2 else len(labels or [])
    del first
    model = build_model(arch, n, size, size, filters, task)
    load_weights_by_order(model, path)
    return model


def _savedmodel(path: Path, size: int):
    import keras
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
        sig = loaded.signatures["serving_default"]
    except Exception as e:  # noqa: BLE001
        raise ModelError(
            f"{path}: not a loadable SavedModel with a serving_default signature ({first_line(e)})"
        ) from None
    specs = list(sig.structured_input_signature[1].values())
    if len(specs) != 1:
        raise ModelError(f"{path}: SavedModel signature has {len(specs)} inputs; expected one image")
    shape = specs[0].shape
    h = int(shape[1]) if shape.rank == 4 and shape[1] is not None else size
    w = int(shape[2]) if shape.rank == 4 and shape[2] is not None else size
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    inp = keras.Input((h, w, 3), name="image")
    out = layer(inp)
    if isinstance(out, dict):
        if len(out) != 1:
            raise ModelError(f"{path}: SavedModel has {len(out)} outputs ({', '.join(out)}); expected one")
        out = next(iter(out.values()))
    return keras.Model(inp, out, name="savedmodel")


def load_model_any(
    path: str | Path,
    arch: str | None = None,
    size: int | None = 128,
    labels: list[str] | None = None,
    task: str = "multilabel",
    weights: str | Path | None = None,
    classes: str | Path | None = None,
) -> tuple[Any, dict]:
    """``.keras`` / full ``.h5`` / weights-only ``.h5`` + arch / SavedModel dir / application name
    → ``(model, meta)``, the model a ``keras.Model`` (Any: keras ships no types).

    ``meta["form"]`` says which; ``labels`` (from the data set) name the outputs of foreign models.
    ``weights`` and ``classes`` belong to an application name (``convert.applications``); ``size``
    None is 128 for seam models and the application's own size otherwise.
    """
    from .applications import build_application, is_application

    if is_application(path):
        model, meta = build_application(str(path), weights, size, classes)
        return model, infer_meta(model, meta)
    if weights is not None or classes is not None:
        raise ModelError(f"--model {path}: --weights and --classes go with --model vgg16 or mobilenet_v2")
    size = size or 128
    p = Path(path)
    if p.is_dir():
        if not (p / "saved_model.pb").is_file():
            raise ModelError(f"{p}: a directory but not a SavedModel (no saved_model.pb)")
        model = _savedmodel(p, size)
        meta = {"form": "savedmodel"}
    elif not p.is_file():
        raise ModelError(f"{p}: model file not found")
    elif p.suffix == ".keras":
        model, meta = load_keras(p)
        meta = {**read_meta(p), "form": "keras"}
    elif p.suffix == ".h5":
        if _h5_is_full_model(p):
            import keras

            try:
                model = keras.models.load_model(str(p), compile=False)
            except Exception as e:  # noqa: BLE001
                raise ModelError(f"{p}: cannot load this .h5 model ({first_line(e)})") from None
            meta = {"form": "h5"}
        else:
            model = _weights_only(p, arch, size, labels, task)
            meta = {"form": "h5-weights", "arch": arch}
    else:
        raise ModelError(f"{p}: unknown model format (expected .keras, .h5 or a SavedModel directory)")
    n = int(model.outputs[0].shape[-1])
    if "labels" not in meta and labels and len(labels) == n:
        meta["labels"] = list(labels)
        meta.setdefault("task", task)
    return model, infer_meta(model, meta)


def resolve_preprocess(given: str | None, own: str, fixed: bool, model: str | Path) -> str:
    """``--preprocess`` against the model's own mode: a bundle's is fixed (its TFLite files and the Pi
    use it), so a different one is one ModelError line; other forms take the one given."""
    from edge.preprocess import check_mode

    if given is None:
        return own
    try:
        check_mode(given)
    except ValueError as e:
        raise ModelError(str(e)) from None
    if fixed and given != own:
        raise ModelError(
            f"--preprocess {given}: bundle {model} was exported for {own!r} (its manifest's "
            "input.preprocessing); re-export it with --preprocess to change it"
        )
    return given


def add_preprocess_args(
    p: argparse.ArgumentParser, weights: bool = True, default: str = "the model's own, else seam"
) -> None:
    """``--preprocess`` (and ``--weights``/``--classes`` for vgg16/mobilenet_v2), shared by the commands;
    ``default`` says in the help what the command does without it."""
    from edge.preprocess import PREPROCESS_MODES

    p.add_argument(
        "--preprocess",
        choices=tuple(PREPROCESS_MODES),
        default=None,
        help="model input: seam (per-image standardisation) or keras.applications' preprocess_input of "
        f"vgg16/mobilenet_v2/resnet50, none = RGB 0..255 (default: {default})",
    )
    if weights:
        p.add_argument(
            "--weights",
            metavar="FILE.h5",
            help="with --model vgg16|mobilenet_v2: local weights instead of Keras' cached ImageNet ones",
        )
        p.add_argument(
            "--classes",
            metavar="FILE.json",
            help="class names (Keras' imagenet_class_index.json layout); default: Keras' cache if present",
        )


# --- one predictor for the three model forms ---------------------------------------------------


@dataclass
class Predictor:
    """``predict(x[N, H, W, 3]) -> [N, n]`` plus what the model knows about itself."""

    kind: str  # keras | tflite | bundle
    path: Path
    height: int
    width: int
    n_outputs: int
    predict: Callable[[np.ndarray], np.ndarray]
    labels: tuple[str, ...] | None = None
    task: str | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    preprocess: str = "seam"  # the edge.preprocess mode its inputs need (a bundle's: its manifest's)
    tta: str = "none"  # a bundle exported with --tta: its classifiers average flipped views already


def keras_predict_fn(model, batch: int = 64) -> Callable[[np.ndarray], np.ndarray]:
    def predict(x: np.ndarray) -> np.ndarray:
        outs = [np.asarray(model(x[i : i + batch], training=False), np.float32) for i in range(0, len(x), batch)]
        return np.concatenate(outs) if outs else np.zeros((0, int(model.outputs[0].shape[-1])), np.float32)

    return predict


def tflite_predict_fn(tfl, n: int) -> Callable[[np.ndarray], np.ndarray]:
    shape = (1, n)

    def predict(x: np.ndarray) -> np.ndarray:
        return (
            np.stack([tfl.output_with_shape(tfl.run(xi), shape).reshape(-1) for xi in x])
            if len(x)
            else np.zeros((0, n), np.float32)
        )

    return predict


def load_predictor(
    path: str | Path,
    threads: int = 2,
    role: str | None = None,
    arch: str | None = None,
    size: int | None = 128,
    labels: Sequence[str] | None = None,
    task: str = "multilabel",
    weights: str | Path | None = None,
    classes: str | Path | None = None,
) -> Predictor:
    """A bundle dir, a ``.tflite``, a ``.keras`` / ``.h5`` file (``arch`` for weights-only), a SavedModel
    or an application name (``weights``, ``classes``: ``convert.applications``)."""
    from edge.classify import Classifier, TFLiteModel

    from .applications import is_application

    p = Path(path)
    if p.is_dir() and (p / "manifest.json").is_file():
        clf = Classifier(p, role=role, threads=threads)
        n = len(clf.labels)
        return Predictor(
            "bundle",
            p,
            clf.height,
            clf.width,
            n,
            tflite_predict_fn(clf.model, n),
            clf.labels,
            clf.bundle.task,
            dict(clf.bundle.thresholds),
            clf.bundle.preprocess_mode,
            str((clf.bundle.manifest.get("tta") or {}).get("mode", "none")),
        )
    if p.suffix == ".tflite":
        tfl = TFLiteModel(p, threads)
        shapes = [tuple(int(v) for v in d["shape"]) for d in tfl.outputs]
        two_d = [s for s in shapes if len(s) == 2]
        if not two_d:
            raise ModelError(f"{p}: no [1, n] output among {shapes}")
        n = two_d[0][1]
        _, h, w, _ = tfl.input_shape
        return Predictor("tflite", p, h, w, n, tflite_predict_fn(tfl, n))
    if is_application(path) or p.is_dir() or p.suffix in (".keras", ".h5"):
        model, meta = load_model_any(path, arch, size, list(labels) if labels else None, task, weights, classes)
        return Predictor(
            "keras",
            p,
            int(meta["height"]),
            int(meta["width"]),
            len(meta["labels"]),
            keras_predict_fn(model),
            tuple(meta["labels"]),
            meta["task"],
            preprocess=str(meta.get("preprocess") or "seam"),
        )
    raise ModelError(f"{p}: not a model (expected a bundle dir, .tflite, .keras or .h5)")
