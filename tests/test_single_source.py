"""One source for each shared fact: the seam labels, the trained ROI, px/mm, the Grad-CAM layer
name, the seed CSV's true/false spellings and its writer. A second copy that drifts is a bug that
only shows up on the line (a model trained on one view, run on another), so the copies are gone
and these tests keep them gone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from edge.seam import DEFAULT_ROI, SEAM_LABELS

ROOT = Path(__file__).resolve().parents[1]


def test_every_user_of_a_fact_reads_the_one_source():
    import convert.bench.common as bench_common
    import convert.data as data
    import convert.explainer as explainer
    import convert.gradcam_tf as gradcam_tf
    import convert.label_state as label_state
    import convert.models as models
    import convert.synth as synth
    import convert.synth_fabric as synth_fabric

    # the users' imported names, read on purpose (mypy: not re-exported, hence the attr-defined ignores)
    assert SEAM_LABELS == ("good", "error", "break", "length")
    for labels in (data.SEAM_LABELS, gradcam_tf.SEAM_LABELS, label_state.ATTRS, synth.LABELS):  # type: ignore[attr-defined]
        assert labels is SEAM_LABELS
    assert synth.ROI is DEFAULT_ROI and tuple(bench_common.ROI) == DEFAULT_ROI  # type: ignore[attr-defined]
    assert synth.DEFAULT_PX_PER_MM is synth_fabric.BASE_PX_PER_MM  # type: ignore[attr-defined]
    assert explainer.GRADCAM_LAYER is models.GRADCAM_LAYER  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["seam-qc.yaml", "demo.yaml"])
def test_shipped_configs_use_the_trained_roi(name):
    """YAML cannot import the constant: check the shipped configs against it instead."""
    cam = yaml.safe_load((ROOT / "config" / name).read_text())["camera"]
    assert tuple(cam["roi"]) == DEFAULT_ROI and (cam.get("width", 640), cam.get("height", 480)) == (640, 480)


@pytest.mark.parametrize(("cell", "value"), [("True", True), ("yes", True), ("1", True), ("NO", False), ("0.0", False)])
def test_reader_and_labeler_accept_the_same_spellings(tmp_path, cell, value):
    """``read_csv`` (train/evaluate) and the labeler's resume used to disagree on yes/no."""
    import cv2

    from convert.data import read_csv
    from convert.label_state import LabelStore

    cv2.imwrite(str(tmp_path / "seam7_3.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "seam7_data.csv").write_text(
        f",name,good,error,break,length\n0,seam7_3.png,{cell},False,False,{cell}\n"
    )
    ds = read_csv(tmp_path / "seam7_data.csv")
    assert ds.targets[0].tolist() == [float(value), 0.0, 0.0, float(value)]
    store = LabelStore(tmp_path, "seam7")
    store.load()
    assert store.rows[3].values == (value, False, False, value)


def test_split_and_labeler_write_the_same_csv(tmp_path):
    from convert.data import Dataset
    from convert.label_state import Row, csv_bytes
    from convert.split import write_seed_csv

    flags = [(True, False, False, False), (False, True, True, True)]
    ds = Dataset(SEAM_LABELS, "multilabel", ("a_1.png", "a_2.png"), np.array(flags, np.float32), "x")
    write_seed_csv(tmp_path / "s.csv", ds)
    rows = [Row(i + 1, f"a_{i + 1}.png", f) for i, f in enumerate(flags)]
    assert (tmp_path / "s.csv").read_bytes() == csv_bytes(rows)
    assert csv_bytes(rows).decode().splitlines()[1] == "0,a_1.png,True,False,False,False"
