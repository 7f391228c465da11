"""convert.models: the seed ResNet's topology, the int8-friendly order, the CNN, names, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.errors import ModelError
from tests.support.cli import run_convert

ROOT = Path(__file__).resolve().parent.parent


def _kinds(model) -> list[str]:
    return [type(lyr).__name__ for lyr in model.layers]


def _inbound_kind(layer) -> str:
    return type(layer._inbound_nodes[0].input_tensors[0]._keras_history.operation).__name__


def test_seed_resnet_topology():
    from convert.models import build_model

    m = build_model("resnet", 4, 64, 64, filters=8)
    kinds = _kinds(m)
    assert kinds[:3] == ["InputLayer", "BatchNormalization", "Conv2D"]  # BN on the input, then the stem conv
    assert kinds.count("Add") == 8  # residual blocks [2, 4, 2]
    convs = [lyr for lyr in m.layers if type(lyr).__name__ == "Conv2D"]
    assert len(convs) == 1 + 2 * 8 + 2  # stem, two per block, two 1x1 shortcuts (stages 2 and 3)
    assert sorted({c.filters for c in convs}) == [8, 16, 32]  # doubling per stage
    assert [c.kernel_size for c in convs if c.kernel_size == (1, 1)] == [(1, 1), (1, 1)]
    # the seed's relu_bn: every BN after the input one follows a ReLU
    bns = [lyr for lyr in m.layers if type(lyr).__name__ == "BatchNormalization"][1:]
    assert bns and all(_inbound_kind(b) == "ReLU" for b in bns)
    feat = m.get_layer("gradcam_features")
    assert tuple(feat.output.shape[1:]) == (16, 16, 32)  # two stride-2 stages
    assert (
        type(m.get_layer("logits")).__name__ == "Dense" and m.get_layer("logits").get_config()["activation"] == "linear"
    )
    assert m.get_layer("predictions").get_config()["activation"] == "sigmoid"
    assert kinds[-4:] == ["AveragePooling2D", "Flatten", "Dense", "Activation"]
    assert m.get_layer("predictions").output.shape[-1] == 4


def test_int8_friendly_resnet_is_conv_bn_relu_same_topology():
    from convert.models import build_model

    seed = build_model("resnet", 4, 64, 64, filters=8)
    m = build_model("resnet-int8", 4, 64, 64, filters=8)
    relus = [lyr for lyr in m.layers if type(lyr).__name__ == "ReLU"]
    # every ReLU follows a BN (conv → BN → ReLU) or the residual Add
    assert relus and all(_inbound_kind(r) in ("BatchNormalization", "Add") for r in relus)
    assert _kinds(m).count("Add") == 8
    kernels = [sorted(tuple(w.shape) for w in x.weights if "kernel" in w.path) for x in (seed, m)]
    assert kernels[0] == kernels[1]  # same convolutions and dense, only the BN/ReLU order differs
    assert tuple(m.get_layer("gradcam_features").output.shape[1:]) == (16, 16, 32)


def test_gap_variant_and_its_gradcam_head():
    from convert.explainer import describe_head, head_type
    from convert.models import build_model

    m = build_model("resnet-int8-gap", 4, 64, 64, filters=4)
    assert _kinds(m)[-4:] == ["ReLU", "GlobalAveragePooling2D", "Dense", "Activation"]
    assert m.get_layer("logits").kernel.shape == (16, 4)  # one weight per feature channel and label
    spec, _ = describe_head(m, "gradcam_features")
    assert head_type(spec) == "global_avg_pool-dense-sigmoid"


def test_resnet_s2_topology_and_cost():
    """Stride-2 stem, stages [2, 2, 2, 1] with filters doubling, GAP head; at 128×128 and 16
    filters it costs no more multiply-adds than the 8-filter ``resnet-int8-gap`` it replaces."""
    from keras import layers

    from convert.models import build_model

    def macs(m):
        return sum(
            int(np.prod(lyr.output.shape[1:3])) * int(np.prod(lyr.kernel.shape))
            for lyr in m.layers
            if isinstance(lyr, layers.Conv2D)
        )

    m = build_model("resnet-s2", 4, 64, 64, filters=4)
    convs = [lyr for lyr in m.layers if isinstance(lyr, layers.Conv2D)]
    assert convs[0].strides == (2, 2) and convs[0].filters == 4
    assert sorted({c.filters for c in convs}) == [4, 8, 16, 32]
    assert sum(isinstance(lyr, layers.Add) for lyr in m.layers) == 7  # blocks 2 + 2 + 2 + 1
    assert tuple(m.get_layer("gradcam_features").output.shape[1:]) == (4, 4, 32)
    assert _kinds(m)[-4:] == ["ReLU", "GlobalAveragePooling2D", "Dense", "Activation"]
    s2 = macs(build_model("resnet-s2", 4, 128, 128, filters=16))
    gap = macs(build_model("resnet-int8-gap", 4, 128, 128, filters=8))
    assert 100e6 < s2 < gap, (s2, gap)


def test_grow_into_resnet_s2_deep_computes_the_same_within_the_pi_budget():
    """``grow`` adds identity blocks: the deeper model computes what the trained one did (BN scales
    and statistics randomised, so a copy that missed a layer would show), costs 1.4-1.8× the
    multiply-adds of ``resnet-s2`` (the Pi budget is 3×) and only grows ``resnet-s2``."""
    from keras import layers

    from convert.models import build_model, grow

    def macs(m):
        return sum(
            int(np.prod(lyr.output.shape[1:3])) * int(np.prod(lyr.kernel.shape))
            for lyr in m.layers
            if isinstance(lyr, layers.Conv2D)
        )

    rng = np.random.default_rng(5)
    base = build_model("resnet-s2", 4, 64, 64, filters=4)
    for lyr in base.layers:
        if isinstance(lyr, layers.BatchNormalization):
            g, b, m, v = lyr.get_weights()
            lyr.set_weights(
                [
                    rng.uniform(0.5, 1.5, g.shape),
                    rng.normal(0, 0.2, b.shape),
                    rng.normal(0, 0.3, m.shape),
                    rng.uniform(0.5, 2.0, v.shape),
                ]
            )
    deep = grow(base, "resnet-s2-deep", 4, 64, 4, "multilabel")
    assert sum(isinstance(lyr, layers.Add) for lyr in deep.layers) == 11  # blocks 2 + 3 + 4 + 2
    assert tuple(deep.get_layer("gradcam_features").output.shape[1:]) == (4, 4, 32)
    x = rng.normal(size=(6, 64, 64, 3)).astype("float32")
    a, b = base.predict(x, verbose=0), deep.predict(x, verbose=0)
    assert float(np.abs(a - b).max()) < 1e-5
    assert float(np.abs(a - 0.5).max()) > 1e-3  # the scores are not a constant both models share
    ratio = macs(build_model("resnet-s2-deep", 4, 128, 128, filters=16)) / macs(
        build_model("resnet-s2", 4, 128, 128, filters=16)
    )
    assert 1.4 < ratio < 1.8, ratio
    with pytest.raises(ModelError, match="is not a resnet-s2 model"):
        grow(build_model("resnet-int8-gap", 4, 64, 64, filters=4), "resnet-s2-deep", 4, 64, 4, "multilabel")
    with pytest.raises(ModelError, match="cannot grow"):
        grow(base, "resnet-int8", 4, 64, 4, "multilabel")


def test_cnn_and_tasks():
    from convert.models import build_model

    m = build_model("cnn", 3, 32, 32, filters=4, task="multiclass")
    assert _kinds(m).count("Conv2D") == 4 and _kinds(m).count("MaxPooling2D") == 4
    assert m.get_layer("predictions").get_config()["activation"] == "softmax"
    p = np.asarray(m(np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert m.get_layer("gradcam_features").output.shape[1:] == (4, 4, 32)


def test_bad_arch_and_sizes():
    from convert.models import build_model

    with pytest.raises(ModelError, match="unknown architecture 'vgg'"):
        build_model("vgg", 4)
    with pytest.raises(ModelError, match="multiple of 16"):
        build_model("resnet", 4, 50, 50)


def test_unknown_architecture_cli(tiny_dataset, tmp_path):
    p = run_convert(
        "train",
        "--train",
        str(tiny_dataset),
        "--valid",
        str(tiny_dataset),
        "--out",
        str(tmp_path / "m.keras"),
        "--arch",
        "transformer",
        timeout=120,
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: unknown architecture 'transformer' "
        "(choose one of: resnet, resnet-int8, resnet-int8-gap, resnet-s2, resnet-s2-deep, cnn, fruit-cnn)"
    ]
