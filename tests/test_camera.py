"""edge.camera: normalisation, drop-oldest queue, reconnect with backoff, file replay, picamera2 (faked)."""

from __future__ import annotations

import queue
import sys
import threading
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera import (
    Capture,
    EndOfStream,
    Frame,
    OpenCVSource,
    PicameraSource,
    Source,
    SourceLost,
    make_source,
    normalise,
)
from edge.config import CameraConfig
from edge.errors import CameraError
from tests.support.wait import wait_until


def write_video(path: Path, n: int, size=(64, 48), fps=30) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    assert w.isOpened()
    for i in range(n):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[:, :, 1] = (i * 7) % 256
        w.write(img)
    w.release()
    return path


class Scripted(Source):
    """A live source driven by a script of items: an image, None (bad frame), 'lost', 'fail-open' or 'end'."""

    def __init__(self, script, size=(64, 48), roi=None, live=True, fail_opens=0):
        self.script = list(script)
        self.frame_size = size
        self.roi = roi
        self.live = live
        self.fps = 30.0
        self.fail_opens = fail_opens
        self.opens = 0
        self.is_open = False

    def open(self):
        self.opens += 1
        if self.fail_opens > 0:
            self.fail_opens -= 1
            raise SourceLost("no such device")
        self.is_open = True

    def read(self):
        if not self.script:
            raise EndOfStream()
        item = self.script.pop(0)
        if isinstance(item, str):
            if item == "lost":
                raise SourceLost("unplugged")
            if item == "end":
                raise EndOfStream()
            if item == "boom":
                raise RuntimeError("driver bug")
        return item

    def close(self):
        self.is_open = False


def img(w=64, h=48, v=0):
    return np.full((h, w, 3), v, np.uint8)


def collect(q: queue.Queue) -> list:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def run_capture(src, qsize=100, **kw) -> tuple[Capture, list]:
    q: queue.Queue = queue.Queue(maxsize=qsize)
    stop = threading.Event()
    cap = Capture(src, q, stop, reconnect_min_s=0.01, reconnect_max_s=0.05, **kw)
    cap.start()
    assert cap.ended.wait(10), "capture did not reach the end of the script"
    cap.join(5)
    assert not cap.is_alive()
    return cap, collect(q)


def test_normalise():
    assert normalise(None, (64, 48)) == (None, "corrupt")
    assert normalise(np.zeros((0, 0, 3), np.uint8), (64, 48))[0] is None
    assert normalise(np.zeros((48, 64, 3), np.float32), (64, 48))[0] is None
    assert normalise(np.zeros((48, 64, 2), np.uint8), (64, 48))[0] is None
    out, what = normalise(np.zeros((48, 64), np.uint8), (64, 48))
    assert out is not None
    assert out.shape == (48, 64, 3) and what == ""
    out, what = normalise(np.zeros((48, 64, 4), np.uint8), (64, 48))
    assert out is not None
    assert out.shape == (48, 64, 3) and what == ""
    out, what = normalise(np.zeros((96, 128, 3), np.uint8), (64, 48))
    assert out is not None
    assert out.shape == (48, 64, 3) and what == "resized"


def test_corrupt_and_wrong_size_frames_are_counted_not_fatal():
    script = [img(v=1), None, np.zeros((0,), np.uint8), img(128, 96, v=2), "boom", img(v=3), "end"]
    cap, frames = run_capture(Scripted(script))
    assert [f.image[0, 0, 0] for f in frames] == [1, 2, 3]
    assert [f.seq for f in frames] == [0, 1, 2]
    assert cap.stats.corrupt == 3 and cap.stats.resized == 1 and cap.stats.state == "ended"
    assert all(f.image.shape == (48, 64, 3) and not f.image.flags.writeable for f in frames)
    assert frames[0].ts_mono <= frames[-1].ts_mono and frames[0].ts_wall > 1e9


def test_roi_crop_is_a_copy():
    src = Scripted([img(v=5), "end"], roi=(8, 4, 32, 16))
    cap, frames = run_capture(src)
    (f,) = frames
    assert f.image.shape == (16, 32, 3) and f.image.base is None


