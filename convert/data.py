"""Data sets for training and evaluation: the seed's CSVs, class-per-folder sets, a streaming loader.

Two layouts are read:

* the seed's CSVs (``<video>_data.csv`` and ``train.csv`` / ``valid.csv`` / ``test.csv``), written
  by pandas ``to_csv``: an unnamed index column, ``name``, then one ``True``/``False`` column per
  label (``good,error,break,length``; an empty cell: that label is unknown for that image, NaN
  in ``targets``; ``source`` and ``reviewed`` columns, written by ``collect``
  and ``label``, are not labels and are skipped). Relative names resolve against the CSV's folder. Read with
  the stdlib ``csv`` module (pandas is not a runtime dependency). → task ``multilabel``.
* a class-per-folder tree (``DIR/Apfel/*.png``, ``DIR/Orange/*.png`` …): one label per image,
  labels sorted by folder name. → task ``multiclass``.

Every image goes through ``edge.preprocess.preprocess``, the code the Pi runs. The seed
standardised per *batch*; we standardise per *image*, so an image gives the same tensor in
training, in evaluation and as a single camera frame on the line.

Bad input (a CSV naming a missing image, wrong columns, an empty set, an unreadable image) raises
``DataError`` with one line naming the file, the row and the value.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import DataError
from edge.preprocess import preprocess, to_bgr
from edge.seam import SEAM_LABELS

from .augment import augment
from .roi import crop as crop_to_roi

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Spellings a seed CSV cell may use (any case): pandas writes True/False; hand-edited files and
# spreadsheets write 1/0 or yes/no. ``read_csv`` and the labeler's resume (``convert.label_state``)
# both accept exactly these.
SEED_TRUE = frozenset({"true", "1", "1.0", "yes"})
SEED_FALSE = frozenset({"false", "0", "0.0", "no"})
# Columns of a seed CSV that are not labels: ``collect`` writes where a row came from (``source``)
# and ``label`` whether a person reviewed it (``reviewed``). Readers skip them; ``split`` drops them.
META_COLUMNS = ("source", "reviewed")


@dataclass(frozen=True)
class Dataset:
    """Image paths with their targets (``[N, n_labels]`` float32 0/1; one-hot when multiclass)."""

    labels: tuple[str, ...]
    task: str  # "multilabel" | "multiclass"
    paths: tuple[str, ...]
    targets: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int] | np.ndarray) -> Dataset:
        idx = list(idx)
        return Dataset(self.labels, self.task, tuple(self.paths[i] for i in idx), self.targets[idx], self.source)


def parse_seed_bool(value: str) -> bool | None:
    """A seed CSV cell as a bool (see ``SEED_TRUE`` / ``SEED_FALSE``); None when it is neither."""
    v = value.strip().lower()
    return True if v in SEED_TRUE else False if v in SEED_FALSE else None


def seed_csv_text(rows: Iterable[tuple[str, Sequence[bool | None]]], labels: Sequence[str]) -> str:
    """The seed's CSV as pandas ``DataFrame.to_csv`` writes it: unnamed index column, ``name``, then
    ``True``/``False`` per label, or an empty cell for a label nobody knows (None; pandas writes NaN
    so). The one writer of the format (``split``, ``label``, ``synth``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["", "name", *labels])
    for i, (name, values) in enumerate(rows):
        w.writerow([i, name, *("" if v is None else "True" if v else "False" for v in values)])
    return buf.getvalue()


def target_bools(targets: Sequence[float]) -> list[bool | None]:
    """One row of ``Dataset.targets`` back to seed cells: NaN (unknown) stays None, not False."""
    return [None if v != v else bool(v > 0.5) for v in targets]


def _bool(value: str, where: str, column: str) -> float:
    """A label cell as a target: 1.0 / 0.0, or NaN when the cell is empty (not labelled: ``train``
    leaves it out of the loss, ``evaluate`` out of that attribute's figures)."""
    if not value.strip():
        return float("nan")
    b = parse_seed_bool(value)
    if b is not None:
        return float(b)
    raise DataError(f"{where}: column {column!r} has value {value!r}, expected True, False or empty (unknown)")


def parse_source(text: str) -> dict[str, str]:
    """A ``source`` cell (``station=…; reason=…; sample=…; verdict=…@ts; …``, ``convert collect``) → dict."""
    out = {}
    for part in text.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def verdict_ts(source: dict[str, str]) -> str | None:
    """The time of the operator's verdict in a parsed ``source`` (ISO 8601 text), or None."""
    v = source.get("verdict")
    return v.partition("@")[2] if v else None


