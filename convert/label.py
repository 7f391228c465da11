"""``python -m convert label``: label video frames, or review a folder of images, in a local web page.

``--video``: the seed's workflow, its keys and files. ``--images DIR``: a folder of images (the
output of ``convert collect``, or any folder of PNG/JPG), reviewed with the same keys: each image
shows its pre-labels from the folder's ``data.csv`` when it has a row (the model's, or an
operator's verdict), Enter confirms or saves the corrected labels and moves on, and the row is
marked ``reviewed`` (``convert.label_state.FolderStore``). The CSV feeds ``split`` and ``train``.

The seed labeled in an OpenCV window, which needs a desktop on the machine holding the video.
A page served on 127.0.0.1 works the same on a workstation and on a headless Pi over SSH
port-forwarding (``ssh -L 8765:127.0.0.1:8765 pi``). The labeling logic is the pure state
machine in ``convert.label_state``; this module only decodes frames and serves the page.

With the station's ROI (``--config station.yaml`` or ``--roi X,Y,W,H``, see ``convert.roi``) the
page shows the whole frame with the ROI's box drawn on it, and every saved PNG is the daemon's
crop of the frame (``edge.preprocess.crop_roi``): what is labelled is what the model sees.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import sys
import tempfile
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from convert.data import IMAGE_EXTS, read_image
from convert.label_state import Labeler, check_out_dir, open_folder_session, open_session
from convert.roi import add_roi_args, roi_from_args
from edge.errors import ConfigError, DataError, SeamQCError
from edge.statelock import StateLock, StateLockedError, lock_dir

STATIC = Path(__file__).resolve().parent / "static"
_STATIC_FILES = {
    "/": ("label.html", "text/html; charset=utf-8"),
    "/label.js": ("label.js", "text/javascript; charset=utf-8"),
    "/label.css": ("label.css", "text/css; charset=utf-8"),
}
_FRAME_RE = re.compile(r"^/frame/(\d+)\.(jpg|png)$")


@contextlib.contextmanager
def _captured_stderr(into: list[str]):
    """Catch what C libraries (FFmpeg) print on fd 2 while opening, to put it in our one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            into.append(tmp.read().decode("utf-8", "replace"))


def _ffmpeg_reason(text: str) -> str:
    """The last FFmpeg message, without its ``[demuxer @ 0x…]`` prefix."""
    lines = [re.sub(r"^\[[^\]]*\]\s*", "", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    return f": {lines[-1]}" if lines else ""


class VideoFrames:
    """Frames of a video file by index: sequential reads for the next frame, seeks otherwise.

    A few decoded frames are cached, so going back and forth around the current frame (and the
    page's prefetch of the next one) does not decode twice.
    """

    def __init__(self, path: str | Path, cache: int = 16):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"video {self.path}: no such file")
        if not self.path.is_file():
            raise DataError(f"video {self.path}: not a file")
        if not os.access(self.path, os.R_OK):
            raise DataError(f"video {self.path}: not readable (permission denied)")
        said: list[str] = []
        with _captured_stderr(said):
            self.cap = cv2.VideoCapture(str(self.path))
            ok, first = self.cap.read() if self.cap.isOpened() else (False, None)
        if not self.cap.isOpened():
            raise DataError(
                f"video {self.path}: OpenCV cannot open it (not a video, or an unsupported "
                f"codec{_ffmpeg_reason(said[0])})"
            )
        if not ok or first is None:
            self.cap.release()
            raise DataError(f"video {self.path}: OpenCV cannot decode its first frame{_ffmpeg_reason(said[0])}")
        self._next = 0  # index the next cap.read() returns
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._size = cache
        self._next = 1
        self._remember(0, first)
        n = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = n if n > 0 else self._count()
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def _count(self) -> int:
        """Containers without a frame count: count by grabbing (no decode), then rewind."""
        n = 1
        while self.cap.grab():
            n += 1
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self._next = 0
        return n

    def _remember(self, index: int, frame: np.ndarray) -> None:
        self._cache[index] = frame
        self._cache.move_to_end(index)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)

    def get(self, index: int) -> np.ndarray:
        if not 0 <= index < self.frame_count:
            raise DataError(f"video {self.path.name}: frame {index} out of range 0–{self.frame_count - 1}")
        hit = self._cache.get(index)
        if hit is not None:
            self._cache.move_to_end(index)
            return hit
        if index != self._next:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = self.cap.read()
        if not ok or frame is None:
            self._next = -1  # position unknown: seek next time
            raise DataError(f"video {self.path.name}: cannot decode frame {index}")
        self._next = index + 1
        self._remember(index, frame)
        return frame

    def close(self) -> None:
        self.cap.release()


