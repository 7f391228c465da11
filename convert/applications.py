"""ImageNet models from ``keras.applications`` (``--model vgg16|mobilenet_v2``), as the seeds used them.

The seeds' Grad-CAM tutorials explain an ImageNet VGG16 (at ``block5_conv3``) and MobileNetV2 (at
``Conv_1``). ``build_application`` builds one with its weights from one of two places:

* ``weights=None``: Keras' own ImageNet weights (``weights="imagenet"``), taken from Keras' cache
  (``$KERAS_HOME/models``, default ``~/.keras/models``) or downloaded into it once (internet);
* ``weights=FILE.h5``: a local file, for a workstation or Pi without internet: Keras' ImageNet file
  (``vgg16_weights_tf_dim_ordering_tf_kernels.h5``), a ``model.save("x.h5")`` or a
  ``model.save_weights("x.weights.h5")`` of the same architecture. The class count, VGG16's input
  size (its ``fc1`` fixes it) and MobileNetV2's width ``alpha`` are read from the file.

Class names: ``classes=FILE.json`` (Keras' ``imagenet_class_index.json`` layout
``{"0": ["n01440764", "tench"], ...}``, or ``{"0": "tench"}``, or a plain list), else Keras' cached
``imagenet_class_index.json`` when the model has its 1,000 classes, else ``class_0`` …. A name
that repeats (ImageNet has two ``crane``s and two ``maillot``s) gets its WordNet id or index added,
since a bundle's labels must be unique. Each model is preprocessed as ``keras.applications``'
``preprocess_input`` for it (``edge.preprocess`` modes ``vgg16`` / ``mobilenet_v2``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError

# name → (keras.applications constructor, default input side, edge.preprocess mode)
APPLICATIONS: dict[str, tuple[str, int, str]] = {
    "vgg16": ("VGG16", 224, "vgg16"),
    "mobilenet_v2": ("MobileNetV2", 224, "mobilenet_v2"),
}
MOBILENET_V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
CLASS_INDEX = "imagenet_class_index.json"
IMAGENET_CLASSES = 1000


def is_application(model: str | Path) -> bool:
    """True when ``--model`` names a ``keras.applications`` model rather than an existing path."""
    return str(model) in APPLICATIONS and not Path(model).exists()


def keras_cache() -> Path:
    """Keras' cache folder for applications' files (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def read_class_names(path: str | Path, n: int | None = None) -> list[str]:
    """Class names from a JSON class index (module doc), made unique; ``n``: the count it must have."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise ModelError(f"--classes {p}: cannot read a JSON class index ({why})") from None
    wnids: list[str | None]
    if isinstance(data, list):
        names, wnids = list(data), [None] * len(data)
    elif isinstance(data, dict):
        try:
            keys = sorted(data, key=int)
        except ValueError:
            raise ModelError(
                f"--classes {p}: keys must be class indices 0, 1, … (found {next(iter(data))!r})"
            ) from None
        if [int(k) for k in keys] != list(range(len(keys))):
            raise ModelError(f"--classes {p}: class indices must run 0 … {len(keys) - 1} without gaps")
        vals = [data[k] for k in keys]
        names = [v[-1] if isinstance(v, list) and v else v for v in vals]
        wnids = [v[0] if isinstance(v, list) and len(v) > 1 else None for v in vals]
    else:
        raise ModelError(f"--classes {p}: expected a JSON object {{index: [id, name]}} or a list of names")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or any(ord(c) < 32 for c in name):
            raise ModelError(f"--classes {p}: class {i}: {name!r} is not a usable name")
    if n is not None and len(names) != n:
        raise ModelError(f"--classes {p}: {len(names)} class names, but the model has {n} outputs")
    return unique_names([str(s) for s in names], wnids)


def unique_names(names: list[str], wnids: list[str | None] | None = None) -> list[str]:
    """Names with every repeat told apart by its id (or index), so they can be a bundle's labels."""
    seen: dict[str, int] = {}
    for s in names:
        seen[s] = seen.get(s, 0) + 1
    out = []
    for i, s in enumerate(names):
        if seen[s] > 1:
            tag = (wnids[i] if wnids and wnids[i] else None) or str(i)
            s = f"{s}_{tag}"
        out.append(s)
    return out


def default_class_names(n: int) -> tuple[list[str], str]:
    """(names, where from): Keras' cached ImageNet index for 1,000 classes, else ``class_<i>``."""
    cached = keras_cache() / CLASS_INDEX
    if n == IMAGENET_CLASSES and cached.is_file():
        return read_class_names(cached, n), str(cached)
    return [f"class_{i}" for i in range(n)], "generic"


def _h5_shapes(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """(dataset path, shape) of every array in an HDF5 weights/model file, in file order."""
    import h5py

    out: list[tuple[str, tuple[int, ...]]] = []
    try:
        with h5py.File(str(path), "r") as f:
            f.visititems(lambda k, v: out.append((k, tuple(v.shape))) if isinstance(v, h5py.Dataset) else None)
    except OSError as e:
        raise ModelError(f"--weights {path}: not an HDF5 weights file ({str(e).splitlines()[0][:160]})") from None
    return out


def _make_divisible(v: float, divisor: int = 8) -> int:
    """MobileNetV2's channel rounding (keras.applications.mobilenet_v2._make_divisible)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def infer_from_weights(name: str, path: Path) -> dict[str, Any]:
    """What the file fixes: ``classes``; VGG16's input ``size``; MobileNetV2's ``alpha``."""
    shapes = [s for _, s in _h5_shapes(path)]
    dense = [s for s in shapes if len(s) == 2]
    if not dense:
        raise ModelError(f"--weights {path}: no Dense kernel found (a {name} with its classifier top is needed)")
    ins, outs = {s[0] for s in dense}, {s[1] for s in dense}
    last = [s for s in dense if s[1] not in ins] or dense[-1:]
    first = [s for s in dense if s[0] not in outs] or dense[:1]
    info: dict[str, Any] = {"classes": int(last[-1][1])}
    if name == "vgg16":
        side = (first[0][0] / 512) ** 0.5
        if side != int(side) or side < 1:
            raise ModelError(f"--weights {path}: fc1 kernel {list(first[0])} is not a VGG16's (512·s² inputs)")
        info["size"] = int(side) * 32
    else:
        stem = [s for s in shapes if len(s) == 4 and s[:3] == (3, 3, 3)]
        outs4 = {s[-1] for s in shapes if len(s) == 4 and s[:2] == (1, 1)}
        fits = [
            a
            for a in MOBILENET_V2_ALPHAS
            if stem and stem[0][-1] == _make_divisible(32 * a) and _make_divisible(320 * a) in outs4
        ]
        if not fits:
            raise ModelError(f"--weights {path}: not a MobileNetV2 weights file (no width alpha fits its shapes)")
        info["alpha"] = fits[-1]
    return info


def build_application(
    name: str,
    weights: str | Path | None = None,
    size: int | None = None,
    classes: str | Path | None = None,
) -> tuple[Any, dict[str, Any]]:
    """A ``keras.applications`` model with its weights → ``(model, meta)`` (module doc).

    ``meta`` carries labels, task ``multiclass``, the input size and the ``preprocess`` mode.
    Every user mistake (unknown name, missing or foreign file, wrong size) is one ModelError line.
    """
    import keras

    if name not in APPLICATIONS:
        raise ModelError(f"--model {name!r}: not a known application (choose {', '.join(APPLICATIONS)})")
    ctor_name, default_side, mode = APPLICATIONS[name]
    ctor = getattr(keras.applications, ctor_name)
    kwargs: dict[str, Any] = {}
    if weights is None:
        n, side, source = IMAGENET_CLASSES, int(size or default_side), "imagenet"
        if name == "vgg16" and side != 224:
            raise ModelError(f"--size {side}: Keras' ImageNet VGG16 takes 224×224 (its fc1 fixes the size)")
    else:
        wpath = Path(weights)
        if not wpath.is_file():
            raise ModelError(f"--weights {wpath}: file not found")
        info = infer_from_weights(name, wpath)
        n, source = info["classes"], str(wpath)
        side = int(info.get("size") or size or default_side)
        if size and "size" in info and int(size) != side:
            raise ModelError(f"--size {size}: the VGG16 in --weights {wpath} takes {side}×{side} (its fc1 fixes it)")
        if "alpha" in info:
            kwargs["alpha"] = info["alpha"]
    if classes is not None:
        labels, names_from = read_class_names(classes, n), str(classes)
    else:
        labels, names_from = default_class_names(n)
    try:
        model = ctor(weights=source, input_shape=(side, side, 3), classes=n, **kwargs)
    except Exception as e:  # noqa: BLE001 - Keras raises ValueError/OSError/HTTP errors for bad files or no net
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        hint = "; without internet pass --weights FILE.h5" if weights is None else ""
        raise ModelError(f"{name}: cannot load weights {source!r} ({why}){hint}") from None
    meta = {
        "form": "application",
        "arch": name,
        "labels": labels,
        "task": "multiclass",
        "height": side,
        "width": side,
        "preprocess": mode,
        "weights": source,
        "classes_from": names_from,
        **({"alpha": kwargs["alpha"]} if "alpha" in kwargs else {}),
    }
    return model, meta


def top_classes(scores: np.ndarray, labels: list[str], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` best (label, score) pairs, best first (the seeds' ``decode_predictions``)."""
    idx = np.argsort(-np.asarray(scores, np.float64).reshape(-1), kind="stable")[:k]
    return [(labels[int(i)], float(np.asarray(scores).reshape(-1)[int(i)])) for i in idx]
