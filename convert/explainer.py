"""Export what the Pi needs for Grad-CAM without TensorFlow: ``explainer.tflite`` + ``head.npz``.

``explainer.tflite`` is the float model with a second output, the Grad-CAM feature map, so one
forward pass gives predictions and features (Grad-CAM from int8 features is poor, ARCHITECTURE.md §3).
``head.npz`` describes the layers between the feature map and the output (pooling, flatten, one
Dense, …) so that ``edge.gradcam.head_gradient`` can back-propagate a class logit in numpy:
GradientTape itself cannot be converted to a LiteRT-runnable model.

Layer choice (``find_gradcam_layer``), the seeds' rule made explicit: walk back from the
output through the head (Dense, Flatten, Dropout, pooling, output activation) to the first
layer with a 4-D output — the last feature map before the head (the seed ResNet's last
``relu_bn`` BatchNormalization, VGG16's ``block5_conv3``). When that layer closes a standard
conv → BatchNormalization → ReLU block, the convolution itself is taken, as the Keras
applications convention does (MobileNetV2: ``Conv_1``).

Supported heads on the numpy path: [BatchNormalization] [ReLU/ReLU6] [AveragePooling2D /
MaxPooling2D (VALID) / GlobalAveragePooling2D / GlobalMaxPooling2D] [Flatten], then hidden
Dense layers with relu/relu6/linear (the seed CNN's ``Dense(128, relu)``, VGG16's fc1/fc2) and
the output Dense (sigmoid / softmax / linear), with Dropout-like layers anywhere (no-ops at
inference) and an optional output Activation/Softmax. Anything else (convolutions, padding
'same' pooling, other activations, branches) raises ``ModelError`` naming the layer; the
full-TF path (``convert.gradcam_tf``) still explains such models.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError

from .models import GRADCAM_LAYER

EXPLAINER_FILE = "explainer.tflite"
HEAD_FILE = "head.npz"

_NOOP = {
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
}
_POOL = {"AveragePooling2D", "MaxPooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D"}
_CONV = {"Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose"}
_OUT_ACTS = {"sigmoid", "softmax", "linear"}


# ----------------------------------------------------------------------------- graph walking


def _inbound(layer, node_index: int = 0) -> list:
    """The layers feeding ``layer``'s node, as (layer, node_index) pairs."""
    nodes = getattr(layer, "_inbound_nodes", [])
    if not nodes:
        return []
    node = nodes[min(node_index, len(nodes) - 1)]
    out = []
    for t in node.input_tensors:
        hist = t._keras_history
        out.append((hist.operation, hist.node_index))
    return out


def _activation_name(layer) -> str | None:
    """Name of an activation layer's / Dense's activation function ('relu', 'sigmoid', …)."""
    kind = type(layer).__name__
    if kind == "Softmax":
        return "softmax"
    if kind == "ReLU":
        return "relu"
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    name = getattr(act, "__name__", None) or str(act)
    return {"relu6": "relu6", "relu": "relu", "sigmoid": "sigmoid", "softmax": "softmax", "linear": "linear"}.get(
        name, name
    )


def _rank(layer) -> int:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):
        return -1


def _output_layer(model):
    if len(model.outputs) != 1:
        raise ModelError(f"model {model.name!r} has {len(model.outputs)} outputs; Grad-CAM needs exactly one")
    hist = model.outputs[0]._keras_history
    return hist.operation, hist.node_index


def _is_head_layer(layer) -> bool:
    kind = type(layer).__name__
    if kind in _NOOP or kind in _POOL or kind in ("Dense", "Flatten", "Softmax"):
        return True
    if kind in ("Activation", "ReLU"):  # output activation, or a hidden Dense's ReLU (never 4-D here)
        return True
    return False


def find_gradcam_layer(model) -> str:
    """Name of the Grad-CAM layer of ``model`` (see the module docstring for the rule).

    A layer named ``gradcam_features`` (how ``convert.models`` marks it) wins outright.
    """
    if any(lyr.name == GRADCAM_LAYER for lyr in model.layers):
        return GRADCAM_LAYER
    layer, node = _output_layer(model)
    while True:
        kind = type(layer).__name__
        if kind == "InputLayer":
            break
        if _rank(layer) == 4 and kind not in _POOL and kind not in _NOOP:
            return _conv_of_block(layer)
        if not _is_head_layer(layer) and _rank(layer) != 4:
            raise ModelError(
                f"cannot find the Grad-CAM layer of {model.name!r}: layer {layer.name!r} ({kind}) between "
                f"the output and the last feature map is not a pooling/flatten/dense head layer; "
                f"pass --layer NAME"
            )
        ins = _inbound(layer, node)
        if len(ins) != 1:
            raise ModelError(
                f"cannot find the Grad-CAM layer of {model.name!r}: layer {layer.name!r} has "
                f"{len(ins)} inputs; pass --layer NAME"
            )
        layer, node = ins[0]
    raise ModelError(f"model {model.name!r} has no 4-D feature map before its head; pass --layer NAME")


