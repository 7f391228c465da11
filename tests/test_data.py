"""convert.data / convert.split: the seed's CSVs, class folders, the loader, augmentations, bad input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from convert.data import load_dataset, make_sequence, read_csv
from convert.split import split, split_sizes
from edge.errors import DataError
from edge.preprocess import preprocess
from tests.support.cli import one_line_error, run_convert
from tests.support.images import imread

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["good", "error", "break", "length"]


def _images(folder: Path, n: int, seed: int = 0, size: int = 48) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"f_{i:03d}.png"
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        names.append(name)
    return names


def _pandas_csv(folder: Path, n: int, seed: int = 0, stem: str = "vid") -> Path:
    names = _images(folder, n, seed)
    rng = np.random.default_rng(seed)
    err, brk = rng.random(n) < 0.4, rng.random(n) < 0.3
    df = pd.DataFrame({"name": names, "good": ~(err | brk), "error": err, "break": brk, "length": rng.random(n) < 0.5})
    path = folder / f"{stem}_data.csv"
    df.to_csv(path)  # the seed's writer: index column included
    return path


def test_reads_pandas_to_csv_with_index(tmp_path):
    path = _pandas_csv(tmp_path / "v", 12)
    df = pd.read_csv(path, index_col=0)
    ds = read_csv(path)
    assert ds.labels == tuple(LABELS) and ds.task == "multilabel" and len(ds) == 12
    assert [Path(p).name for p in ds.paths] == df["name"].tolist()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in ds.paths)  # relative to the CSV's folder
    np.testing.assert_array_equal(ds.targets, df[LABELS].to_numpy().astype(np.float32))


def test_full_path_csv_and_folder_merge(tmp_path):
    a = _pandas_csv(tmp_path / "v1", 5, 1, "a")
    df = pd.read_csv(a, index_col=0)
    df["name"] = [str(tmp_path / "v1" / n) for n in df["name"]]
    df.to_csv(tmp_path / "train.csv")
    ds = read_csv(tmp_path / "train.csv")
    assert ds.paths == tuple(df["name"])
    merged = load_dataset(tmp_path / "v1")  # folder with *_data.csv
    assert len(merged) == 5


def test_class_folders_single_label(tmp_path):
    for k, cls in enumerate(["Tomate", "Apfel", "Orange"]):
        _images(tmp_path / cls, 3 + k, k)
    ds = load_dataset(tmp_path)
    assert ds.labels == ("Apfel", "Orange", "Tomate") and ds.task == "multiclass"
    assert len(ds) == 12 and np.all(ds.targets.sum(1) == 1)
    assert ds.targets[:, 0].sum() == 4 and ds.targets[:, 2].sum() == 3  # Apfel 4 images, Tomate 3


def test_loader_is_preprocess(tmp_path):
    path = _pandas_csv(tmp_path / "v", 5)
    ds = read_csv(path)
    seq = make_sequence(ds, 32, 32, batch=4)
    x, y = seq[0]
    assert x.shape == (4, 32, 32, 3) and len(seq) == 2
    np.testing.assert_array_equal(x[1], preprocess(imread(ds.paths[1]), 32, 32))
    np.testing.assert_array_equal(y, ds.targets[:4])


def test_split_proportions_and_format(tmp_path):
    _pandas_csv(tmp_path / "d1", 60, 1, "vidA")
    _pandas_csv(tmp_path / "d2", 40, 2, "vidB")
    res = split([tmp_path / "d1", tmp_path / "d2"], tmp_path / "out", seed=3)
    parts = {k: pd.read_csv(tmp_path / "out" / f"{k}.csv", index_col=0) for k in ("train", "valid", "test")}
    assert {k: len(v) for k, v in parts.items()} == {"train": 78, "valid": 20, "test": 2} == res.counts
    names = [n for df in parts.values() for n in df["name"]]
    assert len(set(names)) == 100 and all(Path(n).is_absolute() and Path(n).is_file() for n in names)
    assert list(parts["train"].columns) == ["name", *LABELS]
    assert parts["train"][LABELS].dtypes.eq(bool).all()
    assert (tmp_path / "out" / "train.csv").read_text().startswith(",name,good,error,break,length\n0,")
    assert split_sizes(7) == {"train": 4, "valid": 2, "test": 1}
    again = split([tmp_path / "d1", tmp_path / "d2"], tmp_path / "out2", seed=3)
    assert again.counts == res.counts
    assert (tmp_path / "out2" / "test.csv").read_text() == (tmp_path / "out" / "test.csv").read_text()


def test_bad_csvs_are_one_line_errors(tmp_path):
    good = _pandas_csv(tmp_path / "ok", 4)
    # a CSV naming a missing image
    d = tmp_path / "missing"
    d.mkdir()
    df = pd.read_csv(good, index_col=0)
    df.loc[2, "name"] = "nope.png"
    df["name"] = [n if n == "nope.png" else str(good.parent / n) for n in df["name"]]
    df.to_csv(d / "x_data.csv")
    one_line_error(run_convert("split", "--data", str(d), "--out", str(tmp_path / "o1")), "x_data.csv:4", "nope.png")
    # wrong columns
    d = tmp_path / "cols"
    d.mkdir()
    (d / "y_data.csv").write_text(",file,good,error\n0,a.png,True,False\n")
    one_line_error(run_convert("split", "--data", str(d), "--out", str(tmp_path / "o2")), "y_data.csv", "'name'")
    # a value that is not True/False
    d = tmp_path / "vals"
    d.mkdir()
    (d / "z_data.csv").write_text(f",name,good\n0,{good.parent / 'f_000.png'},maybe\n")
    one_line_error(run_convert("split", "--data", str(d), "--out", str(tmp_path / "o3")), "z_data.csv:2", "'maybe'")
    # empty data set: header only, and a folder with nothing
    d = tmp_path / "empty"
    d.mkdir()
    (d / "e_data.csv").write_text(",name,good,error,break,length\n")
    one_line_error(run_convert("split", "--data", str(d), "--out", str(tmp_path / "o4")), "e_data.csv", "empty")
    (tmp_path / "nothing").mkdir()
    one_line_error(run_convert("split", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o5")), "nothing")


def test_split_unusable_out_is_one_line(tmp_path):
    """Issue 12 #13: ``--out`` that is a file, under a file, or read-only used to end in a traceback."""
    import os
    import shutil

    _pandas_csv(tmp_path / "d", 12)
    data = str(tmp_path / "d")
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    one_line_error(run_convert("split", "--data", data, "--out", str(afile)), str(afile), "not a folder")
    assert afile.read_text() == "keep me"
    one_line_error(
        run_convert("split", "--data", data, "--out", str(afile / "sub")), str(afile / "sub"), "cannot create"
    )
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:  # file permissions are enough for a normal user
        ro.chmod(0o500)
        try:
            one_line_error(
                run_convert("split", "--data", data, "--out", str(ro)), str(ro / "train.csv"), "cannot write"
            )
            one_line_error(
                run_convert("split", "--data", data, "--out", str(ro / "new")), str(ro / "new"), "cannot create"
            )
        finally:
            ro.chmod(0o700)
        assert list(ro.iterdir()) == []
        return
    # root ignores permissions: a real read-only file system
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)]
    if shutil.which("mount") is None or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a read-only tmpfs is not permitted here")
    try:
        one_line_error(
            run_convert("split", "--data", data, "--out", str(ro)),
            str(ro / "train.csv"),
            "cannot write",
            "Read-only file system",
        )
        one_line_error(run_convert("split", "--data", data, "--out", str(ro / "new")), str(ro / "new"), "cannot create")
        assert list(ro.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_unreadable_image_is_a_data_error(tmp_path):
    path = _pandas_csv(tmp_path / "v", 3)
    (tmp_path / "v" / "f_001.png").write_bytes(b"not a png")
    ds = read_csv(path)
    seq = make_sequence(ds, 32, 32, batch=3)
    with pytest.raises(DataError, match=r"f_001\.png: unreadable image"):
        seq[0]
