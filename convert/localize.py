"""``python -m convert localize``: does the heatmap point at the defect? Measured on boxed data.

Data: a folder from ``convert synth`` with ``data.csv`` and ``boxes.csv`` (``name,label,x,y,w,h``,
one row per defect instance, pixels of the saved image). For every image and every label that
has at least one box there AND that the model flags (multilabel: score ≥ the bundle's
threshold or 0.5; multiclass: the predicted class), the label's Grad-CAM at the image's
resolution is scored with

* **pointing game** (Zhang et al. 2016): a hit when the heatmap's maximum lies inside one of
  the label's boxes grown by ``--tolerance`` px on every side (default 8 px at 256×256 ≈ 3 % of
  the side; the original uses 15 px at 224). Several boxes of the same label in one image
  count as one case (hit if the maximum is in any of them). A flat (all-zero) map is a miss;
* **mass in box**: the share of the heatmap's sum inside the union of the label's boxes (no
  tolerance), next to ``box area``, the share a uniform map would get, for scale.

For misses it reports where the maximum went: mean distance to the nearest box (px) and the
share that lies within 10 % of the image border (seam ends / frame edge) — a model that looks at
the seam ends or the fabric texture instead of the defect shows up there.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.errors import DataError

DEFAULT_TOLERANCE = 8
BORDER = 0.10


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    score: float
    hit: bool
    mass_in_box: float
    box_area: float
    peak: float
    argmax_xy: tuple[int, int]
    miss_dist_px: float
    at_border: bool


def read_boxes(path: str | Path) -> dict[str, dict[str, list[tuple[int, int, int, int]]]]:
    """``boxes.csv`` → {image name: {label: [(x, y, w, h), …]}}; bad rows are a ``DataError``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: boxes.csv not found (make the data set with `python -m convert synth --out DIR`)")
    out: dict[str, dict[str, list[tuple[int, int, int, int]]]] = defaultdict(lambda: defaultdict(list))
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"name", "label", "x", "y", "w", "h"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise DataError(f"{path}: header {reader.fieldnames} needs columns {','.join(sorted(need))}")
        for lineno, row in enumerate(reader, start=2):
            try:
                box = tuple(int(round(float(row[k]))) for k in ("x", "y", "w", "h"))
            except (TypeError, ValueError):
                bad = [row.get(k) for k in "xywh"]
                raise DataError(f"{path}:{lineno}: box {bad} is not numeric") from None
            if box[2] <= 0 or box[3] <= 0:
                raise DataError(f"{path}:{lineno}: box {list(box)} has no area")
            out[row["name"].strip()][row["label"].strip()].append(box)  # type: ignore[arg-type]
    return {k: dict(v) for k, v in out.items()}


def box_mask(shape: tuple[int, int], boxes: Sequence[tuple[int, int, int, int]], grow: int = 0) -> np.ndarray:
    """Boolean mask of the union of ``boxes`` (each grown by ``grow`` px), clipped to the image."""
    h, w = shape
    m = np.zeros((h, w), bool)
    for x, y, bw, bh in boxes:
        x0, y0 = max(0, x - grow), max(0, y - grow)
        x1, y1 = min(w, x + bw + grow), min(h, y + bh + grow)
        if x1 > x0 and y1 > y0:
            m[y0:y1, x0:x1] = True
    return m


def score_case(
    cam: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], tolerance: int
) -> tuple[bool, float, float, tuple[int, int], float, bool]:
    """(hit, mass in box, box area share, argmax (x, y), distance to nearest box if missed, at border)."""
    h, w = cam.shape
    inside = box_mask((h, w), boxes)
    total = float(cam.sum())
    area = float(inside.mean())
    if not np.isfinite(total) or total <= 0 or float(cam.max()) <= 0:
        return False, 0.0, area, (-1, -1), float("nan"), False
    yy, xx = (int(v) for v in np.unravel_index(int(np.argmax(cam)), cam.shape))
    hit = bool(box_mask((h, w), boxes, tolerance)[yy, xx])
    mass = float(np.clip(cam[inside].sum() / total, 0.0, 1.0))
    dist = 0.0
    if not hit:
        dist = min(
            float(np.hypot(max(x - xx, 0, xx - (x + bw - 1)), max(y - yy, 0, yy - (y + bh - 1))))
            for x, y, bw, bh in boxes
        )
    border = xx < BORDER * w or xx >= (1 - BORDER) * w or yy < BORDER * h or yy >= (1 - BORDER) * h
    return hit, mass, area, (int(xx), int(yy)), dist, bool(border)


