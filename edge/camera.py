"""Frame capture: USB/V4L2, video files and RTSP through OpenCV, the Pi camera through picamera2.

A capture thread reads frames, normalises them (corrupt frames skipped, frames of another size
than configured resized to it — both counted and logged once), crops the ROI (a copy, so the
driver's buffer is released at once) and puts a frozen :class:`Frame` into a bounded queue.
Live sources never wait for the consumer: when the queue is full the OLDEST frame is dropped and
counted (the newest frame is the one worth classifying). A file replayed as fast as possible
(``realtime: false``) is not live, so there capture waits for room instead of dropping.

Camera loss (device missing at start, unplugged, stream ending on a live source) is not fatal:
the state goes to ``lost``, it is logged, and the source is reopened with exponential backoff
(``reconnect_min_s`` … ``reconnect_max_s``) until it returns. Settings that can never work
(unknown source, a video file that does not exist or does not decode, picamera2 not installed)
raise :class:`CameraError` (exit 78) at start; a video file that stops decoding while running
(no frame from a fresh open) ends capture with that error in ``Capture.error`` (the daemon exits
78 with it) instead of being retried or looped over for ever.

picamera2 is imported only inside :class:`PicameraSource`. Its ``RGB888`` format is BGR in
memory, so the main stream needs no conversion. When the ISP's low-resolution ``lores`` stream
can deliver the model's resolution (it scales the whole sensor image, in hardware), capture uses
it instead: lores is YUV420 on real Pis, so it is converted (I420 → BGR) and the ROI is scaled
to lores coordinates.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .errors import CameraError
from .preprocess import crop_roi

if TYPE_CHECKING:  # the config module is only needed for type hints
    from .config import CameraConfig

log = logging.getLogger(__name__)
# FFmpeg's own stderr lines ("moov atom not found") would break our one-line errors and repeat at
# every retry; our log says what failed. Read at the first VideoCapture; a user's setting wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
READ_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 5.0  # opening a video file and decoding one frame takes milliseconds
MAX_WAIT_S = 3600.0  # longer waits overflow threading timeouts (1e12 s) and help nobody


@dataclass(frozen=True)
class Frame:
    """One captured frame (ROI already applied); ``image`` is read-only.

    ``tensor`` is the model input made from ``image`` by the capture thread's ``prepare``
    (``None`` without one, or when preparing failed: the consumer then starts from ``image``).
    ``prepared_by`` is that ``prepare``: after a model swap (``Capture.prepare`` replaced), the
    consumer tells frames prepared for the old model's input from those for the new one.
    ``health`` is what the capture thread's ``measure`` made of the frame (``edge.health``: metrics
    on every n-th frame, else None).
    """

    seq: int
    ts_mono: float
    ts_wall: float
    image: np.ndarray
    tensor: np.ndarray | None = None
    prepared_by: Callable[[np.ndarray], np.ndarray] | None = field(default=None, compare=False, repr=False)
    health: dict[str, float] | None = field(default=None, compare=False, repr=False)


def _cam_error(msg: str, key: str) -> CameraError:
    """A CameraError about ``camera.<key>``; the daemon prefixes the config file and line."""
    return CameraError(f"camera.{key}: {msg}", key=("camera", key), detail=msg)


def _bounded_s(value: Any, default: float) -> float:
    """A wait in seconds that ``Event.wait`` accepts: NaN/negative → ``default``, at most MAX_WAIT_S."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    if v != v or v < 0:
        return default
    return min(v, MAX_WAIT_S)


def _quiet_opencv() -> None:
    # OpenCV's own warnings ("can't open camera by index") would repeat at every retry;
    # our log says it once per loss
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # pragma: no cover - a build without cv2.utils
        pass


def _open_video_file(path: str, params: list[int]) -> Any:
    """cv2.VideoCapture on a file through FFmpeg, or whatever backend can read it."""
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():  # a build without FFmpeg
        cap.release()
        cap = cv2.VideoCapture(path)
    return cap


UNDECODABLE = "is not a video OpenCV can decode (empty, truncated or another format)"


