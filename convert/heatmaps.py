"""``python -m convert heatmaps``: Grad-CAM overlays and a contact sheet for a data set or images.

``--model`` is a ``.keras`` file, a model bundle, or an ImageNet ``vgg16`` / ``mobilenet_v2``
(Keras' cached weights or ``--weights FILE.h5``, names from ``--classes``; ``convert.applications``).
``--method litert`` (default for a bundle) runs what the Pi runs: the bundle's float explainer +
numpy head gradient (for a ``.keras`` or an application the explainer is exported to a temporary
bundle first); ``--method tf`` (default otherwise) runs the full-TF GradientTape path on the Keras
model (the bundle's ``keras`` role). Inputs are preprocessed as the model needs (``--preprocess``;
default: the bundle's manifest, the ``.keras`` metadata, the application's ``preprocess_input``).

Per image ``<stem>.overlay.png`` (each shown label tinted in its colour: error blue, break green,
length red, other classes distinct colours; opacity scaled by the map's strength, see
``edge.gradcam`` and ``edge.overlay``), ``<stem>.jet.png`` (the seeds' picture: the JET map of the
best shown class over the image, alpha 0.4; the image itself when nothing is shown),
``contact_sheet.png`` (rows of original / heatmap / overlay with file name, scores and truth written
on; ``contact_sheet_2.png`` … past ``--sheet-rows``), and ``heatmaps.csv`` (name, label, score,
peak, shown). A multilabel bundle's scores (and so what is flagged and shown) are its classifier's,
as the Pi decides: int8, every ``export --tta`` view averaged; the explainer draws the map of the
image as it is (the Pi's heatmaps are made the same way). Explained and shown:
``--class``/``--labels`` when given; else ``--top-k K`` best classes (one forward pass picks them);
else a multiclass model's predicted class (top 1), a multilabel model's every label with the flagged
ones shown (score ≥ the bundle's threshold or 0.5, ``good`` left out). ``--raw`` also writes the
normalised heatmap of every explained label (every label, unless ``--class`` or ``--top-k`` limits
them) at the image's resolution as ``<stem>.<label>.npy`` (float32, 0..1).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edge.errors import DataError, ModelError
from edge.gradcam import Heatmap
from edge.overlay import LABEL_COLORS, PALETTE, overlay_jet, overlay_labels

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
METHODS = ("tf", "litert")
JET_ALPHA = 0.4  # the seeds' (Keras') Grad-CAM picture: 0.4 of the JET map over the image


# ----------------------------------------------------------------------------- model side


@dataclass
class HeatmapSource:
    """Whichever Grad-CAM path was chosen, behind one ``explain(frame, labels)`` call."""

    explain: Callable[..., dict[str, Heatmap]]  # (frame, labels or None, top_k=None)
    labels: tuple[str, ...]
    task: str
    thresholds: dict[str, float]
    method: str
    layer: str
    peak_ref: dict[str, float | None] = field(default_factory=dict)
    keep: Any = None  # a TemporaryDirectory to keep alive, or the explainer object
    #: frame → the scores the Pi decides on (a bundle's classifier, ``edge.classify``), one per
    #: label; None: the explainer's own scores decide
    decide: Callable[[np.ndarray], np.ndarray] | None = None

    def colors(self) -> dict[str, tuple[int, int, int]]:
        """Stable colours: the seed's for error/break/length, the palette by label index otherwise."""
        out, i = {}, 0
        for lab in self.labels:
            if lab in LABEL_COLORS:
                out[lab] = LABEL_COLORS[lab]
            else:
                out[lab], i = PALETTE[i % len(PALETTE)], i + 1
        return out

    def flagged(self, scores: dict[str, float]) -> list[str]:
        """Labels the model flags for these scores (see module doc)."""
        if self.task == "multiclass":
            return [max(scores, key=scores.__getitem__)] if scores else []
        seam = "good" in self.labels and len(self.labels) > 1
        return [
            lab
            for lab in self.labels
            if not (seam and lab == "good") and scores.get(lab, 0.0) >= self.thresholds.get(lab, 0.5)
        ]


def _is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / "manifest.json").is_file()


