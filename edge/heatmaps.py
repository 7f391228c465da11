"""The heatmap worker: Grad-CAM for each alert, in the background, never in capture's way.

For each alert it writes, in ``heatmaps.dir``:

* ``<id>.png``          the frame the model saw (ROI), lossless;
* ``<id>.overlay.jpg``  one colour per flagged label (error blue, break green, length red);
* ``<id>.jet.jpg``      the JET overlay of the strongest flagged label's map;
* ``<id>.json``         sidecar: event id, frame, ts, labels, scores, per-label peaks, files.

``<id>`` is derived ONLY from the event id (sanitised to ``[A-Za-z0-9._-]``, no leading dot,
bounded length) — never from labels, frames or messages — and every path is checked to stay
inside the directory.

Alerts do not wait for heatmaps: the daemon asks :meth:`HeatmapWorker.submit` first, which
either accepts the job (bounded queue, non-blocking) and returns the path the overlay *will*
have, or refuses it (queue full, heatmaps disabled, directory unwritable) and returns ``None``.
The alert then carries that path (or ``null``) and is published at once; a heatmap is a few
hundred ms behind its alert. If writing later fails (disk full), the path in the alert points at
nothing; the failure is counted (``heatmaps_dropped``) and logged once per failure streak.
Heatmaps are dropped, alerts never are.

One directory, one daemon: :meth:`HeatmapWorker.prepare_dir` locks the directory (``flock`` on the
directory itself, nothing is created in it) for the worker's life; a second daemon on the same
directory would delete the first one's sets, so it stops at start-up naming the holder (exit 78).

Retention by size: after each save the oldest heatmap sets (by modification time) are deleted
until the daemon's own sets fit in ``max_mb``. Only sets the daemon wrote are ever deleted, since
``heatmaps.dir`` may be a folder with other files in it (a user's pictures, a model bundle): a set
is ours only when its sidecar ``<stem>.json`` is one this worker writes (``kind`` marker, or, for
sets written before the marker, exactly the sidecar keys), its ``event_id`` maps to ``<stem>``
and its ``files`` are exactly ``<stem>.png`` / ``.overlay.jpg`` / ``.jet.jpg``. Anything else (a
``holiday_1.png``, a ``settings_1.json``, a bundle's ``manifest.json``) is never counted and never
deleted; neither are the rare leftovers of a power cut in the middle of a save (no sidecar yet).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import SeamQCError
from .statelock import StateLock, StateLockedError, lock_dir

log = logging.getLogger(__name__)
LOCK_HINT = "two daemons must not share one heatmaps.dir (each would delete the other's heatmaps): give each its own"

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
SUFFIXES = (".png", ".overlay.jpg", ".jet.jpg", ".json")


def safe_name(event_id: str) -> str:
    """A file-name stem from an event id: ``[A-Za-z0-9._-]`` only, no leading dot, ≤ 96 chars
    (longer ids: their first 79 characters + a hash of the whole id)."""
    s = _SAFE.sub("_", str(event_id)).lstrip(".")
    if len(s) > 96:  # cut, but keep long ids distinct (a plain cut would give them all one name)
        digest = hashlib.sha256(str(event_id).encode("utf-8", "backslashreplace")).hexdigest()[:16]
        s = f"{s[:79]}-{digest}"
    return s or "event"


def paths_for(root: Path, event_id: str) -> dict[str, Path]:
    """The four files of one event, guaranteed inside ``root``."""
    stem = safe_name(event_id)
    root = Path(root).resolve()
    out = {
        "frame": root / f"{stem}.png",
        "overlay": root / f"{stem}.overlay.jpg",
        "jet": root / f"{stem}.jet.jpg",
        "sidecar": root / f"{stem}.json",
    }
    for p in out.values():
        if p.parent != root:  # belt and braces: sanitising already forbids separators
            raise ValueError(f"heatmap path {p} escapes {root}")
    return out


@dataclass(frozen=True)
class HeatmapJob:
    event_id: str
    frame: int
    ts: str
    labels: tuple[str, ...]
    scores: dict[str, float]
    image: np.ndarray = field(repr=False)


SIDECAR_KIND = "seam-qc heatmap"  # the marker that says "this set was written by the daemon"
# the keys of a sidecar written before the marker existed (accepted so that old sets still age out)
_LEGACY_KEYS = frozenset({"event_id", "frame", "ts", "labels", "scores", "peaks", "jet_label", "files"})
_SIDECAR_MAX_BYTES = 1 << 20  # a sidecar is a few hundred bytes; a bigger .json is not ours


def sidecar_files(stem: str) -> dict[str, str]:
    """The ``files`` entry a sidecar of ``stem`` carries (the three images of the set)."""
    return {"frame": f"{stem}.png", "overlay": f"{stem}.overlay.jpg", "jet": f"{stem}.jet.jpg"}


def is_own_sidecar(path: Path) -> bool:
    """True only for a sidecar this worker wrote: ownership is proven, never guessed from a suffix."""
    name = path.name
    if not name.endswith(".json"):
        return False
    stem = name[: -len(".json")]
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _SIDECAR_MAX_BYTES:
            return False
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or not isinstance(data.get("event_id"), str):
        return False
    if data.get("kind") != SIDECAR_KIND and not _LEGACY_KEYS <= set(data):
        return False
    return safe_name(data["event_id"]) == stem and data.get("files") == sidecar_files(stem)


class Retention:
    """Size-bounded store of the daemon's own heatmap sets in ``root``; deletes the oldest sets.

    Sets are tracked by stem; a stem is tracked only once its sidecar proves the daemon wrote it
    (see :func:`is_own_sidecar`), so files the daemon did not write are never counted nor deleted.
    """

    def __init__(self, root: Path, max_bytes: int, scan: bool = True) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.groups: dict[str, tuple[float, int]] = {}  # stem → (mtime, bytes)
        if scan:
            self.scan()

    def scan(self) -> None:
        """Find the sets of earlier runs (one sidecar read per ``*.json``)."""
        self.groups.clear()
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return
        for e in entries:
            if not e.name.endswith(".json") or not is_own_sidecar(Path(e.path)):
                continue
            stem = e.name[: -len(".json")]
            mtime, nbytes = 0.0, 0
            for suf in SUFFIXES:
                try:
                    st = os.lstat(self.root / f"{stem}{suf}")
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    mtime, nbytes = max(mtime, st.st_mtime), nbytes + st.st_size
            self.groups[stem] = (mtime, nbytes)

    @property
    def total(self) -> int:
        return sum(b for _, b in self.groups.values())

    def add(self, stem: str, nbytes: int) -> None:
        m, b = self.groups.get(stem, (0.0, 0))
        self.groups[stem] = (time.time(), b + nbytes)

    def enforce(self, keep: str | None = None) -> int:
        """Delete oldest sets until under the limit; returns how many sets were deleted."""
        removed = 0
        total = self.total
        for stem, (_, nbytes) in sorted(self.groups.items(), key=lambda kv: kv[1][0]):
            if total <= self.max_bytes:
                break
            if stem == keep:
                continue
            for suf in SUFFIXES:  # the sidecar (proof of ownership) goes last
                try:
                    (self.root / f"{stem}{suf}").unlink()
                except FileNotFoundError:
                    pass
                except OSError:
                    continue
            del self.groups[stem]
            total -= nbytes
            removed += 1
        return removed


MQTT_JPEG_MAX = 60 * 1024  # the ``/heatmap`` image: small enough for any broker and dashboard


def jpeg_within(img: np.ndarray, max_bytes: int = MQTT_JPEG_MAX) -> bytes | None:
    """``img`` as a JPEG of at most ``max_bytes``: lower quality first, then half the size; None if never."""
    img = np.ascontiguousarray(img)
    while min(img.shape[:2]) >= 8:
        for quality in (85, 70, 50, 35, 20):
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and buf.size <= max_bytes:
                return bytes(buf.tobytes())
        img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return None


def _write_image(path: Path, img: np.ndarray, params: list[int] | None = None) -> int:
    ext = path.suffix
    ok, buf = cv2.imencode(ext, img, params or [])
    if not ok:
        raise OSError(f"cannot encode {path.name}")
    return _write_bytes(path, buf.tobytes())


def _write_bytes(path: Path, data: bytes) -> int:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


# Heatmaps are for people, alerts are for the line: on a saturated CPU the scheduler should favour
# capture and classification. Linux applies nice per thread; threads the worker creates (the
# explainer's LiteRT pool, built lazily in this thread) inherit it. systemd's Nice= would lower the
# whole service, so the unit allows setpriority(2) explicitly (systemd/seam-qc.service: without
# CAP_SYS_NICE a process can only lower its own priority; ARCHITECTURE.md §9).
NICE_INCREMENT = 10
POLL_S = 0.2  # the worker's queue wait: how often it looks at the stop event while idle
FAIL_QUIET_S = 30.0  # heatmap writes must succeed this long after a failure before "works again"


def _lower_thread_priority(increment: int) -> bool:
    """Raise this thread's nice by ``increment``; False (logged once, with why) when refused."""
    if not hasattr(os, "setpriority"):  # not Linux/Unix: nothing to do, nothing to report
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
        return True
    except OSError as e:  # e.g. EPERM from a seccomp filter that denies @resources
        log.warning(
            "heatmaps: cannot lower the worker's priority (setpriority: %s); heatmaps compete with "
            "capture and classification for the CPU (allow setpriority in the service's "
            "SystemCallFilter)",
            e.strerror or e,
        )
        return False