def test_live_source_drops_the_oldest_when_full():
    src = Scripted([img(v=i) for i in range(10)] + ["end"])
    cap, frames = run_capture(src, qsize=3)
    assert [int(f.image[0, 0, 0]) for f in frames] == [7, 8, 9]  # the newest survive
    assert cap.stats.dropped == 7 and cap.stats.frames == 10


def test_missing_device_at_start_and_loss_mid_run_are_retried():
    states = []
    src = Scripted([img(v=1), "lost", img(v=2), "end"], fail_opens=3)
    cap, frames = run_capture(src, on_state=lambda s, why: states.append(s))
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 2]
    assert src.opens == 5  # 3 failed + first open + reopen after the loss
    assert cap.stats.reconnects == 3
    assert states[:2] == ["lost", "ok"] and "lost" in states[2:] and states[-1] == "ended"
    assert cap.stats.last_error


def test_stop_event_ends_backoff_quickly():
    src = Scripted([], fail_opens=10**6)
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    cap = Capture(src, q, stop, reconnect_min_s=3600, reconnect_max_s=3600)
    cap.start()
    assert wait_until(lambda: src.opens == 1 and cap.stats.state == "lost")  # now in an hour of backoff
    stop.set()
    cap.join(60)  # hang guard: only the stop event can end that wait
    assert not cap.is_alive() and cap.stats.state == "stopped"
    assert src.opens == 1 and cap.stats.reconnects == 1  # stopped in the backoff, no further attempt


def consume_all(cap: Capture, q: queue.Queue, delay: float = 0.002) -> list:
    """Start ``cap`` and take frames (``delay`` s apart: a slow consumer) until the source ended."""
    got = []
    cap.start()
    while not (cap.ended.is_set() and q.empty()):
        try:
            got.append(q.get(timeout=0.5))
        except queue.Empty:
            pass
        if delay:
            time.sleep(delay)
    cap.join(5)
    return got


def test_file_source_full_speed_keeps_every_frame(tmp_path):
    video = write_video(tmp_path / "v.mp4", 40)
    cam = CameraConfig(source="file", device=str(video), width=64, height=48, realtime=False)
    src = make_source(cam)
    assert isinstance(src, OpenCVSource) and not src.live
    q: queue.Queue = queue.Queue(maxsize=2)
    cap = Capture(src, q, threading.Event(), realtime=False)
    got = consume_all(cap, q)  # back-pressure instead of drops: nothing is live
    assert [f.seq for f in got] == list(range(40)) and cap.stats.dropped == 0


def test_file_source_replay_all_frames_with_a_consumer(tmp_path):
    video = write_video(tmp_path / "v.mp4", 40, size=(80, 60))
    cam = CameraConfig(source="file", device=str(video), width=64, height=48, realtime=True, roi=(0, 0, 32, 32))
    src = make_source(cam)
    q: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()
    cap = Capture(src, q, stop, realtime=True)
    got = consume_all(cap, q, delay=0)
    assert len(got) + cap.stats.dropped == 40
    assert cap.stats.resized == 40 and got[0].image.shape == (32, 32, 3)
    assert src.fps == pytest.approx(30.0)


def test_prepare_runs_in_capture_and_a_failure_leaves_the_image(caplog):
    """``prepare`` fills ``Frame.tensor`` in the capture thread; if it raises, the frame still goes
    through (tensor None, logged once) so the consumer classifies from the image."""
    seen = []

    def prepare(image):
        seen.append(threading.current_thread().name)
        if int(image[0, 0, 0]) == 3:
            raise ValueError("bad frame for the model")
        return image.astype(np.float32)[None] / 255.0

    src = Scripted([img(v=v) for v in range(6)], roi=(8, 8, 16, 16), live=False)
    with caplog.at_level("WARNING", logger="edge.camera"):
        cap, got = run_capture(src, realtime=False, prepare=prepare)
    assert [f.seq for f in got] == list(range(6)) and set(seen) == {"capture"}
    for f in got:
        if f.seq == 3:
            assert f.tensor is None
        else:
            assert f.tensor.shape == (1, 16, 16, 3)
            np.testing.assert_array_equal(f.tensor[0], f.image / np.float32(255.0))
    assert sum("preparing the model input" in r.getMessage() for r in caplog.records) == 1