def open_source(
    model: str | Path,
    method: str | None = None,
    layer: str | None = None,
    threads: int = 2,
    preprocess: str | None = None,
    weights: str | Path | None = None,
    classes: str | Path | None = None,
) -> HeatmapSource:
    """A ``.keras`` file, a bundle or an application name → a ``HeatmapSource`` for ``method``.

    ``preprocess``: the model's input mode (``edge.preprocess``); None takes the bundle's manifest,
    the ``.keras`` metadata or the application's ``preprocess_input``, else seam. ``weights`` and
    ``classes`` go with ``vgg16`` / ``mobilenet_v2`` (``convert.applications``).
    """
    from convert.applications import is_application
    from convert.loading import resolve_preprocess
    from edge.bundle import load_bundle

    path = Path(model)
    if method is not None and method not in METHODS:
        raise ModelError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if is_application(model):
        from convert.loading import load_model_any

        amodel, meta = load_model_any(str(model), size=None, weights=weights, classes=classes)
        mode = resolve_preprocess(preprocess, str(meta["preprocess"]), False, model)
        return _keras_source(amodel, meta, method or "tf", layer, threads, mode, str(model))
    if weights is not None or classes is not None:
        raise ModelError(f"--model {model}: --weights and --classes go with --model vgg16 or mobilenet_v2")
    if _is_bundle(path):
        b = load_bundle(path)
        resolve_preprocess(preprocess, b.preprocess_mode, True, model)
        gc = b.gradcam
        has_litert = bool(gc) and b.has(gc.get("explainer", "explainer")) and b.has(gc.get("head", "head"))
        method = method or ("litert" if has_litert else "tf")
        if method == "litert" and not has_litert:
            raise ModelError(f"{path}: bundle has no Grad-CAM explainer/head; use --method tf")
        if method == "litert" and layer and layer != gc.get("layer"):
            raise ModelError(
                f"{path}: the bundle's explainer was exported for layer "
                f"{gc.get('layer')!r}, "
                f"not {layer!r}; use --method tf to explain another layer"
            )
        if method == "tf" and not b.has("keras"):
            raise ModelError(f"{path}: bundle has no 'keras' model for --method tf")
        decide = None  # the user's choices are checked: open what the Pi flags with
        if b.task == "multilabel":  # its classifier (int8, test-time views averaged)
            from edge.classify import Classifier

            decide = Classifier(b, threads=threads).classify
        refs = gc.get("peak_ref")
        same_layer = layer in (None, gc.get("layer"))
        peak_ref = {lab: r for lab, r in zip(b.labels, refs)} if refs and same_layer else {}
        if method == "litert":
            from edge.gradcam import Explainer

            ex = Explainer(b, threads=threads)
            return HeatmapSource(
                ex.explain, b.labels, b.task, dict(b.thresholds), "litert", ex.layer, ex.peak_ref, ex, decide
            )
        from convert.gradcam_tf import TFGradCAM

        tg = TFGradCAM(
            b.path("keras"),
            labels=b.labels,
            layer=layer,
            height=b.height,
            width=b.width,
            preprocess=b.preprocess_mode,
        )
        return HeatmapSource(tg.explain, b.labels, b.task, dict(b.thresholds), "tf", tg.layer, peak_ref, tg, decide)

    if not path.is_file():
        raise ModelError(f"{path}: no such .keras file or model bundle")
    from convert.models import load_keras

    kmodel, meta = load_keras(path)
    mode = resolve_preprocess(preprocess, str(meta.get("preprocess") or "seam"), False, model)
    return _keras_source(kmodel, meta, method or "tf", layer, threads, mode, path.stem)


def _keras_source(
    kmodel: Any, meta: dict[str, Any], method: str, layer: str | None, threads: int, mode: str, name: str
) -> HeatmapSource:
    """A loaded Keras model → the TF path, or (litert) its explainer exported into a temporary
    bundle that records ``mode``, run as the Pi runs it."""
    from convert.gradcam_tf import TFGradCAM

    labels = list(meta["labels"])
    if method == "tf":
        tg = TFGradCAM(kmodel, labels=labels, layer=layer, preprocess=mode)
        task = str(meta.get("task") or tg.task)
        return HeatmapSource(tg.explain, tg.labels, task, {}, "tf", tg.layer, {}, tg)
    from convert.explainer import export_explainer
    from edge.bundle import input_section, write_manifest
    from edge.gradcam import Explainer

    tmp = tempfile.TemporaryDirectory(prefix="seamqc-explainer-")
    files, gc = export_explainer(kmodel, tmp.name, layer=layer)
    h, w = (int(v) for v in kmodel.inputs[0].shape[1:3])
    write_manifest(
        tmp.name,
        {
            "name": name,
            "task": meta["task"],
            "labels": labels,
            "input": {"height": h, "width": w, **input_section(mode)},
            "classifier": "explainer",
            "gradcam": gc,
        },
        files,
    )
    ex = Explainer(tmp.name, threads=threads)
    return HeatmapSource(ex.explain, ex.labels, meta["task"], {}, "litert", ex.layer, ex.peak_ref, (tmp, ex))


