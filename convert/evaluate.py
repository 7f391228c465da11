"""``evaluate``: accuracy of a ``.keras``, a ``.tflite`` or a bundle on a data set, in the seed's format.

All three forms go through the same path: ``edge.preprocess.preprocess`` per image, then the
model; so they give the same numbers up to quantisation. Multi-label output (the seed's)::

    Good Accuracy: 97.30
    Error Accuracy: 98.10
    ...

then precision / recall / F1 per attribute and the thresholds used. Multiclass: top-1
accuracy, per-class precision / recall / F1 and the confusion matrix.

``--by-family`` (multi-label data sets made by ``synth``, whose ``meta.csv`` names each image's
fabric family): the same numbers per family as a markdown table (accuracy and AUROC per attribute,
defect-vs-normal and broken-vs-normal AUROC) at the same thresholds: where is the model blind?

``--by-kind`` (the same synth data sets; ``meta.csv`` names the defect drawn for ``error`` and
``break``): per defect kind, how many the model finds (its label at the threshold) and how many it
flags as not good at all, with the normal images' false flags beside them: which defects is it blind to?
Where ``meta.csv`` has the ``visibility`` column (how much the image's least visible defect changes
the model's 128-px input, ``synth_render.defect_visibility``), each kind's found share is also split
at visibility 20 and 50: a kind missed only below 20 is one the pixels barely show, a kind missed at
every visibility is one the model has not learnt (stains, on the 2026-12-06 bundle).

``--by-look`` (the same synth data sets; ``meta.csv`` names each still's thread/fabric contrast,
thread width and scale): the same numbers as ``--by-family`` per bin of each (``LOOK_SPLITS``):
does the model lose the seam when the thread is of the fabric's colour, thin, or small in the
frame, as on the real photos?

Thresholds: the bundle's (or 0.5), or with ``--calibrate VALID`` calibrated per label on that
validation set by *maximising per-label accuracy* (the number the seed reports and the line
cares about: every wrong decision costs the same); ties go to the threshold nearest 0.5.

``--tta lr|flips`` averages a ``.keras`` / ``.tflite`` over flipped views, the way a bundle
exported with ``export --tta`` classifies (the shipped one: ``lr``), so that a checkpoint and a
bundle are scored alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.errors import DataError, ModelError

from .data import Dataset, batches, check_roi, load_dataset
from .loading import Predictor, add_preprocess_args, load_predictor, resolve_preprocess
from .metrics import calibrate_thresholds, multiclass_metrics, multilabel_metrics, seam_aurocs
from .roi import add_roi_args, roi_from_args
from .tflite import TTA_VIEWS

NO_TRUTH = "– (no image of the set has this label known)"


def _pct(v: float | None, why: str = NO_TRUTH) -> str:
    """A percentage, or why there is none (a set drawn where nobody can tell ``length``)."""
    return why if v is None else f"{v:.2f}"


def format_report(metrics: dict, labels: Sequence[str]) -> str:
    """The seed's lines (``Good Accuracy: 97.30``) followed by P/R/F1 and thresholds."""
    lines = []
    if metrics["task"] == "multilabel":
        for lab in labels:
            lines.append(f"{lab.capitalize()} Accuracy: {_pct(metrics['labels'][lab]['accuracy'])}")
        lines.append(
            f"Exact match (all labels right): {_pct(metrics['exact_match'], '– (no image has every label known)')}"
        )
        for lab in labels:
            m = metrics["labels"][lab]
            roc = m.get("auroc")
            if m.get("known") == 0:
                lines.append(f"{lab.capitalize()} Precision, Recall, F1: {NO_TRUTH}")
                continue
            lines.append(
                f"{lab.capitalize()} Precision: {100 * m['precision']:.2f} Recall: {100 * m['recall']:.2f} "
                f"F1: {100 * m['f1']:.2f}" + (f" AUROC: {roc:.4f}" if roc is not None else "")
            )
        lines.append("Thresholds: " + ", ".join(f"{lab} {metrics['labels'][lab]['threshold']:.3f}" for lab in labels))
        for key, name in (("defect_auroc", "Defect-vs-normal AUROC"), ("break_auroc", "Broken-vs-normal AUROC")):
            if key in metrics:
                lines.append(f"{name}: {'–' if metrics[key] is None else f'{metrics[key]:.4f}'}")
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
    it = batches(ds, pred.height, pred.width, 64, roi=roi, mode=pred.preprocess)
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
    size: int | None = 128,
    roi: Sequence[int] | None = None,
    by_family: bool = False,
    by_kind: bool = False,
    by_look: bool = False,
    preprocess: str | None = None,
    weights: str | Path | None = None,
    classes: str | Path | None = None,
    tta: str = "none",
) -> Evaluation:
    """Run ``model`` on ``data`` (module doc). ``preprocess`` None: the model's own mode (a bundle's
    manifest, a ``.keras``'s metadata, an application's ``preprocess_input``), else seam. ``tta``:
    average the model over flipped views (``convert export --tta``), to score a ``.keras`` the way
    a bundle exported with it classifies; a bundle that already does is refused."""
    from .tflite import tta_predict, tta_views

    tta_views(tta)
    ds = load_dataset(data)
    check_roi(ds, roi)
    pred = load_predictor(model, threads, role, arch, size, ds.labels, ds.task, weights, classes)
    pred.preprocess = resolve_preprocess(preprocess, pred.preprocess, pred.kind == "bundle", model)
    if tta != "none":
        if pred.tta != "none":
            raise ModelError(
                f"--tta {tta}: {model} was exported with --tta {pred.tta}: its classifiers average already"
            )
        single = pred.predict
        pred.predict = lambda x: tta_predict(single, x, tta)
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
        metrics.update(seam_aurocs(ds.targets, probs, labels))
        metrics["thresholds"] = thresholds
        metrics["thresholds_from"] = (
            str(calibrate) if calibrate else ("bundle" if pred.kind == "bundle" else "default 0.5")
        )
    metrics["model"] = str(model)
    metrics["data"] = str(data)
    metrics["preprocess"] = pred.preprocess  # what the images were fed as (the model's own unless given)
    if tta != "none":
        metrics["tta"] = tta
    report = format_report(metrics, labels)
    if by_family:
        if task != "multilabel":
            raise DataError(f"--by-family: {data} is a {task} data set (families are a synth multi-label feature)")
        metrics["families"] = family_scores(ds, probs, labels, thresholds)
        report += "\n\n" + family_table(metrics["families"], labels)
    if by_kind:
        if task != "multilabel" or not {"good", "error", "break"} <= set(labels):
            raise DataError(f"--by-kind: {data} is not a seam data set (defect kinds are a synth seam feature)")
        metrics["kinds"] = kind_scores(ds, probs, labels, thresholds)
        report += "\n\n" + kind_table(metrics["kinds"])
    if by_look:
        if task != "multilabel":
            raise DataError(f"--by-look: {data} is a {task} data set (the look is a synth multi-label feature)")
        metrics["looks"] = look_scores(ds, probs, labels, thresholds)
        report += "\n\n" + look_table(metrics["looks"], labels)
    if roi is not None:
        metrics["roi"] = [int(v) for v in roi]
    return Evaluation(metrics, labels, thresholds, probs, report)


