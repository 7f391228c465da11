"""The seeds' Grad-CAM tutorials with seam-qc: preprocessing per model, VGG16 / MobileNetV2 from local
weights, top-k and named classes, the JET overlay, the fruit CNN, and ``split`` of a class-folder tree.

VGG16 and MobileNetV2 are built with ``weights=None``, saved to ``.h5`` and loaded back through
``--weights``; VGG16 is built once per session (it is heavy). Nothing is downloaded: every test here
runs with an empty Keras cache and Keras' downloader replaced by one that fails (``no_downloads``).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import ModelError
from tests.support.gradcam import assert_agree, sample_frames
from tests.support.images import imread

DOWNLOAD_BLOCKED = "downloads are blocked in tests"


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path_factory) -> list[str]:
    """An empty Keras cache and a downloader that records and refuses (a workstation without
    internet): a test that would fetch ImageNet weights or the class index fails instead."""
    from keras.src.utils import file_utils

    asked: list[str] = []

    def refuse(fname=None, origin=None, *args, **kwargs):
        asked.append(str(origin or fname))
        raise OSError(f"{DOWNLOAD_BLOCKED}: {origin or fname}")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
    monkeypatch.setattr(file_utils, "get_file", refuse)
    return asked


def _main(argv: list[str]) -> int:
    from convert.__main__ import main

    return main(argv)


def _maps(folder: Path, stem: str) -> dict:
    """The ``--raw`` maps of one image as {label: Heatmap-like} for ``assert_agree``."""
    from edge.gradcam import Heatmap

    rows = [r.split(",") for r in (folder / "heatmaps.csv").read_text().splitlines()[1:]]
    return {
        r[2]: Heatmap(r[2], np.load(folder / f"{stem}.{r[2]}.npy"), float(r[4]), float(r[3]))
        for r in rows
        if r[0] == stem
    }


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("mode", ["vgg16", "resnet50", "mobilenet_v2"])
def test_preprocess_matches_keras_preprocess_input(mode):
    """The Pi's numpy preprocessing == ``keras.applications.<mode>.preprocess_input`` on the RGB image."""
    import importlib

    from edge.preprocess import preprocess

    keras_pre = importlib.import_module(f"keras.applications.{mode}").preprocess_input
    bgr = np.random.default_rng(1).integers(0, 256, (48, 40, 3)).astype(np.uint8)
    ref = np.asarray(keras_pre(bgr[..., ::-1].astype(np.float32).copy()))
    got = preprocess(bgr, 48, 40, mode)
    assert got.dtype == np.float32 and got.shape == (48, 40, 3)
    assert float(np.abs(got - ref).max()) <= 1e-4


def test_seam_contract_unchanged_and_none_is_rgb():
    from edge.preprocess import PREPROCESS_ID, preprocess

    bgr = np.random.default_rng(2).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    x = bgr.astype(np.float64)
    seam = (x - x.mean()) / max(x.std(), 1 / np.sqrt(x.size))
    assert PREPROCESS_ID == "bgr-area-perimage-std-v1"
    assert float(np.abs(preprocess(bgr, 64, 64) - seam).max()) <= 1e-5
    assert float(np.abs(preprocess(bgr, 64, 64, "seam") - seam).max()) <= 1e-5
    assert np.array_equal(preprocess(bgr, 64, 64, "none"), bgr[..., ::-1].astype(np.float32))
    big = cv2.resize(bgr, (128, 96), interpolation=cv2.INTER_NEAREST)  # every mode resizes with INTER_AREA
    area = cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA)
    assert np.array_equal(preprocess(big, 64, 64, "none"), area[..., ::-1].astype(np.float32))


