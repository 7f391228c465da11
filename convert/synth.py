"""``python -m convert synth``: labeled synthetic seam images, or a seam video with ground truth.

Stills (``--out DIR --count N``) are 256×256 BGR PNGs of what the camera ROI sees: a seam
crossing the frame, 2 mm or 4 mm stitches at a scale drawn per image from 9..16 px/mm (4.5..8 at
the model's 128 px, ``SCALE_RANGE``; ``--px-per-mm`` pins it), rotated ±15° and anywhere in the middle 60 % of the
frame, under slight perspective, uneven light, vignetting, glints, white balance, defocus and
motion blur, noise and JPEG. Labels follow the seed (``good``, ``error``, ``break``, ``length``;
``length`` true = 2 mm); defects are placed wholly inside the frame and their tight boxes go to
``boxes.csv``; ``meta.csv`` names each image's family, scale, thread width, contrast, defect kinds and how
visible its least visible defect is (``synth_render.defect_visibility``; empty for good stills).

Fabric families (``FAMILIES``, a public contract: ``--families``/``--exclude-families``,
``convert leave-out``): plain (woven cotton, linen, basket, canvas), twill (incl. denim), satin,
knit (jersey, rib), fleece (incl. terry; its pile hides parts of the thread), felt (non-woven),
print (prints, gingham, yarn-dyed checks, jacquard). Each image draws its family uniformly among
the allowed ones, then a look within it. Three more families are held back
(``HELD_BACK_FAMILIES``: corduroy, herringbone tweed, mélange jersey): drawn only when
``--families`` names them, so that no model trained on the default draw has seen them
(``convert leave-out --held-back``). Threads run from contrasting to tone-on-tone (~35 % differ
from the fabric by only 0.01..0.12 in luma; ``--tone-share`` sets that share), 2..12 px wide at 256,
with sheen and twist.

Defect kinds and labels (``synth_render.DEFECT_LABEL``): ``break`` = ``cut`` (thread broken,
loose ends) or ``missing`` (a clean gap); ``error`` = ``skip`` (one stitch 2-3× long),
``loop``/``sag`` (loop or slack thread), ``overlap`` (double stitches), ``crooked`` (the stitch
line jumps 1.2 mm or more sideways within one to three stitches, further than a normal seam
bends), ``pucker``, ``pinch`` (a fold caught in the seam), ``bobbin`` (bobbin thread pulled up at
the holes), ``stain`` (one soft, irregular patch 2–8 mm across of oil, dirt, rust or a water
mark's tide line, on or beside the seam, that pulls the colour of the cloth and thread under it
towards its own: ``synth_render.STAIN_RADIUS_MM``) and ``needle_mark`` (holes without thread).
Stains and needle marks are ``error``: a flaw on the seam the operator must look at, and the
dashboards treat anything not good as a defect. Benign look-alikes stay ``good``: lint, prints,
the seam allowance's fold edge, wrinkles away from the seam. A defect must be visible to be
labelled: one that changes the model's 128-px input by less than ``MIN_VISIBILITY`` (L2 norm in
per-image standard deviations) is redrawn on the same fabric (``synth_render.render_still``).

Video (``--video FILE.mp4 --frames N``) is a 640×480 strip of the same seam world scrolling past
the camera at sewing speed (``--stitches-per-min`` × base stitch length / 60 mm/s), with error and
break defects and stretches of the other stitch length; ``FILE.truth.csv`` says when each is
wholly inside the ROI: the station's ``camera.roi`` (``--config``), ``--roi X,Y,W,H``, or by
default ``[192, 112, 256, 256]``. ``--impair blur|dark|frozen|covered|stopped`` impairs the camera or
the line from frame ``--impair-from`` (default half-way) on, so that a station first learns its
health baseline (``edge/health.py``); without it the output is unchanged.

Everything is numpy + OpenCV (no TensorFlow) and a pure function of ``--seed``: image i of a
data set is drawn from its own generator ``SeedSequence([seed, i])``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from convert.data import seed_csv_text
from convert.roi import add_roi_args, roi_from_args
from convert.synth_fabric import BASE_PX_PER_MM as DEFAULT_PX_PER_MM  # at 256 px: 2 mm = 25 px
from convert.synth_fabric import FAMILIES, HELD_BACK_FAMILIES, RANDOM_FAMILY
from convert.synth_render import ERROR_KINDS, Box, NoRoomError, render_still
from edge.errors import DataError, SeamQCError
from edge.seam import DEFAULT_ROI as ROI
from edge.seam import SEAM_LABELS as LABELS

DEFAULT_SIZE = 256
ScaleRanges = tuple[tuple[float, float], ...]  # ``--scale-range LO:HI[,LO:HI…]``
# px/mm at 256 px drawn per still (log-uniform) = 4.5..8 px/mm at 128. Not wider by default: the
# `length` label is a length in pixels, and below a 2:1 scale range 2 mm and 4 mm stitches stay
# apart (2 mm at 16 px/mm = 32 px < 4 mm at 9 px/mm = 36 px); `--px-per-mm` reaches 1..100 px/mm.
SCALE_RANGE = (9.0, 16.0)
# error_kind / break_kind: the defect drawn for that label (synth_render.ERROR_KINDS / BREAK_KINDS),
# empty when the label is false: `evaluate --by-kind` reads them (which defects does the model miss?)
META_HEADER = ["name", "family", "px_per_mm", "thread_px", "contrast", "error_kind", "break_kind", "visibility"]
RENDER_MIN = 256  # smaller data sets are rendered at 256 and area-downscaled
DEFAULT_DEFECT_RATE = 0.6  # share of stills with ≥ 1 defect
BOTH_SHARE = 0.2  # of those, share with both an error and a break

FRAME_W, FRAME_H = 640, 480


@dataclass(frozen=True)
class TruthRow:
    """One injected video defect: frames in which it is wholly inside the ROI, box at mid frame."""

    defect_id: int
    label: str
    first_frame: int
    last_frame: int
    x: int
    y: int
    w: int
    h: int


# --------------------------------------------------------------------------- stills API


def default_px_per_mm(size: int) -> float:
    """The old fixed scale for an image size (12.5 px/mm at 256; stills now draw it, see
    ``SCALE_RANGE``, unless ``--px-per-mm`` pins it)."""
    return DEFAULT_PX_PER_MM * size / DEFAULT_SIZE


def check_families(
    families: Sequence[str] | None, exclude: Sequence[str] | None = None, flag: str = "--families"
) -> tuple[str, ...] | None:
    """The allowed families (None = the default draw, ``FAMILIES``); a held-back family
    (``HELD_BACK_FAMILIES``) is drawn only when ``families`` names it; an unknown name is a
    DataError naming it."""
    known = FAMILIES + HELD_BACK_FAMILIES
    for names, fl in ((families, flag), (exclude, "--exclude-families")):
        bad = [f for f in (names or ()) if f not in known]
        if bad:
            raise DataError(f"{fl}: unknown family {', '.join(bad)} (choose from {', '.join(known)})")
    pool = [f for f in known if f in families] if families else list(FAMILIES)
    chosen = [f for f in pool if f not in (exclude or ())]
    if not chosen:
        raise DataError(f"{flag}: no fabric family left to draw from")
    return None if chosen == list(FAMILIES) else tuple(chosen)


def draw_labels(rng: np.random.Generator, defect_rate: float = DEFAULT_DEFECT_RATE) -> dict[str, bool]:
    """Labels from the default mix (~40 % good, error and break ~36 % each, length 50/50)."""
    error = brk = False
    if rng.random() < defect_rate:
        u = rng.random()
        if u < BOTH_SHARE:
            error = brk = True
        elif u < (1 + BOTH_SHARE) / 2:
            error = True
        else:
            brk = True
    length = bool(rng.random() < 0.5)
    return {"good": not (error or brk), "error": error, "break": brk, "length": length}


def render_image(
    rng: np.random.Generator,
    size: int = DEFAULT_SIZE,
    px_per_mm: float | None = None,
    labels: dict[str, bool] | None = None,
    defect_rate: float = DEFAULT_DEFECT_RATE,
    families: Sequence[str] | None = None,
    kinds: dict[str, str] | None = None,
    meta: dict | None = None,
    scale_range: ScaleRanges | None = None,
    length_changes: float = 0.0,
    random_textures: float = 0.0,
    tone_share: float | None = None,
    error_weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, dict[str, bool | None], list[Box]]:
    """Render one labeled seam still.

    ``labels`` may force ``error``/``break``/``length`` (missing keys are drawn); ``good`` is
    always derived. Returns (uint8 BGR [size, size, 3], labels, boxes in image pixels).
    Sizes below 256 are rendered at 256 and area-downscaled, so tiny test sets keep
    threads and defects visible. The scale is drawn per image from ``SCALE_RANGE`` (× size/256)
    unless ``px_per_mm`` pins it (then ±8 %). ``families`` restricts the fabric families,
    ``kinds`` forces defect kinds (``{"error": "stain", "break": "missing"}``), ``meta`` (a
    dict) receives family, px_per_mm (of the saved image), thread_px and contrast.
    ``scale_range`` (px/mm at 256; one or more ranges, each image picks one uniformly, then a
    log-uniform scale in it) replaces ``SCALE_RANGE``: wider views for a scale-robust model.
    Outside ``SCALE_RANGE`` the returned ``length`` is None (unknown: 2 mm and 4 mm stitches
    overlap in pixels across a range over 2:1, so the pixels cannot tell; ``train`` leaves it out).
    ``length_changes``: the share of normal seams whose stitch length changes between 2 and 4 mm in
    view (``length`` None: neither; not a defect). 0 draws nothing extra: default stills unchanged.
    ``random_textures``: the share of stills drawn on a random texture of no real fabric
    (``synth_fabric.RANDOM_FAMILY``) instead of ``families``; 0 draws nothing extra either.
    ``tone_share``: the share of threads of the fabric's own colour (luma within 0.01..0.12 of it;
    ``synth_render.thread_mode``) instead of ``TONE_SHARE`` (0.35); None: the default draw.
    ``error_weights``: one weight per ``ERROR_KINDS`` entry for the ``error`` kind (``--error-kinds``,
    see ``error_weights``); None: uniform, the default draw.
    """
    if size < 16:
        raise DataError(f"--size must be ≥ 16, got {size}")
    drawn = draw_labels(rng, defect_rate)
    if labels:
        for k in ("error", "break", "length"):
            if k in labels:
                drawn[k] = bool(labels[k])
    drawn["good"] = not (drawn["error"] or drawn["break"])
    change = bool(length_changes > 0 and drawn["good"] and rng.random() < length_changes)
    if random_textures > 0 and rng.random() < random_textures:
        families = (RANDOM_FAMILY,)
    rsize = max(size, RENDER_MIN)
    f = rsize / size
    if px_per_mm:
        ppm = float(px_per_mm) * rng.uniform(0.92, 1.08)
    else:
        ranges = scale_range or (SCALE_RANGE,)  # one range draws nothing extra: default stills unchanged
        lo, hi = ranges[int(rng.integers(len(ranges)))] if len(ranges) > 1 else ranges[0]
        ppm = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * size / DEFAULT_SIZE
    m: dict = {}
    # rare: an error and a break do not fit in the few stitches in view (4-mm stitches, a large or
    # pinned scale): zoom out until they do; the recorded scale is the one drawn
    steps = (1.0, 0.85, 0.7, *(0.55 * 0.85**i for i in range(12)))
    for zoom_out in steps:
        try:
            img, boxes = render_still(
                rng,
                rsize,
                ppm * zoom_out * f,
                drawn["error"],
                drawn["break"],
                drawn["length"],
                families=families,
                kinds=kinds,
                meta=m,
                length_change=change,
                tone_share=tone_share,
                error_weights=error_weights,
            )
            break
        except NoRoomError:
            if zoom_out == steps[-1]:
                raise
    ppm *= zoom_out
    if meta is not None:
        meta.update(m, px_per_mm=ppm, thread_px=m["thread_px"] / f)
    out_labels: dict[str, bool | None] = dict(drawn)
    if change:
        out_labels["length"] = None
    if scale_range and not px_per_mm and not SCALE_RANGE[0] <= ppm * DEFAULT_SIZE / size <= SCALE_RANGE[1]:
        out_labels["length"] = None
    if rsize != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        out = []
        for b in boxes:
            x0, y0 = int(np.floor(b.x / f)), int(np.floor(b.y / f))
            x1, y1 = int(np.ceil((b.x + b.w) / f)), int(np.ceil((b.y + b.h) / f))
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(size, x1), min(size, y1)
            out.append(Box(b.label, x0, y0, x1 - x0, y1 - y0, b.kind))
        boxes = out
    return img, out_labels, boxes


def _image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def _render_indexed(
    job: tuple[int, int, dict[str, Any]],
) -> tuple[int, bytes, dict[str, bool | None], list[Box], dict]:
    seed, i, opts = job
    meta: dict = {}
    img, labels, boxes = render_image(_image_rng(seed, i), meta=meta, **opts)
    ok, buf = cv2.imencode(
        ".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
    )
    if not ok:  # pragma: no cover
        raise DataError("PNG encoding failed")
    return i, buf.tobytes(), labels, boxes, meta


def _atomic_csv(path: Path, header: list[str], rows: Iterable[list[Any]]) -> None:
    """Write a CSV with the stdlib module via tmp + rename (readers never see half a file)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    _atomic_text(path, buf.getvalue())


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _prepare_dir(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir}: exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".synth-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"--out {out_dir}: not writable ({e.strerror or e})") from None
    return out_dir


