"""``python -m convert localize``: pointing game and mass-in-box, on known and on trained models."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import DataError
from tests.support.gradcam import SEAM, bright_square_model, make_bundle, square_image


def _main(argv: list[str]) -> int:
    from convert.__main__ import main

    return main(argv)


def test_score_case_hits_misses_tolerance_mass():
    from convert.localize import score_case

    cam = np.zeros((100, 100), np.float32)
    cam[50, 50] = 1.0
    cam[10:20, 10:20] = 0.5
    hit, mass, area, xy, dist, border = score_case(cam, [(45, 45, 10, 10)], tolerance=0)
    assert hit and xy == (50, 50) and dist == 0.0 and not border
    assert mass == pytest.approx(1.0 / (1.0 + 50.0)) and area == pytest.approx(0.01)
    hit, *_ = score_case(cam, [(53, 53, 10, 10)], tolerance=0)
    assert not hit
    hit, _, _, _, dist, _ = score_case(cam, [(53, 53, 10, 10)], tolerance=3)
    assert hit
    hit, _, _, _, dist, _ = score_case(cam, [(60, 50, 5, 5)], tolerance=2)
    assert not hit and dist == pytest.approx(10.0)
    hit, *_ = score_case(cam, [(0, 0, 5, 5), (48, 48, 4, 4)], tolerance=0)  # any box of the label
    assert hit
    flat = score_case(np.zeros((10, 10), np.float32), [(0, 0, 5, 5)], 4)
    assert flat[0] is False and flat[1] == 0.0 and np.isnan(flat[4])


def test_read_boxes_errors(tmp_path):
    from convert.localize import read_boxes

    with pytest.raises(DataError, match="boxes.csv not found"):
        read_boxes(tmp_path / "boxes.csv")
    (tmp_path / "boxes.csv").write_text("name,label,x,y\n")
    with pytest.raises(DataError, match="needs columns"):
        read_boxes(tmp_path / "boxes.csv")
    (tmp_path / "boxes.csv").write_text("name,label,x,y,w,h\na.png,error,1,2,x,4\n")
    with pytest.raises(DataError, match=r"boxes.csv:2"):
        read_boxes(tmp_path / "boxes.csv")
    (tmp_path / "boxes.csv").write_text("name,label,x,y,w,h\na.png,error,1,2,3,4\na.png,error,5,6,7,8\n")
    assert read_boxes(tmp_path / "boxes.csv") == {"a.png": {"error": [(1, 2, 3, 4), (5, 6, 7, 8)]}}


def _square_dataset(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(4)
    root.mkdir(parents=True, exist_ok=True)
    rows, boxes = [], []
    for i in range(n):
        x, y = (int(v) for v in rng.integers(10, 200, 2))
        name = f"sq_{i}.png"
        cv2.imwrite(str(root / name), square_image(x, y, seed=i))
        rows.append(f"{i},{name},False,True,False,False")
        boxes.append(f"{name},error,{x},{y},40,40")
    (root / "data.csv").write_text(",name,good,error,break,length\n" + "\n".join(rows) + "\n")
    (root / "boxes.csv").write_text("name,label,x,y,w,h\n" + "\n".join(boxes) + "\n")
    return root


def test_localize_known_square_both_methods(tmp_path):
    """A hand-set bright-square detector must point at the square every time, on both paths."""
    from convert.localize import localize

    data = _square_dataset(tmp_path / "sq")
    root = make_bundle(bright_square_model(), tmp_path / "bundle", SEAM)
    for method in ("litert", "tf"):
        res = localize(root, data, method=method, progress=False)
        s = res["labels"]["error"]
        assert res["method"] == method and res["tolerance_px"] == 8
        assert s["cases"] == 6 and s["flagged"] == 6 and s["pointing"] == 1.0
        assert 0.5 < s["mass_in_box"] <= 1.0 and s["box_area"] == pytest.approx(1600 / 65536)
        assert s["miss_dist_px"] is None and len(res["cases"]) == 6


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_localize_cli_tiny_bundle_numbers_in_range(tiny_bundle, tiny_dataset, tmp_path, capsys):
    if not (tiny_dataset / "boxes.csv").is_file():
        pytest.skip("tiny_dataset has no boxes.csv (convert.synth not available)")
    out = tmp_path / "loc.json"
    rc = _main(
        ["localize", "--model", str(tiny_bundle), "--data", str(tiny_dataset), "--json", str(out), "--limit", "60"]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "pointing" in text and "tolerance 8 px" in text
    res = json.loads(out.read_text())
    assert set(res["labels"]) <= {"error", "break", "length", "good"} and res["labels"]
    for lab, s in res["labels"].items():
        assert s["cases"] >= s["flagged"] >= s["hits"] >= 0
        for key in ("pointing", "mass_in_box", "box_area", "miss_at_border"):
            assert s[key] is None or 0.0 <= s[key] <= 1.0, (lab, key, s[key])
    for c in res["cases"]:
        assert 0.0 <= c["mass_in_box"] <= 1.0 and 0.0 <= c["score"] <= 1.0


def test_localize_cli_errors(tmp_path, capsys):
    root = make_bundle(bright_square_model(), tmp_path / "bundle", SEAM)
    (tmp_path / "empty").mkdir()
    rc = _main(["localize", "--model", str(root), "--data", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "boxes.csv" in err[0]
