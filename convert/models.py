"""Model architectures: the seed ResNet, an int8-friendly variant of it, and the seed CNN.

``build_model(arch, n_labels, height, width, filters, task)``:

* ``resnet`` — the seed's ``create_res_net`` exactly: ``BatchNormalization`` on the input,
  Conv 3×3, ``relu_bn`` (ReLU *then* BN), residual blocks [2, 4, 2] with the filters doubling per
  stage and a stride-2 + 1×1-conv shortcut at the first block of every stage after the first,
  ``AveragePooling2D(4)``, ``Flatten``, ``Dense(n)``.
* ``resnet-int8`` — same topology, Conv → BN → ReLU. ReLU→BN (the seed's order) leaves a BN
  that cannot be folded into the convolution, and full-int8 quantisation of its unbounded
  output loses accuracy (ARCHITECTURE.md §3); Conv→BN folds and quantises cleanly. Its BNs use
  momentum 0.9 (Keras default 0.99): with 0.99 the moving statistics of a short CPU run (a few
  hundred steps) still remember their initial values, and inference disagrees with training.
* ``resnet-int8-gap`` — ``resnet-int8`` with a global-average-pooling head instead of
  AveragePooling2D(4) + Flatten: one weight per feature and label instead of one per position,
  so it learns a seam attribute wherever the seam is (measured: learns faster on 2 CPU cores).
* ``resnet-s2`` — the int8-friendly ResNet re-shaped for a CPU budget: a stride-2 stem and four
  stages [2, 2, 2, 1] (filters 16, 32, 64, 128 at the default ``--filters 16``), global-average
  pooling. Same cost as ``resnet-int8-gap`` at 8 filters (≈ 120 M multiply-adds at 128×128) but
  7× the weights, and twice the training throughput on 2 CPU cores (155 vs 81 samples/s,
  batch 32): oneDNN is far more efficient on 16–128 channels at 64² and below than on 8 channels
  at 128². The stem still reads every full-resolution pixel (3×3, stride 2), so a 1 px thread is
  seen. Its Grad-CAM map is 8×8 (one cell per 16 px of the input).
* ``resnet-s2-deep`` — ``resnet-s2`` with stages [2, 3, 4, 2]: four more residual blocks where the
  receptive field is widest (≈ 195 M multiply-adds, 1.6× ``resnet-s2``, inside the Pi budget of 3×).
  ``train --init`` of a ``resnet-s2`` model with ``--arch resnet-s2-deep`` grows it without
  changing what it computes (:func:`grow`): the old blocks keep their weights and every new block
  starts as the identity, so training carries on from the old model instead of from scratch.
* ``cnn`` — the seed CNN: 4 × [Conv 3×3 ReLU, BN, MaxPool 2], Flatten, Dense 128 ReLU, Dense.
* ``fruit-cnn`` — the fruit tutorial's CNN (class folders Apfel/Orange/Tomate, softmax): 4 ×
  [Conv 3×3 ReLU with ``he_uniform`` initialisation, BN, MaxPool 2] with fixed widths 32/32/64/128
  (``--filters`` is ignored), Flatten, Dense 128 ReLU (``he_uniform``), Dense. Grad-CAM at the last
  BatchNormalization, as the tutorial. Any input of at least 16×16 is accepted (its 100×100 gives
  6×6 features: the VALID pooling drops the odd row), not only multiples of 16.

The last Dense is linear and named ``logits``, followed by an ``Activation`` named
``predictions`` (sigmoid for multilabel, softmax for multiclass): Grad-CAM scores the
pre-activation logit. The last feature map before pooling is named ``gradcam_features``.
Weight-bearing layers are in the seed's order, so seed weight files load by layer order.
The stride-2 1×1 shortcut conv is written as a 1×1 subsampling pool + 1×1 conv (identical
numbers and weights): TF 2.21's oneDNN backward pass of a strided 1×1 conv segfaults.
"""

from __future__ import annotations

from typing import Any

from edge.errors import ModelError

ARCHS = ("resnet", "resnet-int8", "resnet-int8-gap", "resnet-s2", "resnet-s2-deep", "cnn", "fruit-cnn")
FRUIT_WIDTHS = (32, 32, 64, 128)
GRADCAM_LAYER = "gradcam_features"
RESNET_BLOCKS = (2, 4, 2)
RESNET_S2_BLOCKS = (2, 2, 2, 1)
RESNET_S2_DEEP_BLOCKS = (2, 3, 4, 2)
# arch → the arch it can grow from by adding identity blocks (convert.models.grow)
GROWS_FROM = {"resnet-s2-deep": "resnet-s2"}