def parse_scale_ranges(text: str) -> ScaleRanges:
    """``LO:HI[,LO:HI…]`` → ((lo, hi), …) for ``--scale-range`` (argparse reports a bad one in one line)."""
    try:
        out = []
        for part in text.split(","):
            lo, hi = (float(v) for v in part.split(":"))
            out.append((lo, hi))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO:HI[,LO:HI…] px/mm, e.g. 2.3:9,9:16") from None
    return tuple(out)


def parse_error_kinds(text: str) -> dict[str, float]:
    """``KIND=W[,KIND=W…]`` → {kind: weight} for ``--error-kinds`` (argparse reports a bad one in one line)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        kind, eq, w = part.partition("=")
        try:
            if not eq:
                raise ValueError
            out[kind.strip()] = float(w)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected KIND=WEIGHT[,KIND=WEIGHT…], e.g. stain=3,skip=2"
            ) from None
    return out


def error_weights(error_kinds: dict[str, float] | None) -> tuple[float, ...] | None:
    """``--error-kinds`` → one weight per ``ERROR_KINDS`` entry (a kind not named weighs 1), or
    None for the uniform draw; an unknown kind, a negative weight or all weights 0 is a DataError."""
    if not error_kinds:
        return None
    bad = [k for k in error_kinds if k not in ERROR_KINDS]
    if bad:
        raise DataError(f"--error-kinds: unknown kind {', '.join(bad)} (choose from {', '.join(ERROR_KINDS)})")
    for k, w in error_kinds.items():
        if not 0.0 <= w <= 1e6:
            raise DataError(f"--error-kinds {k}={w:g}: a weight must be in 0..1e6")
    weights = tuple(float(error_kinds.get(k, 1.0)) for k in ERROR_KINDS)
    if not any(weights):
        raise DataError("--error-kinds: every kind weighs 0 (an error image needs one kind to draw)")
    return weights


def check_scale_ranges(scale_range: ScaleRanges) -> None:
    """The one check of ``--scale-range`` values (``synth`` and ``convert ship``'s ``@LO:HI`` stages)."""
    if not scale_range:
        raise DataError("--scale-range: no range given")
    for lo, hi in scale_range:
        if not (0.5 <= lo < hi <= 200):
            raise DataError(f"--scale-range {lo:g}:{hi:g}: need 0.5 <= LO < HI <= 200 (px/mm at 256 px)")


def check_share(flag: str, share: float, error: type[SeamQCError] = DataError) -> float:
    """The one check of a share option (``--length-changes``, ``--random-textures``, in ``synth``
    and in ``convert ship``'s stages) → the share as a float, or ``error`` naming flag and value."""
    if not 0.0 <= float(share) <= 1.0:
        raise error(f"{flag} must be in 0..1, got {share:g}")
    return float(share)


def _check_opts(
    count: int,
    size: int,
    px_per_mm: float | None,
    defect_rate: float,
    scale_range: ScaleRanges | None = None,
    length_changes: float = 0.0,
) -> None:
    if int(count) <= 0:
        raise DataError(f"--count must be ≥ 1, got {count}")
    if int(size) < 16 or int(size) > 2048:
        raise DataError(f"--size must be in 16..2048, got {size}")
    if px_per_mm is not None and not (0.5 <= float(px_per_mm) <= 200):
        raise DataError(f"--px-per-mm must be in 0.5..200, got {px_per_mm}")
    if not (0.0 <= float(defect_rate) <= 1.0):
        raise DataError(f"--defect-rate must be in 0..1, got {defect_rate}")
    check_share("--length-changes", length_changes)
    if scale_range is not None:
        if px_per_mm is not None:
            raise DataError("--scale-range and --px-per-mm exclude each other (a range or one scale)")
        check_scale_ranges(scale_range)


def write_dataset(
    out_dir: str | os.PathLike,
    count: int,
    seed: int = 0,
    *,
    size: int = DEFAULT_SIZE,
    px_per_mm: float | None = None,
    defect_rate: float = DEFAULT_DEFECT_RATE,
    workers: int = 1,
    progress: bool = False,
    prefix: str = "synth_",
    families: Sequence[str] | None = None,
    exclude_families: Sequence[str] | None = None,
    kinds: dict[str, str] | None = None,
    scale_range: ScaleRanges | None = None,
    length_changes: float = 0.0,
    random_textures: float = 0.0,
    tone_share: float | None = None,
    error_kinds: dict[str, float] | None = None,
) -> Path:
    """Write ``count`` labeled stills + ``data.csv`` (seed format) + ``boxes.csv`` + ``meta.csv``
    (``META_HEADER``, one row per image); → data.csv path.

    ``families`` / ``exclude_families`` restrict the fabric families (``FAMILIES``); each image
    draws its family uniformly among those left. ``scale_range`` and ``length_changes``: see
    ``render_image`` (an empty ``length`` cell where it is unknown). Deterministic: the same (seed,
    count, options) give byte-identical files, whatever ``workers`` is (each image has its own
    generator). ``error_kinds`` ({kind: weight}, ``--error-kinds``) draws the ``error`` kinds by
    weight (a kind not named weighs 1) instead of uniformly.
    """
    _check_opts(count, size, px_per_mm, defect_rate, scale_range, length_changes)
    weights = error_weights(error_kinds)
    check_share("--random-textures", random_textures)
    if tone_share is not None:
        check_share("--tone-share", tone_share)
    fams = check_families(families, exclude_families)
    out = _prepare_dir(Path(out_dir))
    opts: dict[str, Any] = {
        "size": int(size),
        "px_per_mm": px_per_mm,
        "defect_rate": float(defect_rate),
        "families": fams,
    }
    if scale_range:
        opts["scale_range"] = tuple((float(lo), float(hi)) for lo, hi in scale_range)
    if length_changes:
        opts["length_changes"] = float(length_changes)
    if random_textures:
        opts["random_textures"] = float(random_textures)
    if tone_share is not None:
        opts["tone_share"] = float(tone_share)
    if weights is not None:
        opts["error_weights"] = weights
    if kinds:  # every error / break of the set is this kind (``render_image``'s ``kinds``)
        opts["kinds"] = dict(kinds)
    jobs = [(int(seed), i, opts) for i in range(int(count))]
    width = max(6, len(str(count - 1)))
    data_rows: list[tuple[str, list[bool | None]]] = []
    box_rows: list[list[Any]] = []
    meta_rows: list[list[Any]] = []

    def consume(results):
        for i, png, labels, boxes, meta in results:
            name = f"{prefix}{i:0{width}d}.png"
            try:
                (out / name).write_bytes(png)
            except OSError as e:
                raise DataError(f"--out {out}: cannot write {name} ({e.strerror or e})") from None
            data_rows.append((name, [None if labels[k] is None else bool(labels[k]) for k in LABELS]))
            for b in boxes:
                box_rows.append([name, b.label, b.x, b.y, b.w, b.h])
            meta_rows.append(
                [
                    name,
                    meta["family"],
                    f"{meta['px_per_mm']:.3f}",
                    f"{meta['thread_px']:.2f}",
                    f"{meta['contrast']:.4f}",
                    *(next((b.kind for b in boxes if b.label == lab), "") for lab in ("error", "break")),
                    "" if meta.get("visibility") is None else f"{meta['visibility']:.2f}",
                ]
            )

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="img", desc="synth", leave=False)

    def ticking(it):
        for r in it:
            if bar is not None:
                bar.update(1)
            yield r

    if workers > 1 and len(jobs) > 32:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            consume(ticking(pool.imap(_render_indexed, jobs, chunksize=16)))
    else:
        consume(ticking(map(_render_indexed, jobs)))
    if bar is not None:
        bar.close()

    _atomic_csv(out / "boxes.csv", ["name", "label", "x", "y", "w", "h"], box_rows)
    _atomic_csv(out / "meta.csv", META_HEADER, meta_rows)
    data_csv = out / "data.csv"
    _atomic_text(data_csv, seed_csv_text(data_rows, LABELS))  # the one writer of the seed format
    return data_csv