def summarize(cases: Sequence[Case], labels: Sequence[str], totals: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per label: cases with boxes, flagged, pointing-game hit rate, mean mass in box, where misses went."""
    out = {}
    for lab in labels:
        cs = [c for c in cases if c.label == lab]
        misses = [c for c in cs if not c.hit]
        dists = [c.miss_dist_px for c in misses if np.isfinite(c.miss_dist_px)]
        out[lab] = {
            "cases": totals.get(lab, 0),
            "flagged": len(cs),
            "hits": sum(c.hit for c in cs),
            "pointing": (sum(c.hit for c in cs) / len(cs)) if cs else None,
            "mass_in_box": float(np.mean([c.mass_in_box for c in cs])) if cs else None,
            "box_area": float(np.mean([c.box_area for c in cs])) if cs else None,
            "flat": sum(c.peak <= 0 for c in cs),
            "miss_dist_px": float(np.mean(dists)) if dists else None,
            "miss_at_border": (sum(c.at_border for c in misses) / len(misses)) if misses else None,
        }
    return out


def localize(
    model: str | Path,
    data: str | Path,
    method: str | None = None,
    tolerance: int = DEFAULT_TOLERANCE,
    layer: str | None = None,
    threads: int = 2,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the measurement (module doc) → {"method", "layer", "tolerance_px", "labels", "cases"}."""
    from convert.data import read_csv, read_image
    from convert.heatmaps import open_source

    folder = Path(data)
    csv_path = folder / "data.csv" if folder.is_dir() else folder
    boxes_path = (folder if folder.is_dir() else folder.parent) / "boxes.csv"
    boxes = read_boxes(boxes_path)
    ds = read_csv(csv_path)
    src = open_source(model, method, layer, threads)
    todo = []
    for p in ds.paths:
        name = Path(p).name
        by_label = {lab: b for lab, b in boxes.get(name, {}).items() if lab in src.labels}
        if by_label:
            todo.append((p, name, by_label))
    if limit is not None:
        todo = todo[: max(0, int(limit))]
    if not todo:
        raise DataError(f"{boxes_path}: no boxes for labels {list(src.labels)} on the images of {csv_path}")
    it = tqdm(todo, desc=f"localize ({src.method})", unit="img", disable=not progress)
    cases: list[Case] = []
    totals: dict[str, int] = defaultdict(int)
    for p, name, by_label in it:
        frame = read_image(p)
        for lab in by_label:
            totals[lab] += 1
        hms = src.explain(frame, list(src.labels))
        flagged = set(src.flagged({lab: hm.score for lab, hm in hms.items()}))
        for lab, bxs in by_label.items():
            if lab not in flagged:
                continue
            hm = hms[lab]
            hit, mass, area, xy, dist, border = score_case(hm.cam, bxs, tolerance)
            cases.append(Case(name, lab, hm.score, hit, mass, area, float(hm.peak), xy, dist, border))
    labels = sorted(totals, key=lambda lab: src.labels.index(lab))
    return {
        "method": src.method,
        "layer": src.layer,
        "tolerance_px": tolerance,
        "images": len(todo),
        "labels": summarize(cases, labels, dict(totals)),
        "cases": [asdict(c) for c in cases],
    }


def format_table(result: dict[str, Any]) -> str:
    """The printed table (percentages; '-' where nothing was flagged)."""

    def pct(v):
        return "-" if v is None else f"{100 * v:5.1f} %"

    def num(v, f="{:.3f}"):
        return "-" if v is None else f.format(v)

    lines = [
        f"localisation: method {result['method']}, layer {result['layer']}, pointing tolerance "
        f"{result['tolerance_px']} px, {result['images']} images with boxes",
        f"{'label':<10}{'cases':>6}{'flagged':>8}{'pointing':>10}{'mass in box':>12}{'box area':>10}"
        f"{'flat':>6}{'miss dist':>10}{'miss@border':>12}",
    ]
    for lab, s in result["labels"].items():
        lines.append(
            f"{lab:<10}{s['cases']:>6}{s['flagged']:>8}{pct(s['pointing']):>10}"
            f"{num(s['mass_in_box']):>12}"
            f"{num(s['box_area']):>10}{s['flat']:>6}{num(s['miss_dist_px'], '{:.1f}'):>10}"
            f"{pct(s['miss_at_border']):>12}"
        )
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "localize",
        help="pointing game + mass-in-box of the heatmaps on boxed data",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--model", required=True, help=".keras file or model bundle directory")
    p.add_argument("--data", required=True, help="folder with data.csv + boxes.csv (convert synth --out)")
    p.add_argument(
        "--method",
        choices=("litert", "tf"),
        default=None,
        help="litert (default for a bundle) or tf (default for a .keras)",
    )
    p.add_argument("--json", default=None, help="also write the numbers (and every case) to this file")
    p.add_argument("--tolerance", type=int, default=DEFAULT_TOLERANCE, help="pointing-game tolerance in px")
    p.add_argument("--layer", default=None, help="Grad-CAM layer (tf method; default: the model's feature map)")
    p.add_argument("--limit", type=int, default=None, help="at most N images with boxes")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.tolerance < 0:
        raise DataError(f"--tolerance {args.tolerance}: must be ≥ 0")
    res = localize(args.model, args.data, args.method, args.tolerance, args.layer, args.threads, args.limit)
    print(format_table(res))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
        except OSError as e:
            raise DataError(f"{args.json}: cannot write ({e.strerror or e})") from None
    return 0