def test_manifest_records_the_mode_old_manifests_are_seam(tmp_path):
    from edge.bundle import input_section, load_bundle, write_manifest

    (tmp_path / "m.tflite").write_bytes(b"x")
    base = {"task": "multiclass", "labels": ["a", "b"], "classifier": "m"}
    write_manifest(
        tmp_path, {**base, "input": {"height": 8, "width": 8, **input_section("mobilenet_v2")}}, {"m": "m.tflite"}
    )
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["input"]["preprocessing"] == "rgb-area-tf-minus1to1-v1" and man["input"]["channel_order"] == "RGB"
    assert load_bundle(tmp_path).preprocess_mode == "mobilenet_v2"
    man["input"] = {"height": 8, "width": 8}  # a manifest from before the field: a seam model
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    b = load_bundle(tmp_path)
    assert (b.preprocess_mode, b.preprocessing, b.channel_order) == ("seam", "bgr-area-perimage-std-v1", "BGR")
    man["input"]["preprocessing"] = "imagenet-magic"
    (tmp_path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ModelError, match="input.preprocessing 'imagenet-magic'"):
        load_bundle(tmp_path)


# ----------------------------------------------------------------------------- class known by construction


def colour_model(size: int = 32):
    """Logit k = 0.05 × the mean of input channel k (RGB with ``--preprocess none``): a mostly green
    image is class ``green`` by construction, and its Grad-CAM is the green channel."""
    import keras
    from keras import layers

    i = keras.Input((size, size, 3))
    f = layers.Conv2D(3, 1, use_bias=False, name="feat")(i)
    x = layers.Dense(3, use_bias=False)(layers.GlobalAveragePooling2D()(f))
    m = keras.Model(i, layers.Softmax()(x))
    m.layers[1].set_weights([np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3)])
    m.layers[3].set_weights([0.05 * np.eye(3, dtype=np.float32)])
    return m


def test_explained_class_is_the_known_top1_and_jet_written(tmp_path, capsys):
    from convert.models import save_model

    kpath = tmp_path / "colour.keras"
    save_model(colour_model(), kpath, {"labels": ["red", "green", "blue"], "task": "multiclass"})
    img = np.full((64, 64, 3), 40, np.uint8)
    img[8:40, 20:52] = (30, 230, 30)  # BGR: a green square, top right of centre
    cv2.imwrite(str(tmp_path / "g.png"), img)
    runs = {}
    for method in ("tf", "litert"):
        out = tmp_path / method
        argv = ["heatmaps", "--model", str(kpath), "--data", str(tmp_path / "g.png"), "--out", str(out)]
        assert _main([*argv, "--method", method, "--preprocess", "none", "--raw", "--top-k", "1"]) == 0
        rows = (out / "heatmaps.csv").read_text().splitlines()[1:]
        assert [r.split(",")[2] for r in rows] == ["green"]  # top-1 only, and it is the known class
        runs[method] = _maps(out, "g")
        cam = runs[method]["green"].cam
        y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
        assert 8 <= y < 40 and 20 <= x < 52  # the map's peak is on the square
        jet = imread(out / "g.jet.png")
        heat = cv2.applyColorMap((cam * 255 + 0.5).astype(np.uint8), cv2.COLORMAP_JET)
        want = cv2.addWeighted(heat, 0.4, img, 0.6, 0.0)
        assert jet.shape == img.shape and int(np.abs(jet.astype(int) - want).max()) <= 1
    assert_agree(runs["tf"], runs["litert"])
    out = tmp_path / "named"
    argv = ["heatmaps", "--model", str(kpath), "--data", str(tmp_path / "g.png"), "--out", str(out)]
    assert _main([*argv, "--preprocess", "none"]) == 0  # a multiclass model: its top-1 by default
    assert [r.split(",")[2] for r in (out / "heatmaps.csv").read_text().splitlines()[1:]] == ["green"]
    assert _main([*argv, "--preprocess", "none", "--class", "red", "--class", "blue"]) == 0
    assert [r.split(",")[2] for r in (out / "heatmaps.csv").read_text().splitlines()[1:]] == ["red", "blue"]
    assert _main([*argv, "--preprocess", "none", "--top-k", "2"]) == 0
    assert [r.split(",")[2] for r in (out / "heatmaps.csv").read_text().splitlines()[1:]] == ["green", "red"]
    with pytest.raises(SystemExit) as exc:  # argparse: not a choice
        _main([*argv, "--preprocess", "imagenet"])
    assert exc.value.code == 2 and "invalid choice: 'imagenet'" in capsys.readouterr().err
    assert _main([*argv, "--weights", str(tmp_path / "x.h5")]) == 78
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--weights and --classes go with --model vgg16 or mobilenet_v2" in err[-1]