def _folder(ds: Dataset) -> Path:
    """The data set's folder, where ``synth`` put ``meta.csv``."""
    src = Path(ds.source)
    return src.parent if src.suffix == ".csv" else src


def family_scores(ds: Dataset, probs: np.ndarray, labels: Sequence[str], thresholds: dict[str, float]) -> dict:
    """Family → accuracy / AUROC per attribute + defect and break AUROC, from ``meta.csv`` beside the data."""
    from .leaveout import attribute_scores, read_families

    families = read_families(_folder(ds))
    fam = np.array([families.get(str(Path(p).resolve()), "?") for p in ds.paths])
    return {
        f: attribute_scores(ds.targets[fam == f], probs[fam == f], labels, thresholds)
        for f in sorted(set(fam.tolist()))
    }


def kind_scores(ds: Dataset, probs: np.ndarray, labels: Sequence[str], thresholds: dict[str, float]) -> dict:
    """Defect kind → n, found % (its label's score ≥ threshold), flagged % (``good`` below its
    threshold) and the median score of its label; ``none`` is the images without error or break,
    whose "found" is the false-flag rate of any defect label. From ``meta.csv``'s kind columns."""
    from .leaveout import read_meta_columns
    from .synth_render import BREAK_KINDS, ERROR_KINDS

    columns = read_meta_columns(_folder(ds), "error_kind", "break_kind", optional=("visibility",))
    vis_col = columns.get("visibility")  # absent from sets drawn before synth recorded it: no split
    vis = np.array([_number(vis_col.get(str(Path(p).resolve()), "")) for p in ds.paths]) if vis_col else None
    li = {lab: i for i, lab in enumerate(labels)}
    above = {lab: probs[:, li[lab]] >= thresholds[lab] for lab in labels}
    flagged = ~above["good"]
    out: dict[str, dict] = {}
    for lab, kinds in (("error", ERROR_KINDS), ("break", BREAK_KINDS)):
        col = columns[f"{lab}_kind"]
        kind = np.array([col.get(str(Path(p).resolve()), "") for p in ds.paths])
        truth = ds.targets[:, li[lab]] > 0.5
        for k in (*kinds, *sorted(set(kind[truth].tolist()) - set(kinds))):
            sel = truth & (kind == k)
            if sel.any():
                out[k] = {
                    "label": lab,
                    "count": int(sel.sum()),
                    "found": round(100.0 * float(above[lab][sel].mean()), 2),
                    "flagged": round(100.0 * float(flagged[sel].mean()), 2),
                    "median_score": round(float(np.median(probs[sel, li[lab]])), 4),
                }
                if vis is not None:
                    out[k]["by_visibility"] = _visibility_split(vis[sel], above[lab][sel])
    normal = (ds.targets[:, li["error"]] < 0.5) & (ds.targets[:, li["break"]] < 0.5)
    if normal.any():
        out["none"] = {
            "label": "good",
            "count": int(normal.sum()),
            "found": round(100.0 * float((above["error"] | above["break"])[normal].mean()), 2),
            "flagged": round(100.0 * float(flagged[normal].mean()), 2),
            "median_score": round(float(np.median(probs[normal, li["good"]])), 4),
        }
    return out


