"""Accuracy figures shared by ``evaluate``, ``export`` (thresholds in the manifest), ``ship`` and
``leave-out``: per-label thresholds calibrated on a validation set, multi-label and multiclass
metrics, AUROC. Pure numpy, no model code, so every command can import it without pulling the
model loaders in (and ``evaluate`` and ``export`` need not import each other).

A NaN truth (an empty cell of a seed CSV: nobody knows that label for that image) is left out of
that label's threshold, accuracy and AUROC, and out of the exact-match rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def calibrate_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold in [0.01, 0.99] maximising accuracy of ``p >= t`` against ``y`` (ties: nearest 0.5)."""
    known = _known(y)
    y = np.asarray(y)[known] > 0.5
    p = np.asarray(p, np.float64)[known]
    if not len(y):
        return 0.5
    cands = np.unique(np.concatenate([np.linspace(0.01, 0.99, 99), np.clip(p, 0.01, 0.99)]))
    # midpoints between neighbouring scores separate them best
    mids = (cands[1:] + cands[:-1]) / 2 if len(cands) > 1 else cands
    cands = np.unique(np.concatenate([cands, mids]))
    acc = np.array([np.mean((p >= t) == y) for t in cands])
    best = np.flatnonzero(acc >= acc.max() - 1e-12)
    return float(round(cands[best[np.argmin(np.abs(cands[best] - 0.5))]], 6))


def _known(y: ArrayLike) -> np.ndarray:
    """Where the truth is known (not NaN)."""
    return ~np.isnan(np.asarray(y, np.float64))


def calibrate_thresholds(y: np.ndarray, p: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    return {lab: calibrate_threshold(y[:, i], p[:, i]) for i, lab in enumerate(labels)}


def auroc(y: ArrayLike, score: ArrayLike) -> float | None:
    """Area under the ROC curve (Mann–Whitney U, ties counted half); ``None`` if one class is absent.

    Threshold-free: how well the score *ranks* positives above negatives, the figure to compare
    models across fabrics whose best thresholds differ.
    """
    known = _known(y)
    pos = np.asarray(y)[known] > 0.5
    s = np.asarray(score, np.float64)[known]
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def seam_aurocs(y: np.ndarray, p: np.ndarray, labels: Sequence[str]) -> dict[str, float | None]:
    """The two threshold-free figures the real-photo check reports: defect-vs-normal AUROC (``1 -
    good`` ranks any defect above the normal seams) and broken-vs-normal AUROC (``break`` on the
    broken and the normal seams only); {} without a ``good`` label, no ``break_auroc`` without
    ``break``. A NaN ``good`` stays out."""
    li = {lab: i for i, lab in enumerate(labels)}
    if "good" not in li:
        return {}
    g = np.asarray(y[:, li["good"]], np.float64)
    out = {"defect_auroc": auroc(np.where(np.isnan(g), np.nan, g < 0.5), 1.0 - p[:, li["good"]])}
    if "break" in li:
        sel = (y[:, li["good"]] > 0.5) | (y[:, li["break"]] > 0.5)
        out["break_auroc"] = auroc(y[sel, li["break"]], p[sel, li["break"]])
    return out


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return prec, rec, f1


def multilabel_metrics(y: np.ndarray, p: np.ndarray, labels: Sequence[str], thresholds: dict[str, float]) -> dict:
    """Per label: accuracy, precision, recall, F1 (percent for accuracy), counts (``known``: the
    images whose truth for that label is not NaN; the figures are over those). With no known truth
    (a set drawn wholly outside the scales where ``length`` is visible) accuracy is None, not 0 %;
    ``exact_match`` likewise when no image has every label known."""
    raw = np.asarray(y, np.float64)
    known = _known(raw)
    y = raw > 0.5
    out: dict = {"task": "multilabel", "count": int(len(y)), "labels": {}}
    for i, lab in enumerate(labels):
        t = float(thresholds.get(lab, 0.5))
        pred = p[:, i] >= t
        k = known[:, i]
        tp = int(np.sum(pred & y[:, i] & k))
        fp = int(np.sum(pred & ~y[:, i] & k))
        fn = int(np.sum(~pred & y[:, i] & k))
        tn = int(np.sum(~pred & ~y[:, i] & k))
        prec, rec, f1 = _prf(tp, fp, fn)
        out["labels"][lab] = {
            "accuracy": 100.0 * (tp + tn) / int(k.sum()) if k.any() else None,
            "known": int(k.sum()),
            "precision": prec,
            "recall": rec,
            "f1": f1,
            "threshold": t,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
            "auroc": auroc(raw[:, i], p[:, i]),
        }
    decided = np.stack([p[:, i] >= float(thresholds.get(lab, 0.5)) for i, lab in enumerate(labels)], 1)
    full = np.all(known, axis=1)
    out["exact_match"] = 100.0 * float(np.mean(np.all(decided == y, axis=1)[full])) if full.any() else None
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
