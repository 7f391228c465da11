"""Small Keras models made into real bundles, and frames to explain, for the Grad-CAM tests
(tests/test_gradcam.py, test_heatmaps_cli.py, test_localize.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

SEAM = ["good", "error", "break", "length"]


def make_bundle(model, out: Path, labels, task: str = "multilabel", calibration=None) -> Path:
    """A real bundle (classifier_fp32 + explainer + head + keras) of a Keras model."""
    from convert.explainer import export_explainer
    from convert.tflite import keras_to_tflite
    from edge.bundle import write_manifest

    out.mkdir(parents=True, exist_ok=True)
    h, w = (int(v) for v in model.inputs[0].shape[1:3])
    files, gc = export_explainer(model, out, calibration=calibration)
    (out / "classifier_fp32.tflite").write_bytes(keras_to_tflite(model, h, w, "none"))
    model.save(str(out / "model.keras"))
    write_manifest(
        out,
        {
            "name": out.name,
            "task": task,
            "labels": list(labels),
            "input": {"height": h, "width": w},
            "classifier": "classifier_fp32",
            "gradcam": gc,
        },
        {**files, "classifier_fp32": "classifier_fp32.tflite", "keras": "model.keras"},
    )
    return out


def randomize_bn(model, seed: int = 0) -> None:
    """Give BatchNormalization layers non-trivial statistics so the head's BN really matters."""
    import keras

    rng = np.random.default_rng(seed)
    for lyr in model.layers:
        if isinstance(lyr, keras.layers.BatchNormalization):
            c = lyr.moving_mean.shape[0]
            lyr.moving_mean.assign(rng.normal(0, 0.3, c).astype("float32"))
            lyr.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
            lyr.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            lyr.beta.assign(rng.normal(0, 0.3, c).astype("float32"))


def seed_resnet_like(n: int = 4, size: int = 64, seed: int = 0):
    """The seed ResNet's shape in miniature: ReLU→BN blocks, a residual Add, the last relu_bn (BN),
    AveragePooling2D(4) → Flatten → Dense(n, sigmoid)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    i = keras.Input((size, size, 3))
    x = layers.Conv2D(8, 3, padding="same")(i)
    x = layers.BatchNormalization()(layers.ReLU()(x))
    y = layers.Conv2D(8, 3, padding="same", strides=2)(x)
    y = layers.BatchNormalization()(layers.ReLU()(y))
    y = layers.Conv2D(8, 3, padding="same")(y)
    x = layers.AveragePooling2D(1, strides=2)(x)
    x = layers.Conv2D(8, 1)(x)
    x = layers.Add()([x, y])
    x = layers.BatchNormalization(name="last_bn")(layers.ReLU()(x))
    x = layers.AveragePooling2D(4)(x)
    x = layers.Flatten()(x)
    o = layers.Dense(n, activation="sigmoid")(x)
    m = keras.Model(i, o)
    randomize_bn(m, seed)
    return m


def small_softmax(head: str, n: int = 3, size: int = 64, seed: int = 1):
    """Conv→BN→ReLU6 features with a softmax head of the given kind."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    i = keras.Input((size, size, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(i)
    x = layers.Conv2D(12, 3, strides=2, padding="same", use_bias=False, name="last_conv")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    if head == "gap":
        x = layers.GlobalAveragePooling2D()(x)
    elif head == "maxpool":
        x = layers.MaxPooling2D(3, strides=2)(x)  # 16x16 → 7x7 VALID: row/col 15 outside every window
        x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(n)(x)
    o = layers.Softmax()(x)
    m = keras.Model(i, o)
    randomize_bn(m, seed)
    return m


def sample_frames(n: int = 3, seed: int = 0) -> list[np.ndarray]:
    """Seam-like frames: textured background, a dark dashed line, a bright blob at a random place."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img: np.ndarray = rng.integers(90, 160, (256, 256, 3)).astype(np.uint8)
        img = cv2.GaussianBlur(img, (5, 5), 0)
        x = int(rng.integers(60, 200))
        for y in range(0, 256, 24):
            cv2.line(img, (x, y), (x, y + 12), (30, 30, 30), 4)
        cx, cy = (int(v) for v in rng.integers(30, 226, 2))
        cv2.circle(img, (cx, cy), 18, (240, 240, 240), -1)
        out.append(img)
    return out


def bright_square_model(size: int = 64):
    """Hand-set detector: a 5×5 mean-brightness conv, ReLU, GAP, Dense: 'error' = brightness."""
    import keras
    from keras import layers

    i = keras.Input((size, size, 3))
    x = layers.Conv2D(1, 5, padding="same", name="detector")(i)
    x = layers.ReLU(name="bright")(x)
    x = layers.GlobalAveragePooling2D()(x)
    o = layers.Dense(4, activation="sigmoid")(x)
    m = keras.Model(i, o)
    m.get_layer("detector").set_weights([np.full((5, 5, 3, 1), 1 / 75, np.float32), np.zeros(1, np.float32)])
    m.layers[-1].set_weights(
        [np.array([[-4.0, 8.0, 0.0, 0.0]], np.float32), np.array([1.0, 0.5, -6.0, -6.0], np.float32)]
    )
    return m


def square_image(x: int, y: int, side: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(20, 60, (256, 256, 3)).astype(np.uint8)
    img[y : y + side, x : x + side] = 230
    return img


def assert_agree(a: dict, b: dict) -> list[tuple[str, float, float]]:
    """Every label: both flat, or r ≥ 0.999 and max |Δ| ≤ 1e-3. Returns (label, r, maxdiff)."""
    assert set(a) == set(b)
    stats = []
    for lab in a:
        x, y = a[lab].cam.astype(np.float64).ravel(), b[lab].cam.astype(np.float64).ravel()
        assert a[lab].cam.dtype == np.float32 and a[lab].cam.shape == b[lab].cam.shape
        diff = float(np.abs(x - y).max())
        if x.max() == 0 and y.max() == 0:
            stats.append((lab, 1.0, diff))
            continue
        r = float(np.corrcoef(x, y)[0, 1])
        assert r >= 0.999, f"{lab}: r={r}"
        assert diff <= 1e-3, f"{lab}: max|Δ|={diff}"
        assert a[lab].peak == pytest.approx(b[lab].peak, rel=1e-3, abs=1e-9)
        assert a[lab].score == pytest.approx(b[lab].score, abs=1e-4)
        stats.append((lab, r, diff))
    return stats