#: where ``--by-look`` splits the stills (``meta.csv``; low bound inclusive): the thread/fabric luma
#: contrast (synth's tone-on-tone threads differ by 0.01..0.12, like the real photos' threads of the
#: fabric's colour), the thread's width in the still (px) and the scale (px/mm of the still)
LOOK_SPLITS: dict[str, tuple[tuple[float, float], str]] = {
    "contrast": ((0.12, 0.3), "thread/fabric contrast"),
    "thread_px": ((3.0, 6.0), "thread width (px)"),
    "px_per_mm": ((4.0, 8.0), "scale (px/mm)"),
}


def look_scores(ds: Dataset, probs: np.ndarray, labels: Sequence[str], thresholds: dict[str, float]) -> dict:
    """Split → bin → accuracy / AUROC per attribute + defect and break AUROC of the stills in the
    bin (``LOOK_SPLITS``), from ``meta.csv``; a still without the value is left out of its split."""
    from .leaveout import attribute_scores, read_meta_columns

    columns = read_meta_columns(_folder(ds), *LOOK_SPLITS)
    out: dict[str, dict] = {}
    for col, ((lo, hi), _) in LOOK_SPLITS.items():
        v = np.array([_number(columns[col].get(str(Path(p).resolve()), "")) for p in ds.paths])
        bins = {key: (v >= b_lo) & (v < b_hi) for key, _, b_lo, b_hi in _split_bins(lo, hi)}  # NaN: in none
        out[col] = {
            key: attribute_scores(ds.targets[sel], probs[sel], labels, thresholds)
            for key, sel in bins.items()
            if sel.any()
        }
    return out


def look_table(looks: dict, labels: Sequence[str]) -> str:
    """Markdown, one row per bin of each split: accuracy per attribute and the two AUROCs."""

    def cell(v, pct: bool) -> str:
        return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.1f}" if pct else f"{v:.3f}")

    rows = [
        "| split | bin | n | " + " | ".join(f"{lab} acc" for lab in labels) + " | defect-vs-normal AUROC | "
        "broken-vs-normal AUROC |",
        "|---|---|---|" + "---|" * (len(labels) + 2),
    ]
    for col, bins in looks.items():
        for key, s in bins.items():
            accs = " | ".join(cell(s["accuracy"].get(lab), True) for lab in labels)
            rows.append(
                f"| {LOOK_SPLITS[col][1]} | {key} | {s['count']} | {accs} | {cell(s.get('defect_auroc'), False)} | "
                f"{cell(s.get('break_auroc'), False)} |"
            )
    return "\n".join(rows)


