"""Camera and line health from the frames already captured (pure: no threads, clock or I/O).

Every ``every_n_frames``-th ROI crop and the one just before it are shrunk to grey copies of at
most ``SMALL`` px on their long side (INTER_AREA) and measured: about 0.23 ms in all for a 256-px
ROI on the development machine (0.03 ms per copy, 0.13 ms for the phase correlation), so at the
default 1 frame in 10, 0.023 ms a frame: 2 % of its 1.06 ms int8 inference, less on a Pi, whose
inference is slower. The pixel work (``HealthProbe``) runs in the capture thread, which has
slack while the interpreter runs and whose OpenCV calls release the GIL, so the classifier thread
only feeds the finished numbers to the state machine (``HealthMonitor.observe``); nothing has a
thread of its own:

* sharpness: variance of the Laplacian divided by the grey variance, so that a change of light
  does not read as blur; ``blurred`` when it falls below ``blur_ratio`` × the baseline;
* exposure: the grey mean and the shares of pixels clipped to black (≤ 8) and white (≥ 247);
  ``dark`` below ``dark_ratio`` × the baseline mean or with more than ``clipped_share`` black,
  ``bright`` above ``bright_ratio`` × the baseline mean or with more than ``clipped_share`` white;
* featurelessness: the grey standard deviation; ``covered`` below ``covered_std`` (a hand, a cap
  or a dirty lens leaves no texture, whatever the light). A covered lens hides everything else,
  so it is reported alone;
* change and motion against the frame just before: ``change``, the mean absolute grey
  difference, ``frozen`` below ``frozen_diff`` (the same frame again: a stuck driver or a dead
  stream; a live sensor always adds noise); ``motion``, the shift of the view in ROI px per frame
  by phase correlation (light flicker and sensor noise do not move it, and blur or darkness do not
  hide it as they hide a difference), ``idle`` below ``idle_motion`` (the fabric does not move:
  the machine stopped). A frozen camera cannot show motion, so ``idle`` is not reported with it.

The baseline (median sharpness and mean) is learned from the samples of the first
``baseline_frames`` frames that are neither covered nor clipped; until it exists only the
absolute checks (clipping, covered, frozen, idle) apply. A condition is set once it is seen in
``hold_frames`` / ``every_n_frames`` consecutive samples (``frozen_frames`` / ``idle_frames`` for
those two; rounded up) and cleared after as many samples without it, so one odd frame neither
raises nor clears it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

CONDITIONS = ("blurred", "dark", "bright", "frozen", "covered", "idle")
SMALL = 128  # px, the long side of the measured grey copy
BLACK, WHITE = 8, 247  # grey levels counted as clipped
MOTION_MIN = 8  # px: a smaller grey copy has no motion (NaN), so never ``idle``


def grey_scale(shape: tuple[int, ...], small: int = SMALL) -> float:
    """The grey copy's size over the image's (≤ 1)."""
    return min(1.0, small / max(shape[0], shape[1]))


def shrink_grey(image: np.ndarray, small: int = SMALL) -> np.ndarray:
    """The grey copy that is measured: BGR (or grey) → at most ``small`` px on the long side, float32."""
    h, w = image.shape[:2]
    scale = grey_scale(image.shape, small)
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return image.astype(np.float32)


def measure(grey: np.ndarray, prev: np.ndarray | None, scale: float = 1.0) -> dict[str, float]:
    """The metrics of one grey copy against the frame before (``prev``, same size, or None: NaN).

    ``scale`` is the grey copy's size over the ROI's, so that ``motion`` is in ROI px per frame.
    OpenCV's reductions, not numpy's: on a 128-px copy ``cv2.meanStdDev`` takes 0.003 ms, ``ndarray.var`` 0.02 ms.
    """
    mean, std = (float(v[0][0]) for v in cv2.meanStdDev(grey))
    lap_std = float(cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F))[1][0][0])
    n = float(grey.size)
    change = motion = math.nan
    if prev is not None and prev.shape == grey.shape:
        change = float(cv2.mean(cv2.absdiff(grey, prev))[0])
        if min(grey.shape[:2]) >= MOTION_MIN:  # phase correlation needs a few pixels each way
            (dx, dy), _response = cv2.phaseCorrelate(prev, grey, _hanning(grey.shape[1], grey.shape[0]))
            motion = math.hypot(dx, dy) / scale
    return {
        "sharpness": lap_std * lap_std / max(std * std, 1.0),
        "mean": mean,
        "std": std,
        "clipped_dark": float(np.count_nonzero(grey <= BLACK)) / n,
        "clipped_bright": float(np.count_nonzero(grey >= WHITE)) / n,
        "change": change,
        "motion": motion,
    }


@functools.lru_cache(maxsize=4)
def _hanning(w: int, h: int) -> np.ndarray:
    return cv2.createHanningWindow((w, h), cv2.CV_32F)


class _Debounce:
    """A flag that turns on after ``hold`` consecutive raw hits and off after ``hold`` misses."""

    def __init__(self, hold: int) -> None:
        self.hold, self.on, self.run = max(1, hold), False, 0

    def feed(self, hit: bool) -> bool:
        self.run = self.run + 1 if hit != self.on else 0
        if self.run >= self.hold:
            self.on, self.run = hit, 0
        return self.on


class HealthProbe:
    """The pixel half of the checks: every n-th frame's metrics, against the frame just before it.

    Called with the capture sequence number of every frame, by one thread only (the capture
    thread, in the daemon); returns the metrics on every n-th frame and None on the others.
    """

    def __init__(self, every_n_frames: int = 10) -> None:
        self.n = max(1, int(every_n_frames))
        self._prev: np.ndarray | None = None  # the grey copy of the frame before the next sample
        self._prev_at = -1

    def __call__(self, idx: int, image: np.ndarray) -> dict[str, float] | None:
        due, before = idx % self.n == 0, (idx + 1) % self.n == 0
        if not (due or before):
            return None
        grey = shrink_grey(image)
        prev = self._prev if self._prev_at == idx - 1 else None
        if before:  # kept for the next sample's change and motion
            self._prev, self._prev_at = grey, idx
        if not due:
            return None
        return measure(grey, prev, grey_scale(image.shape))


class HealthMonitor:
    """Running health state of one camera: ``update(image)`` per frame (measures every n-th itself),
    or ``observe(metrics)`` with the metrics a ``HealthProbe`` made elsewhere (the daemon's way)."""

    def __init__(
        self,
        *,
        every_n_frames: int = 10,
        baseline_frames: int = 150,
        hold_frames: int = 15,
        blur_ratio: float = 0.4,
        dark_ratio: float = 0.5,
        bright_ratio: float = 1.6,
        clipped_share: float = 0.25,
        covered_std: float = 1.5,
        frozen_diff: float = 0.05,
        frozen_frames: int = 60,
        idle_motion: float = 0.5,
        idle_frames: int = 90,
    ) -> None:
        self.n = max(1, int(every_n_frames))
        self.baseline_frames = int(baseline_frames)
        self.blur_ratio, self.dark_ratio, self.bright_ratio = blur_ratio, dark_ratio, bright_ratio
        self.clipped_share, self.covered_std = clipped_share, covered_std
        self.frozen_diff, self.idle_motion = frozen_diff, idle_motion

        def samples(frames: int) -> int:
            return max(1, math.ceil(frames / self.n))

        self._flags = {c: _Debounce(samples(hold_frames)) for c in CONDITIONS}
        self._flags["frozen"] = _Debounce(samples(frozen_frames))
        self._flags["idle"] = _Debounce(samples(idle_frames))
        self.frames = 0
        self.samples = 0
        self.probe = HealthProbe(self.n)  # update()'s own; the daemon gives the capture thread another
        self._learn: list[tuple[float, float]] = []
        self.baseline: dict[str, float] | None = None
        self.metrics: dict[str, float] = {}
        self.conditions: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> HealthMonitor:
        """From the ``health:`` config section as a mapping (``enabled`` is the caller's business)."""
        return cls(**{k: v for k, v in settings.items() if k != "enabled"})

    @property
    def state(self) -> str:
        """``ok`` or the conditions joined by commas (for STATUS= and flat stats)."""
        return ",".join(self.conditions) or "ok"

    @property
    def still(self) -> bool:
        """The view does not change (idle machine or frozen camera): a standing event is no news."""
        return "idle" in self.conditions or "frozen" in self.conditions

    def update(self, image: np.ndarray) -> bool:
        """Count one frame and measure it when due. True when the set of conditions changed."""
        return self.observe(self.probe(self.frames, image))

    def new_probe(self) -> HealthProbe:
        """A probe with this monitor's cadence, for the thread that sees the pixels."""
        return HealthProbe(self.n)

    def observe(self, m: Mapping[str, float] | None) -> bool:
        """Count one frame; ``m``: its metrics when it was measured (a probe's result), else None.

        True when the set of conditions changed.
        """
        self.frames += 1
        if m is None:
            return False
        m = dict(m)
        self.samples += 1
        self.metrics = m
        raw = self._raw(m)
        if self.baseline is None:
            if not (raw["covered"] or raw["dark"] or raw["bright"]):
                self._learn.append((m["sharpness"], m["mean"]))
            if self.frames >= self.baseline_frames and self._learn:
                sharp, mean = np.median(np.asarray(self._learn), axis=0)
                self.baseline = {"sharpness": float(sharp), "mean": float(mean)}
                self._learn = []
        on = {c: self._flags[c].feed(raw[c]) for c in CONDITIONS}
        if on["covered"]:
            conds: tuple[str, ...] = ("covered",)
        else:
            conds = tuple(c for c in CONDITIONS if on[c] and not (c == "idle" and on["frozen"]))
        changed = conds != self.conditions
        self.conditions = conds
        return changed

    def _raw(self, m: Mapping[str, float]) -> dict[str, bool]:
        """This sample's unconfirmed conditions."""
        b = self.baseline
        motion = m["motion"]
        return {
            "blurred": b is not None and m["sharpness"] < self.blur_ratio * b["sharpness"],
            "dark": m["clipped_dark"] > self.clipped_share
            or (b is not None and m["mean"] < self.dark_ratio * b["mean"]),
            "bright": m["clipped_bright"] > self.clipped_share
            or (b is not None and m["mean"] > self.bright_ratio * b["mean"]),
            "frozen": m["change"] < self.frozen_diff,  # False for NaN (no frame before)
            "covered": m["std"] < self.covered_std,
            "idle": motion < self.idle_motion,
        }

    def payload(self) -> dict[str, Any]:
        """The ``health`` JSON (retained topic and ``stats``): state, conditions, metrics, baseline."""
        return {
            "state": self.state,
            "conditions": list(self.conditions),
            "metrics": {k: (None if math.isnan(v) else round(v, 4)) for k, v in self.metrics.items()},
            "baseline": None if self.baseline is None else {k: round(v, 4) for k, v in self.baseline.items()},
            "frames": self.frames,
        }
