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
                # other models: edge.preprocess.PREPROCESS_MODES (an ImageNet VGG16:
                # "bgr-area-caffe-imagenet-v1"); an input without these keys is a seam model
      "files": {"<role>": {"path": "classifier_int8.tflite", "sha256": "..."}, ...},
      "classifier": "classifier_int8",         # default role the daemon runs
      "gradcam": {"layer": "...", "feature_shape": [h, w, c],
                  "explainer": "explainer", "head": "head"},   # roles in "files"
      "thresholds": {"good": 0.5, ...},
      "metrics": {...}, "parity": {...}, "created": "...", "producer": "seam-qc 0.1.0",
      "version": "20260101T120000Z",           # optional: what status, stats and alerts report
      "selfcheck": {"role": "selfcheck", "tolerance": 0.05, "count": 4},  # optional, edge.selfcheck
      "tta": {"mode": "lr", "views": 2}        # optional, informational: flipped views averaged
                                               # inside the classifiers (convert export --tta)
    }

A detached Ed25519 signature over the manifest's bytes may sit beside it (``manifest.sig``,
``edge.signing``).

Roles written by ``convert export``: ``classifier_int8``, ``classifier_fp32`` (TFLite, fixed
batch 1), ``explainer`` (float TFLite: predictions + feature map), ``head`` (``.npz`` with the
head's weights, for the numpy Grad-CAM gradient), ``keras`` (the full model, for the TF path).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError
from .preprocess import CHANNEL_ORDER, PREPROCESS_ID, PREPROCESS_MODES, check_mode, mode_for_id

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TASKS = ("multilabel", "multiclass")
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KiB; a huge one is the wrong file
MAX_SIDE = 4096  # input height/width: larger is a typo that would allocate gigabytes per frame
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


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
    preprocess_mode: str = "seam"  # the edge.preprocess mode name of ``preprocessing``
    manifest_sha256: str = ""  # of the manifest's bytes: it pins every file, so it names the bundle
    signed_by: str | None = None  # key id of a verified signature (edge.signing), when keys were given

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
    def version(self) -> str:
        """The manifest's ``version`` (``convert export --model-version``, default its UTC time),
        else the first 12 hex digits of the manifest's sha256 (bundles exported before versions)."""
        v = self.manifest.get("version")
        if _name(v):
            return str(v)[:100]
        return self.manifest_sha256[:12]

    @property
    def gradcam(self) -> dict[str, Any]:
        return dict(self.manifest.get("gradcam") or {})


def _need(manifest: dict[str, Any], key: str, where: Path) -> Any:
    if key not in manifest:
        raise ModelError(f"{where}: missing key {key!r}")
    return manifest[key]


def _show(value: Any, limit: int = 60) -> str:
    """``repr`` cut short: an error line names the value without flooding the journal."""
    r = repr(value)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(r)} characters)"


def _name(value: Any) -> bool:
    """A usable name (label, role, file path): a non-empty string without control characters."""
    return isinstance(value, str) and bool(value) and not _CONTROL_RE.search(value)