def _conv_of_block(layer):
    """``conv → BN → ReLU`` closing the features → the conv (Keras convention); else ``layer``."""
    kind = type(layer).__name__
    is_relu = kind == "ReLU" or (kind == "Activation" and _activation_name(layer) in ("relu", "relu6"))
    if is_relu:
        ins = _inbound(layer)
        if len(ins) == 1 and type(ins[0][0]).__name__ == "BatchNormalization":
            ins2 = _inbound(ins[0][0])
            conv = ins2[0][0] if len(ins2) == 1 else None
            if conv is not None and type(conv).__name__ in _CONV and _activation_name(conv) == "linear":
                return conv.name
    return layer.name


# ----------------------------------------------------------------------------- head description


def describe_head(model, layer_name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The chain of layers from ``layer_name``'s output to the model output → (spec, arrays).

    Raises ``ModelError`` naming the first layer the numpy gradient cannot follow.
    """
    try:
        feat = model.get_layer(layer_name)
    except ValueError:
        raise ModelError(f"model {model.name!r} has no layer {layer_name!r}") from None
    if _rank(feat) != 4:
        raise ModelError(f"layer {layer_name!r} output {tuple(feat.output.shape)} is not a 4-D feature map")
    chain = []
    layer, node = _output_layer(model)
    while layer is not feat:
        if type(layer).__name__ == "InputLayer":
            raise ModelError(
                f"layer {layer_name!r} does not lead to the output of {model.name!r} through a single chain of layers"
            )
        ins = _inbound(layer, node)
        if len(ins) != 1:
            raise ModelError(
                f"head layer {layer.name!r} ({type(layer).__name__}) has {len(ins)} inputs; "
                f"the numpy Grad-CAM path needs a single chain (use --method tf)"
            )
        chain.append(layer)
        layer, node = ins[0]
    chain.reverse()

    steps: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    activation: str | None = "linear"
    dense_seen = False  # the LAST Dense (the logits) has been passed
    flat = False
    last_dense = max((i for i, lyr in enumerate(chain) if type(lyr).__name__ == "Dense"), default=-1)

    def unsupported(lyr, why: str) -> ModelError:
        return ModelError(
            f"head layer {lyr.name!r} ({type(lyr).__name__}): {why}; the numpy (LiteRT) "
            f"Grad-CAM path cannot follow it (use --method tf, or another --layer)"
        )

    for i, lyr in enumerate(chain):
        kind = type(lyr).__name__
        cfg = lyr.get_config()
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise unsupported(lyr, "only channels_last is supported")
        base = {"layer": lyr.name}
        if kind in _NOOP:
            steps.append({**base, "kind": "identity"})
        elif dense_seen:
            act = _activation_name(lyr)
            if kind in ("Activation", "Softmax") and activation == "linear" and act in _OUT_ACTS:
                activation = act
            else:
                raise unsupported(lyr, "only an output activation may follow the Dense layer")
        elif kind == "BatchNormalization":
            if flat or cfg.get("axis") not in (-1, 3, [-1], [3]):
                raise unsupported(lyr, "only a channel BatchNormalization on the feature map is supported")
            gamma = np.asarray(lyr.gamma.numpy() if lyr.gamma is not None else 1.0, np.float32)
            beta = np.asarray(lyr.beta.numpy() if lyr.beta is not None else 0.0, np.float32)
            mean = np.asarray(lyr.moving_mean.numpy(), np.float32)
            var = np.asarray(lyr.moving_variance.numpy(), np.float32)
            scale = (gamma / np.sqrt(var + float(cfg["epsilon"]))).astype(np.float32)
            arrays[f"s{i}_scale"], arrays[f"s{i}_shift"] = scale, (beta - mean * scale).astype(np.float32)
            steps.append({**base, "kind": "bn", "scale": f"s{i}_scale", "shift": f"s{i}_shift"})
        elif kind == "ReLU" or (kind == "Activation" and _activation_name(lyr) in ("relu", "relu6")):
            if kind == "ReLU":
                mx = cfg.get("max_value")
                st = {
                    "max_value": None if mx is None else float(mx),
                    "negative_slope": float(cfg.get("negative_slope") or 0.0),
                    "threshold": float(cfg.get("threshold") or 0.0),
                }
            else:
                st = {
                    "max_value": 6.0 if _activation_name(lyr) == "relu6" else None,
                    "negative_slope": 0.0,
                    "threshold": 0.0,
                }
            steps.append({**base, "kind": "relu", **st})
        elif kind in ("AveragePooling2D", "MaxPooling2D"):
            if flat:
                raise unsupported(lyr, "pooling after Flatten")
            if cfg.get("padding", "valid") != "valid":
                raise unsupported(lyr, f"padding={cfg.get('padding')!r} (only 'valid' is supported)")
            pool = [int(v) for v in cfg["pool_size"]]
            strides = [int(v) for v in (cfg.get("strides") or pool)]
            steps.append(
                {
                    **base,
                    "kind": "avg_pool" if kind.startswith("Average") else "max_pool",
                    "pool": pool,
                    "strides": strides,
                }
            )
        elif kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            if flat:
                raise unsupported(lyr, "pooling after Flatten")
            keep = bool(cfg.get("keepdims"))
            steps.append(
                {**base, "kind": "global_avg_pool" if "Average" in kind else "global_max_pool", "keepdims": keep}
            )
            flat = not keep
        elif kind == "Flatten":
            steps.append({**base, "kind": "flatten"})
            flat = True
        elif kind == "Dense":
            if not flat:
                raise unsupported(lyr, "Dense on a 4-D tensor (add Flatten or global pooling before it)")
            act = _activation_name(lyr)
            final = i == last_dense
            if final and act not in _OUT_ACTS:
                raise unsupported(lyr, f"output activation {act!r} (sigmoid/softmax/linear are supported)")
            if not final and act not in ("relu", "relu6", "linear"):
                raise unsupported(lyr, f"hidden activation {act!r} (relu/relu6/linear are supported)")
            kernel = np.asarray(lyr.kernel.numpy(), np.float32)
            bias = np.asarray(lyr.bias.numpy() if lyr.use_bias else np.zeros(kernel.shape[1]), np.float32)
            arrays[f"s{i}_kernel"], arrays[f"s{i}_bias"] = kernel, bias
            steps.append({**base, "kind": "dense", "kernel": f"s{i}_kernel", "bias": f"s{i}_bias"})
            if final:
                activation = act
                dense_seen = True
            elif act in ("relu", "relu6"):  # hidden layer of an MLP head (the seed CNN's Dense(128, relu))
                steps.append(
                    {
                        **base,
                        "kind": "relu",
                        "max_value": 6.0 if act == "relu6" else None,
                        "negative_slope": 0.0,
                        "threshold": 0.0,
                    }
                )
        else:
            raise unsupported(lyr, "layer type not supported")
    if not dense_seen:
        raise ModelError(
            f"the head after layer {layer_name!r} has no Dense layer; the numpy Grad-CAM path "
            f"needs one (use --method tf)"
        )
    h, w, c = (int(v) for v in feat.output.shape[1:])
    n = int(model.outputs[0].shape[-1])
    spec = {
        "format": 1,
        "layer": layer_name,
        "feature_shape": [h, w, c],
        "n_outputs": n,
        "activation": activation,
        "steps": steps,
        "flatten_order": "hwc",
    }
    return spec, arrays


def head_type(spec: dict[str, Any]) -> str:
    """Short human description, e.g. ``avg_pool4x4/s4-flatten-dense-sigmoid``."""
    parts = []
    for s in spec["steps"]:
        k = s["kind"]
        if k == "identity":
            continue
        if k in ("avg_pool", "max_pool"):
            k += f"{s['pool'][0]}x{s['pool'][1]}/s{s['strides'][0]}"
        elif k == "relu" and s.get("max_value") is not None:
            k = f"relu{s['max_value']:g}"
        parts.append(k)
    return "-".join(parts + [spec["activation"]])


# ----------------------------------------------------------------------------- export


def _input_hw(model) -> tuple[int, int]:
    if len(model.inputs) != 1:
        raise ModelError(f"model {model.name!r} has {len(model.inputs)} inputs; expected one image input")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise ModelError(f"model {model.name!r} input {shape} needs a fixed [H, W, 3] size")
    return int(shape[1]), int(shape[2])


def export_explainer(
    model,
    out_dir: str | Path,
    layer: str | None = None,
    calibration: Iterable[np.ndarray] | np.ndarray | None = None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Write ``explainer.tflite`` + ``head.npz`` into ``out_dir`` → (files by role, manifest gradcam).

    ``calibration`` (optional): preprocessed images ``[N, H, W, 3]`` (float32); when given, the
    per-class median Grad-CAM peak over the images the model flags (score ≥ 0.5) is stored as
    ``peak_ref`` so the Pi overlays can fade weak maps (see ``edge.gradcam``).
    The numpy head is checked against Keras on a random input before anything is written.
    """
    import keras

    from convert.tflite import keras_to_tflite
    from edge import gradcam as eg

    name = layer or find_gradcam_layer(model)
    spec, arrays = describe_head(model, name)
    height, width = _input_hw(model)
    feat_layer = model.get_layer(name)
    explainer = keras.Model(model.inputs[0], [model.outputs[0], feat_layer.output], name="explainer")

    # Parity: the numpy head must reproduce the Keras output from the Keras features.
    head = {"spec": spec, **arrays}
    x = np.random.default_rng(0).standard_normal((1, height, width, 3)).astype(np.float32)
    pred, feats = (np.asarray(v) for v in explainer(x, training=False))
    logits, _ = eg.head_forward(feats[0], head)
    mine = eg.head_activation(logits, head)
    err = float(np.max(np.abs(mine - pred[0])))
    if not err <= 1e-3 * max(1.0, float(np.max(np.abs(pred)))):
        raise ModelError(
            f"the numpy Grad-CAM head after layer {name!r} does not reproduce the model "
            f"(max |diff| {err:.3g}); use --method tf"
        )

    gradcam: dict[str, Any] = {
        "layer": name,
        "feature_shape": spec["feature_shape"],
        "explainer": "explainer",
        "head": "head",
        "head_type": head_type(spec),
    }
    if calibration is not None:
        gradcam["peak_ref"] = _peak_refs(explainer, calibration, head)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPLAINER_FILE).write_bytes(keras_to_tflite(explainer, height, width, "none"))
    tmp = out / (HEAD_FILE + ".tmp.npz")
    # numpy's stub reads a **dict as possibly holding allow_pickle: bool
    np.savez(tmp, spec=np.array(json.dumps(spec)), **arrays)  # type: ignore[arg-type]
    tmp.replace(out / HEAD_FILE)
    return {"explainer": EXPLAINER_FILE, "head": HEAD_FILE}, gradcam


