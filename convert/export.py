"""``export``: a trained model → the model bundle the Pi runs (ARCHITECTURE.md §5), with a parity check.

Writes, into a temporary directory renamed into place only when everything passed (so a failed
export never leaves half a bundle, and an existing bundle is replaced only with ``--force``).
``--force`` replaces only a seam-qc bundle: a folder whose ``manifest.json`` is one ``export``
wrote and which holds nothing but the files that manifest lists. Any other non-empty folder, a file
or a symbolic link given as ``--out`` is refused before any work, and nothing is deleted. The
replacement is one atomic ``renameat2(RENAME_EXCHANGE)`` where the kernel has it (readers see the
old bundle or the new one, never none), else two renames:

* ``classifier_fp32.tflite`` and ``classifier_int8.tflite`` — fixed batch 1, TFLITE_BUILTINS only
  (``convert.tflite.keras_to_tflite``). int8 is full-integer when that keeps parity with Keras
  on the calibration set (label agreement ≥ 99.5 % at 0.5 and, with ``--valid``, at the calibrated
  thresholds the Pi decides with), dynamic-range int8 otherwise;
* ``explainer.tflite`` + ``head.npz`` — ``convert.explainer.export_explainer`` (float features);
* ``model.keras`` — the full model, for the TF Grad-CAM path;
* ``selfcheck.npz`` — four calibration images with the scores each classifier gave them
  (``edge.selfcheck``), which the Pi re-runs before it uses the bundle;
* ``manifest.json`` (``edge.bundle.write_manifest``: sha256 of every file) with thresholds
  (calibrated on ``--valid`` by per-label accuracy, else 0.5), metrics and ``parity``.

Parity (Keras vs TFLite on the calibration images, same preprocessing): max |Δ probability|
and label agreement, for fp32 and int8. The export fails (non-zero exit, nothing written)
when fp32 max |Δ| > 1e-3 or int8 label agreement < 99 %.

Inputs: ``.keras``; legacy full-model ``.h5``; weights-only ``.h5`` + ``--arch`` (weights
assigned by layer order, every shape checked); Keras 3 ``.weights.h5`` + ``--arch``; a
TensorFlow SavedModel directory (classifiers only: no layers, so no Grad-CAM explainer); an
ImageNet ``vgg16`` / ``mobilenet_v2`` (Keras' cached weights or ``--weights FILE.h5``, class names
from ``--classes``; ``convert.applications``), whose ``--calibration`` is any images (a file, a
folder or a CSV), since its classes are not the data's.

``--preprocess`` (default: the model's own, else ``seam``) is recorded in the manifest
(``input.preprocessing``, ``edge.preprocess.PREPROCESS_MODES``) and used for the calibration and
parity images, so the Pi and the workstation feed the model the same tensor.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime as _dt
import errno
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import edge
from edge.bundle import MANIFEST, write_manifest
from edge.errors import DataError, ModelError

from .data import batches, image_list, load_dataset, read_image
from .loading import (
    add_preprocess_args,
    first_line,
    keras_predict_fn,
    load_model_any,
    resolve_preprocess,
    tflite_predict_fn,
)
from .metrics import calibrate_thresholds, multiclass_metrics, multilabel_metrics
from .models import ARCHS, save_model
from .tflite import TTA_VIEWS

FP32_MAX_DIFF = 1e-3
INT8_MIN_AGREEMENT = 99.0
FULL_INT8_MIN_AGREEMENT = 99.5
#: Below this many ``--valid`` images, calibrated thresholds are noisy: on the held-back fabrics,
#: thresholds calibrated on 10–40 validation stills cost up to 16 points of ``break`` accuracy
#: against the thresholds the model started with (README, "make held-back"). Export says so.
FEW_VALID = 200
SELFCHECK_IMAGES = 4  # edge.selfcheck: embedded inputs with their expected scores
CLASSIFIER_ROLES = ("classifier_int8", "classifier_fp32")


class ParityError(ModelError):
    """TFLite does not reproduce Keras closely enough; nothing was written."""


# --- parity --------------------------------------------------------------------------------------


def decisions(p: np.ndarray, task: str, thresholds: np.ndarray) -> np.ndarray:
    if task == "multiclass":
        return np.argmax(p, 1)
    return p >= thresholds[None, :]


def parity(ref: np.ndarray, got: np.ndarray, task: str, thresholds: np.ndarray) -> dict:
    """max |Δ| of probabilities and label agreement (% of image×label decisions; multiclass: top-1)."""
    a, b = decisions(ref, task, thresholds), decisions(got, task, thresholds)
    return {
        "max_abs_diff": float(np.max(np.abs(ref - got))) if len(ref) else 0.0,
        "mean_abs_diff": float(np.mean(np.abs(ref - got))) if len(ref) else 0.0,
        "label_agreement": 100.0 * float(np.mean(a == b)) if len(ref) else 100.0,
        "image_agreement": 100.0 * float(np.mean(a == b if a.ndim == 1 else np.all(a == b, 1))) if len(ref) else 100.0,
        "images": int(len(ref)),
    }


def _tflite_predict(path: Path, x: np.ndarray, n: int) -> np.ndarray:
    from edge.classify import TFLiteModel

    return tflite_predict_fn(TFLiteModel(path, threads=2), n)(x)


def _not_a_bundle(folder: Path) -> str | None:
    """Why ``folder`` (an existing, non-empty directory) is not a seam-qc bundle; None when it is one."""
    mpath = folder / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (OSError, ValueError) as e:
        return f"{MANIFEST} unreadable ({first_line(e)})"
    if (
        not isinstance(manifest, dict)
        or not str(manifest.get("producer", "")).startswith("seam-qc")
        or "format_version" not in manifest
        or not isinstance(manifest.get("files"), dict)
    ):
        return f"{MANIFEST} was not written by seam-qc export"
    ours = {MANIFEST, MANIFEST + ".tmp"}
    for entry in manifest["files"].values():  # export writes every file at the top of the bundle
        rel = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(rel, str) and len(Path(rel).parts) == 1:
            ours.add(rel)
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in ours or p.is_symlink())
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        return f"it also holds {', '.join(foreign[:5])}{more}, which the bundle does not list"
    return None


def check_out(out: Path, force: bool) -> bool:
    """Refuse an ``--out`` that export must not replace; True when a bundle is there to replace.

    Checked before the (long) conversion and again just before the swap. Raises ``ModelError``.
    """
    if out.is_symlink():
        raise ModelError(f"--out {out}: a symbolic link; give the real folder (nothing was changed)")
    if not out.exists():
        return False
    if not out.is_dir():
        raise ModelError(f"--out {out}: exists and is not a folder; choose another --out (nothing was changed)")
    if not any(out.iterdir()):
        return False  # an empty folder: nothing to lose
    if not force:
        raise ModelError(f"{out}: already exists; pass --force to replace it")
    why = _not_a_bundle(out)
    if why:
        raise ModelError(
            f"--out {out}: not a seam-qc model bundle ({why}); --force replaces only a bundle, "
            "nothing was deleted: choose another --out or empty it yourself"
        )
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the file system or kernel cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replace(tmp: Path, out: Path, force: bool) -> None:
    """Put the verified bundle ``tmp`` at ``out``; a replaced bundle ends up in ``tmp`` (to be deleted)."""
    if not check_out(out, force):  # nothing (or an empty folder) there: one rename
        os.replace(tmp, out)
        return
    if _exchange(tmp, out):
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        old.rename(out)  # put the old bundle back
        raise
    old.rename(tmp)


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest: dict


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _write_selfcheck(tmp: Path, manifest: dict, files: dict[str, str], paths: list[str]) -> None:
    """Embed ``SELFCHECK_IMAGES`` calibration images and each classifier's scores (``edge.selfcheck``).

    The scores come from the written ``.tflite`` files through ``edge.classify`` (the Pi's own path,
    preprocessing included), then the manifest is rewritten with the file and its section.
    """
    import cv2

    from edge import selfcheck
    from edge.bundle import load_bundle
    from edge.classify import Classifier

    bundle = load_bundle(tmp)
    picks = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(SELFCHECK_IMAGES, len(paths))).round()]
    images = np.stack(
        [cv2.resize(read_image(p), (bundle.width, bundle.height), interpolation=cv2.INTER_AREA) for p in picks]
    )
    scores = {}
    for role in CLASSIFIER_ROLES:
        clf = Classifier(bundle, role=role, threads=1)
        scores[role] = np.stack([clf.classify(img) for img in images])
    selfcheck.write(tmp / selfcheck.FILE, images, scores)
    files[selfcheck.ROLE] = selfcheck.FILE
    manifest["selfcheck"] = selfcheck.section(len(images))
    write_manifest(tmp, manifest, files)


def thresholds_of(spec: str | Path, labels: list[str]) -> dict[str, float]:
    """``--thresholds-from BUNDLE|default``: that bundle's thresholds, for a model with its labels
    (a ModelError naming the bundle otherwise)."""
    from edge.bundle import load_bundle

    from .train import DEFAULT_BUNDLE

    path = DEFAULT_BUNDLE if str(spec) == "default" else Path(spec)
    b = load_bundle(path, verify=False)
    if list(b.labels) != list(labels) or b.task != "multilabel":
        raise ModelError(
            f"--thresholds-from {spec}: its labels {list(b.labels)} ({b.task}) are not the model's {list(labels)}"
        )
    return {lab: float(b.thresholds[lab]) for lab in labels}


def _calibrated(task, labels, va, xv, cal, calibration, valid, p_int8, tmp: Path, fixed: dict | None = None):
    """(thresholds, metrics) for the bundle: multilabel thresholds calibrated on ``--valid`` (``va``,
    its preprocessed images ``xv``) with the int8 classifier in ``tmp`` (what the Pi runs), else 0.5
    with metrics on the calibration set; multiclass has no thresholds (metrics on ``--valid``).
    ``fixed`` (``--thresholds-from``): these thresholds, ``--valid`` only measured at them."""
    pv = None if va is None else _tflite_predict(tmp / "classifier_int8.tflite", xv, len(labels))
    if task != "multilabel":
        if pv is None:
            return {}, {}
        return {}, {"int8_valid": multiclass_metrics(va.targets, pv, labels), "data": str(valid)}
    if pv is not None:
        thresholds = dict(fixed) if fixed else calibrate_thresholds(va.targets, pv, labels)
        return thresholds, {"int8_valid": multilabel_metrics(va.targets, pv, labels, thresholds), "data": str(valid)}
    thresholds = dict(fixed) if fixed else {lab: 0.5 for lab in labels}
    if cal is None:
        return thresholds, {}
    cal_metrics = multilabel_metrics(cal.targets, p_int8, labels, thresholds)
    return thresholds, {"int8_calibration": cal_metrics, "data": str(calibration)}


def export_bundle(
    model_path: str | Path,
    calibration: str | Path,
    out: str | Path,
    valid: str | Path | None = None,
    arch: str | None = None,
    size: int | None = 128,
    force: bool = False,
    name: str | None = None,
    max_images: int = 300,
    int8: str = "auto",
    min_int8_agreement: float = INT8_MIN_AGREEMENT,
    preprocess: str | None = None,
    weights: str | Path | None = None,
    classes: str | Path | None = None,
    version: str | None = None,
    tta: str = "none",
    thresholds_from: str | Path | None = None,
) -> ExportResult:
    """Build and verify the bundle in a temp dir, then rename it to ``out``.

    ``min_int8_agreement`` is the parity gate (99 %); only a barely trained test model, whose
    scores all crowd the thresholds, has a reason to lower it. ``preprocess``, ``weights``,
    ``classes``: module doc. ``tta``: test-time flips inside both classifiers
    (``convert.tflite.TTA_VIEWS``); the explainer keeps the one view. ``thresholds_from`` (a bundle,
    or ``default``): its thresholds instead of calibrating on ``valid`` (which is then only measured):
    a fine-tune validated on a few dozen frames calibrates worse than the thresholds it started from.
    """
    from edge.bundle import input_section
    from edge.preprocess import preprocess as prep_image

    from .applications import is_application
    from .tflite import keras_to_tflite, tta_predict, tta_views

    out = Path(out)
    check_out(out, force)
    tta_views(tta)
    if int8 not in ("auto", "full", "dynamic"):
        raise ModelError(f"--int8 {int8!r}: choose auto, full or dynamic")
    if is_application(model_path):  # ImageNet classes: the calibration images carry no labels
        model, meta = load_model_any(model_path, arch, size, None, "multiclass", weights, classes)
        mode = resolve_preprocess(preprocess, str(meta["preprocess"]), False, model_path)
        h, w = int(meta["height"]), int(meta["width"])
        paths = image_list(calibration)
        if len(paths) > max_images:
            paths = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, max_images).round()]
        x = np.stack([prep_image(read_image(p_), h, w, mode) for p_ in paths])
        cal = None
    else:
        cal = load_dataset(calibration)
        model, meta = load_model_any(model_path, arch, size, list(cal.labels), cal.task, weights, classes)
        mode = resolve_preprocess(preprocess, str(meta.get("preprocess") or "seam"), False, model_path)
        h, w = int(meta["height"]), int(meta["width"])
        if list(cal.labels) != list(meta["labels"]):
            raise DataError(f"{calibration}: labels {list(cal.labels)} differ from the model's {list(meta['labels'])}")
        if len(cal) > max_images:
            cal = cal.subset(np.linspace(0, len(cal) - 1, max_images).round().astype(int))
        x = np.concatenate([b for b, _ in batches(cal, h, w, 64, mode=mode)])
    labels, task = list(meta["labels"]), meta["task"]
    ref = tta_predict(keras_predict_fn(model), x, tta)
    if not np.all(np.isfinite(ref)):
        raise ModelError(f"{model_path}: Keras predictions are not finite on {calibration}")

    va = load_dataset(valid) if valid else None
    if va is not None and list(va.labels) != labels:
        raise DataError(f"{valid}: labels {list(va.labels)} differ from the model's {labels}")
    fixed = None if thresholds_from is None else thresholds_of(thresholds_from, labels)
    if va is not None and fixed is None and task == "multilabel" and len(va) < FEW_VALID:
        _log(
            f"export: thresholds calibrated on {len(va)} images of {valid}: with fewer than {FEW_VALID} they are "
            "noisy; a fine-tune keeps those of the bundle it started from with --thresholds-from BUNDLE|default"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        files: dict[str, str] = {}
        thr0 = np.full(len(labels), 0.5)
        _log(f"export: fp32 TFLite ({h}x{w}, batch 1, builtins only)")
        (tmp / "classifier_fp32.tflite").write_bytes(keras_to_tflite(model, h, w, "none", tta=tta))
        files["classifier_fp32"] = "classifier_fp32.tflite"
        par: dict = {"calibration": str(calibration)}
        par["fp32"] = parity(ref, _tflite_predict(tmp / "classifier_fp32.tflite", x, len(labels)), task, thr0)
        if not par["fp32"]["max_abs_diff"] <= FP32_MAX_DIFF:  # fail before the slow int8 conversions
            raise ParityError(
                f"parity failed: fp32 TFLite differs from Keras by {par['fp32']['max_abs_diff']:.3g} "
                f"(> {FP32_MAX_DIFF}) on {calibration}; bundle not written"
            )

        int8_kind = None
        if int8 in ("auto", "full"):
            _log("export: full-int8 TFLite (representative: calibration images)")
            rep = x[: min(len(x), 100)]
            try:
                blob = keras_to_tflite(model, h, w, "int8", representative=lambda: ([r[None]] for r in rep), tta=tta)
                (tmp / "classifier_int8.tflite").write_bytes(blob)
                par["int8_full"] = parity(
                    ref, _tflite_predict(tmp / "classifier_int8.tflite", x, len(labels)), task, thr0
                )
                if int8 == "full" or par["int8_full"]["label_agreement"] >= FULL_INT8_MIN_AGREEMENT:
                    int8_kind = "full"
            except Exception as e:  # noqa: BLE001 - converter errors: fall back to dynamic range
                par["int8_full"] = {"error": first_line(e)}
        if int8_kind is None:
            _log("export: dynamic-range int8 TFLite" + (" (full int8 lost parity)" if int8 == "auto" else ""))
            (tmp / "classifier_int8.tflite").write_bytes(keras_to_tflite(model, h, w, "dynamic", tta=tta))
            int8_kind = "dynamic"
        files["classifier_int8"] = "classifier_int8.tflite"
        p_int8 = _tflite_predict(tmp / "classifier_int8.tflite", x, len(labels))
        par["int8"] = {**parity(ref, p_int8, task, thr0), "quantization": int8_kind}

        # thresholds: calibrated on --valid with the classifier the Pi runs
        xv = None if va is None else np.concatenate([b for b, _ in batches(va, h, w, 64, mode=mode)])
        thresholds, metrics = _calibrated(task, labels, va, xv, cal, calibration, valid, p_int8, tmp, fixed)
        if task == "multilabel" and int8 == "auto" and int8_kind == "full":
            # full int8 was chosen at 0.5; the Pi decides at the calibrated thresholds, where a few
            # scores near them may flip: keep full int8 only if it keeps parity there too
            agree = parity(ref, p_int8, task, np.array([thresholds[lab] for lab in labels]))["label_agreement"]
            par["int8_full"]["label_agreement_calibrated"] = agree
            if agree < FULL_INT8_MIN_AGREEMENT:
                _log(
                    f"export: full int8 agrees on {agree:.2f} % at the calibrated thresholds "
                    f"(< {FULL_INT8_MIN_AGREEMENT} %): dynamic-range int8 TFLite"
                )
                (tmp / "classifier_int8.tflite").write_bytes(keras_to_tflite(model, h, w, "dynamic", tta=tta))
                int8_kind = "dynamic"
                p_int8 = _tflite_predict(tmp / "classifier_int8.tflite", x, len(labels))
                par["int8"] = {**parity(ref, p_int8, task, thr0), "quantization": int8_kind}
                thresholds, metrics = _calibrated(task, labels, va, xv, cal, calibration, valid, p_int8, tmp, fixed)
        if task == "multilabel":
            thr = np.array([thresholds[lab] for lab in labels])
            par["fp32"] = {
                **par["fp32"],
                **{
                    k: v
                    for k, v in parity(
                        ref, _tflite_predict(tmp / "classifier_fp32.tflite", x, len(labels)), task, thr
                    ).items()
                    if k.endswith("agreement")
                },
            }
            par["int8"].update({k: v for k, v in parity(ref, p_int8, task, thr).items() if k.endswith("agreement")})
        for kind in ("fp32", "int8"):
            _log(
                f"parity {kind:>4} vs Keras on {len(x)} images: max|Δ| {par[kind]['max_abs_diff']:.2e}, "
                f"label agreement {par[kind]['label_agreement']:.2f} %"
                + (f" ({par['int8']['quantization']})" if kind == "int8" else "")
            )
        if "int8_full" in par and "label_agreement" in par["int8_full"] and int8_kind == "dynamic":
            _log(
                f"  (full int8 tried: max|Δ| {par['int8_full']['max_abs_diff']:.2e}, "
                f"agreement {par['int8_full']['label_agreement']:.2f} % → kept dynamic range)"
            )
        if not par["fp32"]["max_abs_diff"] <= FP32_MAX_DIFF:
            raise ParityError(
                f"parity failed: fp32 TFLite differs from Keras by {par['fp32']['max_abs_diff']:.3g} "
                f"(> {FP32_MAX_DIFF}) on {calibration}; bundle not written"
            )
        if not par["int8"]["label_agreement"] >= min_int8_agreement:
            raise ParityError(
                f"parity failed: int8 label agreement {par['int8']['label_agreement']:.2f} % "
                f"(< {min_int8_agreement} %) on {calibration}; bundle not written"
            )
        par["gate"] = {"fp32_max_abs_diff": FP32_MAX_DIFF, "int8_min_label_agreement": min_int8_agreement}

        gradcam = None
        if meta.get("form") != "savedmodel":
            from .explainer import export_explainer

            _log("export: explainer (float, predictions + Grad-CAM features) and head")
            gfiles, gradcam = export_explainer(model, tmp, calibration=x)
            files.update(gfiles)
            src = Path(model_path)
            if src.suffix == ".keras":
                shutil.copyfile(src, tmp / "model.keras")
            else:
                save_model(
                    model, tmp / "model.keras", {**{k: v for k, v in meta.items() if k != "form"}, "preprocess": mode}
                )
            files["keras"] = "model.keras"
        else:
            _log("export: SavedModel input has no Keras layers: no Grad-CAM explainer in this bundle")

        created = _dt.datetime.now(_dt.UTC)
        manifest = {
            "name": name or out.name,
            "task": task,
            "labels": labels,
            "input": {"height": h, "width": w, **input_section(mode)},
            "classifier": "classifier_int8",
            "thresholds": thresholds,
            **({"thresholds_from": str(thresholds_from)} if thresholds_from is not None else {}),
            "metrics": metrics,
            "parity": par,
            "source": {
                "model": str(model_path),
                "form": meta.get("form"),
                "arch": meta.get("arch"),
                **({"weights": str(meta["weights"])} if meta.get("weights") else {}),
            },
            "created": created.isoformat(timespec="seconds"),
            # status, stats and alerts report it; hot reload tells bundles apart by it (default: the time)
            "version": version or created.strftime("%Y%m%dT%H%M%SZ"),
            "producer": f"seam-qc {edge.__version__}",
        }
        if tta != "none":  # informational: the flips are inside the classifiers, the Pi does nothing
            manifest["tta"] = {"mode": tta, "views": len(tta_views(tta))}
        if gradcam:
            manifest["gradcam"] = gradcam
        write_manifest(tmp, manifest, files)
        _write_selfcheck(tmp, manifest, files, list(cal.paths) if cal is not None else paths)
        from edge.bundle import load_bundle
        from edge.classify import Classifier
        from edge.selfcheck import run as run_selfcheck

        bundle = load_bundle(tmp)  # what the Pi will do: verify before publishing
        for role in CLASSIFIER_ROLES:
            run_selfcheck(bundle, Classifier(bundle, role=role, threads=1))
        _replace(tmp, out, force)
        return ExportResult(out, {**manifest, "files": files})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our temp folder, or the replaced bundle after the swap


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained model to the model bundle (TFLite + Grad-CAM files)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="FILE.keras|FILE.h5|SAVEDMODEL_DIR|vgg16|mobilenet_v2",
        help="a trained model, or an ImageNet application (with --weights FILE.h5 offline)",
    )
    p.add_argument(
        "--calibration",
        required=True,
        metavar="CSV|DIR",
        help="images for int8 calibration and the Keras-vs-TFLite parity check",
    )
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory to create")
    p.add_argument("--valid", metavar="CSV|DIR", help="validation set to calibrate thresholds and measure metrics")
    p.add_argument(
        "--thresholds-from",
        metavar="BUNDLE|default",
        help="take the thresholds of this bundle (default: the shipped one) instead of calibrating them on "
        "--valid, which is then only measured: for a fine-tune validated on fewer than a few hundred frames",
    )
    p.add_argument("--arch", help=f"architecture of a weights-only .h5 ({', '.join(ARCHS)})")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="input size for weights-only / SavedModel inputs (128) and mobilenet_v2 (224)",
    )
    add_preprocess_args(p)
    p.add_argument(
        "--int8",
        default="auto",
        choices=("auto", "full", "dynamic"),
        help="int8 classifier: full integer when it keeps parity (auto), or force one",
    )
    p.add_argument("--name", help="bundle name in the manifest (default: the folder name)")
    p.add_argument(
        "--model-version",
        metavar="TEXT",
        help="version in the manifest, reported by the Pi in status, stats and alerts (default: the UTC time)",
    )
    p.add_argument("--max-images", type=int, default=300, help="calibration images used (default 300)")
    p.add_argument(
        "--tta",
        default="none",
        choices=tuple(TTA_VIEWS),
        help="test-time flips inside the classifiers, averaged: lr (the image and its mirror, 2x the cost), "
        "flips (also upside down and both, 4x); default none. The explainer keeps the one view",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing seam-qc bundle (any other non-empty folder is refused)",
    )
    p.add_argument(
        "--min-int8-agreement",
        type=float,
        default=INT8_MIN_AGREEMENT,
        help=f"parity gate: int8-vs-Keras label agreement in %% (default {INT8_MIN_AGREEMENT})",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = export_bundle(
        args.model,
        args.calibration,
        args.out,
        args.valid,
        args.arch,
        args.size,
        args.force,
        args.name,
        args.max_images,
        args.int8,
        args.min_int8_agreement,
        args.preprocess,
        args.weights,
        args.classes,
        args.model_version,
        args.tta,
        args.thresholds_from,
    )
    par = res.manifest["parity"]
    print(
        f"wrote {res.out}: {', '.join(res.manifest['files'])}; int8 = {par['int8']['quantization']}, "
        f"fp32 max|Δ| {par['fp32']['max_abs_diff']:.2e}, int8 agreement {par['int8']['label_agreement']:.2f} %"
    )
    return 0
