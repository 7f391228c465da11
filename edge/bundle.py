"""The model bundle: a directory with ``manifest.json`` and the files it lists, each with its sha256.

The manifest is the contract between the workstation (``convert export`` writes it) and the Pi
(``edge`` reads it): labels and task, input size, channel order and preprocessing id, the
files (TFLite classifiers, the float explainer for Grad-CAM, the ``.keras`` model), the
Grad-CAM layer and head, calibrated thresholds and the metrics it shipped with.

Layout of ``manifest.json`` (format_version 1)::

    {
      "format_version": 1,
      "name": "seam-default",
      "task": "multilabel" | "multiclass",
      "labels": ["good", "error", "break", "length"],
      "input": {"height": 128, "width": 128, "channels": 3,
                "channel_order": "BGR", "preprocessing": "bgr-area-perimage-std-v1"},
      "files": {"<role>": {"path": "classifier_int8.tflite", "sha256": "..."}, ...},
      "classifier": "classifier_int8",         # default role the daemon runs
      "gradcam": {"layer": "...", "feature_shape": [h, w, c],
                  "explainer": "explainer", "head": "head"},   # roles in "files"
      "thresholds": {"good": 0.5, ...},
      "metrics": {...}, "parity": {...}, "created": "...", "producer": "seam-qc 0.1.0"
    }

Roles written by ``convert export``: ``classifier_int8``, ``classifier_fp32`` (TFLite, fixed
batch 1), ``explainer`` (float TFLite: predictions + feature map), ``head`` (``.npz`` with the
head's weights, for the numpy Grad-CAM gradient), ``keras`` (the full model, for the TF path).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError
from .preprocess import CHANNEL_ORDER, PREPROCESS_ID

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TASKS = ("multilabel", "multiclass")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle. ``path(role)`` gives the absolute file path of a role."""

    root: Path
    manifest: dict[str, Any]
    name: str
    task: str
    labels: tuple[str, ...]
    height: int
    width: int
    channel_order: str
    preprocessing: str
    thresholds: dict[str, float]
    files: dict[str, dict[str, str]] = field(repr=False)

    def has(self, role: str) -> bool:
        return role in self.files

    def path(self, role: str) -> Path:
        if role not in self.files:
            raise ModelError(f"{self.root / MANIFEST}: files: no {role!r} entry (has: {', '.join(self.files)})")
        return self.root / self.files[role]["path"]

    def sha256(self, role: str | None = None) -> str:
        return self.files[role or self.classifier_role]["sha256"]

    @property
    def classifier_role(self) -> str:
        return str(self.manifest.get("classifier", "classifier_int8"))

    @property
    def gradcam(self) -> dict[str, Any]:
        return dict(self.manifest.get("gradcam") or {})


def _need(manifest: dict, key: str, where: Path) -> Any:
    if key not in manifest:
        raise ModelError(f"{where}: missing key {key!r}")
    return manifest[key]


def load_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Read and check ``root/manifest.json``; with ``verify`` every file's sha256 is checked."""
    root = Path(root)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise ModelError(f"{root}: model bundle directory not found")
    if not mpath.is_file():
        raise ModelError(f"{mpath}: not found (is {root} a seam-qc model bundle?)")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"{mpath}: expected a JSON object")
    version = _need(manifest, "format_version", mpath)
    if version != FORMAT_VERSION:
        raise ModelError(f"{mpath}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    task = _need(manifest, "task", mpath)
    if task not in TASKS:
        raise ModelError(f"{mpath}: task {task!r} must be one of {', '.join(TASKS)}")
    labels = _need(manifest, "labels", mpath)
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"{mpath}: labels {labels!r} must be a non-empty list of names")
    inp = _need(manifest, "input", mpath)
    try:
        height, width = int(inp["height"]), int(inp["width"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{mpath}: input {inp!r} needs integer height and width") from None
    order = inp.get("channel_order", CHANNEL_ORDER)
    prep = inp.get("preprocessing", PREPROCESS_ID)
    if order != CHANNEL_ORDER or prep != PREPROCESS_ID:
        raise ModelError(
            f"{mpath}: input.preprocessing {prep!r} / channel_order {order!r} is not this runtime's "
            f"({PREPROCESS_ID!r}, {CHANNEL_ORDER!r})"
        )
    files = _need(manifest, "files", mpath)
    if not isinstance(files, dict) or not files:
        raise ModelError(f"{mpath}: files must be a non-empty object")
    for role, entry in files.items():
        if not isinstance(entry, dict) or "path" not in entry or "sha256" not in entry:
            raise ModelError(f"{mpath}: files.{role} needs 'path' and 'sha256'")
        rel = Path(entry["path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise ModelError(f"{mpath}: files.{role}.path {entry['path']!r} must stay inside the bundle")
        fpath = root / rel
        if not fpath.is_file():
            raise ModelError(f"{fpath}: missing (listed as files.{role} in {mpath})")
        if verify:
            actual = sha256_file(fpath)
            if actual != entry["sha256"]:
                raise ModelError(
                    f"{fpath}: sha256 {actual[:12]}… does not match files.{role}.sha256 "
                    f"{str(entry['sha256'])[:12]}… in {mpath} (corrupt or replaced file)"
                )
    thresholds = {lab: 0.5 for lab in labels}
    for lab, t in (manifest.get("thresholds") or {}).items():
        if lab not in labels:
            raise ModelError(f"{mpath}: thresholds.{lab}: not a label of this model")
        thresholds[lab] = float(t)
    classifier = manifest.get("classifier", "classifier_int8")
    if classifier not in files:
        raise ModelError(f"{mpath}: classifier {classifier!r} is not a role in files")
    return Bundle(
        root=root,
        manifest=manifest,
        name=str(manifest.get("name", root.name)),
        task=task,
        labels=tuple(labels),
        height=height,
        width=width,
        channel_order=order,
        preprocessing=prep,
        thresholds=thresholds,
        files=files,
    )


def write_manifest(root: str | Path, manifest: dict[str, Any], files: dict[str, str]) -> Path:
    """Write ``manifest.json`` with ``files`` (role → path relative to root) hashed now.

    Written to a temporary name and renamed, so a crash never leaves half a manifest.
    """
    root = Path(root)
    out = dict(manifest)
    out["format_version"] = FORMAT_VERSION
    out.setdefault("input", {})
    out["input"] = {"channels": 3, "channel_order": CHANNEL_ORDER, "preprocessing": PREPROCESS_ID, **out["input"]}
    out["files"] = {role: {"path": rel, "sha256": sha256_file(root / rel)} for role, rel in files.items()}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n")
    tmp.replace(root / MANIFEST)
    return root / MANIFEST
