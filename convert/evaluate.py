"""``evaluate``: accuracy of a ``.keras``, a ``.tflite`` or a bundle on a data set, in the seed's format.

All three forms go through the same path: ``edge.preprocess.preprocess`` per image, then the
model; so they give the same numbers up to quantisation. Multi-label output (the seed's)::

    Good Accuracy: 97.30
    Error Accuracy: 98.10
    ...

then precision / recall / F1 per attribute and the thresholds used. Multiclass: top-1
accuracy, per-class precision / recall / F1 and the confusion matrix.

Thresholds: the bundle's (or 0.5), or with ``--calibrate VALID`` calibrated per label on that
validation set by *maximising per-label accuracy* (the number the seed reports and the line
cares about: every wrong decision costs the same); ties go to the threshold nearest 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.errors import DataError, ModelError

from .data import Dataset, batches, check_roi, load_dataset
from .roi import add_roi_args, roi_from_args

# --- pure metrics ------------------------------------------------------------------------------


def calibrate_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold in [0.01, 0.99] maximising accuracy of ``p >= t`` against ``y`` (ties: nearest 0.5)."""
    y = np.asarray(y) > 0.5
    p = np.asarray(p, np.float64)
    cands = np.unique(np.concatenate([np.linspace(0.01, 0.99, 99), np.clip(p, 0.01, 0.99)]))
    # midpoints between neighbouring scores separate them best
    mids = (cands[1:] + cands[:-1]) / 2 if len(cands) > 1 else cands
    cands = np.unique(np.concatenate([cands, mids]))
    acc = np.array([np.mean((p >= t) == y) for t in cands])
    best = np.flatnonzero(acc >= acc.max() - 1e-12)
    return float(round(cands[best[np.argmin(np.abs(cands[best] - 0.5))]], 6))


def calibrate_thresholds(y: np.ndarray, p: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    return {lab: calibrate_threshold(y[:, i], p[:, i]) for i, lab in enumerate(labels)}


def auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann–Whitney U, ties counted half); ``None`` if one class is absent.

    Threshold-free: how well the score *ranks* positives above negatives, the figure to compare
    models across fabrics whose best thresholds differ.
    """
    y = np.asarray(y) > 0.5
    s = np.asarray(score, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return prec, rec, f1


def multilabel_metrics(y: np.ndarray, p: np.ndarray, labels: Sequence[str], thresholds: dict[str, float]) -> dict:
    """Per label: accuracy, precision, recall, F1 (percent for accuracy), counts."""
    y = np.asarray(y) > 0.5
    out: dict = {"task": "multilabel", "count": int(len(y)), "labels": {}}
    for i, lab in enumerate(labels):
        t = float(thresholds.get(lab, 0.5))
        pred = p[:, i] >= t
        tp = int(np.sum(pred & y[:, i]))
        fp = int(np.sum(pred & ~y[:, i]))
        fn = int(np.sum(~pred & y[:, i]))
        tn = int(np.sum(~pred & ~y[:, i]))
        prec, rec, f1 = _prf(tp, fp, fn)
        out["labels"][lab] = {
            "accuracy": 100.0 * (tp + tn) / max(1, len(y)),
            "precision": prec,
            "recall": rec,
            "f1": f1,
            "threshold": t,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
            "auroc": auroc(y[:, i], p[:, i]),
        }
    decided = np.stack([p[:, i] >= float(thresholds.get(lab, 0.5)) for i, lab in enumerate(labels)], 1)
    out["exact_match"] = 100.0 * float(np.mean(np.all(decided == y, axis=1))) if len(y) else 0.0
    return out


def multiclass_metrics(y: np.ndarray, p: np.ndarray, labels: Sequence[str]) -> dict:
    """Top-1 accuracy, per-class precision/recall/F1 and the confusion matrix (rows: truth)."""
    t = np.argmax(y, 1)
    k = np.argmax(p, 1)
    n = len(labels)
    cm = np.zeros((n, n), int)
    np.add.at(cm, (t, k), 1)
    per = {}
    for i, lab in enumerate(labels):
        tp = int(cm[i, i])
        prec, rec, f1 = _prf(tp, int(cm[:, i].sum()) - tp, int(cm[i, :].sum()) - tp)
        per[lab] = {"precision": prec, "recall": rec, "f1": f1, "support": int(cm[i, :].sum())}
    return {
        "task": "multiclass",
        "count": int(len(y)),
        "accuracy": 100.0 * float(np.mean(t == k)) if len(y) else 0.0,
        "labels": per,
        "confusion": cm.tolist(),
    }


def format_report(metrics: dict, labels: Sequence[str]) -> str:
    """The seed's lines (``Good Accuracy: 97.30``) followed by P/R/F1 and thresholds."""
    lines = []
    if metrics["task"] == "multilabel":
        for lab in labels:
            lines.append(f"{lab.capitalize()} Accuracy: {metrics['labels'][lab]['accuracy']:.2f}")
        lines.append(f"Exact match (all labels right): {metrics['exact_match']:.2f}")
        for lab in labels:
            m = metrics["labels"][lab]
            roc = m.get("auroc")
            lines.append(
                f"{lab.capitalize()} Precision: {100 * m['precision']:.2f} Recall: {100 * m['recall']:.2f} "
                f"F1: {100 * m['f1']:.2f}" + (f" AUROC: {roc:.4f}" if roc is not None else "")
            )
        lines.append("Thresholds: " + ", ".join(f"{lab} {metrics['labels'][lab]['threshold']:.3f}" for lab in labels))
    else:
        lines.append(f"Top-1 Accuracy: {metrics['accuracy']:.2f}")
        for lab in labels:
            m = metrics["labels"][lab]
            lines.append(
                f"{lab} Precision: {100 * m['precision']:.2f} Recall: {100 * m['recall']:.2f} "
                f"F1: {100 * m['f1']:.2f} (n={m['support']})"
            )
        w = max(len(lab) for lab in labels)
        lines.append("Confusion matrix (rows: truth, columns: predicted):")
        lines.append(" " * (w + 1) + " ".join(f"{lab[:8]:>8}" for lab in labels))
        for lab, row in zip(labels, metrics["confusion"]):
            lines.append(f"{lab:<{w}} " + " ".join(f"{v:>8d}" for v in row))
    return "\n".join(lines)


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
    size: int = 128,
    labels: Sequence[str] | None = None,
    task: str = "multilabel",
) -> Predictor:
    """A bundle dir, a ``.tflite``, a ``.keras`` / ``.h5`` file (``arch`` for weights-only) or a SavedModel."""
    from edge.classify import Classifier, TFLiteModel

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
    if p.is_dir() or p.suffix in (".keras", ".h5"):
        from .export import load_model_any

        model, meta = load_model_any(p, arch, size, list(labels) if labels else None, task)
        return Predictor(
            "keras",
            p,
            int(meta["height"]),
            int(meta["width"]),
            len(meta["labels"]),
            keras_predict_fn(model),
            tuple(meta["labels"]),
            meta["task"],
        )
    raise ModelError(f"{p}: not a model (expected a bundle dir, .tflite, .keras or .h5)")