# ----------------------------------------------------------------------------- data side


@dataclass(frozen=True)
class Item:
    path: str
    stem: str
    truth: tuple[str, ...] | None  # labels true in the data set, None when unknown


def collect_items(data: Sequence[str], limit: int | None = None) -> list[Item]:
    """Image files, or one CSV / seed-CSV folder / class-per-folder tree → items with unique stems."""
    from convert.data import load_dataset

    if not data:
        raise DataError("--data: nothing given")
    entries: list[tuple[str, tuple[str, ...] | None]] = []
    if all(Path(d).suffix.lower() in IMAGE_EXTS for d in data):
        for d in data:
            if not Path(d).is_file():
                raise DataError(f"{d}: image not found")
            entries.append((str(Path(d)), None))
    else:
        if len(data) != 1:
            raise DataError(f"--data: give one CSV or folder, or only image files (got {' '.join(data)})")
        try:
            ds = load_dataset(data[0])
        except DataError as e:  # a flat image folder or a plain list of images: no truth, still images
            from convert.data import image_list

            try:
                entries.extend((p, None) for p in image_list(data[0]))
            except DataError:
                raise e from None
        else:
            for p, t in zip(ds.paths, ds.targets):
                entries.append((p, tuple(lab for lab, v in zip(ds.labels, t) if v > 0.5)))
    if limit is not None:
        entries = entries[: max(0, int(limit))]
    stems: dict[str, int] = {}
    for p, _ in entries:
        stems[Path(p).stem] = stems.get(Path(p).stem, 0) + 1
    items = []
    used: set[str] = set()
    for p, truth in entries:
        stem = Path(p).stem
        if stems[stem] > 1:  # same file name in several folders (class-per-folder sets)
            stem = f"{Path(p).parent.name}_{stem}"
        base, n = stem, 2
        while stem in used:
            stem, n = f"{base}_{n}", n + 1
        used.add(stem)
        items.append(Item(p, stem, truth))
    return items


# ----------------------------------------------------------------------------- drawing


