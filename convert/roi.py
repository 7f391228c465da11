"""The camera ROI on the workstation: ``--config station.yaml`` or ``--roi X,Y,W,H``, one source of truth.

The daemon classifies ``camera.roi`` of each frame (``edge.preprocess.crop_roi``), so ``label``,
``synth --video``, ``train`` and ``evaluate`` take the same ROI: from the station's own config
(read by ``edge.config.load_config``, so the daemon's validation applies: four ints inside
``camera.width`` × ``camera.height``) or from ``--roi`` (which overrides the config). Only
``camera.roi`` (and the frame size it refers to) is used; the files the Pi needs for MQTT (TLS
certificates, the password file) are not looked for, since a workstation does not have them.

Cropping goes through :func:`crop`, which checks that the ROI lies wholly inside the image (a
crop that ``crop_roi`` would silently clip is a different view from the daemon's) and then calls
``edge.preprocess.crop_roi``, the daemon's function.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import DataError
from edge.preprocess import crop_roi

Roi = tuple[int, int, int, int]
_INT = re.compile(r"^[+-]?\d+$")
ROI_HELP = "X,Y,W,H"


def parse_roi(text: str, flag: str = "--roi") -> Roi:
    """``"192,112,256,256"`` → ``(192, 112, 256, 256)``; anything else is one ``DataError`` line."""
    parts = [p.strip() for p in str(text).strip().strip("[]()").split(",")]
    if len(parts) != 4 or not all(_INT.match(p) for p in parts):
        raise DataError(f"{flag} {text!r}: expected {ROI_HELP}, four integers (e.g. 192,112,256,256)")
    x, y, w, h = (int(p) for p in parts)
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise DataError(f"{flag} {text!r}: x and y must be >= 0 and w and h > 0")
    return x, y, w, h


def _station_overrides(path: Path) -> dict[str, Any] | None:
    """The config's ``mqtt`` section without the files only the Pi has (TLS, password file)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # load_config says what is wrong, with the line
    mqtt = data.get("mqtt") if isinstance(data, dict) else None
    if not isinstance(mqtt, dict):
        return None
    return {"mqtt": {k: v for k, v in mqtt.items() if k not in ("tls", "password_file")}}


@dataclass(frozen=True)
class RoiChoice:
    """The ROI a command works with and where it came from.

    ``roi`` is ``None`` for the whole frame (no ``--roi``, no ``--config``, or a config with
    ``camera.roi: null``). ``frame_size`` is ``(camera.width, camera.height)`` when the ROI came
    from a config: the daemon resizes other frame sizes to it before cropping.
    """

    roi: Roi | None = None
    origin: str = ""
    frame_size: tuple[int, int] | None = None

    @property
    def given(self) -> bool:
        """Whether ``--roi`` or ``--config`` chose it (``False``: nothing was said)."""
        return bool(self.origin)

    def describe(self) -> str:
        if self.roi is None:
            return f"whole frame ({self.origin}: camera.roi is null)" if self.origin else "whole frame"
        return f"ROI {list(self.roi)} from {self.origin}"

    def check_frame(self, width: int, height: int, what: str) -> None:
        """Check frames of ``width`` × ``height`` (named ``what``) for this ROI; a ``DataError`` if unfit."""
        if self.frame_size is not None and (width, height) != self.frame_size:
            cw, ch = self.frame_size
            raise DataError(
                f"{what}: frames are {width}x{height}, but {self.origin} refers to {cw}x{ch} "
                f"frames (camera.width/height; the daemon resizes frames to that size before "
                f"cropping): give --roi for {width}x{height} frames"
            )
        if self.roi is not None:
            check_fits(self.roi, width, height, what, self.origin)


def check_fits(roi: Sequence[int], width: int, height: int, what: str, origin: str = "--roi", hint: str = "") -> None:
    """A ``DataError`` unless ``roi`` lies wholly inside a ``width`` × ``height`` image."""
    x, y, w, h = (int(v) for v in roi)
    if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > width or y + h > height:
        raise DataError(
            f"{what}: {origin} {list(roi)} does not fit inside its {width}x{height} frame "
            f"(needs x + w <= {width} and y + h <= {height}){hint}"
        )


def crop(image: np.ndarray, roi: Sequence[int] | None, what: str, origin: str = "--roi", hint: str = "") -> np.ndarray:
    """The daemon's crop of ``image`` (``edge.preprocess.crop_roi``), after checking the ROI fits."""
    if roi is None:
        return image
    check_fits(roi, image.shape[1], image.shape[0], what, origin, hint)
    return crop_roi(image, roi)


def load_roi(config: str | Path | None = None, roi: str | Sequence[int] | None = None) -> RoiChoice:
    """``--config`` and/or ``--roi`` → the ROI; ``--roi`` wins, a bad config is an error either way."""
    choice = RoiChoice()
    if config is not None:
        from edge.config import load_config

        path = Path(config)
        cfg = load_config(path, _station_overrides(path))
        cam = cfg.camera
        choice = RoiChoice(
            cam.roi,
            f"{path}: camera.roi",
            (int(cam.width), int(cam.height)),
        )
    if roi is not None:
        value = parse_roi(roi) if isinstance(roi, str) else tuple(int(v) for v in roi)
        if len(value) != 4:
            raise DataError(f"--roi {list(value)}: expected {ROI_HELP}")
        choice = RoiChoice(parse_roi(",".join(str(v) for v in value)), "--roi", None)
    return choice


def add_roi_args(parser: argparse.ArgumentParser, what: str) -> None:
    """``--config`` and ``--roi`` with one wording for every command."""
    g = parser.add_argument_group("camera ROI (what the daemon classifies)")
    g.add_argument("--config", metavar="STATION.yaml", help=f"the station's daemon config: its camera.roi is {what}")
    g.add_argument("--roi", metavar=ROI_HELP, help="x,y,w,h in frame pixels (overrides --config's camera.roi)")


def roi_from_args(args: argparse.Namespace) -> RoiChoice:
    """The parsed ``--config`` / ``--roi`` of a command (see :func:`add_roi_args`)."""
    return load_roi(getattr(args, "config", None), getattr(args, "roi", None))
