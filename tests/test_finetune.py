"""convert train --init / --freeze: fine-tuning starts from the given weights, keeps frozen stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.cli import run_convert
from tests.support.images import fruit_folders

ROOT = Path(__file__).resolve().parent.parent


def _weights_by_layer(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers if layer.weights}


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_init_path_resolution(tiny_bundle, tiny_keras, tmp_path):
    from convert.train import DEFAULT_BUNDLE, init_model_path
    from edge.errors import ModelError

    assert init_model_path("default") == DEFAULT_BUNDLE / "model.keras"
    assert init_model_path(tiny_bundle) == Path(tiny_bundle) / "model.keras"
    assert init_model_path(tiny_keras) == Path(tiny_keras)
    with pytest.raises(ModelError, match=r"--init .*nope.*not a \.keras file"):
        init_model_path(tmp_path / "nope.keras")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{}")
    with pytest.raises(ModelError, match=r"names no Keras model"):
        init_model_path(tmp_path / "b")


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_finetune_from_bundle_keeps_frozen_stages(tiny_bundle, tiny_valid, tmp_path):
    from convert.models import load_keras, read_meta
    from convert.train import train

    base, _ = load_keras(Path(tiny_bundle) / "model.keras")
    before = _weights_by_layer(base)
    out = tmp_path / "ft.keras"
    res = train(
        str(tiny_valid / "data.csv"),
        str(tiny_valid / "data.csv"),
        out,
        epochs=1,
        batch=16,
        init=str(tiny_bundle),
        freeze=1,
        verbose=0,
        keep_init=False,  # the epoch is saved even where it does not beat the bundle (tested below)
    )
    assert res.epochs_run == 1
    tuned, meta = load_keras(out)
    after = _weights_by_layer(tuned)
    assert set(after) == set(before)
    assert (meta["height"], meta["arch"], read_meta(out)["init"]) == (64, "resnet-int8", str(tiny_bundle))
    full_res = [
        layer.name
        for layer in tuned.layers
        if layer.weights and len(layer.output.shape) == 4 and layer.output.shape[1] == 64
    ]
    low_res = [
        layer.name
        for layer in tuned.layers
        if layer.weights and len(layer.output.shape) == 4 and layer.output.shape[1] < 64
    ]
    assert len(full_res) >= 5 and low_res
    # stage 1 (64×64 outputs) untouched, weights and BN statistics; deeper stages and the head moved
    for name in full_res:
        for a, b in zip(before[name], after[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)
    moved = [
        name
        for name in low_res + ["logits"]
        if any(not np.array_equal(a, b) for a, b in zip(before[name], after[name]))
    ]
    assert len(moved) == len(low_res) + 1


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
def test_init_with_other_labels_gets_a_new_head(tiny_keras, tmp_path):
    fruit_folders(tmp_path / "train", 0, 6)
    out = tmp_path / "fruit.keras"
    p = run_convert(
        "train",
        "--train",
        str(tmp_path / "train"),
        "--valid",
        str(tmp_path / "train"),
        "--out",
        str(out),
        "--init",
        str(tiny_keras),
        "--epochs",
        "1",
        "--batch",
        "6",
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "new head" in p.stderr and "multiclass, labels Apfel, Orange, Tomate" in p.stdout
    from convert.models import load_keras

    model, meta = load_keras(out)
    assert meta["task"] == "multiclass" and tuple(model.outputs[0].shape) == (None, 3)
    assert meta["height"] == 64  # the input size comes from the --init model


def test_init_grows_resnet_s2_into_the_deeper_model(tiny_dataset, tiny_valid, tmp_path):
    """``train --init S2.keras --arch resnet-s2-deep`` carries on from the model with four identity
    blocks added (convert.models.grow), and records the deeper architecture."""
    from convert.models import build_model, load_keras, save_model

    small = tmp_path / "s2.keras"
    meta = {
        "labels": ["good", "error", "break", "length"],
        "task": "multilabel",
        "arch": "resnet-s2",
        "height": 64,
        "width": 64,
        "filters": 4,
        "preprocess": "seam",
    }
    save_model(build_model("resnet-s2", 4, 64, 64, filters=4), small, meta)
    out = tmp_path / "deep.keras"
    p = run_convert(
        "train",
        "--train",
        str(tiny_dataset),
        "--valid",
        str(tiny_valid),
        "--out",
        str(out),
        "--init",
        str(small),
        "--arch",
        "resnet-s2-deep",
        "--epochs",
        "1",
        "--batch",
        "32",
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resnet-s2 grown into resnet-s2-deep" in p.stderr
    model, meta = load_keras(out)
    assert meta["arch"] == "resnet-s2-deep" and meta["filters"] == 4 and meta["height"] == 64
    assert sum(type(lyr).__name__ == "Add" for lyr in model.layers) == 11


def test_init_at_another_input_size_keeps_every_weight_and_resumes_at_it(tiny_dataset, tiny_valid, tmp_path):
    """``train --init M.keras --size N`` fine-tunes the same weights at input N (finer detail): the
    resized model carries every weight unchanged, the trained one records N, and ``--resume`` without
    ``--size`` stays at N. A model whose weights depend on the input size is refused in one line."""
    from convert.models import build_model, load_keras, resize_input, save_model
    from edge.errors import ModelError

    base = build_model("resnet-s2", 4, 64, 64, filters=4)
    wide = resize_input(base, "resnet-s2", 4, 96, 4, "multilabel")
    assert tuple(wide.inputs[0].shape) == (None, 96, 96, 3)
    old, new = base.get_weights(), wide.get_weights()
    assert len(old) == len(new) > 20 and all(np.array_equal(a, b) for a, b in zip(old, new, strict=True))
    fruit = build_model("fruit-cnn", 3, 64, 64, filters=4)  # flatten → dense: its weights depend on the size
    with pytest.raises(ModelError, match=r"do not fit fruit-cnn at 96x96 \(only fully convolutional"):
        resize_input(fruit, "fruit-cnn", 3, 96, 4, "multiclass")

    small = tmp_path / "s2.keras"
    meta = {"labels": ["good", "error", "break", "length"], "task": "multilabel", "arch": "resnet-s2"}
    save_model(base, small, {**meta, "height": 64, "width": 64, "filters": 4, "preprocess": "seam"})
    out = tmp_path / "big.keras"
    args = ["--train", str(tiny_dataset), "--valid", str(tiny_valid), "--out", str(out), "--init", str(small)]
    p = run_convert("train", *args, "--size", "96", "--epochs", "1", "--batch", "32", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "input 64x64 → 96x96" in p.stderr
    model, got = load_keras(out)
    assert got["height"] == got["width"] == 96 and tuple(model.inputs[0].shape) == (None, 96, 96, 3)
    assert got["arch"] == "resnet-s2" and got["filters"] == 4
    p = run_convert("train", *args, "--epochs", "2", "--batch", "32", "--resume", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming from ckpt-e01" in p.stderr
    assert load_keras(out)[1]["height"] == 96  # the checkpoint's size, not the --init model's 64


def test_init_errors_are_one_line(tmp_path, tiny_valid):
    for extra, needle in (
        (["--freeze", "1"], "--freeze 1: needs --init"),
        (["--init", str(tmp_path / "missing")], "is not a .keras file"),
    ):
        p = run_convert(
            "train",
            "--train",
            str(tiny_valid),
            "--valid",
            str(tiny_valid),
            "--out",
            str(tmp_path / "x.keras"),
            *extra,
            timeout=120,
        )
        assert p.returncode == 78 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("arch", ["resnet-s2", "resnet-s2-deep", "resnet-int8"])
def test_freeze_one_keeps_the_stem_and_the_first_stage(arch):
    """``--freeze 1`` is "the stem and the first residual stage" for every architecture. The shipped
    ``resnet-s2*`` models have a stride-2 stem, so the only layer at the input's resolution is the
    input normalisation: counting that resolution as a stage froze that one layer and nothing else
    (until 2026-12-07). Stages are the resolutions where convolutions run."""
    from convert.models import build_model
    from convert.train import freeze_stages

    model = build_model(arch, 4, 64, 64, filters=4)

    def side(layer) -> int:
        """The output's spatial side; 0 past the feature maps (pooling, head)."""
        shape = getattr(layer.output, "shape", None)
        return int(shape[1]) if shape is not None and len(shape) == 4 else 0

    convs = [lyr for lyr in model.layers if type(lyr).__name__ == "Conv2D"]
    first = max(side(c) for c in convs)  # the first stage's resolution: 32 for a stride-2 stem
    n = freeze_stages(model, 1)
    frozen = [lyr for lyr in model.layers if lyr.weights and not lyr.trainable]
    kept = [lyr for lyr in model.layers if lyr.weights and lyr.trainable]
    assert n == len(frozen) and n > 0
    assert {lyr.name for lyr in frozen} == {lyr.name for lyr in model.layers if lyr.weights and side(lyr) >= first}
    first_convs = [c for c in convs if side(c) == first]
    assert len(first_convs) >= 3 and all(not c.trainable for c in first_convs)  # the stem and the stage's block
    assert kept and all(side(lyr) < first for lyr in kept)  # deeper stages and the head still learn
    assert model.get_layer("logits").trainable


