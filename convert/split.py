"""``split``: merge per-video ``*_data.csv`` into the seed's ``train.csv`` / ``valid.csv`` / ``test.csv``.

Every ``*_data.csv`` and ``data.csv`` under each ``--data`` folder (recursively) is read with
``convert.data.read_csv`` (so every image is checked to exist), shuffled with ``--seed`` and
split 78 / 20 / 2 % as the seed did (sizes rounded up for test and valid, like scikit-learn's
``train_test_split``, so even a tiny set gets one test image). Names become absolute paths; the
files are in the seed's format (pandas ``to_csv`` with its index: ``,name,good,error,break,length``).
Folders written by several collectors of one group can hold two rows of one ``sample_id`` (its
first copy, and its re-publication with the operator's verdict): one is kept (``_one_row_per_sample``).

A single ``--data`` folder without CSVs but with one folder per class (the fruit tutorial's
``Apfel/``, ``Orange/``, ``Tomate/``) is split *per class*, 78 / 20 / 2 % of each class (so every
class is in every part), into ``train/``, ``valid/`` and ``test/`` class-folder trees under
``--out`` (images hard-linked where the file system allows, else copied), which ``train``,
``evaluate`` and ``heatmaps`` read as multiclass data sets.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import DataError

from .data import Dataset, merge, read_class_folders, read_csv, sample_keys, seed_csv_text, target_bools

FRACTIONS = {"train": 0.78, "valid": 0.20, "test": 0.02}
SPLIT_NAMES = ("train.csv", "valid.csv", "test.csv")


@dataclass(frozen=True)
class SplitResult:
    files: dict[str, Path]
    counts: dict[str, int]
    sources: tuple[str, ...]
    duplicates: int = 0  # rows dropped: another copy of the same sample_id was kept (collect)


def find_data_csvs(folders: Sequence[str | Path]) -> list[Path]:
    found: list[Path] = []
    for folder in folders:
        d = Path(folder)
        if d.is_file() and d.suffix == ".csv":
            found.append(d)
            continue
        if not d.is_dir():
            raise DataError(f"{d}: data folder not found")
        hits = sorted(p for p in d.rglob("*.csv") if p.name == "data.csv" or p.name.endswith("_data.csv"))
        if not hits:
            raise DataError(f"{d}: no *_data.csv or data.csv found (empty data set)")
        found.extend(hits)
    return found


def split_sizes(n: int) -> dict[str, int]:
    """78/20/2 %, test and valid rounded up (at least one each when n >= 3), train the rest."""
    if n < 3:
        raise DataError(f"only {n} images: need at least 3 to split into train/valid/test")
    n_test = max(1, math.ceil(FRACTIONS["test"] * n))
    n_valid = max(1, math.ceil(FRACTIONS["valid"] * n))
    return {"train": n - n_test - n_valid, "valid": n_valid, "test": n_test}


def write_seed_csv(path: Path, ds: Dataset) -> None:
    """pandas ``to_csv`` layout: unnamed index column, name, one True/False column per label."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        f.write(seed_csv_text(((p, target_bools(t)) for p, t in zip(ds.paths, ds.targets)), ds.labels))
    tmp.replace(path)


