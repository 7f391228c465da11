"""convert.train: checkpoints named by metrics, history + curves, resume, multiclass (CCE) via the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import DataError
from tests.support.cli import run_convert
from tests.support.images import fruit_folders, imread
from tests.support.model import TINY_EPOCHS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_tiny_keras_artifacts(tiny_keras):
    from convert.models import read_meta
    from convert.train import side_paths, use_xla

    ckpt_dir, hist_path, curve_path = side_paths(Path(tiny_keras))
    ckpts = sorted(p.name for p in ckpt_dir.iterdir())
    assert len(ckpts) == TINY_EPOCHS, ckpts  # one checkpoint per epoch
    assert all(
        re.fullmatch(rf"ckpt-e{i + 1:02d}-val_loss\d+\.\d{{3}}-val_acc\d\.\d{{3}}\.keras", c)
        for i, c in enumerate(ckpts)
    ), ckpts
    hist = json.loads(hist_path.read_text())
    assert set(hist) >= {"loss", "acc", "val_loss", "val_acc"} and all(len(v) == TINY_EPOCHS for v in hist.values())
    # each checkpoint's name carries the logged metrics of its epoch
    assert all(f"val_loss{v:.3f}" in c for v, c in zip(hist["val_loss"], ckpts, strict=True))
    img = cv2.imread(str(curve_path))
    assert img is not None and img.shape[0] > 100 and img.std() > 0
    meta = read_meta(tiny_keras)
    assert meta["labels"] == ["good", "error", "break", "length"] and meta["task"] == "multilabel"
    assert (meta["height"], meta["arch"]) == (64, "resnet-int8")
    # the steps were compiled as train.use_xla says (off: the suite sets SEAMQC_TRAIN_XLA=0), and the
    # checkpoint's compile config records it
    with zipfile.ZipFile(ckpt_dir / ckpts[-1]) as z:
        assert json.loads(z.read("config.json"))["compile_config"]["jit_compile"] is use_xla() is False


def _outputs_under(variable: str, code: str, values) -> dict:
    """``code``'s stdout in a fresh interpreter for each value of the environment ``variable`` (None: unset)."""
    seen = {}
    for value in values:
        env = {k: v for k, v in os.environ.items() if k != variable}
        if value is not None:
            env[variable] = value
        p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        seen[value] = p.stdout.strip()
    return seen


def _bad_value_is_one_line(monkeypatch, variable: str, check, message: str) -> None:
    """``variable=yes`` raises ``message`` from ``check()``, and ``convert train`` exits 2 with it as its one line."""
    monkeypatch.setenv(variable, "yes")
    with pytest.raises(DataError, match="^" + re.escape(message) + "$"):
        check()
    p = run_convert("train", "--train", "a.csv", "--valid", "b.csv", "--out", "c.keras", env={variable: "yes"})
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [f"error: {message}"], p.stderr


def test_training_uses_xla_with_a_gpu_or_without_avx512_unless_the_environment_says(monkeypatch):
    """``convert train`` compiles with XLA on a GPU and on a CPU without AVX-512 (the bench: 1.49x),
    not on a CPU with it (0.58-0.79x, TensorFlow's oneDNN kernels); ``SEAMQC_TRAIN_XLA=1`` / ``0`` /
    ``auto`` say otherwise, and any other value is one line naming the variable."""
    from convert.train import XLA_ENV, use_xla

    code = (
        "import tensorflow as tf, convert.train as t; "
        "print(t.use_xla(), bool(tf.config.list_physical_devices('GPU')) or not t.cpu_has_avx512())"
    )
    seen = {k: v.split() for k, v in _outputs_under(XLA_ENV, code, (None, "auto", " AUTO ", "1", "0", " 0 ")).items()}
    auto = seen[None][1]  # a GPU, or a CPU without AVX-512 (the development VMs have had both kinds)
    assert {k: v[0] for k, v in seen.items()} == {
        None: auto,
        "auto": auto,
        " AUTO ": auto,
        "1": "True",
        "0": "False",
        " 0 ": "False",
    }
    _bad_value_is_one_line(
        monkeypatch, XLA_ENV, use_xla, "SEAMQC_TRAIN_XLA='yes': choose from 0, 1, auto (or leave it unset)"
    )