@pytest.mark.slow  # trains the tiny model (tiny_bundle)
def test_a_finetune_that_never_beats_its_init_keeps_the_init_weights(tiny_bundle, tiny_valid, tmp_path, capsys):
    """``train --init`` scores the ``--init`` model on the validation set as epoch 0: when no epoch
    beats its validation loss, the saved model is the ``--init`` model unchanged (a few dozen frames
    of a new line cannot make the model worse on that line's own validation frames), also after
    ``--resume``. ``--no-keep-init`` saves the best epoch anyway. Adam at lr 5 wrecks every epoch."""
    from convert.models import load_keras, read_meta
    from convert.train import read_run, train

    before = load_keras(Path(tiny_bundle) / "model.keras")[0].get_weights()
    csv = str(tiny_valid / "data.csv")
    out = tmp_path / "ft.keras"
    res = train(csv, csv, out, epochs=1, batch=16, init=str(tiny_bundle), lr=5.0, verbose=0)
    assert res.kept_init and read_meta(out)["kept_init"] is True
    assert all(np.array_equal(a, b) for a, b in zip(before, load_keras(out)[0].get_weights(), strict=True))
    err = capsys.readouterr().err
    start = read_run(out)["init_val_loss"]
    assert f"--init's {start:.4f}): saved the --init weights unchanged" in err and start < min(res.history["val_loss"])

    again = train(csv, csv, out, epochs=2, batch=16, init=str(tiny_bundle), lr=5.0, verbose=0, resume=True)
    assert again.epochs_run == 2 and again.kept_init and read_run(out)["init_val_loss"] == start
    assert all(np.array_equal(a, b) for a, b in zip(before, load_keras(out)[0].get_weights(), strict=True))

    wrecked = tmp_path / "wrecked.keras"
    res = train(csv, csv, wrecked, epochs=1, batch=16, init=str(tiny_bundle), lr=5.0, verbose=0, keep_init=False)
    assert not res.kept_init and "kept_init" not in read_meta(wrecked)
    assert not all(np.array_equal(a, b) for a, b in zip(before, load_keras(wrecked)[0].get_weights(), strict=True))