#: where ``--by-kind`` splits each kind's found share by the defect's visibility (``meta.csv``)
VISIBILITY_SPLIT = (20.0, 50.0)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _split_bins(lo: float, hi: float) -> list[tuple[str, str, float, float]]:
    """(JSON key, table heading, low, high) of the three bins that ``lo`` and ``hi`` cut, low
    inclusive: ``--by-kind``'s visibility and ``--by-look``'s splits."""
    return [
        (f"<{lo:g}", f"< {lo:g}", float("-inf"), lo),
        (f"{lo:g}-{hi:g}", f"{lo:g}–{hi:g}", lo, hi),
        (f">={hi:g}", f"≥ {hi:g}", hi, float("inf")),
    ]


def _visibility_split(vis: np.ndarray, found: np.ndarray) -> dict[str, dict]:
    """Bin key → count and found % of the images whose visibility falls in it (unknown: left out)."""
    out = {}
    for name, _, lo, hi in _split_bins(*VISIBILITY_SPLIT):
        sel = (vis >= lo) & (vis < hi)
        n = int(sel.sum())
        out[name] = {"count": n, "found": round(100.0 * float(found[sel].mean()), 2) if n else None}
    return out


def kind_table(kinds: dict) -> str:
    """Markdown, one row per defect kind, the normal images last; found by visibility when known."""
    split = any("by_visibility" in s for s in kinds.values())
    bins = [(key, heading) for key, heading, _, _ in _split_bins(*VISIBILITY_SPLIT)] if split else []
    rows = [
        "| defect kind | label | n | found (its label ≥ threshold) | flagged (good < threshold) | median score |"
        + "".join(f" found, visibility {heading} |" for _, heading in bins),
        "|---|---|---|---|---|---|" + "---|" * len(bins),
    ]
    for k, s in kinds.items():
        found = f"{s['found']:.1f} % (false error or break)" if k == "none" else f"{s['found']:.1f} %"
        row = f"| {k} | {s['label']} | {s['count']} | {found} | {s['flagged']:.1f} % | {s['median_score']:.3f} |"
        for key, _ in bins:
            cell = s.get("by_visibility", {}).get(key)
            row += " – |" if not cell or cell["found"] is None else f" {cell['found']:.1f} % ({cell['count']}) |"
        rows.append(row)
    return "\n".join(rows)


def family_table(families: dict, labels: Sequence[str]) -> str:
    """Markdown, one row per family."""
    from .leaveout import table

    return table([{"family": f, **s} for f, s in families.items()], labels).replace("held-out family", "family")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="per-attribute accuracy of a .keras, .tflite or bundle on a data set",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--model", required=True, metavar="PATH", help=".keras, .h5, .tflite or a bundle directory")
    p.add_argument("--data", required=True, metavar="CSV|DIR")
    p.add_argument("--json", metavar="FILE", help="write every number as JSON")
    p.add_argument(
        "--by-family", action="store_true", help="also per fabric family (synth data sets: meta.csv beside the data)"
    )
    p.add_argument(
        "--by-kind",
        action="store_true",
        help="also per defect kind: found / flagged %% (synth data sets: meta.csv's error_kind, break_kind)",
    )
    p.add_argument(
        "--by-look",
        action="store_true",
        help="also per look of the stills: thread/fabric contrast (tone-on-tone < 0.12), thread width and scale "
        "(synth data sets: meta.csv's contrast, thread_px, px_per_mm)",
    )
    p.add_argument("--calibrate", metavar="VALID_CSV", help="calibrate per-label thresholds on this set first")
    p.add_argument("--role", help="bundle role to run (default: the manifest's classifier)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--arch", help="architecture of a weights-only .h5")
    p.add_argument(
        "--size", type=int, default=None, help="input size of a weights-only .h5 / SavedModel (128) or vgg16 (224)"
    )
    add_preprocess_args(p)
    add_roi_args(p, "cropped from every image (and --calibrate's) first; images saved as crops take none")
    p.add_argument(
        "--tta",
        default="none",
        choices=tuple(TTA_VIEWS),
        help="average the model over flipped views, as a bundle exported with export --tta does (lr: the image "
        "and its mirror; flips: four views); a bundle exported with it already averages",
    )
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
        by_family=args.by_family,
        by_kind=args.by_kind,
        by_look=args.by_look,
        preprocess=args.preprocess,
        weights=args.weights,
        classes=args.classes,
        tta=args.tta,
    )
    print(ev.report)
    if args.json:
        Path(args.json).write_text(json.dumps(ev.metrics, indent=1) + "\n")
    return 0