def test_decode_threads_give_the_same_frames(tmp_path):
    """One FFmpeg decoder thread (the default, leaving the cores to the interpreter) or FFmpeg's
    own choice decode the same pixels."""
    video = write_video(tmp_path / "v.mp4", 25, size=(96, 64))
    frames = {}
    for n in (1, 0):
        cam = CameraConfig(source="file", device=str(video), width=96, height=64, realtime=False, decode_threads=n)
        _, got = run_capture(make_source(cam), realtime=False)
        frames[n] = np.stack([f.image for f in got])
    assert CameraConfig().decode_threads == 1
    assert frames[1].shape == (25, 64, 96, 3)
    np.testing.assert_array_equal(frames[1], frames[0])


def test_file_loop_replays(tmp_path):
    video = write_video(tmp_path / "v.mp4", 10)
    cam = CameraConfig(source="file", device=str(video), width=64, height=48, realtime=False, loop=True)
    q: queue.Queue = queue.Queue(maxsize=100)
    stop = threading.Event()
    cap = Capture(make_source(cam), q, stop, realtime=False, loop=True)
    cap.start()
    got: list[Frame] = []
    while len(got) < 35:
        got.append(q.get(timeout=10))
    stop.set()
    cap.join(5)
    assert [f.seq for f in got[:35]] == list(range(35)) and not cap.ended.is_set()


def test_file_vanishing_mid_run_is_a_loss(tmp_path):
    video = write_video(tmp_path / "v.mp4", 5)
    cam = CameraConfig(source="file", device=str(video), width=64, height=48, realtime=False)
    src = make_source(cam)
    src.open()
    assert src.read() is not None
    src.close()
    video.unlink()
    with pytest.raises(SourceLost):
        src.open()


def test_bad_settings_are_camera_errors(tmp_path):
    with pytest.raises(CameraError, match="video file not found"):
        make_source(CameraConfig(source="file", device=str(tmp_path / "nope.mp4")))
    sys.modules.pop("picamera2", None)
    saved = sys.meta_path[:]
    try:

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "picamera2":
                    raise ImportError("blocked")
                return None

        sys.meta_path.insert(0, Block())
        with pytest.raises(CameraError, match="picamera2 is not installed"):
            make_source(CameraConfig(source="picamera"))
    finally:
        sys.meta_path[:] = saved


def test_usb_device_path_missing_is_retried_not_fatal(tmp_path):
    src = make_source(CameraConfig(source="usb", device=str(tmp_path / "video9")))
    with pytest.raises(SourceLost):
        src.open()


# --------------------------------------------------------------------------- picamera2 fake


class FakePicamera2:
    """Mimics picamera2: RGB888 main (BGR in memory), YUV420 lores (I420, h*3/2 x w)."""

    instances: list = []
    hang_after: int | None = None

    def __init__(self, num=0):
        self.num = num
        self.config = None
        self.started = False
        self.captures = 0
        self.waits = []
        self.hang_after = FakePicamera2.hang_after
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main=None, lores=None, controls=None, buffer_count=4):
        return {"main": main, "lores": lores, "controls": controls, "buffer_count": buffer_count}

    def configure(self, config):
        self.config = config

    def start(self):
        self.started = True

    def _bgr(self, w, h):
        im = np.zeros((h, w, 3), np.uint8)
        im[:, :, 2] = 200  # red in BGR order
        return im

    def capture_array(self, name="main", wait=None):
        self.captures += 1
        self.waits.append(wait)
        if self.hang_after is not None and self.captures > self.hang_after:
            raise TimeoutError  # what picamera2 raises when the wait times out
        if self.captures == 3:
            return None  # a dropped buffer
        assert self.config is not None  # configure() came first
        cfg = self.config[name]
        w, h = cfg["size"]
        bgr = self._bgr(w, h)
        if cfg["format"] == "YUV420":
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
        return bgr

    def stop(self):
        self.started = False

    def close(self):
        pass