def test_avx512_is_read_from_the_cpu_flags():
    """``use_xla``'s "auto" on a CPU hangs on one flag: ``avx512f`` as a whole word of a flags line."""
    from convert.train import cpu_has_avx512

    assert cpu_has_avx512("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n") is True
    assert cpu_has_avx512("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n") is False
    assert cpu_has_avx512("model name\t: avx512f in a name\nflags\t\t: avx2 avx512_vnni_x\n") is False
    assert cpu_has_avx512("") is False
    assert cpu_has_avx512() is ("avx512f" in Path("/proc/cpuinfo").read_text().split())  # this machine's


def test_training_keeps_freed_memory_unless_the_environment_says(monkeypatch):
    """A CPU training step frees and reallocates the same activations every step; glibc's default
    gave them back to the kernel each time (a third of the CPU time in page faults). ``train`` sets
    malloc to keep them: the settings take on glibc (True), ``SEAMQC_TRAIN_MALLOC=0`` leaves malloc
    alone (False), any other value is one line naming the variable."""
    import ctypes

    from convert.train import MALLOC_ENV, keep_freed_memory

    code = "import convert.train as t; print(t.keep_freed_memory())"
    seen = _outputs_under(MALLOC_ENV, code, (None, "1", " 1 ", "0"))
    glibc = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")  # the CI machine and the VMs: Debian's glibc
    assert seen == {None: str(glibc), "1": str(glibc), " 1 ": str(glibc), "0": "False"}
    _bad_value_is_one_line(
        monkeypatch, MALLOC_ENV, keep_freed_memory, "SEAMQC_TRAIN_MALLOC='yes': choose from 0, 1 (or leave it unset)"
    )


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
        epochs=TINY_EPOCHS + 1,
        size=64,
        filters=4,
        batch=16,
        resume=True,
        verbose=0,
    )
    assert res.epochs_run == TINY_EPOCHS + 1
    h = json.loads(hist.read_text())
    # the finished epochs kept, one added
    assert h["loss"][:TINY_EPOCHS] == first["loss"] and len(h["loss"]) == TINY_EPOCHS + 1
    assert sorted(p.name[:8] for p in ckpt.iterdir()) == [f"ckpt-e{i:02d}" for i in range(1, TINY_EPOCHS + 2)]
    assert out.is_file()