def split(folders: Sequence[str | Path], out: str | Path, seed: int = 0) -> SplitResult:
    """Merge, shuffle and write the three CSVs; an unusable ``out`` is one DataError line."""
    out = Path(out)
    if out.exists() and not out.is_dir():  # before reading (and checking every image of) the data
        raise DataError(f"--out {out}: exists and is not a folder; choose a folder for train/valid/test.csv")
    if len(folders) == 1 and Path(folders[0]).is_dir() and not _has_data_csv(Path(folders[0])):
        return split_class_folders(folders[0], out, seed)
    csvs = find_data_csvs(folders)
    sets = [read_csv(c) for c in csvs]
    ds, duplicates = _one_row_per_sample(merge(sets, ", ".join(str(f) for f in folders)), csvs, [len(d) for d in sets])
    sizes = split_sizes(len(ds))
    order = np.random.default_rng(seed).permutation(len(ds))
    parts = {
        "test": order[: sizes["test"]],
        "valid": order[sizes["test"] : sizes["test"] + sizes["valid"]],
        "train": order[sizes["test"] + sizes["valid"] :],
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    files = {}
    for key in ("train", "valid", "test"):
        files[key] = out / f"{key}.csv"
        try:
            write_seed_csv(files[key], ds.subset(sorted(parts[key].tolist())))
        except OSError as e:  # read-only or full: say which file, leave no half-written .tmp behind
            with contextlib.suppress(OSError):
                files[key].with_name(files[key].name + ".tmp").unlink(missing_ok=True)
            raise DataError(f"{files[key]}: cannot write ({e.strerror or e})") from None
    return SplitResult(files, {k: len(v) for k, v in parts.items()}, tuple(str(c) for c in csvs), duplicates)


def _one_row_per_sample(ds: Dataset, csvs: Sequence[Path], sizes: Sequence[int]) -> tuple[Dataset, int]:
    """Several collectors in one shared-subscription group each write their own folder, and a sample
    the station re-published with a verdict can reach another collector than its first copy: the
    same ``sample_id`` then has a row in two folders. Keep one: the copy a person reviewed, else the
    one with the latest operator verdict, else the first read. Rows without a sample id (labelled
    video frames, synth) are all kept. → (data set, rows dropped)."""
    keys: list[tuple[str | None, tuple[bool, str]]] = []
    for c, n in zip(csvs, sizes):
        k = sample_keys(c)
        keys.extend(k if k is not None else [(None, (False, ""))] * n)
    if len(keys) != len(ds):  # not one key per row: leave the data as it is
        return ds, 0
    best: dict[str, int] = {}
    for i, (sid, rank) in enumerate(keys):
        if sid is None:
            continue
        j = best.get(sid)
        if j is None or rank > keys[j][1]:
            best[sid] = i
    keep = [i for i, (sid, _) in enumerate(keys) if sid is None or best[sid] == i]
    if len(keep) == len(ds):
        return ds, 0
    return ds.subset(keep), len(ds) - len(keep)


def _has_data_csv(folder: Path) -> bool:
    return any(p.name == "data.csv" or p.name.endswith("_data.csv") for p in folder.rglob("*.csv"))


def _place(src: str, dst: Path) -> None:
    """Hard-link ``src`` at ``dst`` (no extra space), or copy it where links are not possible."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def split_class_folders(folder: str | Path, out: str | Path, seed: int = 0) -> SplitResult:
    """A class-per-folder tree → ``out/{train,valid,test}/<class>/``, 78/20/2 % of every class."""
    folder, out = Path(folder), Path(out)
    ds = read_class_folders(folder)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    for ci, cname in enumerate(ds.labels):
        members = np.flatnonzero(ds.targets[:, ci] > 0.5)
        if len(members) < 3:
            raise DataError(f"{folder / cname}: only {len(members)} images; each class needs at least 3 to split")
        sizes = split_sizes(len(members))
        order = members[rng.permutation(len(members))]
        parts["test"] += order[: sizes["test"]].tolist()
        parts["valid"] += order[sizes["test"] : sizes["test"] + sizes["valid"]].tolist()
        parts["train"] += order[sizes["test"] + sizes["valid"] :].tolist()
    files = {key: out / key for key in parts}
    for d in files.values():
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise DataError(f"--out {out}: {d} already exists and is not empty; choose another --out")
    try:
        for key, idx in parts.items():
            for i in sorted(idx):
                src = ds.paths[i]
                cname = ds.labels[int(np.argmax(ds.targets[i]))]
                try:
                    rel = Path(src).relative_to((folder / cname).resolve())
                except ValueError:  # a symbolic link out of the tree: keep its name only
                    rel = Path(Path(src).name)
                dst = files[key] / cname / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                _place(src, dst)
    except OSError as e:
        raise DataError(f"{e.filename or out}: cannot write ({e.strerror or e})") from None
    return SplitResult(files, {k: len(v) for k, v in parts.items()}, (str(folder),))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "split",
        help="merge *_data.csv files into train/valid/test.csv (78/20/2 %%)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="DIR",
        help="folders with *_data.csv / data.csv, or one class-per-folder tree (split per class)",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = split(args.data, args.out, args.seed)
    tree = all(f.is_dir() for f in res.files.values())
    what = f"split {res.sources[0]} per class," if tree else f"merged {len(res.sources)} CSV file(s),"
    print(
        f"{what} {sum(res.counts.values())} images → "
        + ", ".join(f"{res.files[k]} ({res.counts[k]})" for k in ("train", "valid", "test"))
        + (f"; {res.duplicates} duplicate sample row(s) dropped (one per sample_id kept)" if res.duplicates else "")
    )
    return 0
