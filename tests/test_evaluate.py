"""convert.evaluate: one path for .keras, .tflite and bundles; the seed's lines; calibration; metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert.metrics import calibrate_threshold, multiclass_metrics, multilabel_metrics

ROOT = Path(__file__).resolve().parent.parent
ACC_RE = re.compile(r"^(Good|Error|Break|Length) Accuracy: (\d+\.\d\d)$", re.M)


def _evaluate(model: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, "-m", "convert", "evaluate", "--model", str(model), "--data", str(data), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def test_calibrate_threshold_maximises_accuracy():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.8, 0.9])
    t = calibrate_threshold(y, p)
    assert 0.3 < t <= 0.35
    m = multilabel_metrics(y[:, None].astype(float), p[:, None], ["error"], {"error": t})
    assert m["labels"]["error"]["accuracy"] == 100.0 and m["labels"]["error"]["f1"] == 1.0
    m5 = multilabel_metrics(y[:, None].astype(float), p[:, None], ["error"], {"error": 0.5})
    lab = m5["labels"]["error"]
    assert (lab["tp"], lab["fp"], lab["fn"], lab["tn"]) == (2, 0, 1, 3)
    assert abs(lab["accuracy"] - 500 / 6) < 1e-9 and abs(lab["recall"] - 2 / 3) < 1e-9
    assert calibrate_threshold(np.zeros(4), np.full(4, 0.2)) == 0.5  # no information: stays at 0.5


def test_multiclass_metrics_confusion():
    y = np.eye(3)[[0, 0, 1, 2, 2, 2]]
    p = np.eye(3)[[0, 1, 1, 2, 2, 0]] * 0.8 + 0.05
    m = multiclass_metrics(y, p, ["Apfel", "Orange", "Tomate"])
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert abs(m["accuracy"] - 400 / 6) < 1e-9
    assert abs(m["labels"]["Orange"]["precision"] - 0.5) < 1e-9 and m["labels"]["Tomate"]["recall"] == 2 / 3


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_same_numbers_from_keras_tflite_and_bundle(tiny_keras, tiny_bundle, tiny_valid, tmp_path):
    data = tiny_valid / "data.csv"
    runs = {}
    for key, model, extra in (
        ("keras", tiny_keras, ()),
        ("tflite", tiny_bundle / "classifier_fp32.tflite", ()),
        ("bundle_fp32", tiny_bundle, ("--role", "classifier_fp32")),
        ("bundle", tiny_bundle, ()),
    ):
        js = tmp_path / f"{key}.json"
        # the same thresholds for everyone: calibrated on the same validation set
        p = _evaluate(model, data, "--calibrate", str(data), "--json", str(js), *extra)
        lines = ACC_RE.findall(p.stdout)
        assert [lab for lab, _ in lines] == ["Good", "Error", "Break", "Length"], p.stdout
        assert re.search(
            r"^Good Precision: \d+\.\d\d Recall: \d+\.\d\d F1: \d+\.\d\d( AUROC: [01]\.\d{4})?$", p.stdout, re.M
        )
        assert "Thresholds: good " in p.stdout
        runs[key] = (lines, json.loads(js.read_text()))
    assert runs["keras"][0] == runs["tflite"][0] == runs["bundle_fp32"][0]
    # int8 (the bundle's default classifier): the same up to quantisation
    for (lab, a), (_, b) in zip(runs["keras"][0], runs["bundle"][0]):
        assert abs(float(a) - float(b)) <= 2.5, (lab, a, b)
    k = runs["keras"][1]
    assert k["count"] == 80 and set(k["thresholds"]) == {"good", "error", "break", "length"}
    for lab, v in k["labels"].items():
        assert v["tp"] + v["fp"] + v["fn"] + v["tn"] == 80
        assert f"{lab.capitalize()} Accuracy: {v['accuracy']:.2f}" in "\n".join(
            f"{a} Accuracy: {b}" for a, b in runs["keras"][0]
        )


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_bundle_thresholds_are_used_by_default(tiny_bundle, tiny_valid, tmp_path):
    js = tmp_path / "b.json"
    _evaluate(tiny_bundle, tiny_valid / "data.csv", "--json", str(js))
    m = json.loads(js.read_text())
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert m["thresholds"] == manifest["thresholds"] and m["thresholds_from"] == "bundle"
    # the export measured the int8 classifier on the same validation set with the same thresholds
    exported = manifest["metrics"]["int8_valid"]["labels"]
    for lab, v in m["labels"].items():
        assert abs(v["accuracy"] - exported[lab]["accuracy"]) < 1e-9


def test_auroc_matches_pairwise_definition():
    from convert.metrics import auroc

    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.4
    s = np.round(rng.random(60) + 0.5 * y, 1)  # rounded: plenty of ties
    pos, neg = s[y], s[~y]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert abs(auroc(y, s) - pairs / (len(pos) * len(neg))) < 1e-12
    assert (
        auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
        and auroc(np.array([0, 0, 1, 1]), np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    )
    assert auroc(np.array([1, 1]), np.array([0.2, 0.3])) is None
    m = multilabel_metrics(np.array([[0.0], [1.0]]), np.array([[0.3], [0.6]]), ["break"], {"break": 0.5})
    assert m["labels"]["break"]["auroc"] == 1.0
