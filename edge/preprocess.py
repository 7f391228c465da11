"""The one preprocessing path, shared byte for byte by training (``convert``) and the Pi.

Frames are BGR uint8 (OpenCV order, and picamera2's ``RGB888`` in memory). Each frame is
resized with INTER_AREA and standardised *per image* (zero mean, unit variance, as
``tf.image.per_image_standardization``). The seed standardised per batch, which makes a
frame's input depend on its batch mates and differ between training and a single camera
frame; per-image standardisation gives the same tensor in training, evaluation and on the
line, and also cancels global brightness/contrast changes of the lighting.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

PREPROCESS_ID = "bgr-area-perimage-std-v1"
CHANNEL_ORDER = "BGR"


def crop_roi(frame: np.ndarray, roi: Sequence[int] | None) -> np.ndarray:
    """Crop ``frame`` to ``roi = (x, y, w, h)``, clipped to the frame; ``None`` keeps it whole."""
    if roi is None:
        return frame
    x, y, w, h = (int(v) for v in roi)
    fh, fw = frame.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(fw, x + w), min(fh, y + h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"roi {list(roi)} lies outside the {fw}x{fh} frame")
    return frame[y0:y1, x0:x1]


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Return a 3-channel BGR uint8 view of a grey, BGR or BGRA image."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def standardize(x: np.ndarray) -> np.ndarray:
    """Per-image standardisation; the std is floored at 1/sqrt(N) so a flat frame is safe."""
    x = x.astype(np.float32, copy=False)
    mean = float(x.mean())
    std = max(float(x.std()), 1.0 / np.sqrt(x.size))
    return ((x - mean) / std).astype(np.float32)


def preprocess(frame_bgr: np.ndarray, height: int, width: int) -> np.ndarray:
    """BGR uint8 frame of any size → float32 ``[height, width, 3]`` model input."""
    img = to_bgr(frame_bgr)
    if img.shape[0] != height or img.shape[1] != width:
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return standardize(img)


def preprocess_batch(frames: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Stack ``preprocess`` over frames → ``[N, height, width, 3]`` (each frame on its own)."""
    out = np.empty((len(frames), height, width, 3), np.float32)
    for i, f in enumerate(frames):
        out[i] = preprocess(f, height, width)
    return out
