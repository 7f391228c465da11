"""Training samples kept on the station, operator feedback applied to them, samples out on MQTT.

What is kept (``samples:``), each as ``<stem>.png`` (the ROI crop: the model's view, lossless) and
``<stem>.json`` (sidecar, below) in ``samples.dir`` (default: ``samples/`` beside the outbox):

* ``flagged``: the best frame of every alert;
* ``uncertain``: a frame whose score for a label lies within ``uncertain_margin`` of its threshold,
  at most ``uncertain_per_h`` an hour (token bucket, bursts of 3);
* ``random_good``: a frame nothing flagged while no event is open, at random times (a Poisson
  process of ``random_good_per_h`` an hour, so samples do not lock onto a periodic pattern);
* ``missed_report``: on an operator's missed-defect report, the frames within ``missed_window_s``
  of its time, from a ring buffer of recent ROI crops (every ``ring_every_n``-th frame, at most
  ``ring_mb`` ≤ 20 MB, sized from the first crop).

Sidecar: ``kind`` (``seam-qc sample``: only such sets are ever counted or deleted), ``sample_id``,
``station``, ``ts``, ``frame``, ``event_id`` (alerts), ``reason``, ``scores``, ``model_labels``
(what the model flagged), ``labels`` (the current label: the model's, or the operator's once a
verdict or report came), ``verdict`` (null or ``{verdict, labels, by, ts}``), ``model``, ``file``.

Threads. The main thread (:class:`Sampler`) only decides and hands references to the worker:
a deque append for the ring, a few comparisons, a non-blocking ``put`` (full: counted in
``dropped``). The ``samples`` thread (:class:`SampleWorker`, nice +10 like the heatmaps) does every
encode, write, delete and publish, and is the only consumer of the feedback queue
(``edge.feedback``). A full or read-only disk drops samples (counted, logged once per failure
streak) and never touches alerts or the outbox: those live elsewhere and are never waited for.

Out (``samples.mqtt``, MQTT 5): one sample at a time on ``<prefix>/<station>/sample`` (QoS 1), PNG
bytes with user properties ``sample_id``, ``reason`` and ``sample`` (the sidecar as JSON), only
while no alert is waiting or in flight (``Publisher.sample``): alerts first. Unpublished samples are
found again in the folder after a restart; beyond ``mqtt_backlog`` the oldest are not published
(counted; they stay on disk). A verdict that arrives after a sample was published publishes it
again with the verdict (a collector keeps the latest per ``sample_id``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .decide import frame_flags, iso_utc
from .feedback import LOG_EVERY_S, FeedbackInbox, Missed, Verdict
from .heatmaps import FAIL_QUIET_S, _lower_thread_priority, safe_name
from .logfmt import event
from .statelock import StateLock, StateLockedError, lock_dir

log = logging.getLogger(__name__)
SAMPLE_KIND = "seam-qc sample"
REASONS = ("flagged", "uncertain", "random_good", "missed_report")
NICE_INCREMENT = 10
LOCK_HINT = "two daemons must not share one samples.dir (each would delete the other's samples): give each its own"
KNOWN_EVENTS = 10_000  # alert ids remembered for verdicts (besides the kept samples' own)
FEEDBACK_PER_LOOP = 64  # feedback handled between two sample writes
SAMPLE_ACK_S = 30.0  # a sample not acknowledged within this is offered again
_SIDECAR_MAX_BYTES = 1 << 20
# zlib level 1 and the UP filter: ~2.5× less CPU than level 3 with libpng's adaptive filters (a 256×256
# crop: 1.9 vs 5.2 ms on the bench's video, 2.5 vs 5.3 ms on synthetic seams) for about the same size
# (-0 to +5 %); the encode is nearly all of a sample's cost, which the capture path pays on 2 busy cores
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
SIDECARS_CACHED = 64  # the sidecars last written or read, kept so that publishing reads each once at most


@dataclass(frozen=True)
class Sample:
    """One frame to keep (made in the main thread; the image is the capture's, never written to)."""

    sample_id: str
    reason: str
    frame: int
    ts_wall: float
    scores: dict[str, float]
    model_labels: tuple[str, ...]
    labels: tuple[str, ...]
    image: np.ndarray = field(repr=False)
    event_id: str | None = None
    verdict: dict[str, Any] | None = None


class RateLimit:
    """Token bucket: at most ``per_h`` an hour, in bursts of at most ``burst``."""

    def __init__(self, per_h: float, burst: float = 3.0) -> None:
        self.rate = per_h / 3600.0
        self.burst = burst if per_h > 0 else 0.0
        self.tokens = min(1.0, self.burst)
        self.at: float | None = None

    def take(self, now: float) -> bool:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class RingFrame:
    seq: int
    ts_wall: float
    image: np.ndarray = field(repr=False)
    scores: dict[str, float] = field(repr=False)


class RingBuffer:
    """Recent ROI crops (references, no copies: capture makes a new array per frame), bounded in bytes.

    Written by the main thread, read by the samples worker; one lock, held for an append or a copy.
    """

    def __init__(self, max_bytes: int, every_n: int = 1) -> None:
        self.max_bytes = max_bytes
        self.every_n = max(1, every_n)
        self._d: deque[RingFrame] | None = None  # sized from the first crop
        self._lock = threading.Lock()

    def push(self, seq: int, ts_wall: float, image: np.ndarray, scores: dict[str, float]) -> None:
        if self.max_bytes <= 0 or seq % self.every_n:
            return
        if self._d is None:
            self._d = deque(maxlen=max(1, self.max_bytes // max(1, int(image.nbytes))))
        with self._lock:
            self._d.append(RingFrame(seq, ts_wall, image, scores))

    def __len__(self) -> int:
        return len(self._d) if self._d is not None else 0

    @property
    def capacity(self) -> int:
        return self._d.maxlen or 0 if self._d is not None else 0

    def around(self, ts: float, window_s: float, limit: int) -> list[RingFrame]:
        """The frames within ``window_s`` of ``ts``, the closest ``limit`` of them, in time order."""
        if self._d is None:
            return []
        with self._lock:
            frames = list(self._d)
        near = [f for f in frames if abs(f.ts_wall - ts) <= window_s]
        near.sort(key=lambda f: abs(f.ts_wall - ts))
        return sorted(near[:limit], key=lambda f: f.seq)

    def span(self) -> tuple[float, float] | None:
        """(oldest, newest) wall time held, for the log."""
        if not self._d:
            return None
        with self._lock:
            return (self._d[0].ts_wall, self._d[-1].ts_wall) if self._d else None


class Sampler:
    """The main thread's side: which frames to keep. Cheap: comparisons, a deque append, a put."""

    def __init__(
        self,
        worker: SampleWorker,
        *,
        station: str,
        boot: str,
        thresholds: Mapping[str, float],
        expected_length: str,
        uncertain_margin: float,
        uncertain_per_h: float,
        random_good_per_h: float,
        ring: RingBuffer | None,
        rng: random.Random | None = None,
    ) -> None:
        self.worker = worker
        self.prefix = f"{station}-{boot}"
        self.thresholds = thresholds  # the daemon's dict, updated in place on a hot reload
        self.expected_length = expected_length
        self.margin = uncertain_margin
        self.uncertain = RateLimit(uncertain_per_h)
        self.good_rate = random_good_per_h / 3600.0
        self.rng = rng or random.Random()
        self.next_good: float | None = None
        self.ring = ring
        # the labels whose threshold decides a flag (length only when a length is expected)
        self.watched = [
            lab for lab in self.thresholds if lab != "good" and (lab != "length" or expected_length != "any")
        ]

    def _id(self, frame: int, reason: str) -> str:
        return f"{self.prefix}-{frame:08d}-{reason}"

    def observe(
        self, seq: int, ts_mono: float, ts_wall: float, image: np.ndarray, scores: dict[str, float], quiet: bool
    ) -> None:
        """One classified frame; ``quiet``: no event open (a good frame may be a random good sample)."""
        if self.ring is not None:
            self.ring.push(seq, ts_wall, image, scores)
        if self.margin > 0 and any(
            abs(scores.get(lab, 0.0) - self.thresholds[lab]) <= self.margin for lab in self.watched
        ):
            if self.uncertain.take(ts_mono):
                self._keep(seq, ts_wall, image, scores, "uncertain")
            return
        if self.good_rate <= 0 or not quiet:
            return
        if self.next_good is None:
            self.next_good = ts_mono + self.rng.expovariate(self.good_rate)
        if ts_mono < self.next_good:
            return
        if frame_flags(scores, self.thresholds, self.expected_length):
            return
        self.next_good = ts_mono + self.rng.expovariate(self.good_rate)
        self._keep(seq, ts_wall, image, scores, "random_good")

    def _keep(self, seq: int, ts_wall: float, image: np.ndarray, scores: dict[str, float], reason: str) -> None:
        flagged = tuple(frame_flags(scores, self.thresholds, self.expected_length))
        self.worker.submit(Sample(self._id(seq, reason), reason, seq, ts_wall, dict(scores), flagged, flagged, image))

    def alert(
        self, event_id: str, frame: int, ts_wall: float, labels: tuple[str, ...], scores: dict[str, float], image: Any
    ) -> None:
        """The best frame of an alert (``flagged``)."""
        if image is None:
            return
        self.worker.submit(
            Sample(self._id(frame, "flagged"), "flagged", frame, ts_wall, dict(scores), labels, labels, image, event_id)
        )


def _atomic_write(path: Path, data: bytes) -> int:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    return len(data)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """A sidecar this daemon wrote (``kind`` marker, stem = its sample id), else None."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _SIDECAR_MAX_BYTES:
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") != SAMPLE_KIND or not isinstance(data.get("sample_id"), str):
        return None
    stem = path.name[: -len(".json")]
    if safe_name(data["sample_id"]) != stem or data.get("file") != f"{stem}.png":
        return None
    return data


class SampleStore:
    """The samples folder: writes, verdicts, and size-bounded retention (oldest first).

    Only sets whose sidecar proves the daemon wrote them are counted or deleted. Used by the
    samples worker's thread only.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.items: OrderedDict[str, int] = OrderedDict()  # stem → bytes, oldest first
        self.by_event: dict[str, str] = {}  # event_id → stem of its flagged sample
        self._event_of: dict[str, str] = {}  # the reverse, to forget a deleted sample's event
        self.unpublished: list[str] = []  # stems found unpublished by scan, oldest first
        self.total = 0  # sum of items' bytes, kept as they change (a full folder holds thousands)
        # the sidecars this thread last wrote or read (only this thread writes them): publishing a
        # sample and marking it published then read nothing back
        self._sidecars: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def scan(self) -> None:
        """Find the samples of earlier runs (oldest first by modification time)."""
        found: list[tuple[float, str, int, dict[str, Any]]] = []
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return
        for e in entries:
            if not e.name.endswith(".json"):
                continue
            data = read_sidecar(Path(e.path))
            if data is None:
                continue
            stem = e.name[: -len(".json")]
            try:
                st_png, st_json = os.stat(self.root / f"{stem}.png"), os.stat(e.path)
            except OSError:
                continue
            found.append((st_json.st_mtime, stem, st_png.st_size + st_json.st_size, data))
        found.sort()
        self.items.clear()
        self.by_event.clear()
        self._event_of.clear()
        self.unpublished = []
        self._sidecars.clear()
        for _, stem, nbytes, data in found:
            self.items[stem] = nbytes
            if data.get("event_id"):
                self.by_event[str(data["event_id"])] = stem
                self._event_of[stem] = str(data["event_id"])
            if data.get("published") is False:
                self.unpublished.append(stem)
        self.total = sum(self.items.values())

    def save(self, s: Sample, station: str, model: dict[str, Any]) -> str:
        """Write the PNG, then the sidecar (its proof of ownership); returns the stem."""
        self.root.mkdir(parents=True, exist_ok=True)
        stem = safe_name(s.sample_id)
        ok, png = cv2.imencode(".png", np.ascontiguousarray(s.image), PNG_PARAMS)
        if not ok:
            raise ValueError("PNG encoding failed")
        side = {
            "kind": SAMPLE_KIND,
            "sample_id": s.sample_id,
            "station": station,
            "ts": iso_utc(s.ts_wall),
            "frame": s.frame,
            "event_id": s.event_id,
            "reason": s.reason,
            "scores": {k: round(float(v), 4) for k, v in s.scores.items()},
            "model_labels": list(s.model_labels),
            "labels": list(s.labels),
            "verdict": s.verdict,
            "model": model,
            "file": f"{stem}.png",
            "published": False,
        }
        nbytes = _atomic_write(self.root / f"{stem}.png", png.tobytes())
        nbytes += _atomic_write(self.root / f"{stem}.json", _dump(side))
        self.total += nbytes - self.items.pop(stem, 0)
        self.items[stem] = nbytes
        self._remember(stem, side)
        if s.event_id:
            self.by_event[s.event_id] = stem
            self._event_of[stem] = s.event_id
        return stem

    def discard(self, sample_id: str) -> None:
        """Remove what a failed save left (on a full disk it would stay, untracked)."""
        stem = safe_name(sample_id)
        self._sidecars.pop(stem, None)
        for suf in (".png", ".json", ".png.tmp", ".json.tmp"):
            try:
                (self.root / f"{stem}{suf}").unlink(missing_ok=True)
            except OSError:
                pass

    def _remember(self, stem: str, side: dict[str, Any]) -> None:
        self._sidecars[stem] = side
        self._sidecars.move_to_end(stem)
        if len(self._sidecars) > SIDECARS_CACHED:
            self._sidecars.popitem(last=False)

    def sidecar(self, stem: str) -> dict[str, Any] | None:
        """A sample's sidecar (a copy: the caller may change it); None when the sample is gone."""
        side = self._sidecars.get(stem)
        if side is None:
            side = read_sidecar(self.root / f"{stem}.json")
            if side is None:
                return None
            if stem in self.items:  # read for publishing: marking it published then reads nothing
                self._remember(stem, side)
            return dict(side)
        if stem not in self.items:  # deleted by retention or discarded since
            del self._sidecars[stem]
            return None
        return dict(side)

    def update(self, stem: str, **fields: Any) -> dict[str, Any] | None:
        """Rewrite a sidecar with ``fields`` changed (atomic); None when the sample is gone."""
        cached = stem in self._sidecars
        data = self.sidecar(stem)
        if data is None or (cached and not (self.root / f"{stem}.json").is_file()):  # deleted meanwhile
            self._sidecars.pop(stem, None)
            return None
        data.update(fields)
        _atomic_write(self.root / f"{stem}.json", _dump(data))
        if stem in self._sidecars:
            self._remember(stem, data)
        return dict(data)

    def enforce(self, keep: str | None = None) -> int:
        """Delete the oldest samples until the folder's own samples fit ``max_bytes``."""
        total = self.total
        victims: list[str] = []  # chosen first: a full folder holds thousands, only the oldest few go
        for stem, nbytes in self.items.items():
            if total <= self.max_bytes:
                break
            if stem != keep:
                victims.append(stem)
                total -= nbytes
        for stem in victims:
            for suf in (".png", ".json"):  # the sidecar (proof of ownership) goes last
                try:
                    (self.root / f"{stem}{suf}").unlink(missing_ok=True)
                except OSError:
                    pass
            self.total -= self.items.pop(stem)
            self._sidecars.pop(stem, None)
            ev = self._event_of.pop(stem, None)
            if ev is not None and self.by_event.get(ev) == stem:
                del self.by_event[ev]
        return len(victims)


def _dump(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class SampleWorker(threading.Thread):
    """The ``samples`` thread: writes samples, applies feedback, publishes samples (see module doc).

    ``root`` None: samples are off, and the worker only answers feedback (verdicts are logged).
    ``publish``: ``Publisher.sample`` (or None): returns an in-flight handle, or None when the
    sample must wait (alerts pending, offline, MQTT 3.1.1).
    """

    def __init__(
        self,
        root: Path | None,
        stop: threading.Event,
        *,
        station: str,
        model: dict[str, Any],
        max_mb: float = 512.0,
        queue_size: int = 16,
        inbox: FeedbackInbox | None = None,
        ring: RingBuffer | None = None,
        missed_window_s: float = 2.0,
        missed_max_frames: int = 20,
        publish: Callable[[dict[str, Any], bytes], Any] | None = None,
        backlog_max: int = 1000,
    ) -> None:
        super().__init__(name="samples", daemon=True)
        self.root = Path(root) if root is not None else None
        self.stop_event = stop
        self.station = station
        self.model = model
        self.store = SampleStore(self.root, int(max_mb * 1024 * 1024)) if self.root is not None else None
        self.q: queue.Queue[Sample] = queue.Queue(maxsize=queue_size)
        self.inbox = inbox
        self.ring = ring
        self.missed_window_s = missed_window_s
        self.missed_max_frames = missed_max_frames
        self.publish = publish
        self.backlog_max = backlog_max
        self._known: OrderedDict[str, None] = OrderedDict()  # alert ids (main thread adds, under the lock)
        self._known_lock = threading.Lock()
        self._backlog: deque[str] = deque()  # stems to publish, oldest first
        self._sending: tuple[str, Any, float] | None = None  # (stem, MQTTMessageInfo, since)
        self._stale: set[str] = set()  # in flight when a verdict changed it: not "published" on its PUBACK
        # counters: one writer each (``dropped`` by submit's caller and this thread: ints, GIL)
        self.saved = 0
        self.dropped = 0
        self.deleted = 0
        self.verdicts = 0
        self.missed = 0
        self.unknown = 0
        self.published = 0
        self.publish_dropped = 0
        self.writable = True
        self.bytes = 0
        self._closed = threading.Event()
        self.drain_s = 3.0
        self._dir_lock: StateLock | None = None
        self._fail_logged = False
        self._full_logged = False
        self._last_fail = 0.0
        self._unknown_said: float | None = None
        self._unknown_unsaid = 0

    # ---- the daemon's thread
    def prepare_dir(self) -> bool:
        """Create and lock the folder; an unwritable one is logged once (alerts go on).

        Raises ``StateLockedError`` (exit 78) when another daemon holds it.
        """
        if self.root is None:
            return False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if self._dir_lock is None:
                self._dir_lock = lock_dir(self.root, f"samples.dir {self.root}", LOCK_HINT)
            probe = self.root / ".seamqc-probe"
            probe.write_bytes(b"")
            probe.unlink()
            self.writable = True
        except StateLockedError:
            raise
        except OSError as e:
            self._fail(f"cannot write to {self.root} ({e.strerror or e})")
            self.writable = False
        return self.writable

    def note_alert(self, event_id: str) -> None:
        """Remember an alert id, so that a verdict on it is not 'unknown' (bounded)."""
        with self._known_lock:
            self._known[event_id] = None
            if len(self._known) > KNOWN_EVENTS:
                self._known.popitem(last=False)

    def submit(self, sample: Sample) -> bool:
        """Queue a sample (never blocks); False when dropped (samples off, closed, queue full)."""
        if self.store is None or self._closed.is_set():
            return False
        if sample.reason in ("uncertain", "random_good") and self.q.qsize() * 2 >= self.q.maxsize:
            self.dropped += 1  # the second half of the queue is kept for alerts' frames and reports
            return False
        try:
            self.q.put_nowait(sample)
        except queue.Full:
            self.dropped += 1
            if not self._full_logged:
                self._full_logged = True
                log.warning(
                    "samples: writer is behind (queue of %d full): samples are dropped and counted", self.q.maxsize
                )
            return False
        return True

    def close(self, drain_s: float) -> None:
        """No more samples will come: write the queue for up to ``drain_s`` once stop is set."""
        self.drain_s = drain_s
        self._closed.set()

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    # ---- the worker thread
    def run(self) -> None:
        try:
            _lower_thread_priority(NICE_INCREMENT)
            if self.store is not None:
                self.store.scan()
                self.bytes = self.store.total
                if self.publish is not None:
                    self._backlog.extend(self.store.unpublished)
                    self._cap_backlog()
            self._run()
        finally:
            if self._dir_lock is not None:
                self._dir_lock.release()
                self._dir_lock = None

    def _run(self) -> None:
        deadline = None
        while True:
            if self.stop_event.is_set() and self._closed.is_set():
                deadline = deadline or time.monotonic() + self.drain_s
                if self.q.empty() or time.monotonic() > deadline:
                    self.dropped += self.q.qsize()
                    return
            try:
                job = self.q.get(timeout=0.2)
            except queue.Empty:
                job = None
            if job is not None:
                self._save(job)
            self._feedback()
            if self.publish is not None and not self.stop_event.is_set():
                self._publish_step()

    def _fail(self, why: str) -> None:
        self._last_fail = time.monotonic()
        if not self._fail_logged:
            self._fail_logged = True
            log.error("samples: %s: samples are dropped and counted until this is fixed; alerts continue", why)

    def _save(self, s: Sample) -> str | None:
        store = self.store
        if store is None:
            return None
        if not self.writable and not self.prepare_dir_later():
            self.dropped += 1
            return None
        try:
            stem = store.save(s, self.station, self.model)
        except OSError as e:
            self.dropped += 1
            self.writable = False
            store.discard(s.sample_id)
            self._fail(f"cannot write to {store.root} ({e.strerror or e})")
            return None
        except Exception as e:  # noqa: BLE001 - one bad frame must not kill the worker
            self.dropped += 1
            store.discard(s.sample_id)
            log.exception("samples: %s failed: %s", s.sample_id, e)
            return None
        self.saved += 1
        self.deleted += store.enforce(keep=stem)
        self.bytes = store.total
        if self.q.empty():
            self._full_logged = False
        if self._fail_logged and time.monotonic() - self._last_fail > FAIL_QUIET_S:
            log.info("samples: writing to %s works again", store.root)
            self._fail_logged = False
        self._queue_publish(stem)
        return stem

    def prepare_dir_later(self) -> bool:
        """Try the folder again (a disk that was full may have room now), at most every FAIL_QUIET_S."""
        if time.monotonic() - self._last_fail < FAIL_QUIET_S:
            return False
        try:
            return self.prepare_dir()
        except StateLockedError as e:
            self._fail(str(e))
            return False

    # ---- feedback
    def _feedback(self) -> None:
        if self.inbox is None:
            return
        self.inbox.tick()  # the flood breaker's timer: this loop waits at most 0.2 s
        for _ in range(FEEDBACK_PER_LOOP):
            fb = self.inbox.get(0)
            if fb is None:
                return
            try:
                if isinstance(fb, Verdict):
                    self._verdict(fb)
                else:
                    self._missed(fb)
            except OSError as e:
                self._fail(f"cannot update a sample in {self.root} ({e.strerror or e})")
            except Exception as e:  # noqa: BLE001 - feedback must never kill the worker
                log.exception("feedback: handling %r failed: %s", fb, e)

    def _verdict(self, fb: Verdict) -> None:
        store = self.store
        stem = store.by_event.get(fb.event_id) if store is not None else None
        with self._known_lock:
            known = fb.event_id in self._known
        if stem is None and not known:
            self.unknown += 1
            self._say_unknown(fb.event_id)
            return
        self.verdicts += 1
        data = store.sidecar(stem) if store is not None and stem is not None else None
        if fb.labels is not None:
            labels = [x for x in fb.labels if x != "good"]
        elif fb.verdict == "confirmed":
            labels = list(data["model_labels"]) if data else []
        else:
            labels = []
        verdict = {"verdict": fb.verdict, "labels": labels, "by": fb.by, "ts": _now_iso()}
        if store is not None and stem is not None and data is not None:
            # in flight now: the copy on its way lacks the verdict, so it goes again after its PUBACK
            in_flight = self._sending is not None and self._sending[0] == stem
            was_published = data.get("published") is True or in_flight
            store.update(stem, verdict=verdict, labels=labels, published=False)
            if in_flight:
                self._stale.add(stem)
            if was_published:
                self._queue_publish(stem)
        log.info(
            "feedback: %s on %s%s → labels %s%s",
            fb.verdict,
            fb.event_id,
            f" by {fb.by}" if fb.by else "",
            labels or ["good"],
            "" if data is not None else " (no sample kept)",
            extra=event(
                "feedback",
                kind="verdict",
                event_id=fb.event_id,
                verdict=fb.verdict,
                labels=labels,
                by=fb.by,
                sample=data["sample_id"] if data else None,
            ),
        )

    def _missed(self, fb: Missed) -> None:
        self.missed += 1
        ts = fb.missed.epoch
        labels = tuple(x for x in fb.missed.labels if x != "good")
        frames = self.ring.around(ts, self.missed_window_s, self.missed_max_frames) if self.ring is not None else []
        kept = []
        verdict = {"verdict": "missed", "labels": list(labels), "by": fb.by, "ts": _now_iso()}
        prefix = f"{self.station}-missed-{int(ts * 1000)}"
        for f in frames:
            s = Sample(
                f"{prefix}-{f.seq:08d}",
                "missed_report",
                f.seq,
                f.ts_wall,
                dict(f.scores),
                (),
                labels,
                f.image,
                None,
                verdict,
            )
            if self._save(s) is not None:
                kept.append(s.sample_id)
        span = self.ring.span() if self.ring is not None else None
        held = f"the buffer holds {iso_utc(span[0])} to {iso_utc(span[1])}" if span else "the buffer is empty"
        log.info(
            "feedback: missed %s at %s%s: %d frame(s) kept%s",
            ",".join(labels) or "defect",
            fb.missed.ts,
            f" by {fb.by}" if fb.by else "",
            len(kept),
            "" if kept else f" ({'samples are off' if self.store is None else held})",
            extra=event("feedback", kind="missed", missed_ts=fb.missed.ts, labels=list(labels), by=fb.by, samples=kept),
        )

    def _say_unknown(self, event_id: str) -> None:
        now = time.monotonic()
        self._unknown_unsaid += 1
        if self._unknown_said is not None and now - self._unknown_said < LOG_EVERY_S:
            return
        more = f" (+{self._unknown_unsaid - 1} more since the last such line)" if self._unknown_unsaid > 1 else ""
        self._unknown_said, self._unknown_unsaid = now, 0
        log.warning(
            "feedback: unknown event_id %r (not an alert of this station that is remembered)%s",
            event_id[:96],
            more,
            extra=event("feedback", kind="unknown", event_id=event_id[:256]),
        )

    # ---- publishing
    def _queue_publish(self, stem: str) -> None:
        if self.publish is None:
            return
        self._backlog.append(stem)
        self._cap_backlog()

    def _cap_backlog(self) -> None:
        while len(self._backlog) > self.backlog_max:
            self._backlog.popleft()
            self.publish_dropped += 1

    def _publish_step(self) -> None:
        """At most one sample in flight; the next one only when the publisher says alerts are clear."""
        assert self.publish is not None and self.store is not None
        if self._sending is not None:
            stem, info, since = self._sending
            if info.is_published():
                self._sending = None
                self.published += 1
                if stem in self._stale:
                    self._stale.discard(stem)  # queued again by the verdict, with it
                else:
                    try:
                        self.store.update(stem, published=True)
                    except OSError:
                        pass  # it goes out again after a restart: a duplicate the collector drops
            elif time.monotonic() - since > SAMPLE_ACK_S:
                self._sending = None
                self._backlog.appendleft(stem)
            else:
                return
        while self._backlog:
            stem = self._backlog[0]
            data = self.store.sidecar(stem)
            try:
                png = (self.root / f"{stem}.png").read_bytes() if data is not None and self.root else None
            except OSError:
                png = None
            if data is None or png is None:  # deleted by retention meanwhile
                self._backlog.popleft()
                continue
            if data.get("published") is True:
                self._backlog.popleft()
                continue
            meta = {k: v for k, v in data.items() if k not in ("kind", "file", "published")}
            info = self.publish(meta, png)
            if info is None:
                return  # not now (alerts first, offline): try again on the next loop
            if info == "oversize":
                self._backlog.popleft()
                self.publish_dropped += 1
                continue
            self._backlog.popleft()
            self._sending = (stem, info, time.monotonic())
            return