# --------------------------------------------------------------------------- CLI


def register(subparsers) -> None:
    """Add the ``synth`` sub-command."""
    p = subparsers.add_parser(
        "synth",
        help="synthetic labeled seam images or a seam video with ground truth",
        description="Synthetic labeled seam stills (--out DIR --count N: PNGs + data.csv + boxes.csv) "
        "or a 640x480 seam video with injected defects (--video FILE.mp4 --frames N: "
        "+ FILE.truth.csv). Output is a pure function of --seed.",
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", type=Path, help="output folder for stills + data.csv + boxes.csv")
    mode.add_argument("--video", type=Path, help="output .mp4 (640x480, mp4v); truth in FILE.truth.csv")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g = p.add_argument_group("stills")
    g.add_argument("--count", type=int, help="number of images (required with --out)")
    g.add_argument("--size", type=int, default=None, help="image side in px (default 256)")
    g.add_argument(
        "--px-per-mm",
        type=float,
        default=None,
        help=f"pin the pixel scale (±8 %%; default: drawn per image, {SCALE_RANGE[0]:g}..{SCALE_RANGE[1]:g} "
        "x size/256, i.e. 4.5..8 px/mm at the model's 128 px)",
    )
    g.add_argument(
        "--scale-range",
        type=parse_scale_ranges,
        default=None,
        metavar="LO:HI[,LO:HI]",
        help=f"draw the scale per image from LO..HI px/mm at 256 px (log-uniform; with several ranges, each "
        f"image picks one first) instead of {SCALE_RANGE[0]:g}..{SCALE_RANGE[1]:g}, e.g. 2.3:9,9:16: half the "
        "images as cameras that see 2..8 px/mm at 224 px; "
        "outside the default range the length cell is left empty (unknown: the pixels cannot tell 2 from 4 mm)",
    )
    g.add_argument(
        "--length-changes",
        type=float,
        default=None,
        metavar="P",
        help="share of the normal seams whose stitch length changes between 2 and 4 mm in view (default 0), "
        "as where a stretch of the other length begins on a video: not a defect, and the length cell is left "
        "empty (neither length)",
    )
    g.add_argument(
        "--random-textures",
        type=float,
        default=None,
        metavar="P",
        help="share of the stills drawn on a random texture of no real fabric (family 'random'; default 0): "
        "domain randomisation, so a model learns the seam rather than the fabrics it was shown",
    )
    g.add_argument(
        "--tone-share",
        type=float,
        default=None,
        metavar="P",
        help="share of the threads dyed the fabric's own colour (luma within 0.01-0.12 of it; default 0.35): "
        "more of the real photos' hardest look, a thread that barely shows",
    )
    g.add_argument(
        "--error-kinds",
        type=parse_error_kinds,
        default=None,
        metavar="KIND=W[,KIND=W]",
        help="draw the kind of each error defect by these weights (a kind not named weighs 1; default: "
        "all equally likely), e.g. stain=3,skip=2 for more of the kinds a model misses; "
        f"kinds: {', '.join(ERROR_KINDS)}",
    )
    g.add_argument(
        "--defect-rate",
        type=float,
        default=None,
        help=f"share of images with at least one defect (default {DEFAULT_DEFECT_RATE}; "
        f"{BOTH_SHARE * 100:.0f}%% of those show both an error and a break)",
    )
    p.add_argument(
        "--families",
        default=None,
        metavar="F[,F]",
        help=f"only these fabric families ({', '.join(FAMILIES)}; default all, each equally likely; "
        f"held back, drawn only when named: {', '.join(HELD_BACK_FAMILIES)})",
    )
    p.add_argument("--exclude-families", default=None, metavar="F[,F]", help="leave these fabric families out")
    g.add_argument(
        "--workers", type=int, default=None, help="processes (default 1; the output is byte-identical for any value)"
    )
    v = p.add_argument_group("video")
    v.add_argument("--frames", type=int, help="number of frames (required with --video)")
    v.add_argument("--fps", type=float, default=None, help="frame rate (default 30)")
    v.add_argument(
        "--stitches-per-min",
        type=float,
        default=None,
        help="machine speed; seam speed mm/s = this x base stitch length / 60 "
        f"(default {DEFAULT_STITCHES_PER_MIN:g}: 33 mm/s at 2 mm)",
    )
    v.add_argument("--base-length", type=float, default=None, help="normal stitch length in mm, 2 or 4 (default 2)")
    dg = v.add_mutually_exclusive_group()
    dg.add_argument("--defects", type=int, default=None, help="number of error/break defects, evenly spaced")
    dg.add_argument(
        "--defect-every-mm",
        type=float,
        default=None,
        help=f"spacing of defects along the seam (default {DEFAULT_DEFECT_EVERY_MM:g} mm)",
    )
    v.add_argument(
        "--length-stretches",
        type=int,
        default=None,
        help="number of stretches of the other stitch length "
        f"(default one per ~{STRETCH_EVERY_MM:g} mm, at least 1 if it fits)",
    )
    v.add_argument(
        "--stretch-mm",
        type=float,
        default=None,
        help=f"length of each stretch in mm (default {DEFAULT_STRETCH_ROIS} ROI widths, min 1.5)",
    )
    v.add_argument(
        "--impair",
        choices=IMPAIRMENTS,
        default=None,
        help="from --impair-from on: blur (defocus), dark (lamp out), frozen (the same frame repeats), "
        "covered (lens covered), stopped (the fabric stops; the camera stays live)",
    )
    v.add_argument("--impair-from", type=int, default=None, help="first impaired frame (default: half-way)")
    add_roi_args(p, f"the view the truth is written for (--video only; default {list(ROI)})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m convert synth``."""
    import time

    choice = roi_from_args(args)

    def _names(v):
        return [f.strip() for f in v.split(",") if f.strip()] if v else None

    fams = check_families(_names(args.families), _names(args.exclude_families))
    _refuse_other_mode(args)
    if args.video is not None:
        if args.frames is None:
            raise DataError("--frames is required with --video")
        choice.check_frame(FRAME_W, FRAME_H, f"--video {args.video}")
        roi = choice.roi if choice.roi is not None or not choice.given else (0, 0, FRAME_W, FRAME_H)
        t0 = time.perf_counter()
        rows = write_video(
            args.video,
            args.frames,
            args.seed,
            **_given(fps=args.fps, base_length_mm=args.base_length),
            stitches_per_min=args.stitches_per_min,
            defects=args.defects,
            defect_every_mm=args.defect_every_mm,
            length_stretches=args.length_stretches,
            stretch_mm=args.stretch_mm,
            progress=True,
            roi=roi,
            families=fams,
            impair=args.impair,
            impair_from=args.impair_from,
        )
        dt = time.perf_counter() - t0
        print(
            f"wrote {args.video} ({args.frames} frames, {args.frames / dt:.0f} frames/s) and "
            f"{truth_path(args.video)} ({len(rows)} defects, for ROI {list(roi or ROI)})"
        )
        return 0
    if choice.given:
        raise DataError("--roi and --config apply to --video only (stills are the ROI's view already)")
    if args.count is None:
        raise DataError("--count is required with --out")
    t0 = time.perf_counter()
    path = write_dataset(
        args.out,
        args.count,
        args.seed,
        **_given(
            size=args.size,
            defect_rate=args.defect_rate,
            length_changes=args.length_changes,
            random_textures=args.random_textures,
            tone_share=args.tone_share,
            error_kinds=args.error_kinds,
        ),
        px_per_mm=args.px_per_mm,
        workers=max(1, args.workers or 1),
        progress=True,
        families=fams,
        scale_range=args.scale_range,
    )
    dt = time.perf_counter() - t0
    print(f"wrote {args.count} images to {args.out} ({args.count / dt:.0f} images/s), {path}")
    return 0


# options that only one mode reads: given to the other, they would be silently ignored
STILLS_ONLY = (
    "count",
    "size",
    "px_per_mm",
    "scale_range",
    "length_changes",
    "random_textures",
    "tone_share",
    "error_kinds",
    "defect_rate",
    "workers",
)
VIDEO_ONLY = (
    "frames",
    "fps",
    "stitches_per_min",
    "base_length",
    "defects",
    "defect_every_mm",
    "length_stretches",
    "stretch_mm",
    "impair",
    "impair_from",
)


def _given(**options: Any) -> dict[str, Any]:
    """The options the user gave (not None): the rest keep the writer's own defaults."""
    return {k: v for k, v in options.items() if v is not None}


def _refuse_other_mode(args: argparse.Namespace) -> None:
    """One line naming the first option the chosen mode would ignore (every such option defaults to None)."""
    video = args.video is not None
    for dest in STILLS_ONLY if video else VIDEO_ONLY:
        if getattr(args, dest, None) is not None:
            flag = "--" + dest.replace("_", "-")
            if video:
                why = "; a video keeps one scale" if dest in ("px_per_mm", "scale_range") else ""
                raise DataError(f"{flag} applies to stills (--out) only{why}")
            raise DataError(f"{flag} applies to --video only")


def truth_path(video: str | os.PathLike) -> Path:
    """``FILE.mp4`` → ``FILE.truth.csv``."""
    p = Path(video)
    return p.with_name(p.stem + ".truth.csv")


# --------------------------------------------------------------------------- video

DEFAULT_STITCHES_PER_MIN = 1000.0  # slow industrial lockstitch run: 2 mm → 33 mm/s
DEFAULT_DEFECT_EVERY_MM = 60.0
DEFAULT_STRETCH_ROIS = 2.5  # a length stretch spans 2.5 ROI widths (≥ 1.5 required)
STRETCH_EVERY_MM = 300.0
MAX_DEFECT_W = 150  # px; wider defects are redrawn (keeps ≥ 6 frames in the ROI)
CHUNK = 1024  # strip columns rendered at a time
CHUNK_PAD = 64
IMPAIRMENTS = ("blur", "dark", "frozen", "covered", "stopped")


def _check_video_opts(
    frames: int,
    fps: float,
    spm: float,
    base: float,
    defects: int | None,
    every: float | None,
    stretches: int | None,
    stretch_mm: float | None,
    px_per_mm: float,
    roi: tuple[int, int, int, int] = ROI,
) -> None:
    if int(frames) <= 0:
        raise DataError(f"--frames must be ≥ 1, got {frames}")
    if not (1.0 <= float(fps) <= 240.0):
        raise DataError(f"--fps must be in 1..240, got {fps}")
    if not (0 < float(spm) <= 10000):
        raise DataError(f"--stitches-per-min must be in (0, 10000], got {spm}")
    if float(base) not in (2.0, 4.0):
        raise DataError(f"--base-length must be 2 or 4 (mm), got {base}")
    if defects is not None and int(defects) < 0:
        raise DataError(f"--defects must be ≥ 0, got {defects}")
    if every is not None and float(every) <= 0:
        raise DataError(f"--defect-every-mm must be > 0, got {every}")
    if stretches is not None and int(stretches) < 0:
        raise DataError(f"--length-stretches must be ≥ 0, got {stretches}")
    if stretch_mm is not None and float(stretch_mm) * px_per_mm < 1.5 * roi[2]:
        raise DataError(f"--stretch-mm must be ≥ {1.5 * roi[2] / px_per_mm:.1f} (1.5 ROI widths), got {stretch_mm}")
    if not (4.0 <= float(px_per_mm) <= 50.0):
        raise DataError(f"px_per_mm must be in 4..50 for video, got {px_per_mm}")


def _inside_frames(x0: float, x1: float, offs: np.ndarray, roi: tuple[int, int, int, int] = ROI) -> np.ndarray:
    """Frames whose integer box [floor(x0-off), ceil(x1-off)) lies wholly in the ROI columns."""
    rx0, rx1 = roi[0], roi[0] + roi[2]
    return np.nonzero((np.floor(x0 - offs) >= rx0) & (np.ceil(x1 - offs) <= rx1))[0]


class _StripCache:
    """Renders the static strip in CHUNK-wide pieces on demand (keeps the last two)."""

    def __init__(self, scene, height: int):
        from convert.synth_render import render_static

        self._render = render_static
        self.scene, self.h = scene, height
        self.cache: dict[int, np.ndarray] = {}
        # x extents of every path, so a chunk only looks at the few that can reach it
        self._ext = {
            k: (
                np.array([p[:, 0].min() for p in getattr(scene, k)] or [0.0]),
                np.array([p[:, 0].max() for p in getattr(scene, k)] or [-1.0]),
            )
            for k in ("flat", "raised", "lint", "bobbin")
        }

    def _sub_scene(self, x0: float, x1: float):
        from dataclasses import replace

        parts = {}
        for k, (lo, hi) in self._ext.items():
            paths = getattr(self.scene, k)
            idx = np.nonzero((hi >= x0) & (lo <= x1))[0] if paths else np.zeros(0, np.intp)
            parts[k] = [paths[i] for i in idx]
        return replace(self.scene, **parts)

    def chunk(self, c: int) -> np.ndarray:
        if c not in self.cache:
            x0 = c * CHUNK - CHUNK_PAD
            reach = 8 * self.scene.S
            sub = self._sub_scene(x0 - reach, x0 + CHUNK + 2 * CHUNK_PAD + reach)
            img = self._render(sub, float(x0), 0.0, CHUNK + 2 * CHUNK_PAD, self.h)
            self.cache[c] = img[:, CHUNK_PAD : CHUNK_PAD + CHUNK]
            for k in [k for k in self.cache if k < c - 1]:
                del self.cache[k]
        return self.cache[c]

    def columns(self, x0: int, w: int) -> np.ndarray:
        c0, c1 = x0 // CHUNK, (x0 + w - 1) // CHUNK
        parts = [self.chunk(c) for c in range(c0, c1 + 1)]
        strip = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        s = x0 - c0 * CHUNK
        return strip[:, s : s + w]


def write_video(
    path: str | os.PathLike,
    frames: int,
    seed: int = 0,
    *,
    fps: float = 30.0,
    stitches_per_min: float | None = None,
    base_length_mm: float = 2.0,
    defects: int | None = None,
    defect_every_mm: float | None = None,
    length_stretches: int | None = None,
    stretch_mm: float | None = None,
    px_per_mm: float = DEFAULT_PX_PER_MM,
    progress: bool = False,
    roi: tuple[int, int, int, int] | None = None,
    families: Sequence[str] | None = None,
    impair: str | None = None,
    impair_from: int | None = None,
    style_seed: int | None = None,
) -> list[TruthRow]:
    """Write a 640×480 ``mp4v`` video of a seam strip scrolling past the camera + truth CSV.

    The strip moves right-to-left at ``stitches_per_min × base_length_mm / 60`` mm/s (default
    1000 stitches/min × 2 mm = 33 mm/s, a slow industrial run: 13.9 px/frame at 30 fps, so a
    defect ≤ 150 px wide stays wholly inside the 256-px ROI for ≥ 7 frames). The strip speed is
    constant (set by the base length) also inside stretches of the other length.

    Defects (``error``/``break``) are spaced so two never share the ROI: ``defects`` evenly over
    the video or one every ``defect_every_mm`` (default 60 mm). ``length_stretches`` stretches
    (default one per ~300 mm of travel, at least one when it fits) of the *other* stitch length,
    each ``stretch_mm`` long (default 2.5 ROI widths), are truth rows with label ``length``:
    "inside" means the stretch covers the whole ROI, and their box is the ROI columns × the
    seam band at the middle frame.
    ``roi`` (x, y, w, h; default ``ROI``) is the daemon's ``camera.roi``: the view the truth is
    for. It must lie inside the frame, be ≥ 166 px wide (a defect wholly inside it) and cover
    the seam's rows (y 194..286).
    ``impair`` (``IMPAIRMENTS``) impairs frames ``impair_from`` (default ``frames // 2``) onward
    (``_impair``); for ``stopped`` the truth follows the stopped strip.
    ``style_seed``: take the scene (fabric look, seam path, stitches, bobbin thread) from this
    seed instead of ``seed``, so two videos show the same fabric with other defects and layout
    (a line's own fabric on another day: the data-loop test trains on one and checks on the other).
    The bobbin thread's colour belongs to the look, as a station's machine keeps its bobbin thread:
    every bobbin fault in every video of a look shows the same colour.
    A defect the camera cannot show is redrawn as in stills (``synth_render.MIN_VISIBILITY``,
    measured in an ROI-sized window centred on it under the video's camera); 2 of 132 defects
    over 12 seeds were.
    Returns the truth rows (also written to ``FILE.truth.csv``), sorted by first frame.
    """
    from convert.synth_fabric import tile_bank
    from convert.synth_render import (
        MIN_VISIBILITY,
        VIDEO_ERROR_KINDS,
        VISIBLE_TRIES,
        Defect,
        Scene,
        add_lint,
        add_stitches,
        bobbin_colour,
        break_span,
        camera,
        defect_visibility,
        make_break,
        make_error,
        merge_defect,
        random_camera,
        random_scene_style,
        render_static,
        scratch_scene,
        stitch_holes,
    )

    spm = DEFAULT_STITCHES_PER_MIN if stitches_per_min is None else float(stitches_per_min)
    roi = _video_roi(roi)
    _check_video_opts(
        frames, fps, spm, base_length_mm, defects, defect_every_mm, length_stretches, stretch_mm, px_per_mm, roi
    )
    if impair is not None:
        if impair not in IMPAIRMENTS:
            raise DataError(f"--impair {impair!r}: must be one of {', '.join(IMPAIRMENTS)}")
        impair_from = int(frames) // 2 if impair_from is None else int(impair_from)
        if not 1 <= impair_from < int(frames):
            raise DataError(f"--impair-from {impair_from}: must be in 1..{int(frames) - 1}")
    path = Path(path)
    if path.exists() and path.is_dir():
        raise DataError(f"--video {path}: is a directory")
    if not path.parent.exists() or not os.access(path.parent, os.W_OK):
        raise DataError(f"--video {path}: folder {path.parent} does not exist or is not writable")

    # independent streams: layout, scene (fabric, seam, stitches), defect shapes, camera, noise;
    # so the same seed without defects gives the same video apart from the defects
    rng, srng, drng, crng, frng = (
        np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 0x5EA4]).spawn(5)
    )
    if style_seed is not None:
        srng = np.random.default_rng(np.random.SeedSequence([int(style_seed), 0x5EA4]).spawn(5)[1])
    S = float(px_per_mm)
    frames = int(frames)
    v = spm * base_length_mm / 60.0 * S / fps  # px per frame
    if v > (roi[2] - MAX_DEFECT_W) / 2:
        raise DataError(
            f"--stitches-per-min {spm:g}: too fast for {fps:g} fps (the seam moves {v:.0f} px "
            f"per frame; defects would be wholly inside the ROI for < 2 frames)"
        )
    offs = np.arange(frames) * v  # strip column at the frame's left edge
    travel = float(offs[-1])
    other_mm = 4.0 if base_length_mm == 2.0 else 2.0
    rx0, ry0, rw, rh = roi

    # ---- layout along the strip: defect centres first, then length stretches
    lo = rx0 + rw + MAX_DEFECT_W / 2 + 8  # right of the ROI at frame 0
    hi = rx0 + travel - MAX_DEFECT_W / 2 - 8  # left of it at the last frame
    min_gap = rw + MAX_DEFECT_W + 16
    centres: list[float] = []
    if defects is not None:
        if defects > 0:
            if hi < lo:
                raise DataError(f"--frames {frames}: too short for any defect at this speed")
            if defects > 1 and (hi - lo) / (defects - 1) < min_gap:
                raise DataError(
                    f"--defects {defects}: do not fit {frames} frames apart (at most {int((hi - lo) // min_gap) + 1})"
                )
            centres = list(np.linspace(lo, hi, defects)) if defects > 1 else [(lo + hi) / 2]
    else:
        every = (DEFAULT_DEFECT_EVERY_MM if defect_every_mm is None else defect_every_mm) * S
        if every < min_gap:
            raise DataError(
                f"--defect-every-mm {defect_every_mm}: must be ≥ {min_gap / S:.1f} mm "
                "so that two defects never share the ROI"
            )
        u = lo + rng.uniform(0, min(every, max(hi - lo, 0)) * 0.5)
        while u <= hi:
            centres.append(u)
            u += every
    if len(centres) > 1:
        sp = min(np.diff(centres))
        slack = (sp - min_gap) / 2
        centres = [c + rng.uniform(-0.4, 0.4) * slack for c in centres]

    Ls = (stretch_mm * S) if stretch_mm else DEFAULT_STRETCH_ROIS * rw
    s_lo, s_hi = rx0 + rw + 8, rx0 + travel - v - 8 - Ls  # stretch start range (fully traversed)
    n_str = length_stretches
    if n_str is None:  # one per ~300 mm of travel, at least one when it fits
        n_str = max(int(s_hi >= s_lo), int(travel / S // STRETCH_EVERY_MM))
        while n_str > 1 and (s_hi - s_lo) / n_str < Ls + rw:
            n_str -= 1
    stretches: list[tuple[float, float]] = []
    if n_str > 0:
        if s_hi < s_lo:
            raise DataError(
                f"--length-stretches {n_str}: --frames {frames} too short for a {Ls / S:.0f} mm stretch at this speed"
            )
        seg = (s_hi - s_lo) / n_str
        if n_str > 1 and seg < Ls + rw:
            raise DataError(f"--length-stretches {n_str}: do not fit in {frames} frames")
        keep = MAX_DEFECT_W / 2 + 3 * S
        for j in range(n_str):
            best = None
            for _ in range(60):
                a = s_lo + seg * j + rng.uniform(0, max(seg - (Ls + rw if n_str > 1 else 0), 0))
                if all(abs(a - c) > keep and abs(a + Ls - c) > keep for c in centres):
                    best = a
                    break
            if best is None:
                best = s_lo + seg * j
                centres = [c for c in centres if abs(best - c) > keep and abs(best + Ls - c) > keep]
            stretches.append((best, best + Ls))

    # ---- the seam world
    scene = random_scene_style(srng, S, check_families(families))
    yc = FRAME_H / 2 + srng.uniform(-20, 20)
    amp1, lam1, ph1 = srng.uniform(4, 14), srng.uniform(80, 200) * S, srng.uniform(0, 6.3)
    amp2, lam2, ph2 = srng.uniform(0, 4), srng.uniform(20, 50) * S, srng.uniform(0, 6.3)

    def centre(u):
        u = np.asarray(u, np.float64)
        return yc + amp1 * np.sin(2 * np.pi * u / lam1 + ph1) + amp2 * np.sin(2 * np.pi * u / lam2 + ph2)

    def pitch_px(u):
        for a, b in stretches:
            if a <= u < b:
                return other_mm * S
        return base_length_mm * S

    u_end = travel + FRAME_W + 2 * CHUNK + 8 * S
    holes = stitch_holes(srng, -4 * S - srng.uniform(0, base_length_mm * S), u_end, pitch_px, centre)
    scene.centre_u = np.linspace(-CHUNK, u_end + CHUNK, int((u_end + 2 * CHUNK) // 8) + 2)
    scene.centre_v = centre(scene.centre_u)
    if srng.random() < 0.5:
        add_lint(scene, srng, -CHUNK, u_end, -8, FRAME_H + 8, srng.uniform(0.5, 2.0))

    # the camera (its own stream, so drawing it here changes nothing) and the bobbin thread, which
    # belongs to the station like the fabric: one colour per look (its own stream of the style seed)
    sheen = tile_bank()[scene.look.tile_index].sheen
    base = random_camera(crng, sheen, S, still=False)
    exposure = crng.uniform(0.05, 0.15)  # fraction of the frame period
    base = _video_camera(base, motion=v * exposure)
    ph = crng.uniform(0, 2 * np.pi, 4)
    look_seed = int(seed if style_seed is None else style_seed)
    bobbin_bgr = bobbin_colour(np.random.default_rng([look_seed, 0x5EA4, 0xB0B]), scene.look)

    def visibility(trial: Scene, ks: set[int], box) -> float:
        """``defect_visibility`` of one defect in the ROI window centred on it, as the camera sees it."""
        wx0 = (box[0] + box[2]) / 2 - rw / 2
        shots = []
        for with_defect in (True, False):
            sc = replace(scene, raised=[], flat=[], bobbin=[], marks=[], patches=[], moved={}, holes=holes[:0])
            if with_defect:
                merge_defect(sc, trial)
            add_stitches(sc, np.random.default_rng(0), holes, ks if with_defect else set())
            img = render_static(sc, wx0, float(ry0), rw, rh)
            shots.append(camera(img, base, np.random.default_rng(0)))
        return defect_visibility(shots[0], shots[1])

    skip: set[int] = set()
    events: list[tuple[str, tuple[float, float, float, float]]] = []
    kinds = ["error", "break"] * (len(centres) // 2 + 1)
    if drng.random() < 0.5:
        kinds = kinds[1:]
    for c, label in zip(centres, kinds):
        k = int(np.argmin(np.abs(holes[:, 0] - c)))
        pm = pitch_px(holes[k, 0]) / S
        most_visible: tuple[Scene, set[int], Defect, float] | None = None
        # a defect the camera cannot show is redrawn, as in stills (MIN_VISIBILITY), up to
        # VISIBLE_TRIES draws, keeping the most visible; a visible first draw is as before the floor
        for _vis_try in range(VISIBLE_TRIES):
            for _try in range(40):
                side = 1.0 if drng.random() < 0.5 else -1.0
                trial = scratch_scene(scene)
                if label == "error":
                    ks, d = make_error(
                        trial, drng, holes, k, side, VIDEO_ERROR_KINDS[int(drng.integers(0, len(VIDEO_ERROR_KINDS)))]
                    )
                    trial.bobbin_bgr = bobbin_bgr
                else:
                    ks, d = make_break(trial, drng, holes, k, break_span(drng, pm), side)
                x0, y0, x1, y1 = d.box
                if x1 - x0 <= MAX_DEFECT_W and y0 >= ry0 + 8 and y1 <= ry0 + rh - 8:
                    break
            else:  # the ROI's rows leave too little room around the seam
                raise DataError(
                    f"ROI {list(roi)}: cannot place a {label} defect wholly inside its rows "
                    f"{ry0 + 8}..{ry0 + rh - 8}; use a taller ROI around the seam (y 194..286)"
                )
            vis = visibility(trial, ks, d.box)
            if most_visible is None or vis > most_visible[3]:
                most_visible = (trial, ks, d, vis)
            if vis >= MIN_VISIBILITY:
                break
        assert most_visible is not None  # VISIBLE_TRIES ≥ 1
        trial, ks, d, vis = most_visible
        merge_defect(scene, trial)
        skip |= ks
        events.append((label, d.box))
    add_stitches(scene, srng, holes, skip)

    if impair == "stopped":  # the fabric stops: later frames (and the truth) see the strip where it stopped
        offs = np.minimum(offs, offs[impair_from])
    # ---- truth
    truth: list[tuple[int, str, int, int, int, int, int, int]] = []
    for label, (x0, y0, x1, y1) in events:
        ins = _inside_frames(x0, x1, offs, roi)
        if len(ins) == 0:  # pragma: no cover - layout guarantees it
            continue
        f0, f1 = int(ins[0]), int(ins[-1])
        fm = (f0 + f1) // 2
        bx0, bx1 = int(np.floor(x0 - offs[fm])), int(np.ceil(x1 - offs[fm]))
        by0, by1 = int(np.floor(y0)), int(np.ceil(y1))
        truth.append((0, label, f0, f1, bx0, by0, bx1 - bx0, by1 - by0))
    for a, b in stretches:
        inside = holes[(holes[:, 0] >= a) & (holes[:, 0] < b + other_mm * S)]
        ua, ub = float(inside[0, 0]), float(inside[-1, 0])
        cov = np.nonzero((ua - offs <= rx0) & (ub - offs >= rx0 + rw))[0]
        if len(cov) == 0:  # pragma: no cover
            continue
        f0, f1 = int(cov[0]), int(cov[-1])
        fm = (f0 + f1) // 2
        us = np.linspace(rx0 + offs[fm], rx0 + rw + offs[fm], 32)
        vs = centre(us)
        pad = scene.thread_w / 2 + 0.15 * S
        by0, by1 = int(np.floor(vs.min() - pad)), int(np.ceil(vs.max() + pad))
        truth.append((0, "length", f0, f1, rx0, by0, rw, by1 - by0))
    truth.sort(key=lambda r: (r[2], r[3]))
    rows = [TruthRow(i + 1, *r[1:]) for i, r in enumerate(truth)]

    # ---- frames
    strip = _StripCache(scene, FRAME_H)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), float(fps), (FRAME_W, FRAME_H))
    if not writer.isOpened():
        raise DataError(f"--video {path}: OpenCV cannot write mp4v video here")
    bar = None
    held = None  # --impair: the last impaired frame
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=frames, unit="frame", desc="synth video", leave=False)
    try:
        for f in range(frames):
            off = float(offs[f])
            ix = int(np.floor(off))
            cols = strip.columns(ix, FRAME_W + 2)
            shift = np.array([[1, 0, off - ix], [0, 1, 0]], np.float32)
            img = cv2.warpAffine(
                cols,
                shift,
                (FRAME_W, FRAME_H),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,
            )
            t = f / fps
            cam = _video_camera(
                base,
                gain=base.gain
                * (1 + 0.03 * np.sin(2 * np.pi * t / 4.1 + ph[0]) + 0.012 * np.sin(2 * np.pi * t / 1.3 + ph[1])),
                grad=(
                    base.grad[0] + 0.03 * np.sin(2 * np.pi * t / 6.7 + ph[2]),
                    base.grad[1] + 0.03 * np.sin(2 * np.pi * t / 5.3 + ph[3]),
                ),
            )
            out = camera(img, cam, frng)
            if impair is not None and impair_from is not None and f >= impair_from:
                if impair != "frozen" or held is None:  # frozen: frame impair_from again and again
                    held = _impair(impair, out, seed, f)
                out = held
            writer.write(out)
            if bar is not None:
                bar.update(1)
    finally:
        writer.release()
        if bar is not None:
            bar.close()
    cap = cv2.VideoCapture(str(tmp))
    n_read = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
    cap.release()
    if n_read != frames:
        tmp.unlink(missing_ok=True)
        raise DataError(f"--video {path}: wrote {frames} frames but OpenCV reads back {n_read}")
    os.replace(tmp, path)
    _atomic_csv(
        truth_path(path),
        ["defect_id", "label", "first_frame", "last_frame", "x", "y", "w", "h"],
        [[r.defect_id, r.label, r.first_frame, r.last_frame, r.x, r.y, r.w, r.h] for r in rows],
    )
    return rows


SEAM_ROWS = (194, 286)  # rows the seam (with margin) can take in a video frame
MIN_ROI_W = MAX_DEFECT_W + 16


def _video_roi(roi) -> tuple[int, int, int, int]:
    """The video's ROI (default ``ROI``), checked: inside the frame, wide and tall enough for truth."""
    if roi is None:
        return ROI
    x, y, w, h = (int(v) for v in roi)
    where = f"ROI {[x, y, w, h]}"
    if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > FRAME_W or y + h > FRAME_H:
        raise DataError(f"{where}: must lie inside the {FRAME_W}x{FRAME_H} video frame")
    if w < MIN_ROI_W:
        raise DataError(
            f"{where}: {w} px wide; the video needs ≥ {MIN_ROI_W} so that a defect "
            f"(≤ {MAX_DEFECT_W} px) fits wholly inside it"
        )
    if y > SEAM_ROWS[0] or y + h < SEAM_ROWS[1]:
        raise DataError(
            f"{where}: rows {y}..{y + h} miss the seam, which runs through rows "
            f"{SEAM_ROWS[0]}..{SEAM_ROWS[1]} of the video"
        )
    return x, y, w, h


def _impair(kind: str, img: np.ndarray, seed: int, f: int) -> np.ndarray:
    """One impaired camera frame (``--impair``); ``frozen`` is the held frame, ``stopped`` is in the layout."""
    if kind == "blur":  # lost focus: about 5x the Laplacian variance gone
        return cv2.GaussianBlur(img, (0, 0), 4.0)
    if kind == "dark":  # lamp out: a quarter of the light, shadows clip to black
        return np.clip(img.astype(np.float32) * 0.25 - 4.0, 0, 255).astype(np.uint8)
    if kind == "covered":  # a hand or cap over the lens: dark, featureless, a little sensor noise
        glow = img.reshape(-1, 3).mean(axis=0).astype(np.float32) * 0.08  # the light through the fingers
        noise = np.random.default_rng([int(seed), 0xC0FE, int(f)]).normal(0.0, 1.0, img.shape)
        return np.clip(glow + 6.0 + noise, 0, 255).astype(np.uint8)
    return img  # frozen (the caller holds the frame), stopped (the strip stops moving)


def _video_camera(cam, **changes):
    """A video's camera: no JPEG (the codec compresses), mild defocus, motion blur from speed."""
    from dataclasses import replace

    changes.setdefault("jpeg", 0)
    changes.setdefault("defocus", min(cam.defocus, 0.8))
    return replace(cam, **changes)
