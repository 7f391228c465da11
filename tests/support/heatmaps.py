"""The heatmap worker with a stand-in explainer (a deterministic Gaussian blob per label) and the
real overlay functions, for tests of its mechanics (tests/test_heatmap_worker.py, test_soak.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edge.gradcam import Heatmap
from edge.heatmaps import HeatmapWorker


class BlobExplainer:
    """One Gaussian blob per label, at a label-dependent place; ``delay`` simulates a slow CPU."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls = 0

    def explain(self, frame, labels):
        self.calls += 1
        time.sleep(self.delay)
        h, w = frame.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        out = {}
        for i, lab in enumerate(labels):
            cx, cy = w * (0.25 + 0.25 * i), h / 2
            cam = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (w / 8) ** 2)).astype(np.float32)
            out[lab] = Heatmap(lab, cam, 1.0 + i, 0.9)
        return out


def overlays():
    from edge.overlay import overlay_jet, overlay_labels

    return overlay_labels, overlay_jet


def make_worker(root: Path, stop: threading.Event, explainer=None, **kw) -> HeatmapWorker:
    ol, oj = overlays()
    ex = explainer or BlobExplainer()
    return HeatmapWorker(
        root,
        stop,
        explainer_factory=lambda: ex,
        overlay_labels=ol,
        overlay_jet=oj,
        labels_all=("good", "error", "break", "length"),
        **kw,
    )


def frame(v=128):
    img = np.full((64, 64, 3), v, np.uint8)
    cv2.line(img, (32, 0), (32, 63), (20, 20, 20), 3)
    return img
