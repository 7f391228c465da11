"""Per-frame scores → debounced alerts (pure: no threads, no clock, no I/O).

Flagging a frame
    ``error`` / ``break`` (and any other label but ``good``/``length``) are flagged when their
    probability reaches the label's threshold (bundle's calibrated thresholds, overridden per
    label by ``decision.thresholds``). ``length`` is flagged when the stitch length is *wrong*:
    with ``expected_length: 2mm`` a frame whose ``length`` probability is below the threshold is
    a 4 mm frame (wrong); with ``4mm`` the opposite; with ``any`` never. The *strength* of a flag
    is the probability for defects and, for a wrong length, the probability of the wrong length
    (``1 - p`` when 2 mm is expected), so "the best frame" is the most confident one.

Debounce (k of n)
    Labels are grouped into *tracks* — ``error`` and ``break`` share the ``defect`` track (a
    broken thread usually also looks like a stitching error: one defect, one alert, both labels),
    ``length`` is its own track (a wrong-length stretch is a different, long condition), any other
    label gets a track of its own. An event opens on a track when at least ``min_frames`` (k) of
    the last ``window`` (n) frames flag it, stays open while frames keep flagging it and closes
    after ``window`` consecutive non-flagged frames. The event id is assigned when it opens
    (``<prefix>-<counter>``; the daemon uses ``<station>-<boot uuid8>``), so it is unique and
    stable across MQTT retries (it is stored in the outbox with the alert).

When the alert is emitted (latency trade-off)
    The alert is emitted when the event *closes*, carrying the event's best frame (highest
    strength), so a defect passing the camera raises exactly one alert with its clearest view
    and heatmap. The cost is latency: the alert leaves ``window`` frames after the defect left
    the ROI (167 ms at 30 fps with the default n = 5) plus the time the defect was in view. A condition that
    never ends (a wrong stitch length for minutes) is not held back: after ``max_event_frames``
    frames the open event is emitted and a new event (new id) starts on the same track, so a
    persistent fault re-alerts at that period, except while the frame is ``idle`` (the machine
    stopped or the camera froze, ``edge.health``): the same view again is no news, so the event
    stays open and is emitted when the line moves again or the condition ends. ``cooldown_frames``
    suppresses re-opening a track for that many frames after an event closed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

NON_ALERT_LABELS = ("good",)
DEFAULT_TRACKS: tuple[tuple[str, tuple[str, ...]], ...] = (("defect", ("error", "break")), ("length", ("length",)))


@dataclass(frozen=True)
class Alert:
    """One debounced defect occurrence, carrying its best frame."""

    event_id: str
    track: str
    labels: tuple[str, ...]
    scores: dict[str, float]
    frame: int
    ts_wall: float
    first_frame: int
    last_frame: int
    strength: float
    image: Any = field(default=None, compare=False, repr=False)  # the best frame (opaque here)

    def payload(self, station: str, model_name: str, model_sha256: str, heatmap: str | None) -> dict[str, Any]:
        """The MQTT alert payload of ARCHITECTURE.md §6 (plus ``first_frame``/``last_frame``/``track``)."""
        return {
            "event_id": self.event_id,
            "station": station,
            "ts": iso_utc(self.ts_wall),
            "frame": self.frame,
            "labels": list(self.labels),
            "scores": {k: round(float(v), 4) for k, v in self.scores.items()},
            "heatmap": heatmap,
            "model": {"name": model_name, "sha256": model_sha256},
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "track": self.track,
        }


def iso_utc(ts: float) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z``."""
    import datetime as _dt

    d = _dt.datetime.fromtimestamp(ts, tz=_dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def frame_flags(scores: Mapping[str, float], thresholds: Mapping[str, float], expected_length: str) -> dict[str, float]:
    """Flagged labels of one frame → their strength (see module doc)."""
    out: dict[str, float] = {}
    for label, p in scores.items():
        p = float(p)
        if label in NON_ALERT_LABELS:
            continue
        t = float(thresholds.get(label, 0.5))
        if label == "length":
            if expected_length == "2mm" and p < t:
                out[label] = 1.0 - p
            elif expected_length == "4mm" and p >= t:
                out[label] = p
        elif p >= t:
            out[label] = p
    return out


def make_tracks(labels: Iterable[str]) -> dict[str, str]:
    """label → track name for the model's labels (unknown labels get a track of their own)."""
    out: dict[str, str] = {}
    for name, members in DEFAULT_TRACKS:
        for m in members:
            out[m] = name
    return {lab: out.get(lab, lab) for lab in labels if lab not in NON_ALERT_LABELS}


@dataclass
class _Event:
    event_id: str
    first_frame: int
    last_flag_frame: int
    frames: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    # (strength, seq, ts_wall, scores, flags, image)
    best: tuple[float, int, float, dict[str, float], dict[str, float], Any] | None = None


@dataclass
class _Track:
    history: deque[bool]
    event: _Event | None = None
    quiet: int = 0
    cooldown: int = 0


class Decider:
    """k-of-n debounce per track; ``update`` per frame returns the alerts that closed on it."""

    def __init__(
        self,
        labels: Sequence[str],
        thresholds: Mapping[str, float],
        *,
        expected_length: str = "any",
        min_frames: int = 2,
        window: int = 3,
        max_event_frames: int = 300,
        cooldown_frames: int = 0,
        id_prefix: str = "event",
    ):
        if not 1 <= min_frames <= window:
            raise ValueError(f"need 1 <= min_frames ({min_frames}) <= window ({window})")
        if expected_length not in ("2mm", "4mm", "any"):
            raise ValueError(f"expected_length {expected_length!r} must be 2mm, 4mm or any")
        self.labels = tuple(labels)
        self.thresholds = {lab: float(thresholds.get(lab, 0.5)) for lab in self.labels}
        self.expected_length = expected_length
        self.k, self.n = int(min_frames), int(window)
        self.max_event_frames = int(max_event_frames)
        self.cooldown_frames = int(cooldown_frames)
        self.id_prefix = id_prefix
        self.track_of = make_tracks(self.labels)
        self.tracks = {t: _Track(deque(maxlen=self.n)) for t in dict.fromkeys(self.track_of.values())}
        self._counter = 0
        self.events_opened = 0
        self.alerts_emitted = 0

    def _new_id(self) -> str:
        self._counter += 1
        return f"{self.id_prefix}-{self._counter:06d}"

    def update(
        self,
        seq: int,
        ts_wall: float,
        scores: Mapping[str, float] | Sequence[float],
        image: Any = None,
        *,
        idle: bool = False,
    ) -> list[Alert]:
        """Feed one frame's probabilities (dict, or a sequence in ``labels`` order).

        ``idle``: the view stands still (module doc): no re-alert at ``max_event_frames``.
        """
        if not isinstance(scores, Mapping):
            scores = {lab: float(s) for lab, s in zip(self.labels, scores)}
        flags = frame_flags(scores, self.thresholds, self.expected_length)
        out: list[Alert] = []
        for name, tr in self.tracks.items():
            tflags = {lab: s for lab, s in flags.items() if self.track_of.get(lab) == name}
            flagged = bool(tflags)
            tr.history.append(flagged)
            if tr.cooldown > 0:
                tr.cooldown -= 1
            ev = tr.event
            if ev is None:
                if flagged and tr.cooldown == 0 and sum(tr.history) >= self.k:
                    ev = tr.event = _Event(self._new_id(), seq, seq)
                    self.events_opened += 1
                    tr.quiet = 0
                else:
                    continue
            ev.frames += 1
            if flagged:
                ev.last_flag_frame = seq
                tr.quiet = 0
                for lab in tflags:
                    ev.counts[lab] = ev.counts.get(lab, 0) + 1
                strength = max(tflags.values())
                if ev.best is None or strength > ev.best[0]:
                    ev.best = (strength, seq, ts_wall, dict(scores), dict(tflags), image)
            else:
                tr.quiet += 1
            closed = None
            if tr.quiet >= self.n:
                closed = self._close(name, tr)
                tr.cooldown = self.cooldown_frames
            elif ev.frames >= self.max_event_frames and not idle:
                # emitted now; if the condition goes on, the k-of-n history (still full of flagged
                # frames) opens a new event on the next flagged frame
                closed = self._close(name, tr)
            if closed is not None:
                out.append(closed)
        return out

    def _close(self, name: str, tr: _Track) -> Alert | None:
        ev = tr.event
        tr.event = None
        tr.quiet = 0
        if ev is None or ev.best is None:  # a continuation that never saw a flagged frame
            return None
        strength, seq, ts, scores, bflags, image = ev.best
        # labels: the best frame's flags plus any label flagged in at least k frames of the event
        labels = [lab for lab in self.labels if lab in bflags or ev.counts.get(lab, 0) >= self.k]
        self.alerts_emitted += 1
        return Alert(
            event_id=ev.event_id,
            track=name,
            labels=tuple(labels),
            scores={lab: float(scores[lab]) for lab in self.labels if lab in scores},
            frame=seq,
            ts_wall=ts,
            first_frame=ev.first_frame,
            last_frame=ev.last_flag_frame,
            strength=float(strength),
            image=image,
        )

    def flush(self) -> list[Alert]:
        """Close every open event (at shutdown): nothing accepted is left behind."""
        out = []
        for name, tr in self.tracks.items():
            closed = self._close(name, tr)
            if closed is not None:
                out.append(closed)
        return out

    @property
    def open_events(self) -> int:
        return sum(1 for tr in self.tracks.values() if tr.event is not None)