class HeatmapWorker(threading.Thread):
    """Background Grad-CAM writer with a bounded queue (see module doc)."""

    def __init__(
        self,
        root: Path,
        stop: threading.Event,
        *,
        max_mb: float = 2048.0,
        queue_size: int = 8,
        explainer_factory: Callable[[], Any],
        overlay_labels: Callable[[np.ndarray, dict[str, Any]], np.ndarray],
        overlay_jet: Callable[[np.ndarray, Any], np.ndarray],
        labels_all: tuple[str, ...] = (),
        labels_only_flagged: bool = True,
        on_overlay: Callable[[str, bytes], Any] | None = None,
    ) -> None:
        super().__init__(name="heatmaps", daemon=True)
        # gets (event_id, overlay JPEG ≤ MQTT_JPEG_MAX) after each save, in this thread: the
        # MQTT ``/heatmap`` image is encoded and handed to paho here, never in the capture path
        self.on_overlay = on_overlay
        self._overlay_failed = False
        self.root = Path(root)
        self.stop_event = stop
        self.q: queue.Queue[HeatmapJob | None] = queue.Queue(maxsize=queue_size)  # None: close()'s wake-up
        self.factory = explainer_factory
        self.overlay_labels = overlay_labels
        self.overlay_jet = overlay_jet
        self.labels_all = tuple(name for name in labels_all if name != "good")
        self.only_flagged = labels_only_flagged
        # scanned in the worker thread (run): reading the sidecars of earlier runs must not delay start-up
        self.retention = Retention(self.root, int(max_mb * 1024 * 1024), scan=False)
        self.saved = 0
        self.dropped = 0
        self.deleted = 0
        self.ms: list[float] = []
        self.writable = True
        self._fail_logged = False
        self._full_logged = False
        self._last_fail = 0.0
        self.explainer: Any = None
        self._next_factory: Callable[[], Any] | None = None  # hot reload: set_explainer_factory
        self._factory_lock = threading.Lock()
        self.error = ""
        self.drain_s = 3.0
        self._closed = threading.Event()
        self._dir_lock: StateLock | None = None
        self.niced: bool | None = None  # set by the worker thread: did it lower its own priority?

    # ---- called from the daemon's thread
    def prepare_dir(self) -> bool:
        """Create and lock the directory; an unwritable one is logged once (alerts go on).

        Raises ``StateLockedError`` (exit 78) when another daemon holds the directory.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if self._dir_lock is None:
                self._dir_lock = lock_dir(self.root, f"heatmaps.dir {self.root}", LOCK_HINT)
            probe = self.root / ".seamqc-probe"
            probe.write_bytes(b"")
            probe.unlink()
            self.writable = True
        except OSError as e:
            self._fail(f"cannot write to {self.root} ({e.strerror or e})")
            self.writable = False
        return self.writable

    def _prepare_later(self) -> bool:
        """``prepare_dir`` once the daemon runs: a directory taken by another daemon meanwhile only
        drops heatmaps (logged once), it never stops alerts."""
        try:
            return self.prepare_dir()
        except StateLockedError as e:
            self._fail(str(e))
            return False

    def submit(
        self, event_id: str, frame: int, ts: str, labels: tuple[str, ...], scores: dict[str, float], image: np.ndarray
    ) -> str | None:
        """Queue a heatmap (never blocks); returns the overlay path it will have, or None if dropped."""
        if self._closed.is_set():
            self.dropped += 1
            return None
        if not self.writable and not self._prepare_later():
            self.dropped += 1
            return None
        try:
            paths = paths_for(self.root, event_id)
        except ValueError:
            self.dropped += 1
            return None
        caught_up = self.q.empty()
        try:
            self.q.put_nowait(HeatmapJob(event_id, frame, ts, tuple(labels), dict(scores), image))
        except queue.Full:
            self.dropped += 1
            if not self._full_logged:
                self._full_logged = True
                log.warning(
                    "heatmaps: worker is behind (queue of %d full): heatmaps are dropped and counted; alerts are not",
                    self.q.maxsize,
                )
            return None
        if caught_up:  # one line per backlog: a job slipping in while still behind does not end it
            self._full_logged = False
        return str(paths["overlay"])

    # ---- the worker thread
    def _fail(self, why: str) -> None:
        self.error = why
        self._last_fail = time.monotonic()
        if not self._fail_logged:
            self._fail_logged = True
            log.error("heatmaps: %s: heatmaps are dropped and counted until this is fixed; alerts continue", why)

    def close(self, drain_s: float) -> None:
        """No more jobs will come (the daemon flushed its last alerts): finish the queue for up to
        ``drain_s`` once the stop event is set, then drop (and count) the rest."""
        self.drain_s = drain_s
        self._closed.set()
        try:  # wake a worker waiting in get(): the stop does not wait out its POLL_S
            self.q.put_nowait(None)
        except queue.Full:  # busy with a full queue: it checks after the job in hand
            pass

    def run(self) -> None:
        try:
            self._run()
        finally:  # the directory is free for the next daemon once our last heatmap is written
            if self._dir_lock is not None:
                self._dir_lock.release()
                self._dir_lock = None

    def _run(self) -> None:
        self.niced = _lower_thread_priority(NICE_INCREMENT)
        self.retention.scan()
        deadline = None
        while True:
            if self.stop_event.is_set() and self._closed.is_set():
                deadline = deadline or time.monotonic() + self.drain_s
                if self.q.empty():
                    return
                if time.monotonic() > deadline:
                    self._drain_rest()
                    return
            try:
                job = self.q.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if job is None:  # close()'s wake-up
                continue
            try:
                self._process(job)
            except OSError as e:
                self.dropped += 1
                self.writable = False
                self._discard(job.event_id)
                self._fail(f"cannot write to {self.root} ({e.strerror or e})")
            except SeamQCError as e:  # the bundle's Grad-CAM files (checked at start): one line, no traceback
                self.dropped += 1
                self._fail(str(e))
            except Exception as e:  # noqa: BLE001 - a bad frame must not kill the worker
                self.dropped += 1
                log.exception("heatmaps: %s failed: %s", safe_name(job.event_id), e)

    def _discard(self, event_id: str) -> None:
        """Remove what a failed save left (a partial set, ``*.tmp``): on a full disk it would stay
        there, untracked by retention, and keep the disk full."""
        for p in paths_for(self.root, event_id).values():
            for q in (p, p.with_name(p.name + ".tmp")):
                try:
                    q.unlink(missing_ok=True)
                except OSError:
                    pass

    def _drain_rest(self) -> None:
        while True:
            try:
                if self.q.get_nowait() is not None:
                    self.dropped += 1
            except queue.Empty:
                return

    def _send_overlay(self, event_id: str, overlay: np.ndarray) -> None:
        """Hand the overlay to ``on_overlay``; a failure is logged once and never stops the worker."""
        try:
            data = jpeg_within(overlay)
            if data is not None and self.on_overlay is not None:
                self.on_overlay(event_id, data)
        except Exception as e:  # noqa: BLE001 - the files are written; the MQTT image is a bonus
            if not self._overlay_failed:
                self._overlay_failed = True
                log.warning("heatmaps: publishing the overlay of %s failed: %s (logged once)", event_id, e)

    def set_explainer_factory(self, factory: Callable[[], Any]) -> None:
        """Hot reload (edge.modelswap): the next job builds its explainer with ``factory``.

        Built in this thread, like the first one, so its LiteRT pool inherits the worker's nice; the
        job in progress finishes with the old explainer.
        """
        with self._factory_lock:
            self._next_factory = factory

    def _process(self, job: HeatmapJob) -> None:
        t0 = time.perf_counter()
        with self._factory_lock:
            nxt, self._next_factory = self._next_factory, None
        if nxt is not None:
            self.factory, self.explainer = nxt, None
        if self.explainer is None:
            self.explainer = self.factory()
        labels = list(job.labels) if self.only_flagged else list(self.labels_all)
        labels = labels or list(job.labels)
        maps = self.explainer.explain(job.image, labels)
        paths = paths_for(self.root, job.event_id)
        self.root.mkdir(parents=True, exist_ok=True)
        flagged = {lab: maps[lab] for lab in job.labels if lab in maps} or maps
        # each Heatmap carries its own opacity (strength = peak / the label's reference peak)
        ov = self.overlay_labels(job.image, flagged)
        best = max(flagged, key=lambda lab: job.scores.get(lab, 0.0)) if flagged else None
        jet = self.overlay_jet(job.image, flagged[best]) if best is not None else job.image
        nbytes = _write_image(paths["frame"], np.ascontiguousarray(job.image), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        nbytes += _write_image(paths["overlay"], ov, [cv2.IMWRITE_JPEG_QUALITY, 90])
        nbytes += _write_image(paths["jet"], jet, [cv2.IMWRITE_JPEG_QUALITY, 90])
        side = {
            "kind": SIDECAR_KIND,
            "event_id": job.event_id,
            "frame": job.frame,
            "ts": job.ts,
            "labels": list(job.labels),
            "scores": job.scores,
            "peaks": {lab: float(getattr(h, "peak", 0.0)) for lab, h in maps.items()},
            "jet_label": best,
            # what each map explains: "-length" is the negated logit (a 4 mm frame on a 2 mm line)
            "explained": {lab: ("-" if getattr(h, "sign", 1) < 0 else "") + lab for lab, h in maps.items()},
            "files": {k: p.name for k, p in paths.items() if k != "sidecar"},
        }
        nbytes += _write_bytes(paths["sidecar"], (json.dumps(side, indent=1) + "\n").encode())
        stem = safe_name(job.event_id)
        self.retention.add(stem, nbytes)
        self.deleted += self.retention.enforce(keep=stem)
        self.saved += 1
        if self.on_overlay is not None:
            self._send_overlay(job.event_id, ov)
        self.ms.append((time.perf_counter() - t0) * 1000)
        if len(self.ms) > 500:
            del self.ms[:250]
        self.writable = True
        # hysteresis: a disk that flaps between full and not (a save fits, the next does not) keeps
        # its one error line; "works again" only after FAIL_QUIET_S without a failure
        if self._fail_logged and time.monotonic() - self._last_fail > FAIL_QUIET_S:
            log.info("heatmaps: writing to %s works again", self.root)
            self._fail_logged = False