def test_images_from_a_file_a_folder_or_a_plain_csv_give_the_same_maps(tmp_path):
    """``--data`` as the seeds' users have images: files, a folder, or a CSV with only a ``name`` column
    (relative to the CSV); the same images give the same classes and maps whichever way they came."""
    from convert.heatmaps import make_heatmaps
    from convert.models import save_model

    kpath = tmp_path / "colour.keras"
    save_model(colour_model(), kpath, {"labels": ["red", "green", "blue"], "task": "multiclass"})
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, bgr in (("r", (20, 20, 220)), ("b", (220, 20, 20))):
        img = np.full((48, 48, 3), 60, np.uint8)
        img[10:30, 14:40] = bgr
        cv2.imwrite(str(photos / f"{name}.png"), img)
    (tmp_path / "list.csv").write_text("name,note\nphotos/r.png,x\nphotos/b.png,y\n")
    specs = {"files": [str(photos / "r.png"), str(photos / "b.png")], "folder": [str(photos)]}
    specs["csv"] = [str(tmp_path / "list.csv")]
    got = {}
    for how, data in specs.items():
        out = tmp_path / how
        res = make_heatmaps(kpath, data, out, method="tf", preprocess="none", raw=True, top_k=1, progress=False)
        assert res["images"] == 2
        got[how] = {stem: _maps(out, stem) for stem in ("r", "b")}
        assert [list(got[how][st]) for st in ("r", "b")] == [["red"], ["blue"]]
    for how in ("folder", "csv"):
        for stem in ("r", "b"):
            for lab, hm in got[how][stem].items():
                assert np.array_equal(hm.cam, got["files"][stem][lab].cam)


def test_class_names_from_keras_cache_or_generic(tmp_path, monkeypatch):
    """No ``--classes``: Keras' cached ``imagenet_class_index.json`` names a 1,000-class model (its
    two ``crane``s told apart by WordNet id); any other count, or no cache, gets ``class_<i>``."""
    from convert.applications import default_class_names, keras_cache

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert default_class_names(1000) == ([f"class_{i}" for i in range(1000)], "generic")
    index = {str(i): [f"n{i:08d}", f"thing{i}"] for i in range(1000)}
    index["134"], index["517"] = ["n02012849", "crane"], ["n03126707", "crane"]
    keras_cache().mkdir(parents=True)
    (keras_cache() / "imagenet_class_index.json").write_text(json.dumps(index))
    names, source = default_class_names(1000)
    assert source == str(tmp_path / "models" / "imagenet_class_index.json") and len(set(names)) == 1000
    assert (names[0], names[134], names[517]) == ("thing0", "crane_n02012849", "crane_n03126707")
    assert default_class_names(3) == (["class_0", "class_1", "class_2"], "generic")


# ----------------------------------------------------------------------------- VGG16 / MobileNetV2


