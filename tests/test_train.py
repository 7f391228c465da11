"""convert.train: checkpoints named by metrics, history + curves, resume, multiclass (CCE) via the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.images import fruit_folders

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_tiny_keras_artifacts(tiny_keras):
    from convert.models import read_meta
    from convert.train import side_paths

    ckpt_dir, hist_path, curve_path = side_paths(Path(tiny_keras))
    ckpts = sorted(p.name for p in ckpt_dir.iterdir())
    assert len(ckpts) == 1 and re.fullmatch(r"ckpt-e01-val_loss\d+\.\d{3}-val_acc\d\.\d{3}\.keras", ckpts[0]), ckpts
    hist = json.loads(hist_path.read_text())
    assert set(hist) >= {"loss", "acc", "val_loss", "val_acc"} and all(len(v) == 1 for v in hist.values())
    # the checkpoint's name carries the logged metrics
    assert f"val_loss{hist['val_loss'][0]:.3f}" in ckpts[0]
    img = cv2.imread(str(curve_path))
    assert img is not None and img.shape[0] > 100 and img.std() > 0
    meta = read_meta(tiny_keras)
    assert meta["labels"] == ["good", "error", "break", "length"] and meta["task"] == "multilabel"
    assert (meta["height"], meta["arch"]) == (64, "resnet-int8")


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(tiny_keras, tiny_dataset, tiny_valid, tmp_path):
    from convert.train import side_paths, train

    out = tmp_path / "tiny.keras"
    src_ckpt, src_hist, _ = side_paths(Path(tiny_keras))
    ckpt, hist, _ = side_paths(out)
    shutil.copytree(src_ckpt, ckpt)
    shutil.copy(src_hist, hist)
    first = json.loads(hist.read_text())
    res = train(
        str(tiny_valid / "data.csv"),
        str(tiny_valid / "data.csv"),
        out,
        arch="resnet-int8",
        epochs=2,
        size=64,
        filters=4,
        batch=16,
        resume=True,
        verbose=0,
    )
    assert res.epochs_run == 2
    h = json.loads(hist.read_text())
    assert h["loss"][0] == first["loss"][0] and len(h["loss"]) == 2  # epoch 1 kept, epoch 2 added
    assert sorted(p.name[:8] for p in ckpt.iterdir()) == ["ckpt-e01", "ckpt-e02"]
    assert out.is_file()


@pytest.mark.slow
def test_multiclass_folders_train_and_evaluate_cli(tmp_path):
    fruit_folders(tmp_path / "train", 0)
    fruit_folders(tmp_path / "valid", 1, 4)
    out = tmp_path / "fruit.keras"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "convert",
            "train",
            "--train",
            str(tmp_path / "train"),
            "--valid",
            str(tmp_path / "valid"),
            "--out",
            str(out),
            "--arch",
            "cnn",
            "--size",
            "32",
            "--filters",
            "4",
            "--epochs",
            "1",
            "--batch",
            "8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "multiclass, labels Apfel, Orange, Tomate" in p.stdout
    from convert.models import read_meta

    assert read_meta(out)["task"] == "multiclass"
    js = tmp_path / "ev.json"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "convert",
            "evaluate",
            "--model",
            str(out),
            "--data",
            str(tmp_path / "valid"),
            "--json",
            str(js),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert re.search(r"^Top-1 Accuracy: \d+\.\d\d$", p.stdout, re.M)
    assert "Confusion matrix" in p.stdout
    m = json.loads(js.read_text())
    assert m["task"] == "multiclass" and np.asarray(m["confusion"]).sum() == 12
    assert abs(np.trace(m["confusion"]) / 12 * 100 - m["accuracy"]) < 1e-9
