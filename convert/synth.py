"""``python -m convert synth``: labeled synthetic seam images, or a seam video with ground truth.

Stills (``--out DIR --count N``) are 256×256 BGR PNGs of what the camera ROI sees: a seam
crossing the frame, 2 mm or 4 mm stitches at ``--px-per-mm`` (default 12.5: 2 mm ≈ 25 px,
the view is ~20 mm of fabric), on woven/knit/printed fabrics under uneven light, blur, noise
and JPEG. Labels follow the seed (``good``, ``error``, ``break``, ``length``; ``length`` true =
2 mm); defects are placed wholly inside the frame and their tight boxes go to ``boxes.csv``.

Video (``--video FILE.mp4 --frames N``) is a 640×480 strip of the same seam world scrolling past
the camera at sewing speed (``--stitches-per-min`` × base stitch length / 60 mm/s), with error and
break defects and stretches of the other stitch length; ``FILE.truth.csv`` says when each is
wholly inside the ROI ``[192, 112, 256, 256]``.

Everything is numpy + OpenCV (no TensorFlow) and a pure function of ``--seed``: image i of a
data set is drawn from its own generator ``SeedSequence([seed, i])``.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from convert.synth_render import Box, render_still
from edge.errors import DataError

LABELS = ("good", "error", "break", "length")
DEFAULT_SIZE = 256
DEFAULT_PX_PER_MM = 12.5          # at 256 px: 2 mm = 25 px, view ≈ 20.5 mm
RENDER_MIN = 256                  # smaller data sets are rendered at 256 and area-downscaled
DEFAULT_DEFECT_RATE = 0.6         # share of stills with ≥ 1 defect
BOTH_SHARE = 0.2                  # of those, share with both an error and a break

FRAME_W, FRAME_H = 640, 480
ROI = (192, 112, 256, 256)


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
    """Default scale for an image size (the 256-px view is always ~20 mm of fabric)."""
    return DEFAULT_PX_PER_MM * size / DEFAULT_SIZE


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


def render_image(rng: np.random.Generator, size: int = DEFAULT_SIZE, px_per_mm: float | None = None,
                 labels: dict[str, bool] | None = None,
                 defect_rate: float = DEFAULT_DEFECT_RATE) -> tuple[np.ndarray, dict[str, bool], list[Box]]:
    """Render one labeled seam still.

    ``labels`` may force ``error``/``break``/``length`` (missing keys are drawn); ``good`` is
    always derived. Returns (uint8 BGR [size, size, 3], labels, boxes in image pixels).
    Sizes below 256 are rendered at 256 and area-downscaled, so tiny test sets keep
    threads and defects visible.
    """
    if size < 16:
        raise DataError(f"--size must be ≥ 16, got {size}")
    ppm = float(px_per_mm) if px_per_mm else default_px_per_mm(size)
    drawn = draw_labels(rng, defect_rate)
    if labels:
        for k in ("error", "break", "length"):
            if k in labels:
                drawn[k] = bool(labels[k])
    drawn["good"] = not (drawn["error"] or drawn["break"])
    rsize = max(size, RENDER_MIN)
    f = rsize / size
    jitter = rng.uniform(0.92, 1.08)             # scale jitter, modest: 2 vs 4 mm stays clear
    img, boxes = render_still(rng, rsize, ppm * f * jitter, drawn["error"], drawn["break"], drawn["length"])
    if rsize != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        out = []
        for b in boxes:
            x0, y0 = int(np.floor(b.x / f)), int(np.floor(b.y / f))
            x1, y1 = int(np.ceil((b.x + b.w) / f)), int(np.ceil((b.y + b.h) / f))
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(size, x1), min(size, y1)
            out.append(Box(b.label, x0, y0, x1 - x0, y1 - y0))
        boxes = out
    return img, drawn, boxes


def _image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def _render_indexed(job: tuple[int, int, dict[str, Any]]) -> tuple[int, bytes, dict[str, bool], list[Box]]:
    seed, i, opts = job
    img, labels, boxes = render_image(_image_rng(seed, i), **opts)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:   # pragma: no cover
        raise DataError("PNG encoding failed")
    return i, buf.tobytes(), labels, boxes


def _atomic_csv(path: Path, header: list[str], rows: Iterable[list[Any]]) -> None:
    """Write a CSV with the stdlib module via tmp + rename (readers never see half a file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)
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


def _check_opts(count: int, size: int, px_per_mm: float | None, defect_rate: float) -> None:
    if int(count) <= 0:
        raise DataError(f"--count must be ≥ 1, got {count}")
    if int(size) < 16 or int(size) > 2048:
        raise DataError(f"--size must be in 16..2048, got {size}")
    if px_per_mm is not None and not (0.5 <= float(px_per_mm) <= 200):
        raise DataError(f"--px-per-mm must be in 0.5..200, got {px_per_mm}")
    if not (0.0 <= float(defect_rate) <= 1.0):
        raise DataError(f"--defect-rate must be in 0..1, got {defect_rate}")


