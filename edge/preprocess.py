"""The one preprocessing path, shared byte for byte by training (``convert``) and the Pi.

Frames are BGR uint8 (OpenCV order, and picamera2's ``RGB888`` in memory). Each frame is
resized with INTER_AREA and standardised *per image* (zero mean, unit variance, as
``tf.image.per_image_standardization``). The seed standardised per batch, which makes a
frame's input depend on its batch mates and differ between training and a single camera
frame; per-image standardisation gives the same tensor in training, evaluation and on the
line, and also cancels global brightness/contrast changes of the lighting.

Other models want other inputs: an ImageNet VGG16 or MobileNetV2 expects ``keras.applications``'
``preprocess_input`` and explains the wrong class on standardised pixels. ``PREPROCESS_MODES``
names each mode the CLI accepts (``--preprocess``) with the manifest id a bundle records
(``input.preprocessing``) and the channel order of the model's input tensor. Every mode resizes
with INTER_AREA, then (numpy only, so the Pi needs no TensorFlow):

* ``seam``: BGR, per-image standardisation (the seam models; id ``bgr-area-perimage-std-v1``);
* ``vgg16`` / ``resnet50``: Keras' "caffe" mode: BGR, ImageNet channel means subtracted, no scaling;
* ``mobilenet_v2``: Keras' "tf" mode: RGB scaled to -1..1;
* ``none``: RGB float 0..255, untouched (models that preprocess inside, as Keras' EfficientNet).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

PREPROCESS_ID = "bgr-area-perimage-std-v1"
CHANNEL_ORDER = "BGR"
DEFAULT_MODE = "seam"
# --preprocess name → (manifest input.preprocessing, channel order of the model's input tensor)
PREPROCESS_MODES: dict[str, tuple[str, str]] = {
    "seam": (PREPROCESS_ID, CHANNEL_ORDER),
    "vgg16": ("bgr-area-caffe-imagenet-v1", "BGR"),
    "mobilenet_v2": ("rgb-area-tf-minus1to1-v1", "RGB"),
    "resnet50": ("bgr-area-caffe-imagenet-resnet50-v1", "BGR"),
    "none": ("rgb-area-raw-0to255-v1", "RGB"),
}
IMAGENET_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)  # keras.applications "caffe" mode


def mode_for_id(preprocessing: str, channel_order: str) -> str | None:
    """The ``--preprocess`` name of a manifest's (preprocessing id, channel order); None if unknown."""
    for name, (pid, order) in PREPROCESS_MODES.items():
        if pid == preprocessing and order == channel_order:
            return name
    return None


def check_mode(mode: str) -> str:
    """``mode`` when it is a known ``--preprocess`` name, else ValueError naming the choices."""
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"--preprocess {mode!r}: choose one of {', '.join(PREPROCESS_MODES)}")
    return mode


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


def apply_mode(img_bgr: np.ndarray, mode: str) -> np.ndarray:
    """A resized BGR uint8 image → the float32 tensor of ``mode`` (see the module doc)."""
    if mode == "seam":
        return standardize(img_bgr)
    x = img_bgr.astype(np.float32)
    if mode in ("vgg16", "resnet50"):
        return (x - IMAGENET_MEAN_BGR).astype(np.float32)
    rgb = x[..., ::-1]
    if mode == "mobilenet_v2":
        return np.ascontiguousarray(rgb / np.float32(127.5) - np.float32(1.0), np.float32)
    if mode == "none":
        return np.ascontiguousarray(rgb, np.float32)
    raise ValueError(check_mode(mode))


def preprocess(frame_bgr: np.ndarray, height: int, width: int, mode: str = DEFAULT_MODE) -> np.ndarray:
    """BGR uint8 frame of any size → float32 ``[height, width, 3]`` model input (``mode``: module doc)."""
    img = to_bgr(frame_bgr)
    if img.shape[0] != height or img.shape[1] != width:
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    return apply_mode(img, mode)


def preprocess_batch(frames: Sequence[np.ndarray], height: int, width: int, mode: str = DEFAULT_MODE) -> np.ndarray:
    """Stack ``preprocess`` over frames → ``[N, height, width, 3]`` (each frame on its own)."""
    out = np.empty((len(frames), height, width, 3), np.float32)
    for i, f in enumerate(frames):
        out[i] = preprocess(f, height, width, mode)
    return out