def _one_error_line(capsys) -> str:
    """The command's stderr, which must be exactly one ``error:`` line (no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_application_user_errors_are_one_line(tmp_path, capsys, no_downloads):
    """Offline without --weights, a missing --weights file, a bad --classes file, a --class the model
    lacks: each is one line and exit 78 (EX_CONFIG), never a traceback; nothing is downloaded."""
    import keras

    keras.utils.set_random_seed(0)
    h5 = tmp_path / "mnet.h5"
    keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=3).save(str(h5))
    cv2.imwrite(str(tmp_path / "x.png"), sample_frames(1, seed=2)[0])
    base = ["heatmaps", "--data", str(tmp_path / "x.png"), "--out", str(tmp_path / "out")]
    mnet = [*base, "--model", "mobilenet_v2", "--weights", str(h5)]

    assert _main([*base, "--model", "mobilenet_v2"]) == 78  # Keras' ImageNet weights, not cached, no internet
    line = _one_error_line(capsys)
    assert DOWNLOAD_BLOCKED in line and "without internet pass --weights FILE.h5" in line
    assert len(no_downloads) == 1 and no_downloads[0].endswith(".h5")  # asked once, got nothing

    assert _main([*base, "--model", "vgg16", "--weights", str(tmp_path / "nope.h5")]) == 78
    assert _one_error_line(capsys) == f"error: --weights {tmp_path / 'nope.h5'}: file not found"
    (tmp_path / "text.h5").write_text("not HDF5")
    assert _main([*base, "--model", "vgg16", "--weights", str(tmp_path / "text.h5")]) == 78
    assert "not an HDF5 weights file" in _one_error_line(capsys)

    bad = {"broken.json": '{"0": ["n0", "a"], ', "gap.json": '{"0": "a", "2": "c"}', "four.json": '["a","b","c","d"]'}
    want = {
        "broken.json": "cannot read a JSON class index",
        "gap.json": "class indices must run 0 … 1 without gaps",
        "four.json": "4 class names, but the model has 3 outputs",
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        assert _main([*mnet, "--classes", str(tmp_path / name)]) == 78
        assert want[name] in _one_error_line(capsys)
    assert _main([*mnet, "--classes", str(tmp_path / "missing.json")]) == 78
    assert "missing.json: cannot read a JSON class index (No such file or directory)" in _one_error_line(capsys)

    (tmp_path / "fruit.json").write_text('["Apfel", "Orange", "Tomate"]')
    assert _main([*mnet, "--classes", str(tmp_path / "fruit.json"), "--class", "Apfl"]) == 78
    assert _one_error_line(capsys) == "error: --class 'Apfl': not one of the model's classes; did you mean Apfel?"
    assert _main([*mnet, "--class", "tabby"]) == 78  # no --classes: generic names, listed since they are few
    assert _one_error_line(capsys).endswith("its classes are class_0, class_1, class_2")
    assert not (tmp_path / "out").exists() and len(no_downloads) == 1


def assert_not_flat(maps: dict) -> None:
    """Each map really shows something: ``assert_agree`` passes two all-zero maps without comparing."""
    for lab, hm in maps.items():
        assert hm.peak > 1e-4 and float(hm.cam.max()) >= 0.9, (lab, hm.peak)  # < 1: resized to the frame
        assert float(hm.cam.std()) > 0.05, lab


def keras_input(frames: list[np.ndarray], side: int, mode: str) -> np.ndarray:
    """The batch the seeds feed: INTER_AREA resize, RGB, ``keras.applications.<mode>.preprocess_input``."""
    import importlib

    pre = importlib.import_module(f"keras.applications.{mode}").preprocess_input
    rgb = [cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA)[..., ::-1].astype(np.float32) for f in frames]
    return np.stack([np.asarray(pre(x)) for x in rgb])


def settle_bn(model, x: np.ndarray) -> None:
    """Every BatchNormalization's moving statistics from one training-mode pass over ``x``.

    An untrained ``weights=None`` MobileNetV2 with Keras' initial statistics (mean 0, variance 1)
    has vanishing features: every score 0.25 and a Grad-CAM peak of 1.6e-12, so TF and LiteRT would
    "agree" on noise. With statistics of real images its features depend on the input."""
    import keras

    bns = [lyr for lyr in model.layers if isinstance(lyr, keras.layers.BatchNormalization)]
    saved = [lyr.momentum for lyr in bns]
    for lyr in bns:
        lyr.momentum = 0.0  # the moving statistics become this batch's
    model(x, training=True)
    for lyr, m in zip(bns, saved):
        lyr.momentum = m


@pytest.fixture(scope="session")
def vgg16_h5(tmp_path_factory):
    """VGG16 (weights=None, 32×32, 3 classes) saved as a legacy ``.h5``: built once per session.

    Why this size: ``--model vgg16 --weights FILE`` builds ``keras.applications.VGG16`` with its
    classifier top (the class count and the input size are read from the file's ``fc1``/last Dense;
    the CLI has no headless VGG16: a VGG16 base with a small head of one's own is a ``--model FILE``
    like any model). 32×32 is the smallest input Keras' VGG16 takes; all 13 convolutions, the five
    blocks and ``block5_conv3`` are the real ones, and fc1 shrinks from 25088 to 512 inputs, but
    fc1/fc2 stay 4096 wide: 33.6 M parameters (134 MB) instead of 138 M (528 MB). The cheapest
    honest VGG16: its full export (three conversions) takes about 30 s on 2 cores."""
    import keras

    root = tmp_path_factory.mktemp("vgg16")
    keras.utils.set_random_seed(0)
    keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=3).save(str(root / "vgg16.h5"))
    (root / "classes.json").write_text(json.dumps({"0": ["n0", "apple"], "1": ["n1", "crane"], "2": ["n2", "crane"]}))
    return root


@pytest.mark.slow
def test_vgg16_local_weights_export_tf_and_litert_agree(vgg16_h5, tmp_path):
    """``--model vgg16 --weights FILE.h5 --classes`` through ``heatmaps`` (TF, and LiteRT via a
    temporary explainer) and through the full ``export`` → bundle → the Pi's LiteRT classifier and
    explainer: the classes, the input size (from fc1), the vgg16 preprocessing in the manifest; the
    explained class is Keras' top-1; the TF and LiteRT maps agree (r ≥ 0.999, max |Δ| ≤ 1e-3)."""

    from convert.applications import build_application
    from edge.bundle import load_bundle
    from edge.classify import Classifier

    h5, cls = vgg16_h5 / "vgg16.h5", vgg16_h5 / "classes.json"
    model, meta = build_application("vgg16", h5, None, cls)
    assert (meta["height"], meta["preprocess"]) == (32, "vgg16")
    assert meta["labels"] == ["apple", "crane_n1", "crane_n2"]  # repeated names told apart
    frames = [f[:120, :100] for f in sample_frames(2, seed=5)]
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"v{i}.png"), f)
    want = np.asarray(model(keras_input(frames, 32, "vgg16")))
    top1 = meta["labels"][int(np.argmax(want[0]))]

    bundle = tmp_path / "vgg16-bundle"
    argv = ["export", "--model", "vgg16", "--weights", str(h5), "--classes", str(cls), "--out", str(bundle)]
    argv += ["--calibration", str(tmp_path), "--int8", "dynamic"]
    assert _main([*argv, "--min-int8-agreement", "0"]) == 0  # untrained: near-uniform scores flip in int8
    b = load_bundle(bundle)
    assert b.preprocess_mode == "vgg16" and b.manifest["input"]["preprocessing"] == "bgr-area-caffe-imagenet-v1"
    assert b.labels == ("apple", "crane_n1", "crane_n2") and b.manifest["gradcam"]["layer"] == "block5_conv3"
    assert b.manifest["source"]["weights"] == str(h5) and (b.height, b.width) == (32, 32)
    clf = Classifier(b, role="classifier_fp32", threads=1)
    assert float(np.abs(np.stack([clf.classify(f) for f in frames]) - want).max()) <= 1e-4

    runs = {}
    for name, model_arg, method in (("tf", "vgg16", "tf"), ("tmp", "vgg16", "litert"), ("pi", str(bundle), None)):
        out = tmp_path / name
        argv = ["heatmaps", "--model", model_arg, "--data", str(tmp_path / "v0.png"), "--out", str(out)]
        if model_arg == "vgg16":
            argv += ["--weights", str(h5), "--classes", str(cls)]
        assert _main([*argv, *(["--method", method] if method else []), "--raw", "--top-k", "1"]) == 0
        runs[name] = _maps(out, "v0")
        assert list(runs[name]) == [top1]
        assert (out / "v0.jet.png").is_file() and (out / "v0.overlay.png").is_file()
    assert_not_flat(runs["tf"])
    assert_agree(runs["tf"], runs["tmp"])
    assert_agree(runs["tf"], runs["pi"])  # the bundle's explainer.tflite + head.npz, as on the Pi
    with pytest.raises(ModelError, match="--size 64: the VGG16 in --weights .* takes 32"):
        build_application("vgg16", h5, 64)


