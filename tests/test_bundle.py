"""edge.bundle: a bad manifest is one line naming the file, key and value (exit 78), never a traceback.

Each case mutates a copy of the shipped bundle's ``manifest.json`` (the model files are symlinked,
so their sha256 still verifies); the shipped bundle itself is never touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.bundle import load_bundle
from edge.errors import ModelError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "edge" / "models" / "default"
pytestmark = pytest.mark.skipif(not (SHIPPED / "manifest.json").exists(), reason="needs the shipped bundle")


def bundle_copy(dst: Path, mutate: Callable[[dict], Any] | None = None, text: str | bytes | None = None) -> Path:
    """A bundle in ``dst`` whose manifest is the shipped one, mutated (or replaced by ``text``)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in SHIPPED.iterdir():
        if f.name != "manifest.json":
            (dst / f.name).symlink_to(f)
    if text is None:
        m = json.loads((SHIPPED / "manifest.json").read_text())
        if mutate is not None:
            mutate(m)
        text = json.dumps(m)
    (dst / "manifest.json").write_bytes(text.encode() if isinstance(text, str) else text)
    return dst


def _set(path: tuple, value: Any) -> Callable[[dict], None]:
    def f(m: dict) -> None:
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return f


CASES = [
    # issue 12 #2: these silently disabled a label or crashed with a traceback
    ("nan-threshold", _set(("thresholds", "error"), float("nan")), "thresholds.error: nan must be a number between"),
    ("seven-threshold", _set(("thresholds", "error"), 7.0), "thresholds.error: 7.0 must be a number between 0 and 1"),
    ("text-threshold", _set(("thresholds", "break"), "high"), "thresholds.break: 'high' must be a number"),
    ("bool-threshold", _set(("thresholds", "break"), True), "thresholds.break: True must be a number"),
    ("negative-threshold", _set(("thresholds", "good"), -0.1), "thresholds.good: -0.1 must be a number"),
    ("thresholds-list", _set(("thresholds",), [0.5]), "thresholds: [0.5] must be an object"),
    ("duplicate-labels", _set(("labels",), ["good", "good", "break", "length"]), "labels: 'good' is listed twice"),
    ("classifier-list", _set(("classifier",), ["classifier_int8"]), "classifier ['classifier_int8'] is not a role"),
    ("path-integer", _set(("files", "classifier_int8", "path"), 5), "files.classifier_int8.path: 5 must be a file"),
    ("path-nul", _set(("files", "head", "path"), "head\x00.npz"), "files.head.path: 'head\\x00.npz' must be a file"),
    ("sha-integer", _set(("files", "head", "sha256"), 7), "files.head.sha256: 7 must be a hex string"),
    ("height-string", _set(("input", "height"), "128"), "input.height: '128' must be a whole number of pixels"),
    ("height-huge", _set(("input", "height"), 10**9), "input.height: 1000000000 must be a whole number"),
    ("width-float", _set(("input", "width"), 128.5), "input.width: 128.5 must be a whole number"),
    ("input-list", _set(("input",), [128, 128]), "input [128, 128] must be an object"),
    ("version-true", _set(("format_version",), True), "format_version True is not supported"),
    ("task-list", _set(("task",), ["multilabel"]), "task ['multilabel'] must be one of"),
    ("label-empty", _set(("labels",), ["good", "", "break", "length"]), "labels ['good', '', 'break', 'length'] must"),
    ("gradcam-list", _set(("gradcam",), [1, 2]), "gradcam: [1, 2] must be an object"),
    ("gradcam-head-unknown", _set(("gradcam", "head"), "nohead"), "gradcam.head: 'nohead' is not a role in files"),
    ("peak-ref-text", _set(("gradcam", "peak_ref"), ["a", 1, 1, 1]), "gradcam.peak_ref: ['a', 1, 1, 1] must list"),
    ("feature-shape", _set(("gradcam", "feature_shape"), [32, -1, 32]), "gradcam.feature_shape: [32, -1, 32] must"),
]


