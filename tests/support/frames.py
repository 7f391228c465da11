"""Test videos whose frames say which frame they are: frame i shows i in binary as 8 black/white
columns (survives MJPG/mp4v compression), so a test can check which frame a reader returned."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def draw(i: int, size=(160, 120)) -> np.ndarray:
    """Test frame i: its index in binary as 8 black/white columns (survives MJPG/mp4v compression)."""
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    col = w // 8
    for b in range(8):
        if i >> b & 1:
            img[:, b * col : (b + 1) * col] = 255
    return img


def make_video(path: Path, n: int, fourcc: str = "MJPG", size=(160, 120)) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), 30, size)
    assert w.isOpened()
    for i in range(n):
        w.write(draw(i, size))
    w.release()
    return path


def frame_index(img: np.ndarray) -> int:
    """Which test frame an image is (decodes ``draw``)."""
    col = img.shape[1] // 8
    return sum(1 << b for b in range(8) if img[10:-10, b * col + 4 : (b + 1) * col - 4].mean() > 128)