@pytest.mark.slow
def test_mobilenet_v2_export_bundle_and_pi_parity(tmp_path):
    """``convert export --model mobilenet_v2 --weights`` → a bundle recording mobilenet_v2
    preprocessing; the Pi's classifier and explainer reproduce Keras on preprocess_input."""
    import keras

    from convert.gradcam_tf import TFGradCAM
    from edge.bundle import load_bundle
    from edge.classify import Classifier
    from edge.gradcam import Explainer

    keras.utils.set_random_seed(1)
    ref = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35, classes=4)
    frames = sample_frames(4, seed=7)
    settle_bn(ref, keras_input(frames, 96, "mobilenet_v2"))
    ref.save(str(tmp_path / "mnet.h5"))
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c", "d"]))
    cal = tmp_path / "cal"
    cal.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(cal / f"{i}.png"), f)
    argv = ["export", "--model", "mobilenet_v2", "--weights", str(tmp_path / "mnet.h5"), "--size", "96"]
    argv += ["--classes", str(tmp_path / "classes.json"), "--calibration", str(cal), "--out", str(tmp_path / "b")]
    assert _main([*argv, "--int8", "dynamic", "--min-int8-agreement", "0"]) == 0
    b = load_bundle(tmp_path / "b")
    assert b.preprocess_mode == "mobilenet_v2" and b.labels == ("a", "b", "c", "d")
    assert b.manifest["input"]["preprocessing"] == "rgb-area-tf-minus1to1-v1"
    assert b.manifest["gradcam"]["layer"] == "Conv_1"
    clf = Classifier(b, role="classifier_fp32", threads=1)
    ex = Explainer(b, threads=1)
    tg = TFGradCAM(ref, labels=list(b.labels), preprocess="mobilenet_v2")
    for f, x in zip(frames[:2], keras_input(frames[:2], 96, "mobilenet_v2")):
        want = np.asarray(ref(x[None]))[0]
        assert float(np.abs(clf.classify(f) - want).max()) <= 1e-4
        lite = ex.explain(f, top_k=1)
        assert list(lite) == [b.labels[int(np.argmax(want))]]
        assert_not_flat(lite)
        assert_agree(lite, tg.explain(f, top_k=1))


