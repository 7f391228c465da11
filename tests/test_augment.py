"""convert.augment: every step changes the *model input* (after per-image standardisation)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from convert import augment as A
from convert.synth import render_image
from edge.preprocess import preprocess

SIZE = 64


@pytest.fixture(scope="module")
def seam() -> np.ndarray:
    img, _, _ = render_image(np.random.default_rng(7), size=256)
    return cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def _tensor_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |Δ| of the standardised model inputs (units of the image's standard deviation)."""
    return float(np.abs(preprocess(a, SIZE, SIZE) - preprocess(b, SIZE, SIZE)).mean())


def test_seed_brightness_contrast_is_cancelled_by_standardisation(seam):
    # why the seed's convertScaleAbs step was dropped: its model input is the original's
    bright = cv2.convertScaleAbs(seam, alpha=1.15, beta=12)
    assert np.all(bright < 255)  # no clipping in this image, so the change is purely affine
    assert _tensor_change(seam, bright) < 0.02  # rounding only


@pytest.mark.parametrize("step", ["colour", "gamma", "orient", "affine", "blur", "motion", "noise", "jpeg"])
def test_each_step_survives_standardisation(seam, step):
    rng = np.random.default_rng(1)
    fn = getattr(A, step)
    changes = []
    for _ in range(8):
        out = fn(seam, rng) if step in ("orient", "motion") else fn(seam, rng, A.DEFAULT)
        assert out.shape == seam.shape and out.dtype == np.uint8
        changes.append(_tensor_change(seam, out))
    # every step moves the model input by a clear margin on most draws (orient: identity is 1 of 8)
    assert np.median(changes) > 0.03, (step, changes)


def test_orient_gives_all_eight_symmetries(seam):
    rng = np.random.default_rng(0)
    seen = {A.orient(seam, rng).tobytes() for _ in range(200)}
    assert len(seen) == 8


def test_colour_changes_channel_balance_not_only_brightness(seam):
    rng = np.random.default_rng(3)
    out = A.colour(seam, rng, A.AugmentConfig(p_grey=0.0))
    ratio_in = seam.reshape(-1, 3).mean(0) / seam.mean()
    ratio_out = out.reshape(-1, 3).mean(0) / out.mean()
    assert np.abs(ratio_in - ratio_out).max() > 0.02


def test_augment_is_a_pure_function_of_the_generator(seam):
    a = A.augment(seam, np.random.default_rng(11))
    b = A.augment(seam, np.random.default_rng(11))
    c = A.augment(seam, np.random.default_rng(12))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_training_batches_are_augmented(tmp_path):
    from convert.data import load_dataset, make_sequence
    from convert.synth import write_dataset

    write_dataset(tmp_path, 8, seed=4, size=SIZE)
    ds = load_dataset(tmp_path)
    plain = make_sequence(ds, SIZE, SIZE, batch=8)[0][0]
    aug = make_sequence(ds, SIZE, SIZE, batch=8, augment_images=True, seed=1)[0][0]
    per_image = np.abs(plain - aug).mean(axis=(1, 2, 3))
    assert plain.shape == aug.shape == (8, SIZE, SIZE, 3)
    assert np.all(np.isfinite(aug)) and (per_image > 0.03).mean() >= 0.75