def _text(
    img: np.ndarray, lines: Sequence[tuple[str, tuple[int, int, int]]], x: int, y: int, scale: float = 0.42
) -> None:
    for i, (s, color) in enumerate(lines):
        yy = y + int(16 * i * scale / 0.42)
        cv2.putText(img, s, (x, yy), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, s, (x, yy), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def combined_cam(heatmaps: Sequence[Heatmap], peak_ref: dict[str, float | None], shape: tuple[int, int]) -> np.ndarray:
    """Pixelwise max of the shown labels' maps, each scaled by its strength (for the JET column)."""
    from edge.gradcam import strength

    out = np.zeros(shape, np.float32)
    for hm in heatmaps:
        out = np.maximum(out, hm.cam * strength(hm.peak, peak_ref.get(hm.label)))
    return out


def sheet_row(
    frame: np.ndarray,
    heatmaps: dict[str, Heatmap],
    shown: Sequence[str],
    src: HeatmapSource,
    title: str,
    truth: tuple[str, ...] | None,
    cell: int = 200,
) -> np.ndarray:
    """One contact-sheet row: original | heatmap (JET) | overlay, with names and scores written on."""
    colors = src.colors()
    hms = [heatmaps[lab] for lab in shown]
    overlay = overlay_labels(frame, hms, src.peak_ref, colors=colors)
    jet = overlay_jet(np.zeros_like(frame), combined_cam(hms, src.peak_ref, frame.shape[:2]), alpha=1.0)
    cells = [cv2.resize(im, (cell, cell), interpolation=cv2.INTER_AREA) for im in (frame, jet, overlay)]
    _text(cells[0], [(title[:28], (255, 255, 255))], 4, 14)
    if truth is not None:
        _text(cells[0], [("truth: " + (",".join(truth) or "-"), (255, 255, 255))], 4, cell - 8)
    what = ",".join(shown) if shown else "(none flagged)"
    _text(cells[1], [("Grad-CAM " + what, (255, 255, 255))], 4, 14)
    lines = [
        (
            f"{lab} {heatmaps[lab].score:.2f}" + (" *" if lab in shown else ""),
            colors.get(lab, (255, 255, 255)) if lab in shown else (200, 200, 200),
        )
        for lab in src.labels
        if lab in heatmaps
    ]
    _text(cells[2], lines[:10], 4, 14)
    return np.hstack(cells)


def write_sheets(rows: list[np.ndarray], out: Path, per_sheet: int) -> list[Path]:
    """Stack rows into ``contact_sheet.png`` (and ``_2``, ``_3`` … beyond ``per_sheet`` rows)."""
    paths = []
    for i in range(0, len(rows), max(1, per_sheet)):
        chunk = rows[i : i + per_sheet]
        header = np.full((22, chunk[0].shape[1], 3), 32, np.uint8)
        cw = chunk[0].shape[1] // 3
        for j, name in enumerate(("original", "heatmap", "overlay")):
            _text(header, [(name, (255, 255, 255))], j * cw + 6, 15, 0.5)
        sheet = np.vstack([header] + chunk)
        p = out / ("contact_sheet.png" if i == 0 else f"contact_sheet_{i // per_sheet + 1}.png")
        if not cv2.imwrite(str(p), sheet):
            raise DataError(f"{p}: cannot write image")
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------- runner


def make_heatmaps(
    model: str | Path,
    data: Sequence[str],
    out: str | Path,
    method: str | None = None,
    raw: bool = False,
    labels: Sequence[str] | None = None,
    layer: str | None = None,
    limit: int | None = None,
    threads: int = 2,
    sheet_rows: int = 32,
    progress: bool = True,
    top_k: int | None = None,
    preprocess: str | None = None,
    weights: str | Path | None = None,
    classes: str | Path | None = None,
) -> dict[str, Any]:
    """Do the work of the command; returns a small summary (counts, files, method, layer).

    What is explained per image (``explained_labels``): ``labels`` when given, else the ``top_k``
    best-scoring classes, else every label for ``raw``, else the predicted class (multiclass) or
    every label with the flagged ones shown (multilabel)."""
    from convert.data import read_image

    outdir = Path(out)
    if outdir.exists() and not outdir.is_dir():  # before the (slow) model load
        raise DataError(f"--out {outdir}: exists and is not a folder; choose a folder for the heatmaps")
    if top_k is not None and top_k < 1:
        raise DataError(f"--top-k {top_k}: must be at least 1")
    src = open_source(model, method, layer, threads, preprocess, weights, classes)
    for lab in labels or ():
        if lab not in src.labels:
            raise ModelError(unknown_class(lab, src.labels))
    items = collect_items(data, limit)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"--out {outdir}: cannot create the folder ({e.strerror or e})") from None
    try:
        return _write_all(src, items, outdir, labels, raw, sheet_rows, progress, read_image, top_k)
    except OSError as e:  # a read-only or full folder: one line naming the file, not a traceback
        raise DataError(f"{e.filename or outdir}: cannot write ({e.strerror or e})") from None