# ----------------------------------------------------------------------------- the fruit CNN and split


def test_fruit_cnn_is_the_seed_network():
    import keras

    from convert.explainer import find_gradcam_layer
    from convert.models import build_model

    m = build_model("fruit-cnn", 3, 100, 100, task="multiclass")
    convs = [lyr for lyr in m.layers if isinstance(lyr, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 32, 64, 128]
    assert all(type(c.kernel_initializer).__name__ == "HeUniform" for c in convs)
    assert tuple(m.inputs[0].shape[1:]) == (100, 100, 3) and tuple(m.outputs[0].shape[1:]) == (3,)
    assert m.get_layer("predictions").activation.__name__ == "softmax"
    last_bn = [lyr for lyr in m.layers if isinstance(lyr, keras.layers.BatchNormalization)][-1]
    assert find_gradcam_layer(m) == last_bn.name
    with pytest.raises(ModelError, match="100x100 must be a multiple of 16 for 'cnn'"):
        build_model("cnn", 3, 100, 100)


def fruit_tree(root: Path, n: int = 40, seed: int = 0) -> Path:
    """Three class folders of 100×100 images, told apart by shape (training augments colour away):
    a filled disc, a square outline, a cross, each anywhere near the middle, on noise."""
    rng = np.random.default_rng(seed)
    for cname in ("Apfel", "Orange", "Tomate"):
        (root / cname).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(150, 230, (100, 100, 3)).astype(np.uint8)
            cx, cy, r = (int(v) for v in (*rng.integers(35, 65, 2), rng.integers(18, 28)))
            if cname == "Apfel":
                cv2.circle(img, (cx, cy), r, (40, 40, 200), -1)
            elif cname == "Orange":
                cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), (30, 140, 250), 5)
            else:
                cv2.line(img, (cx - r, cy), (cx + r, cy), (30, 30, 220), 7)
                cv2.line(img, (cx, cy - r), (cx, cy + r), (30, 30, 220), 7)
            cv2.imwrite(str(root / cname / f"{cname.lower()}_{i:02d}.png"), img)
    return root


