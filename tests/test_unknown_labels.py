"""Unknown labels: an empty cell of a seed CSV is "nobody knows", not False.

``synth --scale-range`` writes them (a stitch length the pixels cannot tell outside the shipped
scale range); ``read_csv`` reads them as NaN; ``train`` leaves them out of its loss and accuracy;
the metrics leave them out of that label's figures; ``split`` writes them back empty.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from typing import Any

import numpy as np
import pytest

from tests.support.cli import one_line_error, run_convert


def _write(path, rows):
    path.write_text(",name,good,error,break,length\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rows)))
    return path


def test_empty_cell_reads_as_nan_and_is_written_back_empty(tmp_path):
    from convert.data import read_csv, seed_csv_text, target_bools

    p = _write(tmp_path / "data.csv", ["a.png,True,False,False,", "b.png,False,True,False,True"])
    ds = read_csv(p, check_images=False)
    assert np.isnan(ds.targets[0, 3]) and ds.targets[1].tolist() == [0.0, 1.0, 0.0, 1.0]
    rows = [(n, target_bools(t)) for n, t in zip(["a.png", "b.png"], ds.targets, strict=True)]
    assert rows[0][1] == [True, False, False, None]
    text = seed_csv_text(rows, ds.labels)
    assert text.splitlines()[1] == "0,a.png,True,False,False,"  # unknown stays unknown, never False
    bad = _write(tmp_path / "bad.csv", ["a.png,True,False,False,maybe"])
    with pytest.raises(Exception, match=r"bad.csv:2: column 'length' has value 'maybe', expected True, False or empty"):
        read_csv(bad, check_images=False)


def test_metrics_leave_unknown_truth_out():
    from convert.metrics import auroc, calibrate_threshold, multilabel_metrics

    nan = float("nan")
    y = np.array([[1, 1], [0, nan], [1, 0], [0, nan], [1, 1]], np.float64)
    p = np.array([[0.9, 0.8], [0.2, 0.9], [0.4, 0.1], [0.1, 0.9], [0.8, 0.3]])
    m = multilabel_metrics(y, p, ["a", "b"], {"a": 0.5, "b": 0.5})
    # b: 3 known images, 2 right (0.8 ≥ .5 for 1, 0.1 < .5 for 0; 0.3 < .5 for 1 is wrong)
    assert m["labels"]["b"]["known"] == 3 and m["labels"]["b"]["accuracy"] == pytest.approx(200 / 3)
    assert (m["labels"]["b"]["tp"], m["labels"]["b"]["fn"], m["labels"]["b"]["tn"]) == (1, 1, 1)
    assert m["labels"]["b"]["auroc"] == 1.0  # the two 0.9s of unknown truth would have made it 0.5
    assert m["labels"]["a"]["accuracy"] == 80.0 and m["labels"]["a"]["known"] == 5
    assert m["exact_match"] == pytest.approx(100 * 1 / 3)  # rows 0, 2, 4: only row 0 has both right
    assert auroc(np.array([nan, nan]), np.array([0.1, 0.2])) is None
    assert calibrate_threshold(np.array([nan, 1.0, 0.0]), np.array([0.0, 0.7, 0.3])) == pytest.approx(0.5)


def test_a_label_nobody_knows_has_no_accuracy_rather_than_zero():
    """A set drawn wholly outside the scales where ``length`` shows (``synth --scale-range 2.3:9``):
    no image has it known, so its accuracy is none at all, not 0 %, in the metrics and the report."""
    from convert.evaluate import format_report
    from convert.metrics import multilabel_metrics

    nan = float("nan")
    y = np.array([[1, nan], [0, nan], [1, nan]], np.float64)
    p = np.array([[0.9, 0.8], [0.2, 0.1], [0.3, 0.9]])
    m = multilabel_metrics(y, p, ["good", "length"], {"good": 0.5, "length": 0.5})
    assert m["labels"]["good"]["accuracy"] == pytest.approx(200 / 3)
    assert m["labels"]["length"]["accuracy"] is None and m["labels"]["length"]["known"] == 0
    assert m["exact_match"] is None
    lines = format_report(m, ["good", "length"]).splitlines()
    assert lines[:3] == [
        "Good Accuracy: 66.67",
        "Length Accuracy: – (no image of the set has this label known)",
        "Exact match (all labels right): – (no image has every label known)",
    ]
    assert "Length Precision, Recall, F1: – (no image of the set has this label known)" in lines


def test_masked_loss_and_accuracy_count_known_labels_only():
    from convert.train import masked_objects

    loss, acc = masked_objects()
    nan = float("nan")
    y = np.array([[1.0, 0.0, nan], [nan, nan, nan]], np.float32)
    p = np.array([[0.8, 0.4, 0.99], [0.3, 0.6, 0.5]], np.float32)
    got = np.asarray(loss(y, p))
    want0 = -(math.log(0.8) + math.log(0.6)) / 2  # the unknown third label adds nothing
    assert got[0] == pytest.approx(want0, rel=1e-5) and got[1] == 0.0
    acc.reset_state()  # the metric object is shared (cached) with any earlier training in this process
    acc.update_state(np.array([[1.0, 0.0, nan]], np.float32), np.array([[0.8, 0.7, 0.0]], np.float32))
    assert float(acc.result()) == pytest.approx(0.5)


@pytest.mark.slow  # trains the tiny model twice (two epochs, then one more resumed)
def test_train_with_unknown_cells_then_resume(tiny_dataset, tiny_valid, tmp_path):
    from convert.train import side_paths, train

    rows = list(csv.reader((tiny_dataset / "data.csv").open()))
    for row in rows[1::2]:
        row[-1] = ""  # every other length unknown
    with (tmp_path / "data.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(
            [rows[0]] + [[r[0], str(tiny_dataset / r[1]), *r[2:]] for r in rows[1:]]
        )
    out = tmp_path / "m.keras"
    kw: dict[str, Any] = dict(arch="resnet-int8", size=64, filters=4, batch=16, verbose=0)
    first = train(str(tmp_path / "data.csv"), str(tiny_valid / "data.csv"), out, epochs=2, **kw)
    assert first.epochs_run == 2
    hist = json.loads(side_paths(out)[1].read_text())
    assert all(np.isfinite(hist["loss"])) and all(0 < a <= 1 for a in hist["acc"])
    shutil.copy(out, tmp_path / "first.keras")
    again = train(str(tmp_path / "data.csv"), str(tiny_valid / "data.csv"), out, epochs=3, resume=True, **kw)
    assert again.epochs_run == 3  # the checkpoint compiled with the masked loss loads again


def test_scale_range_leaves_length_unknown_outside_the_shipped_range(tmp_path):
    from convert.data import read_csv
    from convert.leaveout import read_meta_columns
    from convert.synth import SCALE_RANGE, write_dataset

    path = write_dataset(tmp_path / "s", 24, 3, size=64, scale_range=((3.0, 16.0),))
    ds = read_csv(path)
    ppm = read_meta_columns(tmp_path / "s", "px_per_mm")["px_per_mm"]
    at256 = np.array([float(ppm[p]) * 256 / 64 for p in ds.paths])
    assert at256.min() >= 3.0 * 0.999 and at256.max() <= 16.0 * 1.001
    outside = (at256 < SCALE_RANGE[0] * 0.999) | (at256 > SCALE_RANGE[1] * 1.001)
    assert 0 < outside.sum() < len(ds)
    assert (np.isnan(ds.targets[:, 3]) == outside).all()  # length unknown exactly there
    assert not np.isnan(ds.targets[:, :3]).any()  # good, error and break always known


def test_several_scale_ranges_share_the_images():
    from convert.synth import parse_scale_ranges, render_image

    ranges = parse_scale_ranges("2.3:9,9:16")
    assert ranges == ((2.3, 9.0), (9.0, 16.0))
    drawn = []
    for i in range(40):
        meta: dict = {}
        render_image(np.random.default_rng(i), size=64, scale_range=ranges, meta=meta)
        drawn.append(meta["px_per_mm"] * 256 / 64)
    low = sum(d < 9 for d in drawn)
    assert min(drawn) >= 2.3 * 0.999 and max(drawn) <= 16 * 1.001 and 10 <= low <= 30  # about half each


def test_scale_range_refuses_bad_values_in_one_line(tmp_path):
    one_line_error(
        run_convert("synth", "--out", str(tmp_path / "a"), "--count", "2", "--scale-range", "9:3"),
        "--scale-range 9:3",
        "LO < HI",
    )
    one_line_error(
        run_convert("synth", "--out", str(tmp_path / "b"), "--count", "2", "--scale-range", "3:9", "--px-per-mm", "5"),
        "exclude each other",
    )
    one_line_error(
        run_convert("synth", "--video", str(tmp_path / "v.mp4"), "--frames", "5", "--scale-range", "3:9"),
        "--scale-range applies to stills",
    )
    p = run_convert("synth", "--out", str(tmp_path / "c"), "--count", "2", "--scale-range", "x")
    assert p.returncode == 2 and "'x': expected LO:HI[,LO:HI…]" in p.stderr and "Traceback" not in p.stderr


def _pitches(holes: np.ndarray) -> np.ndarray:
    return np.hypot(*np.diff(holes, axis=0).T)


def test_length_change_switches_the_stitch_length_in_view():
    """A normal seam whose stitch length changes in view: the holes go from one pitch to the other
    (2 ↔ 4 mm) once, at the first hole past a point in the middle half of the still; the default draws nothing extra."""
    from convert.synth_render import build_still

    S, size = 12.0, 256
    for length in (True, False):
        for i in range(6):
            rng, drng = np.random.default_rng(i), np.random.default_rng(100 + i)
            holes = build_still(rng, drng, size, S, False, False, length, length_change=True).holes
            p = _pitches(holes) / S  # mm along the seam (the line is within ±15° of level)
            first, last = (2.0, 4.0) if length else (4.0, 2.0)
            assert np.median(p[:3]) == pytest.approx(first, rel=0.1) and np.median(p[-3:]) == pytest.approx(
                last, rel=0.1
            )
            jump = int(np.argmax(np.abs(np.diff(p)) > 1.0))
            assert 0.25 * size <= holes[jump + 1, 0] < 0.75 * size + 4 * S and (np.abs(np.diff(p)) > 1.0).sum() == 1
            same = build_still(np.random.default_rng(i), np.random.default_rng(100 + i), size, S, False, False, length)
            assert np.allclose(_pitches(same.holes) / S, 2.0 if length else 4.0, rtol=0.1)
    with pytest.raises(ValueError, match="normal seam only"):
        build_still(np.random.default_rng(0), np.random.default_rng(1), size, S, True, False, True, length_change=True)


def test_length_changes_leave_length_unknown_on_normal_seams_only(tmp_path):
    from convert.data import read_csv
    from convert.synth import write_dataset

    csv_path = write_dataset(tmp_path / "c", 40, 2, size=64, length_changes=1.0)
    ds = read_csv(csv_path, check_images=False)
    good = ds.targets[:, 0] == 1
    assert good.sum() >= 8 and np.isnan(ds.targets[good, 3]).all()  # every normal seam changes length
    assert not np.isnan(ds.targets[~good]).any()  # defect stills keep their length
    # a share of 0 is the default set, byte for byte
    a, b = (
        write_dataset(tmp_path / "a", 12, 2, size=64),
        write_dataset(tmp_path / "b", 12, 2, size=64, length_changes=0),
    )
    assert a.read_text() == b.read_text()
    names = [f"synth_{i:06d}.png" for i in range(12)]
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)


def test_length_changes_refuses_bad_values_in_one_line(tmp_path):
    one_line_error(
        run_convert("synth", "--out", str(tmp_path / "a"), "--count", "2", "--length-changes", "1.5"),
        "--length-changes must be in 0..1, got 1.5",
    )
    one_line_error(
        run_convert("synth", "--video", str(tmp_path / "v.mp4"), "--frames", "5", "--length-changes", "0.2"),
        "--length-changes applies to stills (--out) only",
    )