def _natural_key(p: Path) -> list:
    """``img2`` before ``img10``: numbers in names compare as numbers."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


class ImageFolder:
    """The images of one folder (not recursive, by name, numbers as numbers) as frames by index."""

    def __init__(self, folder: str | Path, cache: int = 16):
        self.path = Path(folder)
        if not self.path.exists():
            raise DataError(f"images {self.path}: no such folder")
        if not self.path.is_dir():
            raise DataError(f"images {self.path}: not a folder")
        try:
            found = [
                p
                for p in self.path.iterdir()
                if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") and p.is_file()
            ]
        except OSError as e:
            raise DataError(f"images {self.path}: cannot list it ({e.strerror or e})") from None
        if not found:
            raise DataError(f"images {self.path}: no images ({', '.join(IMAGE_EXTS)})")
        self.paths = sorted(found, key=_natural_key)
        self.frame_count = len(self.paths)
        self.fps = 0.0
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._size = cache
        h = hashlib.sha1(str(self.path.resolve()).encode())
        for p in self.paths:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        self.tag = h.hexdigest()[:12]

    def get(self, index: int) -> np.ndarray:
        if not 0 <= index < self.frame_count:
            raise DataError(f"images {self.path.name}: image {index} out of range 0–{self.frame_count - 1}")
        hit = self._cache.get(index)
        if hit is not None:
            self._cache.move_to_end(index)
            return hit
        img = read_image(str(self.paths[index]))
        self._cache[index] = img
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return img

    def close(self) -> None:
        self._cache.clear()


class LabelApp:
    """The labeler behind a lock (the HTTP server answers on several threads)."""

    def __init__(self, labeler: Labeler, frames: VideoFrames | ImageFolder):
        self.labeler = labeler
        self.frames = frames
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        # Frame URLs carry a tag of the video, so the browser's image cache never shows
        # another video's frame served earlier on the same port.
        tag = getattr(frames, "tag", None)
        if tag is None:
            st = frames.path.stat()
            tag = hashlib.sha1(f"{frames.path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        self.tag = tag

    def _state(self) -> dict:
        return {**self.labeler.state(), "frame_tag": self.tag}

    def state(self) -> dict:
        with self.lock:
            return self._state()

    def key(self, key: str) -> dict:
        with self.lock:
            self.labeler.press(key)
            return self._state()

    def goto(self, frame: int) -> dict:
        with self.lock:
            self.labeler.goto(frame)
            return self._state()

    def image(self, index: int, fmt: str) -> bytes:
        with self.lock:
            frame = self.frames.get(index)
        if fmt == "png":
            ok, buf = cv2.imencode(".png", frame)
        else:
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise DataError(f"frame {index}: cannot encode")
        return buf.tobytes()

    def stop_soon(self) -> None:
        """Shut the server down from another thread (``shutdown`` blocks until the loop ends)."""
        if self.server is not None:
            threading.Thread(target=self.server.shutdown, daemon=True).start()


def make_handler(app: LabelApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "seam-qc-label"

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
            pass  # one line per frame would drown the terminal

        def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj: dict, status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            path = self.path.split("?", 1)[0]
            if path in _STATIC_FILES:
                name, ctype = _STATIC_FILES[path]
                self._send(200, (STATIC / name).read_bytes(), ctype)
            elif path == "/api/state":
                self._json(app.state())
            elif m := _FRAME_RE.match(path):
                try:
                    body = app.image(int(m.group(1)), m.group(2))
                except DataError as e:
                    self._send(404, str(e).encode(), "text/plain; charset=utf-8")
                    return
                self._send(200, body, "image/png" if m.group(2) == "png" else "image/jpeg", cache=True)
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            # JSON only: a cross-site form cannot send it without a CORS preflight we never allow.
            if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
                self._json({"error": "expected application/json"}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
            except (ValueError, json.JSONDecodeError):
                self._json({"error": "bad JSON"}, HTTPStatus.BAD_REQUEST)
                return
            if self.path == "/api/key" and isinstance(body.get("key"), str):
                state = app.key(body["key"])
            elif self.path == "/api/goto" and isinstance(body.get("frame"), int):
                state = app.goto(body["frame"])
            else:
                self._json({"error": "unknown request"}, HTTPStatus.BAD_REQUEST)
                return
            self._json(state)
            if state["quit"]:
                app.stop_soon()

    return Handler


def serve(app: LabelApp, host: str, port: int) -> ThreadingHTTPServer:
    """Bind the server (port 0 = any free port); the caller runs ``serve_forever``."""
    try:
        server = ThreadingHTTPServer((host, port), make_handler(app))
    except OSError as e:
        raise SeamQCError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port") from None
    server.daemon_threads = True
    app.server = server
    return server


def _serve_until_quit(server: ThreadingHTTPServer) -> None:
    host, port = str(server.server_address[0]), server.server_address[1]  # TCP: never bytes
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        print(
            "warning: listening on all interfaces: anyone on the network can label and delete",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"open http://{shown}:{port}/   (from another machine: ssh -L {port}:127.0.0.1:{port} <this host>)",
        flush=True,
    )
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C quits even when the parent left SIGINT ignored or blocked (Python keeps an inherited
        # SIG_IGN, and a mask is inherited too): labels are saved as they are made, so nothing is lost
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _lock_folder(folder: Path) -> StateLock:
    """One collect or review per folder: both rewrite its data.csv."""
    try:
        return lock_dir(folder, f"--out {folder}", "stop it first, or review a copy of the folder")
    except StateLockedError as e:
        raise ConfigError(str(e).replace("another seam-qc daemon", "another collect or label")) from None


def run_images(args: argparse.Namespace) -> int:
    """``--images DIR``: review a folder of images with pre-labels from its data.csv."""
    choice = roi_from_args(args)
    if choice.given:
        raise ConfigError(
            "--roi/--config: not with --images (a folder's images are labelled as they are; "
            "collect's samples are already the station's crop)"
        )
    frames = ImageFolder(args.images)
    out = Path(args.out) if args.out else frames.path
    check_out_dir(out, "data", out / "data.csv")
    lock = _lock_folder(out)
    try:
        labeler = open_folder_session(
            frames, frames.paths, out, frames.path.name, log=lambda n: print(f"note: {n}", file=sys.stderr, flush=True)
        )
        app = LabelApp(labeler, frames)
        server = serve(app, args.host, args.port)
        c = labeler.counts()
        print(
            f"reviewing {frames.path}: {frames.frame_count} images → {labeler.store.csv_path} "
            f"({c['saved']} rows, {c['reviewed']} reviewed), starting at image {labeler.frame}",
            flush=True,
        )
        _serve_until_quit(server)
        c = labeler.counts()
        print(
            f"reviewed {c['reviewed']} of {frames.frame_count} image(s); "
            f"{c['saved']} row(s) in {labeler.store.csv_path} "
            f"(good {c['good']}, error {c['error']}, break {c['break']}, length {c['length']})",
            flush=True,
        )
    finally:
        lock.release()
        frames.close()
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "images", None):
        return run_images(args)
    if not args.out:
        raise ConfigError("--out: required with --video (the folder for the PNGs and <video>_data.csv)")
    choice = roi_from_args(args)
    video = Path(args.video)
    frames = VideoFrames(video)
    try:
        first = frames.get(0)
        choice.check_frame(first.shape[1], first.shape[0], f"video {video}")
        labeler = open_session(
            frames,
            args.out,
            video.stem,
            video.name,
            log=lambda n: print(f"note: {n}", file=sys.stderr, flush=True),
            roi=choice.roi,
            roi_origin=choice.origin or "--roi",
        )
        app = LabelApp(labeler, frames)
        server = serve(app, args.host, args.port)
        print(
            f"labeling {video.name}: {frames.frame_count} frames → {labeler.store.dir}, "
            f"starting at frame {labeler.frame} ({len(labeler.store.rows)} saved)",
            flush=True,
        )
        sw, sh = labeler.saved_size
        if choice.roi is not None:
            what = f"the daemon's crop, {choice.describe()}"
        elif choice.given:
            what = choice.describe()
        else:
            what = "whole frames (give --config or --roi to save the camera ROI the daemon classifies)"
        print(f"saving {sw}x{sh} PNGs: {what}", flush=True)
        _serve_until_quit(server)
        c = labeler.counts()
        print(
            f"saved {c['saved']} frame(s) in {labeler.store.csv_path} "
            f"(good {c['good']}, error {c['error']}, break {c['break']}, length {c['length']})",
            flush=True,
        )
    finally:
        frames.close()
    return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"--port {text!r}: expected 0..65535 (0 = any free port)")
    return port


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "label",
        help="label video frames, or review a folder of images, in a local web page (seed keys: n g e b l s q)",
        description="Serve a labeling page for one video: keys n/→ next, ← back, Shift ±10, PgUp/PgDn "
        "±100, g/e/b/l toggle good/error/break/length, Shift+g/e/b/l cannot tell (an empty cell), s save, "
        "Enter save+next, u undo, q quit. Writes <video>_<frame>.png and <video>_data.csv (the seed's format) into "
        "--out, and resumes after the last saved frame. With --images DIR (a convert collect folder, or any "
        "folder of PNG/JPG) the same keys review the images: each shows its pre-labels from DIR/data.csv, "
        "Enter confirms (or saves the corrected labels) and moves on, the row is marked reviewed; it starts at "
        "the first image not reviewed.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="video file to label")
    src.add_argument("--images", metavar="DIR", help="folder of images to review (pre-labels from DIR/data.csv)")
    p.add_argument(
        "--out",
        default=None,
        help="folder for the PNGs and <video>_data.csv (required with --video); with --images, "
        "where data.csv goes (default DIR)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8765, help="port (default 8765; 0 = any free port)")
    add_roi_args(p, "drawn on the page and is what every saved PNG holds (the daemon's crop)")
    p.set_defaults(func=run)
