"""edge.classify: real LiteRT on the exported tiny bundle; int8 tensors; bad models; no TF import."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.bundle import load_bundle, write_manifest
from edge.classify import Classifier, TFLiteModel, open_interpreter
from edge.errors import ModelError
from edge.preprocess import preprocess
from tests.support.images import imread

ROOT = Path(__file__).resolve().parent.parent


def _frames(dataset: Path, n: int = 6) -> list[np.ndarray]:
    return [imread(p) for p in sorted(dataset.glob("*.png"))[:n]]


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_classifier_runs_litert_and_matches_keras(tiny_bundle, tiny_keras, tiny_valid):
    import keras

    clf = Classifier(tiny_bundle, threads=2)
    assert clf.runtime == "ai_edge_litert"
    assert clf.labels == ("good", "error", "break", "length")
    assert clf.input_shape == (1, 64, 64, 3) and clf.role == "classifier_int8"
    fp32 = Classifier(tiny_bundle, role="classifier_fp32", threads=1)
    model = keras.models.load_model(str(tiny_keras), compile=False)
    for frame in _frames(tiny_valid):
        x = preprocess(frame, 64, 64)
        p = clf.classify(frame)
        assert p.shape == (4,) and p.dtype == np.float32 and np.all((p >= 0) & (p <= 1))
        np.testing.assert_array_equal(p, clf.predict(x))
        ref = np.asarray(model(x[None], training=False))[0]
        np.testing.assert_allclose(fp32.predict(x), ref, atol=1e-4)
        np.testing.assert_allclose(p, ref, atol=0.05)


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_prepare_then_classify_prepared_is_classify(tiny_bundle, tiny_valid):
    """The daemon's split (prepare in the capture thread, invoke in the main one) changes no number."""
    for role in ("classifier_int8", "classifier_fp32"):
        clf = Classifier(tiny_bundle, role=role, threads=1)
        for frame in _frames(tiny_valid):
            t = clf.prepare(frame)
            assert t.shape == clf.input_shape and t.dtype == clf.model.input["dtype"]
            np.testing.assert_array_equal(clf.classify_prepared(t), clf.classify(frame))


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_open_interpreter_and_bad_files(tiny_bundle, tmp_path):
    interp, runtime = open_interpreter(tiny_bundle / "classifier_fp32.tflite", 2)
    assert runtime == "ai_edge_litert" and len(interp.get_input_details()) == 1
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="not a TFLite model"):
        open_interpreter(bad, 1)
    with pytest.raises(ModelError, match="not found"):
        open_interpreter(tmp_path / "none.tflite", 1)


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_manifest_input_shape_mismatch_is_a_model_error(tiny_bundle, tmp_path):
    b = load_bundle(tiny_bundle)
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["input"]["height"] = manifest["input"]["width"] = 96
    write_manifest(copy, manifest, {r: e["path"] for r, e in b.files.items()})
    with pytest.raises(ModelError, match=r"\[1, 64, 64, 3\] does not match the manifest's input 96x96"):
        Classifier(copy)


@pytest.mark.slow
def test_int8_input_and_output_tensors_are_dequantised(tiny_keras, tiny_valid, tmp_path):
    """A full-int8 model with int8 I/O (as other converters write) gives the float model's numbers."""
    import keras
    import tensorflow as tf

    model = keras.models.load_model(str(tiny_keras), compile=False)
    xs = [preprocess(f, 64, 64) for f in _frames(tiny_valid, 40)]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=lambda image: model(image, training=False),
        input_signature=[tf.TensorSpec([1, 64, 64, 3], tf.float32)],
    )
    archive.write_out(str(tmp_path / "sm"), verbose=False)
    conv = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[None]] for x in xs)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    path = tmp_path / "int8io.tflite"
    path.write_bytes(conv.convert())
    m = TFLiteModel(path, threads=1)
    assert m.input["dtype"] == np.int8 and m.outputs[0]["dtype"] == np.int8
    for x in xs[:8]:
        got = m.output_with_shape(m.run(x), (1, 4))[0]
        assert got.dtype == np.float32
        ref = np.asarray(model(x[None], training=False))[0]
        np.testing.assert_allclose(got, ref, atol=0.1)
        t = m.prepare(x)  # quantised once, in the capture thread's half of the split
        assert t.dtype == np.int8 and t.shape == (1, 64, 64, 3)
        np.testing.assert_array_equal(m.output_with_shape(m.run_prepared(t), (1, 4))[0], got)


def test_edge_classify_does_not_import_tensorflow():
    code = "import sys, edge.classify, edge.bundle; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.split() == ["False", "False"], p.stderr