def test_split_class_folders_per_class(tmp_path, capsys):
    tree = fruit_tree(tmp_path / "fruit", n=50)
    assert _main(["split", "--data", str(tree), "--out", str(tmp_path / "s")]) == 0
    for cname in ("Apfel", "Orange", "Tomate"):
        counts = {k: len(list((tmp_path / "s" / k / cname).glob("*.png"))) for k in ("train", "valid", "test")}
        assert counts == {"train": 39, "valid": 10, "test": 1}  # 78/20/2 % of 50 per class
    names = [sorted(p.name for p in (tmp_path / "s" / k).rglob("*.png")) for k in ("train", "valid", "test")]
    assert len(set().union(*names)) == 150 and sum(map(len, names)) == 150  # each image in one part
    capsys.readouterr()
    assert _main(["split", "--data", str(tree), "--out", str(tmp_path / "s")]) == 2  # never mixes two splits
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and str(tmp_path / "s") in err[0]


@pytest.mark.slow  # trains
def test_fruit_walkthrough_split_train_export_heatmaps(tmp_path, capsys):
    """README "The fruit classifier from class folders", command by command, in a test-sized run:
    split → train --arch fruit-cnn (≥ 95 % on the validation folders) → evaluate → export → heatmaps,
    with the TF path and the Pi's path (the bundle's explainer + numpy head) agreeing."""
    from convert.evaluate import evaluate
    from convert.models import read_meta
    from edge.bundle import load_bundle

    tree = fruit_tree(tmp_path / "fruit", n=60)
    s, kpath = tmp_path / "s", tmp_path / "fruit.keras"
    assert _main(["split", "--data", str(tree), "--out", str(s)]) == 0
    train = ["train", "--train", str(s / "train"), "--valid", str(s / "valid"), "--out", str(kpath)]
    train += ["--arch", "fruit-cnn", "--size", "100", "--epochs", "10"]
    # batch 8: ~170 steps, which the seed's BatchNormalization (momentum 0.99) needs to settle
    assert _main([*train, "--batch", "8", "--lr", "1e-3", "--patience", "10"]) == 0
    meta = read_meta(kpath)
    assert (meta["arch"], meta["preprocess"], meta["task"]) == ("fruit-cnn", "seam", "multiclass")
    assert meta["labels"] == ["Apfel", "Orange", "Tomate"] and (meta["height"], meta["width"]) == (100, 100)
    ev = evaluate(kpath, s / "valid")  # 36 images: at most one wrong
    assert ev.metrics["accuracy"] >= 95.0, ev.report

    assert _main(["evaluate", "--model", str(kpath), "--data", str(s / "test")]) == 0
    assert _main(["heatmaps", "--model", str(kpath), "--data", str(s / "test"), "--out", str(tmp_path / "hm")]) == 0
    bundle = tmp_path / "fruit-bundle"
    assert _main(["export", "--model", str(kpath), "--calibration", str(s / "valid"), "--out", str(bundle)]) == 0
    b = load_bundle(bundle)
    assert b.preprocess_mode == "seam" and b.labels == ("Apfel", "Orange", "Tomate")
    assert b.manifest["gradcam"]["layer"] == "gradcam_features"
    assert b.manifest["parity"]["int8"]["label_agreement"] >= 99.0

    runs = {}
    for method in ("tf", "litert"):
        out = tmp_path / f"hm-{method}"
        argv = ["heatmaps", "--model", str(bundle), "--data", str(s / "test"), "--out", str(out), "--raw"]
        assert _main([*argv, "--method", method]) == 0
        rows = [r.split(",") for r in (out / "heatmaps.csv").read_text().splitlines()[1:]]
        stems = sorted({r[0] for r in rows})
        assert len(stems) == len(list((s / "test").rglob("*.png"))) == 6  # 2 per class (2 % of 60, rounded up)
        for stem in stems:
            mine = [r for r in rows if r[0] == stem]  # --raw: every class's map, the predicted one shown
            top1 = max(mine, key=lambda r: float(r[3]))[2]
            assert len(mine) == 3 and [r[2] for r in mine if r[5] == "1"] == [top1]
            assert (out / f"{stem}.jet.png").is_file() and (out / f"{stem}.overlay.png").is_file()
        runs[method] = {stem: _maps(out, stem) for stem in stems}
    for stem, maps in runs["tf"].items():
        assert_agree(maps, runs["litert"][stem])  # the numpy head through MaxPool → Flatten → Dense-ReLU → Dense


