"""``python -m convert heatmaps``: overlays, contact sheet, ``--raw`` maps; both methods; errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.gradcam import SEAM, make_bundle, sample_frames, small_softmax
from tests.support.heads import garbage_heads, replace_head
from tests.support.images import imread


def _main(argv: list[str]) -> int:
    from convert.__main__ import main

    return main(argv)


def _check_raw(out: Path, stems_shapes: dict[str, tuple[int, int]], labels) -> None:
    for stem, shape in stems_shapes.items():
        for lab in labels:
            a = np.load(out / f"{stem}.{lab}.npy")
            assert a.dtype == np.float32 and a.shape == shape
            assert np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0
        ov = cv2.imread(str(out / f"{stem}.overlay.png"))
        assert ov is not None and ov.shape[:2] == shape


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_heatmaps_bundle_csv_raw(tiny_bundle, tiny_dataset, tmp_path):
    out = tmp_path / "hm"
    rc = _main(
        [
            "heatmaps",
            "--model",
            str(tiny_bundle),
            "--data",
            str(tiny_dataset / "data.csv"),
            "--out",
            str(out),
            "--raw",
            "--limit",
            "4",
        ]
    )
    assert rc == 0
    names = [ln.split(",")[1] for ln in (tiny_dataset / "data.csv").read_text().splitlines()[1:5]]
    stems = {Path(n).stem: imread(tiny_dataset / n).shape[:2] for n in names}
    _check_raw(out, stems, SEAM)
    assert len(list(out.glob("*.npy"))) == 4 * len(SEAM)
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 4 * 150 and sheet.shape[1] == 3 * 200  # 4 rows of 3 cells
    rows = (out / "heatmaps.csv").read_text().splitlines()
    assert rows[0] == "stem,name,label,score,peak,shown" and len(rows) == 1 + 4 * len(SEAM)


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_heatmaps_raw_same_maps_with_both_methods(tiny_bundle, tiny_dataset, tmp_path):
    """The CLI's two methods write the same maps (within the agreement bound)."""
    for method in ("litert", "tf"):
        assert (
            _main(
                [
                    "heatmaps",
                    "--model",
                    str(tiny_bundle),
                    "--data",
                    str(tiny_dataset / "data.csv"),
                    "--out",
                    str(tmp_path / method),
                    "--raw",
                    "--limit",
                    "2",
                    "--method",
                    method,
                    "--labels",
                    "error",
                    "break",
                ]
            )
            == 0
        )
    files = sorted(p.name for p in (tmp_path / "litert").glob("*.npy"))
    assert len(files) == 4 and all(p.split(".")[1] in ("error", "break") for p in files)
    for name in files:
        a, b = np.load(tmp_path / "litert" / name), np.load(tmp_path / "tf" / name)
        assert np.abs(a - b).max() <= 1e-3


def test_heatmaps_class_folders_and_single_image_keras(tmp_path):
    """A multiclass .keras on a class-per-folder tree (tf) and on one image (litert via a temp export)."""
    from convert.models import save_model

    labels = ["Apfel", "Banane", "Orange"]
    m = small_softmax("gap")
    kpath = tmp_path / "fruit.keras"
    save_model(m, kpath, {"labels": labels, "task": "multiclass", "height": 64, "width": 64})
    data = tmp_path / "fruit"
    frames = sample_frames(4, seed=2)
    for i, lab in enumerate(["Apfel", "Apfel", "Banane", "Orange"]):
        (data / lab).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / lab / "1.png" if i != 1 else data / lab / "2.png"), frames[i][:, :200])
    out = tmp_path / "out"
    assert _main(["heatmaps", "--model", str(kpath), "--data", str(data), "--out", str(out), "--raw"]) == 0
    stems = {"Apfel_1": (256, 200), "2": (256, 200), "Banane_1": (256, 200), "Orange_1": (256, 200)}
    _check_raw(out, stems, labels)
    assert (out / "contact_sheet.png").is_file()
    single = tmp_path / "single"
    img = data / "Banane" / "1.png"
    assert (
        _main(
            ["heatmaps", "--model", str(kpath), "--data", str(img), "--out", str(single), "--raw", "--method", "litert"]
        )
        == 0
    )
    _check_raw(single, {"1": (256, 200)}, labels)
    a, b = np.load(single / "1.Banane.npy"), np.load(out / "Banane_1.Banane.npy")
    assert np.abs(a - b).max() <= 1e-3  # litert (temp export) vs tf on the same image


def test_heatmaps_user_errors_are_one_line(tmp_path, capsys):
    m = small_softmax("gap")
    root = make_bundle(m, tmp_path / "b", ["a", "b", "c"], task="multiclass")
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), sample_frames(1)[0])
    cases = [
        (["--model", str(root), "--data", str(img), "--labels", "nope"], 78, "'nope'"),
        (["--model", str(tmp_path / "missing.keras"), "--data", str(img)], 78, "missing.keras"),
        (["--model", str(root), "--data", str(tmp_path / "none.csv")], 2, "none.csv"),
        (["--model", str(root), "--data", str(img), "--layer", "other"], 78, "--method tf"),
    ]
    for argv, code, needle in cases:
        rc = _main(["heatmaps", *argv, "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == code and len(err) == 1 and needle in err[0], (argv, rc, err)


def test_heatmaps_bad_out_and_garbage_head_are_one_line(tmp_path, capsys):
    """Issue 12 #13: ``--out`` that is a file (or under one) and a garbage head.npz used to end in a
    traceback; each is now one line naming the file, non-zero exit."""
    import shutil

    m = small_softmax("gap")
    root = make_bundle(m, tmp_path / "b", ["a", "b", "c"], task="multiclass")
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), sample_frames(1)[0])
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for out, words in ((afile, "not a folder"), (afile / "sub", "cannot create")):
        rc = _main(["heatmaps", "--model", str(root), "--data", str(img), "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and str(out) in err[0] and words in err[0], (out, rc, err)
    assert afile.read_text() == "keep me"
    good = (root / "head.npz").read_bytes()
    for kind, data in garbage_heads(good).items():
        b = shutil.copytree(root, tmp_path / f"b-{kind}")
        head = replace_head(b, data)
        rc = _main(
            [
                "heatmaps",
                "--model",
                str(b),
                "--data",
                str(img),
                "--out",
                str(tmp_path / f"o-{kind}"),
                "--method",
                "litert",
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 78 and len(err) == 1 and str(head) in err[0], (kind, rc, err)