@pytest.fixture
def fake_picamera2(monkeypatch):
    mod = types.ModuleType("picamera2")
    mod.Picamera2 = FakePicamera2  # type: ignore[attr-defined]  # a stand-in module built at run time
    FakePicamera2.instances = []
    FakePicamera2.hang_after = None
    monkeypatch.setitem(sys.modules, "picamera2", mod)
    return FakePicamera2


def test_picamera_lores_path(fake_picamera2):
    cam = CameraConfig(source="picamera", device=0, width=640, height=480, roi=(192, 112, 256, 256))
    src = make_source(cam, model_size=(128, 128))
    assert isinstance(src, PicameraSource) and src.use_lores
    assert src.lores_size == (320, 240) and src.frame_size == (320, 240)
    assert src.roi == (96, 56, 128, 128)
    cap, frames = run_capture(_Limited(src, 5))
    pc = fake_picamera2.instances[-1]
    assert pc.config["lores"] == {"size": (320, 240), "format": "YUV420"}
    assert pc.config["main"]["format"] == "RGB888" and pc.config["controls"]["FrameRate"] == 30.0
    assert len(frames) == 4 and cap.stats.corrupt == 1
    f = frames[0].image
    assert f.shape == (128, 128, 3)
    b, g, r = (int(v) for v in f[64, 64])
    assert r > 150 and b < 60 and g < 60  # I420 → BGR kept the colour order


def test_picamera_main_path_is_bgr_as_is(fake_picamera2):
    cam = CameraConfig(source="picamera", device=0, width=320, height=240, lores=False)
    src = make_source(cam, model_size=(128, 128))
    assert isinstance(src, PicameraSource) and not src.use_lores
    cap, frames = run_capture(_Limited(src, 2))
    assert frames[0].image.shape == (240, 320, 3)
    assert tuple(int(v) for v in frames[0].image[0, 0]) == (0, 0, 200)
    assert fake_picamera2.instances[-1].config["lores"] is None


class _Limited(Source):
    """Wrap a source, ending after n reads (the fake camera would run forever)."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n
        self.frame_size, self.roi, self.live, self.fps = inner.frame_size, inner.roi, True, inner.fps

    def open(self):
        self.inner.open()

    def read(self):
        if self.n <= 0:
            raise EndOfStream()
        self.n -= 1
        return self.inner.read()

    def close(self):
        self.inner.close()


def test_picamera_stalled_camera_is_a_loss_and_reopened(fake_picamera2):
    fake_picamera2.hang_after = 2
    cam = CameraConfig(source="picamera", device=0, width=320, height=240, lores=False)
    src = make_source(cam, model_size=(128, 128))
    q: queue.Queue = queue.Queue(maxsize=100)
    stop = threading.Event()
    states = []
    cap = Capture(
        src, q, stop, reconnect_min_s=0.01, reconnect_max_s=0.02, on_state=lambda s, why: states.append((s, why))
    )
    cap.start()
    assert wait_until(lambda: len(fake_picamera2.instances) >= 3)
    stop.set()
    cap.join(5)
    assert ("lost", "picamera: no frame for 2 s") in states
    assert fake_picamera2.instances[0].waits[0] == 2.0  # every read is bounded
    assert len(collect(q)) >= 4  # 2 frames per (re)open


# --------------------------------------------------------------------------- undecodable files (issue 12 #7)


def write_avi(path: Path, n: int, size=(320, 240)) -> Path:
    """MJPG AVI: unlike OpenCV's mp4, a 0-frame AVI opens and then reads nothing (the spin case)."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30, size)
    assert w.isOpened()
    rng = np.random.default_rng(1)
    for _ in range(n):
        w.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    w.release()
    return path