def _resnet(
    n_labels: int,
    height: int,
    width: int,
    filters: int,
    activation: str,
    friendly: bool,
    gap: bool = False,
    stem_stride: int = 1,
    blocks: tuple[int, ...] = RESNET_BLOCKS,
    name: str = "",
):
    import functools

    import keras
    from keras import layers

    if friendly:  # BN statistics settle within a few hundred steps (short CPU runs, int8 calibration)
        layers = _Layers(layers, functools.partial(layers.BatchNormalization, momentum=0.9))

    def relu_bn(x, name=None):
        if friendly:  # caller already applied BN after the conv
            return layers.ReLU(name=name)(x)
        x = layers.ReLU()(x)
        return layers.BatchNormalization(name=name)(x)

    def conv_bn(x, f, k, s):
        x = layers.Conv2D(kernel_size=k, strides=s, filters=f, padding="same")(x)
        return layers.BatchNormalization()(x) if friendly else x

    def block(x, downsample: bool, f: int, name=None):
        y = conv_bn(x, f, 3, 2 if downsample else 1)
        y = relu_bn(y)
        y = conv_bn(y, f, 3, 1)
        if downsample:
            # = the seed's Conv2D(1x1, strides=2): subsample, then the 1x1 conv (same weights, same
            # numbers). TF 2.21's oneDNN kernels segfault in the backward pass of a strided 1x1 conv.
            x = layers.AveragePooling2D(pool_size=1, strides=2, padding="same")(x)
            x = layers.Conv2D(kernel_size=1, strides=1, filters=f, padding="same")(x)
        out = layers.Add()([x, y])
        return relu_bn(out, name=name)

    inputs = keras.Input(shape=(height, width, 3), name="image")
    t = layers.BatchNormalization()(inputs)
    t = conv_bn(t, filters, 3, stem_stride)
    t = relu_bn(t)
    f = filters
    for i, n_blocks in enumerate(blocks):
        for j in range(n_blocks):
            last = i == len(blocks) - 1 and j == n_blocks - 1
            t = block(t, downsample=(j == 0 and i != 0), f=f, name=GRADCAM_LAYER if last else None)
        f *= 2
    if gap:
        t = layers.GlobalAveragePooling2D()(t)
    else:
        t = layers.AveragePooling2D(4)(t)
        t = layers.Flatten()(t)
    t = layers.Dense(n_labels, name="logits")(t)
    outputs = layers.Activation(activation, name="predictions")(t)
    return keras.Model(
        inputs, outputs, name=name or (("resnet_int8_gap" if gap else "resnet_int8") if friendly else "resnet")
    )


class _Layers:
    """``keras.layers`` with ``BatchNormalization`` replaced (a namespace shim)."""

    def __init__(self, base, bn):
        self._base, self.BatchNormalization = base, bn

    def __getattr__(self, name):
        return getattr(self._base, name)


def _cnn(n_labels: int, height: int, width: int, filters: int, activation: str):
    import keras
    from keras import layers

    inputs = keras.Input(shape=(height, width, 3), name="image")
    t = inputs
    for i in range(4):
        t = layers.Conv2D(filters * 2**i, 3, padding="same", activation="relu")(t)
        t = layers.BatchNormalization(name=GRADCAM_LAYER if i == 3 else None)(t)
        t = layers.MaxPooling2D(2)(t)
    t = layers.Flatten()(t)
    t = layers.Dense(128, activation="relu")(t)
    t = layers.Dense(n_labels, name="logits")(t)
    outputs = layers.Activation(activation, name="predictions")(t)
    return keras.Model(inputs, outputs, name="cnn")