def sample_keys(path: Path) -> list[tuple[str | None, tuple[bool, str]]] | None:
    """Per data row of a CSV with ``source`` and ``reviewed`` columns (``collect``, ``label``), in
    ``read_csv``'s order: (``sample_id`` or None, rank). The rank orders copies of one sample: one a
    person reviewed first, then the latest operator verdict. None for a CSV without those columns."""
    rows = csv_rows(path)
    if not rows:
        return None
    header = [h.strip() for h in rows[0]]
    if not set(META_COLUMNS) <= set(header):
        return None
    si, ri = header.index("source"), header.index("reviewed")
    out: list[tuple[str | None, tuple[bool, str]]] = []
    for row in rows[1:]:
        if not row or all(not c.strip() for c in row):
            continue
        src = parse_source(row[si]) if len(row) > si else {}
        reviewed = parse_seed_bool(row[ri]) if len(row) > ri else None
        out.append((src.get("sample") or None, (bool(reviewed), verdict_ts(src) or "")))
    return out


def csv_rows(path: Path) -> list[list[str]]:
    """All rows of a UTF-8 CSV file; an unreadable file is one ``DataError`` line naming it."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV ({e})") from None


def read_csv(path: str | Path, check_images: bool = True) -> Dataset:
    """Read one seed-format CSV (pandas ``to_csv`` with its index, or without it)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    rows = csv_rows(path)
    if not rows:
        raise DataError(f"{path}: empty file (expected a header ',name,good,error,break,length')")
    header = [h.strip() for h in rows[0]]
    if "name" not in header:
        raise DataError(
            f"{path}: header {','.join(header)!r} has no 'name' column (expected ',name,{','.join(SEAM_LABELS)}')"
        )
    name_col = header.index("name")
    if name_col > 1 or (name_col == 1 and header[0] not in ("", "Unnamed: 0", "index")):
        raise DataError(
            f"{path}: header {','.join(header)!r}: 'name' must be the first column (after pandas' unnamed index)"
        )
    label_cols = [i for i in range(name_col + 1, len(header)) if header[i] not in META_COLUMNS]
    labels = tuple(header[i] for i in label_cols)
    if not labels:
        raise DataError(f"{path}: header {','.join(header)!r} has no label columns after 'name'")
    bad = [lab for lab in labels if not lab]
    if bad or len(set(labels)) != len(labels):
        raise DataError(f"{path}: header {','.join(header)!r} has empty or repeated label columns")
    base = path.resolve().parent
    paths: list[str] = []
    targets: list[list[float]] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{path}:{lineno}"
        if len(row) != len(header):
            raise DataError(f"{where}: {len(row)} fields, header has {len(header)} ({','.join(row)!r})")
        name = row[name_col].strip()
        if not name:
            raise DataError(f"{where}: empty 'name'")
        img = Path(name)
        if not img.is_absolute():
            img = base / img
        if check_images and not img.is_file():
            raise DataError(f"{where}: image {name!r} not found ({img})")
        paths.append(str(img))
        targets.append([_bool(row[i], where, header[i]) for i in label_cols])
    if not paths:
        raise DataError(f"{path}: no rows (empty data set)")
    return Dataset(labels, "multilabel", tuple(paths), np.asarray(targets, np.float32), str(path))


def merge(datasets: Sequence[Dataset], source: str) -> Dataset:
    """Concatenate data sets with the same labels and task."""
    if not datasets:
        raise DataError(f"{source}: no data found (empty data set)")
    first = datasets[0]
    for d in datasets[1:]:
        if d.labels != first.labels or d.task != first.task:
            raise DataError(f"{d.source}: labels {list(d.labels)} differ from {first.source}'s {list(first.labels)}")
    return Dataset(
        first.labels,
        first.task,
        tuple(p for d in datasets for p in d.paths),
        np.concatenate([d.targets for d in datasets]).astype(np.float32),
        source,
    )


MAX_OVERSAMPLE = 100


def parse_oversample(specs: Sequence[str] | None, labels: Sequence[str]) -> dict[str, int]:
    """``LABEL=N`` options → {label: N}; a label the data lacks or an N outside 1..100 is a
    ``DataError`` naming the option."""
    out: dict[str, int] = {}
    for spec in specs or ():
        label, sep, n = spec.partition("=")
        if not sep or not n.strip().isdigit():
            raise DataError(f"--oversample {spec!r}: expected LABEL=N, e.g. error=3")
        if label not in labels:
            raise DataError(f"--oversample {spec!r}: no label {label!r} in the data (labels: {', '.join(labels)})")
        k = int(n)
        if not 1 <= k <= MAX_OVERSAMPLE:
            raise DataError(f"--oversample {spec!r}: N must be in 1..{MAX_OVERSAMPLE}")
        out[label] = k
    return out