@pytest.mark.slow  # trains one epoch
def test_train_preprocess_is_recorded_and_used_downstream(tmp_path, capsys):
    """``train --preprocess mobilenet_v2`` (not the default): the ``.keras`` metadata records it,
    evaluate and export take it from there (the manifest), and a resumed run cannot switch it."""
    from convert.evaluate import evaluate
    from convert.models import read_meta
    from edge.bundle import load_bundle

    tree = fruit_tree(tmp_path / "fruit", n=10)
    s, kpath = tmp_path / "s", tmp_path / "m.keras"
    assert _main(["split", "--data", str(tree), "--out", str(s)]) == 0
    train = ["train", "--train", str(s / "train"), "--valid", str(s / "valid"), "--out", str(kpath)]
    train += ["--arch", "fruit-cnn", "--size", "32", "--epochs", "1", "--batch", "8"]
    assert _main([*train, "--preprocess", "mobilenet_v2"]) == 0
    assert read_meta(kpath)["preprocess"] == "mobilenet_v2"
    assert json.loads((tmp_path / "m_run.json").read_text()) == {"preprocess": "mobilenet_v2"}

    own = evaluate(kpath, s / "valid")
    seam = evaluate(kpath, s / "valid", preprocess="seam")
    assert own.metrics["preprocess"] == "mobilenet_v2" and seam.metrics["preprocess"] == "seam"
    assert float(np.abs(own.probabilities - seam.probabilities).max()) > 1e-3  # really a different input

    bundle = tmp_path / "b"
    argv = ["export", "--model", str(kpath), "--calibration", str(s / "valid"), "--out", str(bundle)]
    assert _main([*argv, "--int8", "dynamic", "--min-int8-agreement", "0"]) == 0  # one epoch: barely trained
    b = load_bundle(bundle)
    assert b.preprocess_mode == "mobilenet_v2" and b.manifest["input"]["preprocessing"] == "rgb-area-tf-minus1to1-v1"
    lite = evaluate(bundle, s / "valid")  # the Pi's int8 classifier, fed as the manifest says
    assert lite.metrics["preprocess"] == "mobilenet_v2"
    assert float(np.abs(lite.probabilities - own.probabilities).max()) <= 0.05

    capsys.readouterr()  # resuming keeps the recorded mode; another one is one line, exit 78, before training
    assert _main([*train, "--resume", "--preprocess", "seam"]) == 78
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained with --preprocess mobilenet_v2" in err[0]
    kpath.unlink()
    assert _main([*train, "--resume"]) == 0  # at its last epoch already: saves with the recorded mode
    assert read_meta(kpath)["preprocess"] == "mobilenet_v2"