def _fruit_cnn(n_labels: int, height: int, width: int, activation: str):
    import keras
    from keras import layers

    inputs = keras.Input(shape=(height, width, 3), name="image")
    t = inputs
    for i, f in enumerate(FRUIT_WIDTHS):
        t = layers.Conv2D(f, 3, padding="same", activation="relu", kernel_initializer="he_uniform")(t)
        t = layers.BatchNormalization(name=GRADCAM_LAYER if i == len(FRUIT_WIDTHS) - 1 else None)(t)
        t = layers.MaxPooling2D(2)(t)
    t = layers.Flatten()(t)
    t = layers.Dense(128, activation="relu", kernel_initializer="he_uniform")(t)
    t = layers.Dense(n_labels, name="logits")(t)
    outputs = layers.Activation(activation, name="predictions")(t)
    return keras.Model(inputs, outputs, name="fruit_cnn")


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ModelError(f"unknown architecture {arch!r} (choose one of: {', '.join(ARCHS)})")
    return arch


def build_model(
    arch: str, n_labels: int, height: int = 128, width: int = 128, filters: int = 64, task: str = "multilabel"
):
    """A fresh, uncompiled Keras model (sigmoid outputs for multilabel, softmax for multiclass)."""
    check_arch(arch)
    if task not in ("multilabel", "multiclass"):
        raise ModelError(f"unknown task {task!r} (multilabel or multiclass)")
    if n_labels < 1 or filters < 1:
        raise ModelError(f"n_labels {n_labels} and filters {filters} must be positive")
    down = 16
    if arch == "fruit-cnn":  # the tutorial's 100x100: four VALID 2x2 pools need only 16 pixels
        if height < down or width < down:
            raise ModelError(f"input size {height}x{width} must be at least {down}x{down} for {arch!r}")
    elif height % down or width % down:
        raise ModelError(f"input size {height}x{width} must be a multiple of {down} for {arch!r}")
    activation = "sigmoid" if task == "multilabel" else "softmax"
    if arch == "fruit-cnn":
        return _fruit_cnn(n_labels, height, width, activation)
    if arch == "cnn":
        return _cnn(n_labels, height, width, filters, activation)
    if arch in ("resnet-s2", "resnet-s2-deep"):
        return _resnet(
            n_labels,
            height,
            width,
            filters,
            activation,
            friendly=True,
            gap=True,
            stem_stride=2,
            blocks=RESNET_S2_BLOCKS if arch == "resnet-s2" else RESNET_S2_DEEP_BLOCKS,
            name=arch.replace("-", "_"),
        )
    return _resnet(
        n_labels,
        height,
        width,
        filters,
        activation,
        friendly=arch.startswith("resnet-int8"),
        gap=arch == "resnet-int8-gap",
    )


def _segments(model) -> tuple[list, list[list], list]:
    """A ResNet's weight-bearing layers → (stem, one list per residual block, head). A block ends at
    the ReLU after its ``Add``; the layer order is the construction order, the same in every build."""
    blocks: list[list] = []
    cur: list = []
    seen_add = False
    for layer in model.layers:
        kind = layer.__class__.__name__
        if kind == "Add":
            seen_add = True
        elif kind == "ReLU" and seen_add:
            blocks.append(cur)
            cur, seen_add = [], False
        elif layer.weights:
            cur.append(layer)
    if not blocks:
        raise ModelError(f"model {model.name!r} has no residual blocks")
    # the stem (input BN, conv, BN) came before the first block's layers; the head after the last
    first_block = blocks[0]
    n_stem = 3
    stem, blocks[0] = first_block[:n_stem], first_block[n_stem:]
    return stem, blocks, cur