def oversample(ds: Dataset, factors: dict[str, int]) -> Dataset:
    """Each image that has a label of ``factors`` appears that many times (the largest factor of its
    labels), in the data's order. Why: the data a line sends back is mostly good frames, and the
    defects the model missed are the rarest rows; repeating them is the cheapest way to make a
    small round count."""
    if not factors:
        return ds
    cols = [ds.labels.index(lab) for lab in factors]
    k = np.ones(len(ds), np.int64)
    for c, f in zip(cols, factors.values()):
        k = np.where(ds.targets[:, c] >= 0.5, np.maximum(k, f), k)
    return ds.subset(np.repeat(np.arange(len(ds)), k))


def find_csvs(folder: Path) -> list[Path]:
    """Seed CSVs in a folder: every ``*_data.csv`` and ``data.csv`` (sorted, not recursive)."""
    found = sorted(
        set(folder.glob("*_data.csv")) | ({folder / "data.csv"} if (folder / "data.csv").is_file() else set())
    )
    return [p for p in found if p.is_file()]


def read_class_folders(folder: str | Path) -> Dataset:
    """A class-per-folder tree → multiclass data set, labels sorted by folder name."""
    folder = Path(folder)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[str] = []
    idx: list[int] = []
    for ci, cname in enumerate(classes):
        for p in sorted((folder / cname).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTS and p.is_file():
                paths.append(str(p.resolve()))
                idx.append(ci)
    if not paths:
        raise DataError(f"{folder}: no images found (expected data.csv, *_data.csv or one folder per class)")
    if len(classes) < 2:
        raise DataError(f"{folder}: found one class folder {classes!r}; a class-per-folder set needs at least two")
    targets = np.zeros((len(paths), len(classes)), np.float32)
    targets[np.arange(len(paths)), idx] = 1.0
    return Dataset(tuple(classes), "multiclass", tuple(paths), targets, str(folder))


def load_dataset(spec: str | Path, check_images: bool = True) -> Dataset:
    """A CSV file, a folder of seed CSVs, or a class-per-folder tree."""
    p = Path(spec)
    if p.is_file():
        return read_csv(p, check_images)
    if p.is_dir():
        csvs = find_csvs(p)
        if csvs:
            return merge([read_csv(c, check_images) for c in csvs], str(p))
        return read_class_folders(p)
    raise DataError(f"{p}: no such CSV file or data folder")


def image_list(spec: str | Path) -> list[str]:
    """Image paths, no labels: one image file, a folder (searched recursively) or a CSV.

    For models whose classes are not in the data (an ImageNet VGG16): a CSV needs only a ``name``
    (or ``path``/``file``/``image``) column, else its first column; relative names resolve against
    the CSV's folder. Nothing found is one ``DataError`` line naming ``spec``.
    """
    p = Path(spec)
    if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
        return [str(p)]
    if p.is_dir():
        found = sorted(str(q) for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS and q.is_file())
        if not found:
            raise DataError(f"{p}: no images found ({', '.join(IMAGE_EXTS)})")
        return found
    if not p.is_file():
        raise DataError(f"{p}: no such image, folder or CSV")
    if p.suffix.lower() != ".csv":
        raise DataError(f"{p}: not an image ({', '.join(IMAGE_EXTS)}), a folder or a .csv")
    rows = [r for r in csv_rows(p) if r and any(c.strip() for c in r)]
    header = [h.strip().lower() for h in rows[0]] if rows else []
    col = next((header.index(k) for k in ("name", "path", "file", "image") if k in header), None)
    body = rows[1:] if col is not None else rows
    col = col or 0
    out = []
    for lineno, row in enumerate(body, start=2 if rows and body is not rows else 1):
        name = row[col].strip() if col < len(row) else ""
        if not name:
            raise DataError(f"{p}:{lineno}: empty image name")
        img = Path(name) if Path(name).is_absolute() else p.resolve().parent / name
        if not img.is_file():
            raise DataError(f"{p}:{lineno}: image {name!r} not found ({img})")
        out.append(str(img))
    if not out:
        raise DataError(f"{p}: no rows (no images)")
    return out


def read_image(path: str, source: str = "") -> np.ndarray:
    """BGR uint8 image; an unreadable file is a ``DataError`` naming it."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise DataError(f"{path}: unreadable image" + (f" (listed in {source})" if source else ""))
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(1.0, float(img.max())))
    return to_bgr(img)


def load_image(path: str, source: str = "", roi: Sequence[int] | None = None) -> np.ndarray:
    """``read_image``, then the daemon's ROI crop (``roi = (x, y, w, h)``; ``None``: whole image).

    An image the ROI does not fit wholly inside is a ``DataError`` naming it (images saved as
    crops already, e.g. by ``convert label`` with an ROI, take no ROI).
    """
    img = read_image(path, source)
    if roi is None:
        return img
    return crop_to_roi(
        img,
        roi,
        path + (f" (listed in {source})" if source else ""),
        "ROI",
        hint="; images saved as crops (convert label with an ROI) take no ROI",
    )


def check_roi(ds: Dataset, roi: Sequence[int] | None) -> None:
    """Crop the first image of ``ds`` to ``roi`` now: an ROI for frames saved as crops is one line
    before a model loads, not an error in the middle of training or evaluation."""
    if roi is not None and len(ds):
        load_image(ds.paths[0], ds.source, roi)


class ImageCache:
    """Decoded images, cropped to ``roi`` when given, resized to the model input (uint8), kept in
    memory when they fit.

    Resizing before augmenting is equivalent to the seed's order up to rounding, and
    ``preprocess`` on an image of the model's size only standardises it. ``roi`` is the camera
    ROI of full frames (``convert.roi``): the crop is the daemon's, so training sees its view.
    """

    def __init__(
        self, ds: Dataset, height: int, width: int, max_bytes: int = 1 << 30, roi: Sequence[int] | None = None
    ):
        self.ds, self.height, self.width = ds, height, width
        self.roi = tuple(int(v) for v in roi) if roi is not None else None
        self.keep = len(ds) * height * width * 3 <= max_bytes
        self._mem: dict[int, np.ndarray] = {}

    def get(self, i: int) -> np.ndarray:
        img = self._mem.get(i)
        if img is None:
            img = load_image(self.ds.paths[i], self.ds.source, self.roi)
            if img.shape[:2] != (self.height, self.width):
                img = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_AREA)
            if self.keep:
                self._mem[i] = img
        return img


def batches(
    ds: Dataset,
    height: int,
    width: int,
    batch: int = 32,
    cache: ImageCache | None = None,
    roi: Sequence[int] | None = None,
    mode: str = "seam",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Un-augmented, ordered ``(x, y)`` batches through ``preprocess`` (for evaluation).

    ``roi``: crop every image to the camera ROI first (ignored with ``cache``, which has its own).
    ``mode``: the model's ``edge.preprocess`` mode (``--preprocess``), the Pi's for a bundle.
    """
    for start in range(0, len(ds), batch):
        idx = range(start, min(len(ds), start + batch))
        if cache is not None:
            x = np.stack([preprocess(cache.get(i), height, width, mode) for i in idx])
        else:
            x = np.stack([preprocess(load_image(ds.paths[i], ds.source, roi), height, width, mode) for i in idx])
        yield x, ds.targets[list(idx)]


def make_sequence(
    ds: Dataset,
    height: int,
    width: int,
    batch: int = 32,
    augment_images: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    roi: Sequence[int] | None = None,
    mode: str = "seam",
):
    """A ``keras.utils.PyDataset`` streaming ``(x, y)`` batches (Keras imported here, not at module level).

    ``roi``: every image is cropped to the camera ROI before anything else (see ``ImageCache``).
    ``mode``: the ``edge.preprocess`` mode (``train --preprocess``), applied after augmentation,
    so training sees the tensor export, evaluate and the Pi will feed the model.
    """
    import keras

    class SeamSequence(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.cache = ImageCache(ds, height, width, roi=roi)
            if roi is not None and len(ds):
                self.cache.get(0)  # an ROI that does not fit is one line now, not inside fit()
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(ds))
            if shuffle:
                self.rng.shuffle(self.order)

        def __len__(self) -> int:
            return math.ceil(len(ds) / batch)

        def __getitem__(self, k: int):
            idx = self.order[k * batch : (k + 1) * batch]
            x = np.empty((len(idx), height, width, 3), np.float32)
            for j, i in enumerate(idx):
                img = self.cache.get(int(i))
                if augment_images:
                    img = augment(img, self.rng)
                x[j] = preprocess(img, height, width, mode)
            return x, ds.targets[idx]

        def on_epoch_end(self):
            if shuffle:
                self.rng.shuffle(self.order)

    return SeamSequence()
