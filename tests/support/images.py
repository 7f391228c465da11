"""Small image sets for training tests, and ``imread`` for images a test expects to be there."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def imread(path: str | Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """``cv2.imread`` of an image the test relies on: an AssertionError naming the file, never None."""
    img = cv2.imread(str(path), flags)
    assert img is not None, f"cannot read {path}"
    return img


def fruit_folders(folder: Path, seed: int, n: int = 12) -> None:
    """A class-per-folder set: colour tells the class."""
    rng = np.random.default_rng(seed)
    for cls, bgr in (("Apfel", (0, 0, 200)), ("Orange", (0, 140, 255)), ("Tomate", (30, 30, 120))):
        (folder / cls).mkdir(parents=True)
        for i in range(n):
            img = np.clip(rng.normal(0, 20, (48, 48, 3)) + np.array(bgr), 0, 255).astype(np.uint8)
            cv2.circle(img, (24, 24), 10 + i % 6, (255, 255, 255), 2)
            cv2.imwrite(str(folder / cls / f"{i}.png"), img)