def probe_file_source(path: str | os.PathLike[str], timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`CameraError` on ``camera.device`` unless ``path`` decodes a frame within ``timeout_s``.

    Why: a zero-byte, text-as-mp4 or truncated file can never work; at run time it would be
    retried for ever (systemd's watchdog restart-loops) or, with ``loop: true``, spin on zero
    frames. Start-up and ``--check-config`` call this so it is a config error (exit 78) instead.
    The error's ``key`` is ``("camera", "device")``; the daemon prefixes the config file and line.
    """
    p = str(path)
    if not os.path.isfile(p):
        raise _cam_error(f"{p!r}: video file not found", "device")
    result: list[str | None] = []

    def probe() -> None:
        try:
            _quiet_opencv()
            cap = _open_video_file(p, [])
            try:
                if not cap.isOpened():
                    result.append(UNDECODABLE)
                    return
                ok, img = cap.read()
                good = ok and isinstance(img, np.ndarray) and img.size > 0
                result.append(None if good else f"{UNDECODABLE}: not one frame decodes")
            finally:
                cap.release()
        except Exception as e:  # noqa: BLE001 - OpenCV raises cv2.error on some garbage
            result.append(f"{UNDECODABLE} ({' '.join(str(e).split())[:100]})")

    t = threading.Thread(target=probe, name="probe-video", daemon=True)
    t.start()
    t.join(_bounded_s(timeout_s, PROBE_TIMEOUT_S))
    why = result[0] if result else f"no frame decoded within {timeout_s:g} s"
    if why is not None:
        raise _cam_error(f"{p!r}: {why}", "device")


class SourceLost(Exception):
    """The device went away (or cannot be opened right now); capture retries with backoff."""


class EndOfStream(Exception):
    """A file source reached its end."""


class Source:
    """Interface of a frame source. ``read`` returns an image or ``None`` for a bad frame."""

    fps: float = 0.0
    frame_size: tuple[int, int] = (0, 0)  # (width, height) the source is expected to deliver
    roi: tuple[int, int, int, int] | None = None
    live: bool = True

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...

    def rewind(self) -> bool:
        return False


class OpenCVSource(Source):
    """usb (V4L2 index or /dev/videoN), file (path) and rtsp (URL) through cv2.VideoCapture."""

    def __init__(self, cam: CameraConfig) -> None:
        self.cfg = cam
        self.kind = cam.source
        self.device = cam.device
        self.live = cam.source != "file"
        self.fps = float(cam.fps)
        self.frame_size = (cam.width, cam.height)
        self.roi = cam.roi  # validated by CameraConfig: (x, y, w, h) or None
        self.cap: Any = None
        if self.kind == "file" and not os.path.isfile(str(self.device)):
            raise _cam_error(f"{str(self.device)!r}: video file not found", "device")

    def open(self) -> None:
        dev = self.device
        _quiet_opencv()
        if self.kind == "usb":
            if isinstance(dev, str) and dev.isdigit():
                dev = int(dev)
            if isinstance(dev, str) and not os.path.exists(dev):
                raise SourceLost(f"{dev}: no such device")
            cap = cv2.VideoCapture(dev, cv2.CAP_V4L2) if hasattr(cv2, "CAP_V4L2") else cv2.VideoCapture(dev)
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
                cap.set(cv2.CAP_PROP_FPS, self.cfg.fps)
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        elif self.kind == "file":
            if not os.path.isfile(str(dev)):
                raise SourceLost(f"{dev}: video file vanished")
            cap = _open_video_file(str(dev), self._decode_params())
            if not cap.isOpened():  # the file is there but undecodable: retrying cannot help
                cap.release()
                raise _cam_error(f"{str(dev)!r}: {UNDECODABLE}", "device")
        else:  # rtsp: bounded open/read so a dead stream is a loss, not a hang
            cap = cv2.VideoCapture(
                str(dev),
                cv2.CAP_FFMPEG,
                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000, *self._decode_params()],
            )
        if not cap.isOpened():
            cap.release()
            raise SourceLost(f"{dev}: cannot open {self.kind} source")
        if self.kind == "file":
            f = cap.get(cv2.CAP_PROP_FPS)
            if f and 0 < f < 1000:
                self.fps = float(f)
        self.cap = cap

    def _decode_params(self) -> list[int]:
        n = int(getattr(self.cfg, "decode_threads", 0) or 0)
        return [cv2.CAP_PROP_N_THREADS, n] if n > 0 and hasattr(cv2, "CAP_PROP_N_THREADS") else []

    def read(self) -> np.ndarray | None:
        if self.cap is None:
            raise SourceLost("not open")
        ok, img = self.cap.read()
        if not ok:
            if self.kind == "file":
                if not os.path.isfile(str(self.device)):
                    raise SourceLost(f"{self.device}: video file vanished")
                raise EndOfStream()  # the end, or an undecodable tail: the file is done
            raise SourceLost(f"{self.device}: read failed (device unplugged?)")
        return img

    def rewind(self) -> bool:
        """Back to the first frame (loop); False when the file has gone (→ reopen → lost)."""
        if self.cap is None or not os.path.isfile(str(self.device)):
            return False
        return bool(self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def _even(v: float, mult: int = 2) -> int:
    return max(mult, int(round(v / mult)) * mult)


class PicameraSource(Source):
    """The Raspberry Pi camera via picamera2 (imported here only)."""

    def __init__(self, cam: CameraConfig, model_size: tuple[int, int] | None = None) -> None:
        self.cfg = cam
        self.live = True
        self.fps = float(cam.fps)
        self.frame_size = (cam.width, cam.height)
        self.roi = cam.roi  # validated by CameraConfig: (x, y, w, h) or None
        self.use_lores = False
        self.cam: Any = None
        self._Picamera2: Any = None
        try:
            from picamera2 import Picamera2  # noqa: WPS433 (hardware lib: imported only here)
        except ImportError:
            raise _cam_error(
                "'picamera': picamera2 is not installed (apt install python3-picamera2; "
                "create the venv with --system-site-packages)",
                "source",
            ) from None
        self._Picamera2 = Picamera2
        self.main_size = (cam.width, cam.height)
        self.lores_size: tuple[int, int] | None = None
        if cam.lores and model_size is not None:
            mw, mh = model_size
            rw, rh = (self.roi[2], self.roi[3]) if self.roi else self.main_size
            scale = max(mw / rw, mh / rh)
            if scale < 1.0:  # lores only helps when it downsizes and still covers the model input
                lw, lh = _even(cam.width * scale, 32), _even(cam.height * scale, 2)
                sx, sy = lw / cam.width, lh / cam.height
                self.lores_size = (lw, lh)
                self.use_lores = True
                self.frame_size = (lw, lh)
                if self.roi is not None:
                    x, y, w, h = self.roi
                    self.roi = (int(x * sx), int(y * sy), max(1, int(round(w * sx))), max(1, int(round(h * sy))))

    def open(self) -> None:
        try:
            cam = self._Picamera2(int(self.cfg.device) if str(self.cfg.device).isdigit() else 0)
            main = {"size": self.main_size, "format": "RGB888"}
            kwargs: dict[str, Any] = {"main": main, "controls": {"FrameRate": float(self.cfg.fps)}, "buffer_count": 4}
            if self.use_lores:
                kwargs["lores"] = {"size": self.lores_size, "format": "YUV420"}
            config = cam.create_video_configuration(**kwargs)
            cam.configure(config)
            cam.start()
        except (RuntimeError, OSError, IndexError) as e:
            raise SourceLost(f"picamera: {e}") from None
        self.cam = cam

    def read(self) -> np.ndarray | None:
        if self.cam is None:
            raise SourceLost("not open")
        stream = "lores" if self.use_lores else "main"
        try:
            # bounded wait (picamera2 >= 0.3.13 takes a timeout): a camera that stops delivering
            # is a loss to retry, not a capture thread blocked for ever
            try:
                arr = self.cam.capture_array(stream, wait=READ_TIMEOUT_S)
            except TypeError:
                arr = self.cam.capture_array(stream)
        except TimeoutError:
            raise SourceLost(f"picamera: no frame for {READ_TIMEOUT_S:.0f} s") from None
        except (RuntimeError, OSError) as e:
            raise SourceLost(f"picamera: {e}") from None
        if arr is None:
            return None
        if self.use_lores:
            lw, lh = self.lores_size  # type: ignore[misc]
            if arr.ndim != 2 or arr.shape[0] != lh * 3 // 2:
                return None
            return cv2.cvtColor(np.ascontiguousarray(arr[:, :lw]), cv2.COLOR_YUV2BGR_I420)
        return arr  # RGB888 is BGR in memory; XRGB8888 (4 channels) is handled by normalise

    def close(self) -> None:
        if self.cam is not None:
            for fn in ("stop", "close"):
                try:
                    getattr(self.cam, fn)()
                except Exception:  # noqa: BLE001 - best effort on a dying device
                    pass
            self.cam = None


def make_source(cam: CameraConfig, model_size: tuple[int, int] | None = None) -> Source:
    if cam.source == "picamera":
        return PicameraSource(cam, model_size)
    if cam.source in ("usb", "file", "rtsp"):
        return OpenCVSource(cam)
    raise _cam_error(f"{cam.source!r}: unknown source", "source")


class CaptureStats:
    """Counters shared with the daemon (plain ints: written by one thread, read by others)."""

    def __init__(self) -> None:
        self.state = "starting"
        self.frames = 0
        self.dropped = 0
        self.corrupt = 0
        self.resized = 0
        self.reconnects = 0
        self.last_error = ""
        self.last_frame_mono = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "captured": self.frames,
            "dropped": self.dropped,
            "corrupt": self.corrupt,
            "resized": self.resized,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }


def normalise(img: Any, size: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """Validate a raw frame → (BGR uint8 image of ``size``, '' | 'resized') or (None, 'corrupt')."""
    if not isinstance(img, np.ndarray) or img.size == 0 or img.ndim not in (2, 3):
        return None, "corrupt"
    if img.ndim == 3 and img.shape[2] not in (1, 3, 4):
        return None, "corrupt"
    if img.dtype != np.uint8:
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        else:
            return None, "corrupt"
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    w, h = size
    if img.shape[1] != w or img.shape[0] != h:
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA), "resized"
    return img, ""


class Capture(threading.Thread):
    """The capture thread: source → normalise → ROI → prepare → bounded queue (drop oldest when live)."""

    def __init__(
        self,
        source: Source,
        out: queue.Queue[Frame],
        stop: threading.Event,
        *,
        realtime: bool = True,
        loop: bool = False,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 10.0,
        on_state: Callable[[str, str], None] | None = None,
        prepare: Callable[[np.ndarray], np.ndarray] | None = None,
        measure: Callable[[int, np.ndarray], dict[str, float] | None] | None = None,
    ):
        super().__init__(name="capture", daemon=True)
        self.prepare = prepare
        self.measure = measure  # (seq, image) → the frame's health metrics or None (edge.health.HealthProbe)
        self.source = source
        self.out = out
        self.stop_event = stop
        self.realtime = realtime
        self.loop = loop
        # bounded: Event.wait(1e12) raises OverflowError, which would kill the thread
        self.rmin = max(0.01, _bounded_s(reconnect_min_s, 0.5))
        self.rmax = max(self.rmin, _bounded_s(reconnect_max_s, 10.0))
        self.error: CameraError | None = None  # set when capture ended on settings that cannot work
        self.stats = CaptureStats()
        self.ended = threading.Event()
        self.on_state = on_state
        self._seq = 0
        self._logged: set[str] = set()

    # -- helpers
    def _set_state(self, state: str, why: str = "") -> None:
        if state != self.stats.state:
            self.stats.state = state
            if why:
                self.stats.last_error = why
            if self.on_state is not None:
                self.on_state(state, why)

    def _once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(msg, *args)

    def _put(self, frame: Frame) -> None:
        if not self.source.live and not self.realtime:
            while not self.stop_event.is_set():  # a file at full speed: back-pressure, no drops
                try:
                    self.out.put(frame, timeout=0.2)
                    return
                except queue.Full:
                    continue
            return
        while True:
            try:
                self.out.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self.out.get_nowait()  # drop the oldest, keep the newest
                    self.stats.dropped += 1
                except queue.Empty:
                    pass

    def _open_with_backoff(self) -> bool:
        delay = self.rmin
        attempt = 0
        while not self.stop_event.is_set():
            try:
                self.source.open()
                if attempt:
                    log.info("camera: source is back after %d attempt(s)", attempt)
                self._set_state("ok")
                return True
            except SourceLost as e:
                attempt += 1
                self.stats.reconnects += 1
                if self.stats.state != "lost" or attempt == 1:
                    log.warning("camera: %s; retrying with backoff (%.1f…%.0f s)", e, self.rmin, self.rmax)
                self._set_state("lost", str(e))
                self.stats.last_error = str(e)
                self.stop_event.wait(delay)
                delay = min(self.rmax, delay * 2)
            except CameraError as e:
                self._fail(e)
                return False
        return False

    def _fail(self, err: CameraError) -> None:
        """End capture on a source that can never work; the owner reports ``self.error`` (one line)."""
        self.error = err
        self._set_state("failed", err.detail)

    def run(self) -> None:  # noqa: C901 - one loop with its states spelled out
        src = self.source
        try:
            while not self.stop_event.is_set():
                if not self._open_with_backoff():
                    break
                t0 = time.monotonic()
                n_since_open = 0
                fresh = True  # this pass started from an open, not a rewind
                while not self.stop_event.is_set():
                    try:
                        raw = src.read()
                    except EndOfStream:
                        if n_since_open == 0 and not src.live:  # a pass without one usable frame
                            if fresh:  # even from a fresh open: looping or retrying would spin
                                dev = str(getattr(src, "device", "?"))
                                self._fail(_cam_error(f"{dev!r}: {UNDECODABLE}: not one frame decodes", "device"))
                                return
                            src.close()  # after a rewind: reopen once, from scratch
                            break
                        if self.loop and src.rewind():
                            t0, n_since_open, fresh = time.monotonic(), 0, False
                            continue
                        if self.loop:
                            src.close()
                            break  # reopen from the start
                        self._set_state("ended")
                        self.ended.set()
                        return
                    except SourceLost as e:
                        log.warning("camera: lost (%s); reconnecting", e)
                        self._set_state("lost", str(e))
                        src.close()
                        break
                    except Exception as e:  # noqa: BLE001 - a driver bug must not kill capture
                        self.stats.corrupt += 1
                        self._once("exc", "camera: read raised %r; frame skipped (logged once)", e)
                        continue
                    img, what = normalise(raw, src.frame_size)
                    if img is None:
                        self.stats.corrupt += 1
                        self._once("corrupt", "camera: empty or corrupt frame skipped (counted in stats; logged once)")
                        continue
                    if what == "resized":
                        assert raw is not None  # normalise() returned an image, so raw was one
                        self.stats.resized += 1
                        self._once(
                            "size",
                            "camera: frames are %dx%d, configured %dx%d: resizing them (counted in stats; logged once)",
                            raw.shape[1],
                            raw.shape[0],
                            *src.frame_size,
                        )
                    if self.stats.state != "ok":
                        self._set_state("ok")
                    img = crop_roi(img, src.roi)  # the crop training and labelling use (convert.roi)
                    img = np.ascontiguousarray(img).copy() if img.base is not None else img
                    img.flags.writeable = False
                    now_m, now_w = time.monotonic(), time.time()
                    tensor = None
                    prepare = self.prepare  # read once: the main thread may swap it (hot reload)
                    if prepare is not None:
                        try:
                            tensor = prepare(img)
                        except Exception as e:  # noqa: BLE001 - the consumer retries from the image
                            self._once(
                                "prepare",
                                "camera: preparing the model input raised %r; the "
                                "classifier starts from the image (logged once)",
                                e,
                            )
                    health = None
                    if self.measure is not None:
                        try:
                            health = self.measure(self._seq, img)
                        except Exception as e:  # noqa: BLE001 - health is a report; frames go on
                            self._once("measure", "camera: the health checks raised %r (logged once)", e)
                    frame = Frame(self._seq, now_m, now_w, img, tensor, prepare if tensor is not None else None, health)
                    self._seq += 1
                    self.stats.frames += 1
                    self.stats.last_frame_mono = now_m
                    self._put(frame)
                    n_since_open += 1
                    if not src.live and self.realtime and src.fps > 0:
                        wait = t0 + n_since_open / src.fps - time.monotonic()
                        if wait > 0:
                            self.stop_event.wait(wait)
        finally:
            src.close()
            if self.stats.state not in ("ended", "failed"):
                self._set_state("stopped")
