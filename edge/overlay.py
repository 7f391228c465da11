"""Heatmap pictures: one colour per flagged label, and the classic JET overlay.

Pure drawing (OpenCV + numpy) on ``edge.gradcam.Heatmap``s, shared by the daemon's heatmap worker
and ``convert heatmaps``. Every overlay fades a map by its ``strength`` (peak / the label's
reference peak) so that a weak map does not look alarming (``edge.gradcam`` module doc).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from .gradcam import Heatmap, resize_cam
from .gradcam import strength as _strength

# BGR colours of the seed figures: error blue, break green, length red.
LABEL_COLORS: dict[str, tuple[int, int, int]] = {
    "error": (255, 0, 0),
    "break": (0, 255, 0),
    "length": (0, 0, 255),
}
# Distinct colours for other labels (multiclass models, "good"), in the models' label order.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 215, 255),  # gold
    (255, 0, 255),  # magenta
    (255, 255, 0),  # cyan
    (0, 128, 255),  # orange
    (180, 105, 255),  # pink
    (128, 0, 128),  # purple
    (0, 255, 128),  # lime
    (255, 128, 0),  # azure
    (128, 128, 0),  # teal
    (60, 20, 220),  # crimson
)


def label_color(label: str, index: int = 0) -> tuple[int, int, int]:
    """BGR colour of a label: the seed's for error/break/length, else ``PALETTE[index]``."""
    return LABEL_COLORS.get(label, PALETTE[index % len(PALETTE)])


def overlay_labels(
    frame_bgr: np.ndarray,
    heatmaps: Mapping[str, Heatmap] | Sequence[Heatmap],
    peak_ref: Mapping[str, float | None] | None = None,
    alpha: float = 0.6,
    colors: Mapping[str, tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Tint the frame with each label's map in its colour (error blue, break green, length red).

    Per pixel, a label's colour is blended in with opacity ``alpha * cam * strength``;
    ``strength`` is ``min(1, peak / peak_ref[label])`` when ``peak_ref`` is given, else the
    Heatmap's own ``strength`` (set by the Explainer): a weak map stays faint (module doc).
    Labels other than error/break/length get distinct ``PALETTE`` colours in the given order.
    """
    hms = list(heatmaps.values()) if isinstance(heatmaps, Mapping) else list(heatmaps)
    frame = frame_bgr if frame_bgr.ndim == 3 else cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
    out = frame.astype(np.float32)
    h, w = out.shape[:2]
    others = 0
    for hm in hms:
        if colors and hm.label in colors:
            color = colors[hm.label]
        elif hm.label in LABEL_COLORS:
            color = LABEL_COLORS[hm.label]
        else:
            color, others = PALETTE[others % len(PALETTE)], others + 1
        cam = hm.cam if hm.cam.shape[:2] == (h, w) else resize_cam(hm.cam, h, w)
        s = _strength(hm.peak, peak_ref.get(hm.label)) if peak_ref else float(hm.strength)
        a = (alpha * s * np.clip(cam, 0.0, 1.0))[..., None]
        out = out * (1.0 - a) + np.asarray(color, np.float32) * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def overlay_jet(
    frame_bgr: np.ndarray, cam: np.ndarray | Heatmap, alpha: float = 0.5, strength: float | None = None
) -> np.ndarray:
    """The classic Grad-CAM picture: JET colour map blended over the frame (``cv2.addWeighted``).

    ``cam`` is a map or a ``Heatmap`` (whose ``strength`` is then used). ``strength`` (0..1)
    scales the map's opacity so that a weak map does not look alarming.
    """
    if isinstance(cam, Heatmap):
        strength = cam.strength if strength is None else strength
        cam = cam.cam
    h, w = frame_bgr.shape[:2]
    c = cam if cam.shape[:2] == (h, w) else resize_cam(cam, h, w)
    heat = cv2.applyColorMap((np.clip(np.nan_to_num(c), 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLORMAP_JET)
    a = float(np.clip(alpha * (1.0 if strength is None else strength), 0.0, 1.0))
    frame = frame_bgr if frame_bgr.ndim == 3 else cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(heat, a, frame, 1.0 - a, 0.0)
