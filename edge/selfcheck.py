"""The bundle's self-check: a few embedded inputs with the scores the exported classifiers gave them.

``convert export`` writes ``selfcheck.npz`` (role ``selfcheck`` in ``files``, so the manifest pins
its sha256) and a ``selfcheck`` section in the manifest::

    "selfcheck": {"role": "selfcheck", "tolerance": 0.05, "count": 4}

The file holds ``images``: uint8 ``[n, H, W, 3]``, BGR like camera frames, already at the
model's input size (real calibration images, so the scores spread over the range), and one
``scores__<role>``: float32 ``[n, n_labels]`` per classifier role, the probabilities that role's
``.tflite`` gave them at export through ``edge.preprocess`` and ``edge.classify``: the Pi's path.

The loader (``run``) feeds the images through the interpreter it is about to use and compares the
largest absolute difference with ``tolerance`` (capped at ``MAX_TOLERANCE``). The check catches a
runtime that computes differently (another LiteRT, a broken delegate), a classifier file that is
not the one the scores came from, and a bundle assembled from parts of two exports; sha256 alone
proves only that the files are the ones listed.

Why 0.05 by default: the same file on the same runtime reproduces the scores exactly; XNNPACK's
int8 kernels on aarch64 and x86 round differently, a quantisation step (1/256) or two, and a
different model is off by much more.

Bundles exported before the self-check existed have no section: the loader accepts them with one
warning (README, "Hot reload"), so the shipped bundle keeps working until it is re-exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError

ROLE = "selfcheck"
FILE = "selfcheck.npz"
DEFAULT_TOLERANCE = 0.05
MAX_TOLERANCE = 0.2  # a looser tolerance would pass another model: the manifest cannot ask for it
MAX_IMAGES = 64


@dataclass(frozen=True)
class Result:
    """What a self-check found: ``max_abs_diff`` over ``count`` images (None: the bundle has none)."""

    count: int
    max_abs_diff: float | None
    tolerance: float | None

    def describe(self) -> str:
        if self.max_abs_diff is None:
            return "no self-check in this bundle"
        return f"self-check {self.count} images, max |Δ| {self.max_abs_diff:.2g} <= {self.tolerance:g}"


def write(path: str | Path, images: np.ndarray, scores: dict[str, np.ndarray]) -> None:
    """Write ``selfcheck.npz``: ``images`` uint8 [n, H, W, 3] and ``scores__<role>`` per role."""
    arrays: dict[str, Any] = {"images": np.ascontiguousarray(images, np.uint8)}
    for role, s in scores.items():
        arrays[f"scores__{role}"] = np.asarray(s, np.float32)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def section(count: int, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """The manifest's ``selfcheck`` section for a file written by ``write``."""
    return {"role": ROLE, "tolerance": float(tolerance), "count": int(count)}


def _load(bundle: Any, role: str) -> tuple[np.ndarray, np.ndarray, float, Path]:
    """The images, the expected scores of ``role`` and the tolerance; any problem is one ModelError."""
    mpath = bundle.root / "manifest.json"
    sc = bundle.manifest.get("selfcheck")
    if not isinstance(sc, dict):
        raise ModelError(f"{mpath}: selfcheck: must be an object with role and tolerance")
    file_role = sc.get("role", ROLE)
    if not isinstance(file_role, str) or not bundle.has(file_role):
        raise ModelError(f"{mpath}: selfcheck.role: {file_role!r} is not a role in files")
    tol = sc.get("tolerance", DEFAULT_TOLERANCE)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0.0 <= float(tol) <= MAX_TOLERANCE:
        raise ModelError(f"{mpath}: selfcheck.tolerance: {tol!r} must be a number from 0 to {MAX_TOLERANCE}")
    path = bundle.path(file_role)
    key = f"scores__{role}"
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files or key not in z.files:
                raise ModelError(f"{path}: self-check has no 'images' or no {key!r} (has {', '.join(z.files)})")
            images, expected = z["images"], z[key]
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken npz raises zipfile/OSError/ValueError
        raise ModelError(f"{path}: not a readable self-check file ({type(e).__name__}: {str(e)[:120]})") from None
    n = images.shape[0] if images.ndim == 4 else -1
    if images.dtype != np.uint8 or n < 1 or n > MAX_IMAGES or images.shape[1:] != (bundle.height, bundle.width, 3):
        raise ModelError(
            f"{path}: images {list(images.shape)} {images.dtype} must be uint8 "
            f"[1..{MAX_IMAGES}, {bundle.height}, {bundle.width}, 3] (the manifest's input)"
        )
    if expected.shape != (n, len(bundle.labels)) or not np.all(np.isfinite(expected)):
        raise ModelError(f"{path}: {key} {list(expected.shape)} must be [{n}, {len(bundle.labels)}] finite scores")
    return images, expected.astype(np.float32), float(tol), path


def run(bundle: Any, clf: Any) -> Result:
    """Run the bundle's self-check through ``clf`` (an ``edge.classify.Classifier`` of ``bundle``).

    Returns the result; a failure is one ``ModelError`` naming the file, the worst image and label.
    """
    if "selfcheck" not in bundle.manifest:
        return Result(0, None, None)
    images, expected, tol, path = _load(bundle, clf.role)
    got = np.stack([np.asarray(clf.classify(img), np.float32).reshape(-1) for img in images])
    if got.shape != expected.shape:
        raise ModelError(f"{path}: the classifier gives {list(got.shape)} scores, expected {list(expected.shape)}")
    diff = np.abs(got - expected)
    worst = float(diff.max()) if np.all(np.isfinite(got)) else float("inf")
    if not worst <= tol:
        i, j = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(diff), diff, np.inf))), diff.shape)
        raise ModelError(
            f"{path}: self-check failed: {clf.role} gives {bundle.labels[j]} {float(got[i, j]):.4f} on image {i}, "
            f"expected {float(expected[i, j]):.4f} (|Δ| {worst:.3g} > tolerance {tol:g})"
        )
    return Result(len(images), worst, tol)