@pytest.mark.slow
def test_multiclass_folders_train_and_evaluate_cli(tmp_path):
    fruit_folders(tmp_path / "train", 0)
    fruit_folders(tmp_path / "valid", 1, 4)
    out = tmp_path / "fruit.keras"
    p = run_convert(
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
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "multiclass, labels Apfel, Orange, Tomate" in p.stdout
    from convert.models import read_meta

    assert read_meta(out)["task"] == "multiclass"
    js = tmp_path / "ev.json"
    p = run_convert(
        "evaluate",
        "--model",
        str(out),
        "--data",
        str(tmp_path / "valid"),
        "--json",
        str(js),
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert re.search(r"^Top-1 Accuracy: \d+\.\d\d$", p.stdout, re.M)
    assert "Confusion matrix" in p.stdout
    m = json.loads(js.read_text())
    assert m["task"] == "multiclass" and np.asarray(m["confusion"]).sum() == 12
    assert abs(np.trace(m["confusion"]) / 12 * 100 - m["accuracy"]) < 1e-9


def test_oversample_repeats_the_images_of_a_label():
    from convert.data import Dataset, oversample

    # good, error, error+break, break, good: targets good/error/break/length
    t = np.array(
        [[1, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1], [0, 0, 1, 0], [1, 0, 0, 1]],
        np.float32,
    )
    ds = Dataset(("good", "error", "break", "length"), "multilabel", tuple("abcde"), t, "x.csv")
    assert oversample(ds, {}) is ds
    out = oversample(ds, {"error": 3})
    assert out.paths == ("a", "b", "b", "b", "c", "c", "c", "d", "e")
    assert out.targets.shape == (9, 4) and out.targets[:, 1].sum() == 6
    # an image with two oversampled labels gets the larger factor, not the product
    both = oversample(ds, {"error": 3, "break": 2})
    assert both.paths == ("a", "b", "b", "b", "c", "c", "c", "d", "d", "e")


def test_parse_oversample_names_the_bad_option():
    from convert.data import parse_oversample
    from edge.errors import DataError

    labels = ("good", "error", "break", "length")
    assert parse_oversample(None, labels) == {}
    assert parse_oversample(["error=3", "break=2"], labels) == {"error": 3, "break": 2}
    for spec, words in (
        ("error", "expected LABEL=N"),
        ("error=x", "expected LABEL=N"),
        ("stain=2", "no label 'stain'"),
        ("error=0", "N must be in 1..100"),
        ("error=101", "N must be in 1..100"),
    ):
        with pytest.raises(DataError, match=re.escape(f"--oversample {spec!r}: {words}")):
            parse_oversample([spec], labels)


@pytest.mark.slow  # one epoch of a tiny model
def test_cli_train_oversample(tiny_valid, tmp_path):
    """``train --oversample error=3`` trains on each error image three times, says so, records it;
    a label the data lacks is one line and exit 2 before any training."""
    import pandas as pd

    from convert.models import read_meta

    data = str(tiny_valid / "data.csv")
    df = pd.read_csv(data, index_col=0)
    n, n_err = len(df), int(df["error"].sum())
    assert n_err > 0
    bad = run_convert(
        "train", "--train", data, "--valid", data, "--out", str(tmp_path / "b.keras"), "--oversample", "stain=2"
    )
    assert bad.returncode == 2 and "--oversample 'stain=2': no label 'stain'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "b.keras").exists()
    out = tmp_path / "o.keras"
    p = run_convert(
        "train", "--train", data, "--valid", data, "--out", str(out), "--arch", "resnet-int8",
        "--size", "64", "--filters", "4", "--epochs", "1", "--oversample", "error=3",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"oversampling error x3: {n} -> {n + 2 * n_err} training images" in p.stderr
    assert read_meta(out)["oversample"] == {"error": 3}


def test_training_curves_leave_out_a_diverged_epoch(tmp_path):
    """A fine-tune at too high a learning rate gives NaN or inf losses: the curve PNG is still
    written (it crashed the run with "cannot convert float NaN to integer"), the finite epochs drawn."""
    from convert.train import draw_curves

    nan, inf = float("nan"), float("inf")
    history = {"loss": [0.6, nan, inf, 0.4], "val_loss": [0.7, nan, nan, 0.5], "acc": [0.5, 0.6, nan, 0.7]}
    draw_curves(history, tmp_path / "c.png")
    img = imread(tmp_path / "c.png")
    assert img.shape == (360, 900, 3)
    left = img[30:320, 50:435]  # the loss panel: the two finite epochs of each curve are drawn
    blue = (left[..., 0] > 150) & (left[..., 1] < 120) & (left[..., 2] < 60)  # loss (200, 80, 0)
    red = (left[..., 2] > 150) & (left[..., 1] < 120) & (left[..., 0] < 60)  # val_loss (0, 80, 220)
    assert blue.sum() > 20 and red.sum() > 20
    draw_curves({"loss": [nan, nan], "val_loss": [inf]}, tmp_path / "none.png")  # nothing finite: empty panels
    assert imread(tmp_path / "none.png").shape == (360, 900, 3)