def grow(base, arch: str, n_labels: int, size: int, filters: int, task: str):
    """A fresh ``arch`` model computing exactly what ``base`` computes (a deeper ResNet of the same
    stem, widths and head): the stem, the head and block j of every stage take ``base``'s weights;
    each added block (at the end of its stage) starts with the last batch norm of its residual branch
    at zero scale and shift, so the block is ``ReLU(x + 0) = x`` (its input is already a ReLU output).
    Net2DeeperNet for ResNets: training resumes from ``base``'s accuracy instead of from scratch."""
    source = GROWS_FROM.get(arch)
    if source is None:
        raise ModelError(f"--arch {arch}: cannot grow a model into it (growable: {', '.join(GROWS_FROM)})")
    new = build_model(arch, n_labels, size, size, filters, task)
    old_blocks = RESNET_S2_BLOCKS
    new_blocks = RESNET_S2_DEEP_BLOCKS
    o_stem, o_blk, o_head = _segments(base)
    n_stem, n_blk, n_head = _segments(new)
    if len(o_blk) != sum(old_blocks) or len(n_blk) != sum(new_blocks):
        raise ModelError(f"--init model {base.name!r} is not a {source} model ({len(o_blk)} residual blocks)")

    def copy(src: list, dst: list) -> None:
        for a, b in zip(src, dst, strict=True):
            wa, wb = a.get_weights(), b.get_weights()
            if [w.shape for w in wa] != [w.shape for w in wb]:
                raise ModelError(f"--init model {base.name!r}: layer {a.name} does not fit {arch} (filters?)")
            b.set_weights(wa)

    copy(o_stem, n_stem)
    copy(o_head, n_head)
    oi = ni = 0
    for n_old, n_new in zip(old_blocks, new_blocks, strict=True):
        for j in range(n_new):
            if j < n_old:
                copy(o_blk[oi + j], n_blk[ni + j])
            else:  # the residual branch's last BN: [conv, BN, conv, BN] → BN at index 3
                bn = n_blk[ni + j][3]
                gamma, beta, mean, var = bn.get_weights()
                bn.set_weights([gamma * 0, beta * 0, mean, var])
        oi, ni = oi + n_old, ni + n_new
    return new


def resize_input(base, arch: str, n_labels: int, size: int, filters: int, task: str):
    """A fresh ``arch`` model of input ``size``×``size`` carrying every weight of ``base``.

    In a fully convolutional net with a global-average-pooled head no weight depends on the input
    size, so training resumes from ``base`` while the model sees finer detail (a stitch hole, a
    skipped stitch) at (size / old size)² its multiply-adds. An architecture with a weight that does
    depend on it (a flatten before a dense layer) is refused in one line."""
    new = build_model(arch, n_labels, size, size, filters, task)
    wa, wb = base.get_weights(), new.get_weights()
    if [w.shape for w in wa] != [w.shape for w in wb]:
        raise ModelError(
            f"--init model {base.name!r}: its weights do not fit {arch} at {size}x{size} "
            "(only fully convolutional models with a pooled head can change input size)"
        )
    new.set_weights(wa)
    return new


# --- saving and loading ------------------------------------------------------------------------

META_ENTRY = "seamqc.json"  # extra zip entry in a .keras file; Keras ignores it when loading


def save_model(model, path, meta: dict) -> None:
    """``model.save`` + the seam-qc metadata (labels, task, arch, input size) inside the ``.keras`` zip."""
    import json
    import zipfile

    model.save(str(path))
    with zipfile.ZipFile(str(path), "a") as z:
        z.writestr(META_ENTRY, json.dumps(meta, indent=1))


def read_meta(path) -> dict:
    """The metadata ``save_model`` stored, or ``{}`` (checkpoints, foreign models)."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(str(path)) as z:
            if META_ENTRY in z.namelist():
                return json.loads(z.read(META_ENTRY))
    except (OSError, zipfile.BadZipFile, ValueError):
        pass
    return {}


def infer_meta(model, meta: dict | None = None) -> dict:
    """Complete ``meta`` from the model itself: input size, label count, task from the output activation."""
    meta = dict(meta or {})
    shape = model.inputs[0].shape
    meta.setdefault("height", int(shape[1]))
    meta.setdefault("width", int(shape[2]))
    n = int(model.outputs[0].shape[-1])
    if "labels" not in meta:
        from edge.seam import SEAM_LABELS

        meta["labels"] = list(SEAM_LABELS) if n == len(SEAM_LABELS) else [f"label_{i}" for i in range(n)]
    if "task" not in meta:
        act = None
        try:
            last = model.layers[-1]
            act = getattr(getattr(last, "activation", None), "__name__", None)
        except (AttributeError, IndexError):
            pass
        meta["task"] = "multiclass" if act == "softmax" else "multilabel"
    if len(meta["labels"]) != n:
        raise ModelError(f"model has {n} outputs but its metadata names {len(meta['labels'])} labels")
    return meta


def load_keras(path) -> tuple[Any, dict]:
    """A ``.keras`` file → ``(model, meta)``; a corrupt or foreign file is one ``ModelError`` line."""
    from pathlib import Path

    import keras

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: model file not found")
    try:
        model = keras.models.load_model(str(p), compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a bad file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{p}: not a loadable Keras model ({msg[:200]})") from None
    return model, infer_meta(model, read_meta(p))