def _write_all(
    src: HeatmapSource,
    items: list[Item],
    outdir: Path,
    labels: Sequence[str] | None,
    raw: bool,
    sheet_rows: int,
    progress: bool,
    read_image: Callable[[str], np.ndarray],
    top_k: int | None = None,
) -> dict[str, Any]:
    """The writing half of :func:`make_heatmaps`, apart so that its OSErrors become one line."""
    rows, n_raw, records = [], 0, []
    explained: list[list[str]] = []
    it = tqdm(items, desc=f"heatmaps ({src.method})", unit="img", disable=not progress)
    for item in it:
        frame = read_image(item.path)
        if labels:
            hms = src.explain(frame, list(labels))
        elif top_k is not None or (src.task == "multiclass" and not raw):
            hms = src.explain(frame, None, top_k=top_k or 1)  # one forward pass chooses the classes
        else:
            hms = src.explain(frame, list(src.labels))
        if src.decide is not None:  # the Pi's scores, on the explainer's maps
            pi = src.decide(frame)
            hms = {lab: replace(hm, score=float(pi[src.labels.index(lab)])) for lab, hm in hms.items()}
        scores = {lab: hm.score for lab, hm in hms.items()}
        shown = list(labels) if labels else (list(hms) if top_k is not None else src.flagged(scores))
        explained.append(list(hms))
        overlay = overlay_labels(frame, [hms[lab] for lab in shown], src.peak_ref, colors=src.colors())
        if not cv2.imwrite(str(outdir / f"{item.stem}.overlay.png"), overlay):
            raise DataError(f"{outdir / (item.stem + '.overlay.png')}: cannot write image")
        best = max(shown, key=lambda lab: hms[lab].score) if shown else None
        # the seeds' picture: JET map of the (best) explained class over the image, alpha 0.4, unfaded
        jet = overlay_jet(frame, hms[best].cam, alpha=JET_ALPHA) if best else frame
        if not cv2.imwrite(str(outdir / f"{item.stem}.jet.png"), jet):
            raise DataError(f"{outdir / (item.stem + '.jet.png')}: cannot write image")
        if raw:
            for lab, hm in hms.items():
                path = outdir / f"{item.stem}.{file_safe(lab)}.npy"
                with open(path, "wb") as f:  # np.save on a path: an OSError without the file name
                    np.save(f, np.asarray(hm.cam, np.float32))
                n_raw += 1
        for lab, hm in hms.items():
            records.append(
                (item.stem, Path(item.path).name, lab, f"{hm.score:.6f}", f"{hm.peak:.6g}", int(lab in shown))
            )
        rows.append(sheet_row(frame, hms, shown, src, Path(item.path).name, item.truth))
    sheets = write_sheets(rows, outdir, sheet_rows) if rows else []
    with open(outdir / "heatmaps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stem", "name", "label", "score", "peak", "shown"])
        w.writerows(records)
    return {
        "images": len(items),
        "raw_files": n_raw,
        "sheets": [str(p) for p in sheets],
        "method": src.method,
        "layer": src.layer,
        "out": str(outdir),
        "explained": explained,
    }


def unknown_class(name: str, labels: Sequence[str]) -> str:
    """One line for a ``--class`` the model lacks: close names, or the list when it is short
    (ImageNet's 1,000 would make a line nobody reads)."""
    import difflib

    near = difflib.get_close_matches(name, list(labels), n=3, cutoff=0.6)
    if near:
        hint = f"did you mean {', '.join(near)}?"
    elif len(labels) <= 20:
        hint = f"its classes are {', '.join(labels)}"
    else:
        hint = f"it has {len(labels)} classes, named as in --classes"
    return f"--class {name!r}: not one of the model's classes; {hint}"


def file_safe(label: str) -> str:
    """A label as part of a file name (ImageNet names are safe; '/' or spaces would not be)."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in label)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "heatmaps",
        help="Grad-CAM overlays and a contact sheet",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument(
        "--model",
        required=True,
        help=".keras file, model bundle directory, or vgg16 / mobilenet_v2 (ImageNet; --weights FILE.h5 offline)",
    )
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="images, a folder of images, a test CSV (or a CSV listing images), a class-per-folder tree",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="tf: GradientTape on the Keras model; litert: the Pi's explainer + numpy head "
        "(default: litert for a bundle, tf for a .keras)",
    )
    p.add_argument("--raw", action="store_true", help="also write <stem>.<label>.npy (float32 0..1) per label")
    p.add_argument(
        "--labels",
        "--class",
        nargs="+",
        action="extend",
        default=None,
        dest="labels",
        metavar="NAME",
        help="classes to explain (repeatable; default: --top-k, else the flagged ones)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="K",
        help="explain the K best-scoring classes per image (default for a multiclass model: 1)",
    )
    from convert.loading import add_preprocess_args

    add_preprocess_args(p)
    p.add_argument("--layer", default=None, help="Grad-CAM layer (default: the model's feature map)")
    p.add_argument("--limit", type=int, default=None, help="at most N images")
    p.add_argument("--threads", type=int, default=2, help="LiteRT threads (litert method)")
    p.add_argument("--sheet-rows", type=int, default=32, help="rows per contact sheet")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    s = make_heatmaps(
        args.model,
        args.data,
        args.out,
        args.method,
        args.raw,
        args.labels,
        args.layer,
        args.limit,
        args.threads,
        args.sheet_rows,
        top_k=args.top_k,
        preprocess=args.preprocess,
        weights=args.weights,
        classes=args.classes,
    )
    print(
        f"{s['images']} images, method {s['method']}, layer {s['layer']}: colour and JET overlays"
        + (f", {s['raw_files']} raw maps" if args.raw else "")
        + f" and {len(s['sheets'])} contact sheet(s) in {s['out']}"
    )
    return 0