def _number(value: Any) -> bool:
    """A real, finite JSON number (``true`` is not 1, NaN is not a threshold)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice in one object")
        out[k] = v
    return out


def _read_raw(mpath: Path) -> bytes:
    try:
        with open(mpath, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        why = " ".join(str(e.strerror or e).split())[:160]
        raise ModelError(f"{mpath}: not valid JSON ({why})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ModelError(f"{mpath}: not valid JSON (larger than {MAX_MANIFEST_BYTES >> 20} MiB)")
    return raw


def _read_manifest(mpath: Path, raw: bytes | None = None) -> dict[str, Any]:
    """Parse the manifest: any I/O, encoding, syntax, size or nesting problem is one ModelError line."""
    if raw is None:
        raw = _read_raw(mpath)
    try:
        manifest = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as e:
        why = " ".join(str(e).split())[:160]
        raise ModelError(f"{mpath}: not valid JSON ({why})") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"{mpath}: expected a JSON object")
    return manifest


def _check_gradcam(manifest: dict[str, Any], files: dict[str, Any], n_labels: int, mpath: Path) -> None:
    """The Grad-CAM section names roles in ``files`` and carries numbers where numbers belong."""
    gc = manifest.get("gradcam")
    if gc is None:
        return
    if not isinstance(gc, dict):
        raise ModelError(f"{mpath}: gradcam: {_show(gc)} must be an object")
    for key in ("explainer", "head"):
        role = gc.get(key)
        if role is not None and not (_name(role) and role in files):
            raise ModelError(f"{mpath}: gradcam.{key}: {_show(role)} is not a role in files")
    if "layer" in gc and not isinstance(gc["layer"], str):
        raise ModelError(f"{mpath}: gradcam.layer: {_show(gc['layer'])} must be a string")
    shape = gc.get("feature_shape")
    if shape is not None and not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE for v in shape)
    ):
        raise ModelError(f"{mpath}: gradcam.feature_shape: {_show(shape)} must be [height, width, channels]")
    refs = gc.get("peak_ref")
    if refs is not None and not (
        isinstance(refs, list) and len(refs) == n_labels and all(r is None or (_number(r) and r >= 0) for r in refs)
    ):
        raise ModelError(f"{mpath}: gradcam.peak_ref: {_show(refs)} must list one number >= 0 (or null) per label")


def load_bundle(root: str | Path, verify: bool = True, trusted_keys: list[Any] | None = None) -> Bundle:
    """Read and check ``root/manifest.json``; with ``verify`` every file's sha256 is checked.

    With ``trusted_keys`` (``edge.signing.TrustedKey``), the manifest's exact bytes must carry a
    valid signature by one of them (``edge.signing.verify``) before anything else is believed.
    """
    root = Path(root)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise ModelError(f"{root}: model bundle directory not found")
    if not mpath.is_file():
        raise ModelError(f"{mpath}: not found (is {root} a seam-qc model bundle?)")
    raw = _read_raw(mpath)
    signed_by = None
    if trusted_keys:
        from .signing import verify as verify_signature

        signed_by = verify_signature(root, raw, trusted_keys)
    manifest = _read_manifest(mpath, raw)
    version = _need(manifest, "format_version", mpath)
    if type(version) is not int or version != FORMAT_VERSION:
        raise ModelError(f"{mpath}: format_version {_show(version)} is not supported (expected {FORMAT_VERSION})")
    task = _need(manifest, "task", mpath)
    if not isinstance(task, str) or task not in TASKS:
        raise ModelError(f"{mpath}: task {_show(task)} must be one of {', '.join(TASKS)}")
    labels = _need(manifest, "labels", mpath)
    if not isinstance(labels, list) or not labels or not all(_name(x) for x in labels):
        raise ModelError(f"{mpath}: labels {_show(labels)} must be a non-empty list of names")
    for i, lab in enumerate(labels):
        if lab in labels[:i]:  # scores are matched to labels by position: a repeat mislabels them
            raise ModelError(f"{mpath}: labels: {lab!r} is listed twice ({_show(labels)})")
    inp = _need(manifest, "input", mpath)
    if not isinstance(inp, dict):
        raise ModelError(f"{mpath}: input {_show(inp)} must be an object with height and width")
    for side in ("height", "width"):
        v = inp.get(side)
        if not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE):
            raise ModelError(f"{mpath}: input.{side}: {_show(v)} must be a whole number of pixels (1 to {MAX_SIDE})")
    height, width = inp["height"], inp["width"]
    prep = inp.get("preprocessing", PREPROCESS_ID)
    mode = mode_for_id(prep, inp.get("channel_order", PREPROCESS_MODES.get(_mode_name(prep) or "", ("", ""))[1]))
    order = inp.get("channel_order", PREPROCESS_MODES[mode][1] if mode else CHANNEL_ORDER)
    if mode is None:
        known = ", ".join(f"{pid!r} ({o})" for pid, o in PREPROCESS_MODES.values())
        raise ModelError(
            f"{mpath}: input.preprocessing {_show(prep)} / channel_order {_show(order)} is not one this "
            f"runtime knows ({known})"
        )
    files = _need(manifest, "files", mpath)
    if not isinstance(files, dict) or not files:
        raise ModelError(f"{mpath}: files must be a non-empty object")
    for role, entry in files.items():
        if not isinstance(entry, dict) or "path" not in entry or "sha256" not in entry:
            raise ModelError(f"{mpath}: files.{role} needs 'path' and 'sha256'")
        if not _name(entry["path"]):
            raise ModelError(f"{mpath}: files.{role}.path: {_show(entry['path'])} must be a file name in the bundle")
        if not isinstance(entry["sha256"], str):
            raise ModelError(f"{mpath}: files.{role}.sha256: {_show(entry['sha256'])} must be a hex string")
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
    given = manifest.get("thresholds") or {}
    if not isinstance(given, dict):
        raise ModelError(f"{mpath}: thresholds: {_show(given)} must be an object of label: number")
    for lab, t in given.items():
        if lab not in labels:
            raise ModelError(f"{mpath}: thresholds.{lab}: not a label of this model")
        # NaN or 7.0 would pass silently and the label would never alert
        if not _number(t) or not 0.0 <= t <= 1.0:
            raise ModelError(f"{mpath}: thresholds.{lab}: {_show(t)} must be a number between 0 and 1")
        thresholds[lab] = float(t)
    classifier = manifest.get("classifier", "classifier_int8")
    if not _name(classifier) or classifier not in files:
        raise ModelError(f"{mpath}: classifier {_show(classifier)} is not a role in files")
    _check_gradcam(manifest, files, len(labels), mpath)
    return Bundle(
        root=root,
        manifest=manifest,
        name=str(manifest.get("name", root.name))[:200],
        task=task,
        labels=tuple(labels),
        height=height,
        width=width,
        channel_order=order,
        preprocessing=prep,
        thresholds=thresholds,
        files=files,
        preprocess_mode=mode,
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        signed_by=signed_by,
    )


def _mode_name(preprocessing: Any) -> str | None:
    """The mode whose manifest id is ``preprocessing`` (for a manifest without channel_order)."""
    return next((name for name, (pid, _) in PREPROCESS_MODES.items() if pid == preprocessing), None)


def input_section(preprocess: str = "seam") -> dict[str, str]:
    """``manifest.input``'s preprocessing keys for a ``--preprocess`` mode (ValueError if unknown)."""
    pid, order = PREPROCESS_MODES[check_mode(preprocess)]
    return {"channel_order": order, "preprocessing": pid}


def write_manifest(root: str | Path, manifest: dict[str, Any], files: dict[str, str]) -> Path:
    """Write ``manifest.json`` with ``files`` (role → path relative to root) hashed now.

    Written to a temporary name and renamed, so a crash never leaves half a manifest.
    """
    root = Path(root)
    out = dict(manifest)
    out["format_version"] = FORMAT_VERSION
    out.setdefault("input", {})
    given = dict(out["input"])
    order = PREPROCESS_MODES[_mode_name(given.get("preprocessing", PREPROCESS_ID)) or "seam"][1]
    out["input"] = {"channels": 3, "channel_order": order, "preprocessing": PREPROCESS_ID, **given}
    out["files"] = {role: {"path": rel, "sha256": sha256_file(root / rel)} for role, rel in files.items()}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n")
    tmp.replace(root / MANIFEST)
    return root / MANIFEST
