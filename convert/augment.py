"""Training augmentations that survive per-image standardisation.

Every model input goes through ``edge.preprocess.standardize`` (zero mean, unit variance over
the whole image). That cancels any *global* affine change of the pixel values, which is all the
seed's brightness/contrast step (``convertScaleAbs``) did: its output tensor is the input tensor
again, up to rounding. So each step here changes the image in a way standardisation cannot undo:

* **colour** — per-channel gains (white balance, dyed fabric), a hue rotation, a saturation
  change, and now and then a grey image: the model must not key on the fabric's or the thread's
  colour, only on their contrast and shape;
* **gamma** — a non-linear tone curve (exposure and sensor response);
* **geometry** — the seam at any orientation (90° turns and flips), a small rotation, a
  zoom of ±``max_zoom`` and a shift, with reflected borders: a slightly wrong ROI or a camera
  bumped by a few degrees must not blind the model. The zoom stays small on purpose: the
  ``length`` label *is* a length in pixels at the station's scale (2 mm vs 4 mm stitches), so a
  big zoom would turn 2 mm stitches into 4 mm ones without changing the label;
* **optics and sensor** — Gaussian defocus or motion blur, Gaussian noise, JPEG re-encoding.

All of it is numpy + OpenCV on the uint8 BGR image at the model's input size, drawn from the
caller's ``numpy`` generator, so a training run is a pure function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each step (defaults: what the shipped model was trained with)."""

    p_colour: float = 0.8
    channel_gain: float = 0.25  # each of B, G, R scaled by 1 ± this
    hue_shift: float = 90.0  # degrees, ± (OpenCV hue is 0..180 for 0..360°)
    saturation: float = 0.5  # saturation scaled by 1 ± this
    p_grey: float = 0.1
    p_gamma: float = 0.7
    gamma: tuple[float, float] = (0.6, 1.6)
    p_orient: float = 1.0  # 90° turns and flips
    p_affine: float = 0.7
    max_rotate: float = 15.0  # degrees, ±
    max_zoom: float = 0.12  # scale 1 ± this
    max_shift: float = 0.15  # of the image side, ±
    p_blur: float = 0.35
    max_sigma: float = 1.4  # defocus, px at the model's size
    p_motion: float = 0.15
    p_noise: float = 0.5
    max_noise: float = 10.0  # Gaussian sigma in grey levels
    p_jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (35, 90)


DEFAULT = AugmentConfig()


def colour(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = DEFAULT) -> np.ndarray:
    """Per-channel gains, hue rotation and saturation change; sometimes a grey image."""
    if rng.random() < cfg.p_grey:
        g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        return cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV_FULL).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-cfg.hue_shift, cfg.hue_shift) * 256.0 / 360.0) % 256.0
    hsv[..., 1] *= rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR_FULL).astype(np.float32)
    out *= rng.uniform(1 - cfg.channel_gain, 1 + cfg.channel_gain, size=3).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def gamma(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = DEFAULT) -> np.ndarray:
    """A random tone curve ``v ** g`` (non-linear, so standardisation keeps it)."""
    g = float(np.exp(rng.uniform(np.log(cfg.gamma[0]), np.log(cfg.gamma[1]))))
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** g, 0, 255).astype(np.uint8)
    return cv2.LUT(img, lut)


def orient(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 8 rotations/flips of the square (the seam at any orientation)."""
    k = int(rng.integers(4))
    out = np.rot90(img, k)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def affine(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = DEFAULT) -> np.ndarray:
    """Small rotation, zoom and shift about the centre, borders reflected."""
    h, w = img.shape[:2]
    angle = rng.uniform(-cfg.max_rotate, cfg.max_rotate)
    scale = rng.uniform(1 - cfg.max_zoom, 1 + cfg.max_zoom)
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
    m[0, 2] += rng.uniform(-cfg.max_shift, cfg.max_shift) * w
    m[1, 2] += rng.uniform(-cfg.max_shift, cfg.max_shift) * h
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def blur(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = DEFAULT) -> np.ndarray:
    """Defocus: a Gaussian blur of sigma up to ``max_sigma``."""
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, cfg.max_sigma))


def motion(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Motion blur: a 3–7 px line kernel at a random angle (the fabric moving under the camera)."""
    n = int(rng.integers(3, 8))
    k = np.zeros((n, n), np.float32)
    k[n // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D(((n - 1) / 2.0, (n - 1) / 2.0), rng.uniform(0, 180), 1.0)
    kernel = np.asarray(cv2.warpAffine(k, rot, (n, n)), np.float32)
    kernel /= max(float(kernel.sum()), 1e-6)
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def noise(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = DEFAULT) -> np.ndarray:
    """Gaussian sensor noise of sigma up to ``max_noise`` grey levels."""
    sigma = rng.uniform(1.0, cfg.max_noise)
    return np.clip(img + rng.normal(0.0, sigma, img.shape).astype(np.float32), 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = DEFAULT) -> np.ndarray:
    """Re-encode as JPEG at a random quality (block artefacts, chroma subsampling)."""
    q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    return img if out is None else out


def augment(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = DEFAULT) -> np.ndarray:
    """One random augmentation of a BGR uint8 image (same size out); labels stay valid."""
    if rng.random() < cfg.p_orient and img.shape[0] == img.shape[1]:
        img = orient(img, rng)
    if rng.random() < cfg.p_affine:
        img = affine(img, rng, cfg)
    if rng.random() < cfg.p_colour:
        img = colour(img, rng, cfg)
    if rng.random() < cfg.p_gamma:
        img = gamma(img, rng, cfg)
    if rng.random() < cfg.p_blur:
        img = blur(img, rng, cfg)
    if rng.random() < cfg.p_motion:
        img = motion(img, rng)
    if rng.random() < cfg.p_noise:
        img = noise(img, rng, cfg)
    if rng.random() < cfg.p_jpeg:
        img = jpeg(img, rng, cfg)
    return img