def predict_dataset(
    pred: Predictor, ds: Dataset, progress: bool = False, roi: Sequence[int] | None = None
) -> np.ndarray:
    """Probabilities ``[N, n]`` for every image of ``ds``, preprocessed one by one as on the Pi.

    ``roi``: the images are full camera frames; each is cropped to this ROI first, as the daemon does.
    """
    if pred.n_outputs != len(ds.labels):
        raise DataError(
            f"{ds.source}: {len(ds.labels)} labels {list(ds.labels)} but model {pred.path} has {pred.n_outputs} outputs"
        )
    if pred.labels is not None and tuple(pred.labels) != tuple(ds.labels):
        raise DataError(f"{ds.source}: labels {list(ds.labels)} differ from model {pred.path}'s {list(pred.labels)}")
    it = batches(ds, pred.height, pred.width, 64, roi=roi)
    it = tqdm(
        it,
        total=(len(ds) + 63) // 64,
        desc=f"evaluate {pred.kind}",
        unit="batch",
        file=sys.stderr,
        disable=not progress,
    )
    outs = [pred.predict(x) for x, _ in it]
    return np.concatenate(outs).astype(np.float32)


@dataclass(frozen=True)
class Evaluation:
    metrics: dict
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    probabilities: np.ndarray
    report: str


def evaluate(
    model: str | Path,
    data: str | Path,
    calibrate: str | Path | None = None,
    threads: int = 2,
    role: str | None = None,
    progress: bool = False,
    arch: str | None = None,
    size: int = 128,
    roi: Sequence[int] | None = None,
) -> Evaluation:
    ds = load_dataset(data)
    check_roi(ds, roi)
    pred = load_predictor(model, threads, role, arch, size, ds.labels, ds.task)
    probs = predict_dataset(pred, ds, progress, roi)
    labels = ds.labels
    task = pred.task or ds.task
    thresholds = {lab: float(pred.thresholds.get(lab, 0.5)) for lab in labels}
    if task == "multiclass":
        metrics = multiclass_metrics(ds.targets, probs, labels)
    else:
        if calibrate:
            va = load_dataset(calibrate)
            thresholds = calibrate_thresholds(va.targets, predict_dataset(pred, va, progress, roi), labels)
        metrics = multilabel_metrics(ds.targets, probs, labels, thresholds)
        metrics["thresholds"] = thresholds
        metrics["thresholds_from"] = (
            str(calibrate) if calibrate else ("bundle" if pred.kind == "bundle" else "default 0.5")
        )
    metrics["model"] = str(model)
    metrics["data"] = str(data)
    if roi is not None:
        metrics["roi"] = [int(v) for v in roi]
    return Evaluation(metrics, labels, thresholds, probs, format_report(metrics, labels))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="per-attribute accuracy of a .keras, .tflite or bundle on a data set",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--model", required=True, metavar="PATH", help=".keras, .h5, .tflite or a bundle directory")
    p.add_argument("--data", required=True, metavar="CSV|DIR")
    p.add_argument("--json", metavar="FILE", help="write every number as JSON")
    p.add_argument("--calibrate", metavar="VALID_CSV", help="calibrate per-label thresholds on this set first")
    p.add_argument("--role", help="bundle role to run (default: the manifest's classifier)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--arch", help="architecture of a weights-only .h5")
    p.add_argument("--size", type=int, default=128, help="input size of a weights-only .h5 / SavedModel")
    add_roi_args(p, "cropped from every image (and --calibrate's) first; images saved as crops take none")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    roi = roi_from_args(args)
    ev = evaluate(
        args.model,
        args.data,
        args.calibrate,
        args.threads,
        args.role,
        progress=sys.stderr.isatty(),
        arch=args.arch,
        size=args.size,
        roi=roi.roi,
    )
    print(ev.report)
    if args.json:
        Path(args.json).write_text(json.dumps(ev.metrics, indent=1) + "\n")
    return 0