def gradcam_section(model, layer: str | None = None, why: str = "") -> dict[str, Any]:
    """``manifest.gradcam`` for a model whose head the numpy path cannot follow (TF path only).

    For ``convert export``: on ``ModelError`` from ``export_explainer`` it can still ship the
    ``keras`` role with ``gradcam_section(model, why=str(err))``; the Pi then needs
    ``heatmaps.method: tf`` and ``edge.gradcam.Explainer(method="litert")`` says so clearly.
    """
    name = layer or find_gradcam_layer(model)
    try:
        shape = [int(v) for v in model.get_layer(name).output.shape[1:]]
    except ValueError:
        raise ModelError(f"model {model.name!r} has no layer {name!r}") from None
    return {"layer": name, "feature_shape": shape, "explainer": None, "head": None, "litert": why or "not exported"}


def _peak_refs(explainer, images, head: dict[str, Any], batch: int = 32) -> list[float | None]:
    """Median raw Grad-CAM peak per class over the images flagged with it (score ≥ 0.5; softmax: argmax)."""
    from edge import gradcam as eg

    n = int(head["spec"]["n_outputs"])
    softmax = head["spec"]["activation"] == "softmax"
    peaks: list[list[float]] = [[] for _ in range(n)]
    imgs = np.asarray(list(images) if not isinstance(images, np.ndarray) else images, np.float32)
    if imgs.ndim == 3:
        imgs = imgs[None]
    for b in range(0, len(imgs), batch):
        pred, feats = (np.asarray(v) for v in explainer(imgs[b : b + batch], training=False))
        for p, f in zip(pred, feats):
            _, inputs = eg.head_forward(f, head)
            flagged = [int(np.argmax(p))] if softmax else np.flatnonzero(p >= 0.5)
            for k in flagged:
                _, peak = eg.gradcam_map(f, eg.head_gradient(f, head, int(k), inputs))
                if peak > 0:
                    peaks[k].append(peak)
    return [float(np.median(p)) if p else None for p in peaks]