def write_dataset(out_dir: str | os.PathLike, count: int, seed: int = 0, *, size: int = DEFAULT_SIZE,
                  px_per_mm: float | None = None, defect_rate: float = DEFAULT_DEFECT_RATE,
                  workers: int = 1, progress: bool = False, prefix: str = "synth_") -> Path:
    """Write ``count`` labeled stills + ``data.csv`` (seed format) + ``boxes.csv``; → data.csv path.

    Deterministic: the same (seed, count, options) give byte-identical files, whatever
    ``workers`` is (each image has its own generator).
    """
    _check_opts(count, size, px_per_mm, defect_rate)
    out = _prepare_dir(Path(out_dir))
    opts = {"size": int(size), "px_per_mm": px_per_mm, "defect_rate": float(defect_rate)}
    jobs = [(int(seed), i, opts) for i in range(int(count))]
    width = max(6, len(str(count - 1)))
    data_rows: list[list[Any]] = []
    box_rows: list[list[Any]] = []

    def consume(results):
        for i, png, labels, boxes in results:
            name = f"{prefix}{i:0{width}d}.png"
            try:
                (out / name).write_bytes(png)
            except OSError as e:
                raise DataError(f"--out {out}: cannot write {name} ({e.strerror or e})") from None
            data_rows.append([i, name] + [str(labels[k]) for k in LABELS])
            for b in boxes:
                box_rows.append([name, b.label, b.x, b.y, b.w, b.h])

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
    data_csv = out / "data.csv"
    _atomic_csv(data_csv, ["", "name"] + list(LABELS), data_rows)
    return data_csv


# --------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    """Add the ``synth`` sub-command."""
    p = subparsers.add_parser(
        "synth", help="synthetic labeled seam images or a seam video with ground truth",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", type=Path, help="output folder for stills + data.csv + boxes.csv")
    mode.add_argument("--video", type=Path, help="output .mp4 (640x480); truth in FILE.truth.csv")
    p.add_argument("--seed", type=int, default=0, help="random seed (output is a pure function of it)")
    g = p.add_argument_group("stills")
    g.add_argument("--count", type=int, help="number of images (required with --out)")
    g.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in px")
    g.add_argument("--px-per-mm", type=float, default=None,
                   help=f"pixel scale (default {DEFAULT_PX_PER_MM} × size/256: 2 mm ≈ 25 px at 256)")
    g.add_argument("--defect-rate", type=float, default=DEFAULT_DEFECT_RATE,
                   help="share of images with at least one defect")
    g.add_argument("--workers", type=int, default=1, help="processes (output identical for any value)")
    v = p.add_argument_group("video")
    v.add_argument("--frames", type=int, help="number of frames (required with --video)")
    v.add_argument("--fps", type=float, default=30.0)
    v.add_argument("--stitches-per-min", type=float, default=None,
                   help="machine speed; seam speed mm/s = this × base stitch length / 60 (default 1200)")
    v.add_argument("--base-length", type=float, default=2.0, help="normal stitch length, mm (2 or 4)")
    dg = v.add_mutually_exclusive_group()
    dg.add_argument("--defects", type=int, default=None, help="number of error/break defects")
    dg.add_argument("--defect-every-mm", type=float, default=None, help="spacing of defects along the seam")
    v.add_argument("--length-stretches", type=int, default=None,
                   help="number of stretches of the other stitch length (default: one per ~400 mm)")
    v.add_argument("--stretch-mm", type=float, default=None,
                   help="length of each stretch in mm (default 2.5 ROI widths, min 1.5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m convert synth``."""
    import time
    if args.video is not None:
        if args.frames is None:
            raise DataError("--frames is required with --video")
        from convert.synth_video import write_video
        t0 = time.perf_counter()
        rows = write_video(args.video, args.frames, args.seed, fps=args.fps,
                           stitches_per_min=args.stitches_per_min, base_length_mm=args.base_length,
                           defects=args.defects, defect_every_mm=args.defect_every_mm,
                           length_stretches=args.length_stretches, stretch_mm=args.stretch_mm,
                           progress=True)
        dt = time.perf_counter() - t0
        print(f"wrote {args.video} ({args.frames} frames, {args.frames / dt:.0f} frames/s) and "
              f"{truth_path(args.video)} ({len(rows)} defects)")
        return 0
    if args.count is None:
        raise DataError("--count is required with --out")
    t0 = time.perf_counter()
    path = write_dataset(args.out, args.count, args.seed, size=args.size, px_per_mm=args.px_per_mm,
                         defect_rate=args.defect_rate, workers=max(1, args.workers), progress=True)
    dt = time.perf_counter() - t0
    print(f"wrote {args.count} images to {args.out} ({args.count / dt:.0f} images/s), {path}")
    return 0


def truth_path(video: str | os.PathLike) -> Path:
    """``FILE.mp4`` → ``FILE.truth.csv``."""
    p = Path(video)
    return p.with_name(p.stem + ".truth.csv")


def write_video(path: str | os.PathLike, frames: int, seed: int = 0, **opts: Any) -> list[TruthRow]:
    """Write the seam video and ``FILE.truth.csv``; see ``convert.synth_video.write_video``."""
    from convert.synth_video import write_video as _wv
    return _wv(path, frames, seed, **opts)