def undecodable_files(tmp_path: Path) -> dict[str, Path]:
    good = write_video(tmp_path / "good.mp4", 30).read_bytes()
    files = {
        "zero-byte": tmp_path / "zero.mp4",
        "text": tmp_path / "text.mp4",
        "truncated": tmp_path / "trunc.mp4",
        "0-frame": write_avi(tmp_path / "empty.avi", 0),
    }
    files["zero-byte"].write_bytes(b"")
    files["text"].write_text("this is not a video\n")
    files["truncated"].write_bytes(good[: len(good) // 2])
    return files


def test_probe_file_source_refuses_undecodable_files_naming_the_key(tmp_path):
    from edge.camera import probe_file_source

    probe_file_source(write_video(tmp_path / "ok.mp4", 3))  # a real video passes
    for what, path in undecodable_files(tmp_path).items():
        t0 = time.monotonic()
        with pytest.raises(CameraError) as ei:
            probe_file_source(path)
        assert time.monotonic() - t0 < 5, what
        assert ei.value.key == ("camera", "device"), what
        msg = str(ei.value)
        assert msg.startswith(f"camera.device: {str(path)!r}: ") and "\n" not in msg, (what, msg)
    with pytest.raises(CameraError, match="not found"):
        probe_file_source(tmp_path / "missing.mp4")


@pytest.mark.parametrize("loop", [False, True])
def test_undecodable_file_ends_capture_with_a_camera_error_not_a_retry_or_spin(tmp_path, loop):
    """Was: 'cannot open file source' retried for ever, or (0-frame file, loop) 100 % CPU silently."""
    for what, path in undecodable_files(tmp_path).items():
        cam = CameraConfig(source="file", device=str(path), width=64, height=48, realtime=False, loop=loop)
        q: queue.Queue = queue.Queue(maxsize=10)
        stop = threading.Event()
        cap = Capture(make_source(cam), q, stop, realtime=False, loop=loop, reconnect_min_s=0.01, reconnect_max_s=0.02)
        t_cpu = time.process_time()
        cap.start()
        cap.join(5)
        alive = cap.is_alive()
        stop.set()
        cap.join(5)
        assert not alive, f"{what}: capture still running (retrying or spinning)"
        assert isinstance(cap.error, CameraError) and cap.error.key == ("camera", "device"), what
        assert str(path) in str(cap.error) and cap.stats.state == "failed", what
        assert cap.stats.reconnects == 0 and cap.stats.frames == 0 and not cap.ended.is_set(), what
        assert time.process_time() - t_cpu < 2, what


def test_file_truncated_while_looping_fails_once_instead_of_spinning(tmp_path, caplog):
    """A file that decoded, then yields 0 frames on a loop pass (truncated in place): no spin, one error."""
    video = write_avi(tmp_path / "v.avi", 30)
    cam = CameraConfig(source="file", device=str(video), width=320, height=240, realtime=False, loop=True)
    q: queue.Queue = queue.Queue(maxsize=1000)
    stop = threading.Event()
    cap = Capture(make_source(cam), q, stop, realtime=False, loop=True)
    cap.start()
    assert wait_until(lambda: cap.stats.frames >= 45)  # looped at least once
    with open(video, "r+b") as f:  # in place: the open handle sees it
        f.truncate(0)
        f.write(write_avi(tmp_path / "empty.avi", 0).read_bytes())
    cap.join(5)
    alive = cap.is_alive()
    stop.set()
    cap.join(5)
    assert not alive, "capture spins on a file that yields no frame"
    assert isinstance(cap.error, CameraError) and "is not a video OpenCV can decode" in str(cap.error)
    assert cap.stats.state == "failed" and cap.stats.reconnects == 0


def test_huge_reconnect_delays_do_not_kill_the_capture_thread():
    """Issue 12 #5: reconnect_*_s: 1e12 made Event.wait raise OverflowError in the capture thread."""
    src = Scripted([], fail_opens=10**6)
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    cap = Capture(src, q, stop, reconnect_min_s=1e12, reconnect_max_s=1e12)
    cap.start()
    assert wait_until(lambda: src.opens >= 1 and cap.stats.state == "lost")
    time.sleep(0.3)
    assert cap.is_alive()  # waiting, not dead
    stop.set()
    cap.join(60)  # hang guard: the backoff it is in is an hour (the bound on 1e12), only the stop ends it
    assert not cap.is_alive() and cap.stats.state == "stopped" and src.opens == 1
    for bad in (float("nan"), float("inf"), -1.0):
        c = Capture(src, q, threading.Event(), reconnect_min_s=bad, reconnect_max_s=bad)
        assert 0 < c.rmin <= c.rmax <= 3600