@pytest.mark.parametrize("name, mutate, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_manifest_values_are_one_line(tmp_path, name, mutate, expected):
    root = bundle_copy(tmp_path / "b", mutate)
    with pytest.raises(ModelError) as ei:
        load_bundle(root)
    msg = str(ei.value)
    assert ei.value.exit_code == 78 and "\n" not in msg and len(msg) < 400, msg
    assert msg.startswith(f"{root / 'manifest.json'}: {expected}"), msg


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"format_version": 1, "format_version": 2}', "not valid JSON (key 'format_version' appears twice"),
        ("[" * 100000 + "]" * 100000, "not valid JSON (maximum recursion depth"),
        (b'{"name": "caf\xe9"}', "not valid JSON ('utf-8' codec can't decode byte 0xe9"),
        ("", "not valid JSON (Expecting value"),
        ("[1, 2]", "expected a JSON object"),
        (
            '{"format_version": 1, "task": "multilabel", "labels": ["a"], "input": {"height": 8, "width": 8},',
            "not valid JSON (Expecting property name",
        ),
    ],
)
def test_unreadable_manifest_is_one_line(tmp_path, text, expected):
    root = bundle_copy(tmp_path / "b", text=text)
    with pytest.raises(ModelError) as ei:
        load_bundle(root)
    assert "\n" not in str(ei.value) and len(str(ei.value)) < 400
    assert str(ei.value).startswith(f"{root / 'manifest.json'}: {expected}"), str(ei.value)


def test_shipped_manifest_loads_unchanged(tmp_path):
    before = (SHIPPED / "manifest.json").read_bytes()
    b = load_bundle(bundle_copy(tmp_path / "b"))
    assert b.labels == ("good", "error", "break", "length") and all(0 <= t <= 1 for t in b.thresholds.values())
    assert (SHIPPED / "manifest.json").read_bytes() == before


def test_shipped_int8_agrees_with_its_fp32_on_fresh_stills(tmp_path):
    """Issue 11: the shipped int8 classifier and its fp32 twin (which matches Keras to ~2e-6) take the
    same decision on ≥ 99.5 % of image×label pairs, at the bundle's thresholds and at 0.5, on stills
    of a seed no training, calibration or export ever saw (export measured 99.55 % on validation)."""
    import csv

    import numpy as np

    from convert.synth import write_dataset
    from edge.classify import Classifier
    from tests.support.images import imread

    write_dataset(tmp_path, 300, seed=977)
    b = load_bundle(SHIPPED)
    int8, fp32 = Classifier(b, threads=1), Classifier(b, role="classifier_fp32", threads=1)
    assert int8.role != fp32.role
    with open(tmp_path / "data.csv", newline="") as f:
        frames = [imread(tmp_path / row["name"]) for row in csv.DictReader(f)]
    assert len(frames) == 300 and all(f is not None for f in frames)
    p8 = np.array([int8.classify(f) for f in frames])
    p32 = np.array([fp32.classify(f) for f in frames])
    thr = np.array([b.thresholds[lab] for lab in b.labels])
    for t in (thr, 0.5):
        agree = 100 * float(np.mean((p8 >= t) == (p32 >= t)))
        print(f"int8 vs fp32 at {t}: {agree:.2f} %")
        assert agree >= 99.5, (t, agree)
    assert 0 < float(np.abs(p8 - p32).max()) < 0.15  # really two different graphs, close


def _video(path: Path) -> Path:
    import cv2
    import numpy as np

    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 30, (640, 480))
    for i in range(8):
        w.write(np.full((480, 640, 3), 60 + i, np.uint8))
    w.release()
    return path


@pytest.mark.parametrize(
    "name",
    ["nan-threshold", "seven-threshold", "text-threshold", "duplicate-labels", "classifier-list", "path-integer"],
)
def test_bad_manifest_exits_78_from_check_config_and_from_a_start(tmp_path, name):
    """Real processes, the reproduction of issue 12 #2: both paths exit 78 with the same single line."""
    mutate, expected = next((m, e) for n, m, e in CASES if n == name)
    root = bundle_copy(tmp_path / "b", mutate)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"station: st\ncamera: {{source: file, device: {_video(tmp_path / 'v.mp4')}, realtime: false}}\n"
        f"model:\n  bundle: {root}\nmqtt: {{enabled: false}}\nheatmaps: {{dir: {tmp_path / 'hm'}}}\n"
        f"outbox: {tmp_path / 'o.sqlite'}\n"
    )
    lines = []
    for extra in (["--check-config"], ["--max-frames", "5"]):
        r = subprocess.run(
            [sys.executable, "-m", "edge", "--config", str(cfg), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 78 and "Traceback" not in r.stderr, r.stderr[-2000:]
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert (
            errors
            == [f"error: {cfg}:4: model.bundle: {root / 'manifest.json'}: " + errors[0].split("manifest.json: ", 1)[1]]
            and expected in errors[0]
        ), errors
        lines.append(errors)
    assert lines[0] == lines[1]
