"""What is labelled is what the model sees: one camera ROI for label, synth, train, evaluate, daemon.

The central test labels frames of a seam video on the label page (its HTTP API, as
``tests/test_label.py`` drives it, and the real ``convert label --config`` command) and runs the
same video through the daemon's camera → prepare path (``edge.camera.Capture`` with
``Classifier.prepare``, the ROI from the same station config): the model input tensors of the
saved PNGs, read by ``convert.data``, are byte-identical to the daemon's.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from convert.data import ImageCache, batches, load_dataset, load_image
from convert.label import LabelApp, VideoFrames, serve
from convert.label_state import open_session
from convert.roi import RoiChoice, load_roi, parse_roi
from edge.classify import Classifier
from edge.errors import ConfigError, DataError
from edge.preprocess import crop_roi, preprocess
from tests.support.cli import run_convert
from tests.support.images import imread

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "edge" / "models" / "default"
STATION_ROI = (150, 96, 300, 240)  # not the synth default, not square: the resize changes aspect
FRAMES = 24


def station_yaml(
    path: Path, video: Path, roi=STATION_ROI, width: int = 640, height: int = 480, extra: str = ""
) -> Path:
    """A daemon config for a file camera on ``video`` (model: the shipped bundle, MQTT off)."""
    roi_text = "null" if roi is None else "[" + ", ".join(str(v) for v in roi) + "]"
    path.write_text(
        "station: roi-test\n"
        "camera:\n"
        "  source: file\n"
        f"  device: {video}\n"
        f"  width: {width}\n"
        f"  height: {height}\n"
        f"  roi: {roi_text}\n"
        "  realtime: false\n"
        "model:\n"
        f"  bundle: {BUNDLE}\n"
        "  threads: 1\n"
        "mqtt:\n"
        "  enabled: false\n" + extra
    )
    return path


@pytest.fixture(scope="module")
def seam_video(tmp_path_factory) -> Path:
    """A real synthetic seam video (640×480, mp4v) with a defect in view."""
    from convert.synth import write_video

    path = tmp_path_factory.mktemp("roi") / "station.mp4"
    write_video(path, FRAMES, seed=11, defects=0, length_stretches=0)
    return path


def assert_one_line_error(p: subprocess.CompletedProcess, code: int, *words: str) -> str:
    assert p.returncode == code, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# --- the same tensor on the page and in the daemon --------------------------------------------


def daemon_frames(config: Path) -> tuple[Classifier, list]:
    """The daemon's capture path on ``config``: source, normalise, ROI, ``Classifier.prepare``."""
    from edge.camera import Capture
    from edge.config import load_config
    from edge.daemon import open_source

    cfg = load_config(config)
    clf = Classifier(cfg.model.bundle, threads=1)
    src = open_source(cfg, (clf.width, clf.height))
    q: queue.Queue = queue.Queue(maxsize=1000)
    cap = Capture(src, q, threading.Event(), realtime=False, prepare=clf.prepare)
    cap.start()
    assert cap.ended.wait(60), "the file source did not end"
    cap.join(10)
    got = []
    while not q.empty():
        got.append(q.get_nowait())
    assert [f.seq for f in got] == list(range(FRAMES))
    return clf, got


def label_with_cli(video: Path, out: Path, frames: list[int], *extra: str) -> tuple[str, dict]:
    """``convert label`` as a user runs it: goto + ``s`` on the page's API for each frame, then ``q``."""
    p = subprocess.Popen(
        [sys.executable, "-m", "convert", "label", "--video", str(video), "--out", str(out), "--port", "0", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stderr is not None
    head = []
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            head.append(line)
            if "http://" in line:
                url = "http://" + line.split("http://", 1)[1].split()[0].rstrip("/")
        assert url, (head, p.stderr.read() if p.poll() is not None else "")

        def post(path: str, obj: dict) -> dict:
            req = urllib.request.Request(url + path, json.dumps(obj).encode(), {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=20) as r:
                return json.load(r)

        for i, f in enumerate(frames):
            post("/api/goto", {"frame": f})
            post("/api/key", {"key": "e" if i == 1 else "g"})
            st = post("/api/key", {"key": "s"})
            assert st["message"].startswith("saved"), st["message"]
        state = post("/api/key", {"key": "q"})
        out_text, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        return "".join(head) + out_text, state
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_labelled_frame_and_daemon_frame_give_the_same_model_input(seam_video, tmp_path):
    station = station_yaml(tmp_path / "station.yaml", seam_video)
    labelled = [0, 9, 23]
    log, state = label_with_cli(seam_video, tmp_path / "labels", labelled, "--config", str(station))
    assert f"ROI {list(STATION_ROI)} from {station}: camera.roi" in log and "saving 300x240 PNGs" in log
    assert state["roi"] == list(STATION_ROI) and state["frame_size"] == [640, 480]

    clf, frames = daemon_frames(station)
    ds = load_dataset(tmp_path / "labels" / "station_data.csv")
    assert [Path(p).name for p in ds.paths] == [f"station_{f}.png" for f in labelled]
    x_train = np.concatenate([x for x, _ in batches(ds, clf.height, clf.width, 2)])  # evaluate's path
    cache = ImageCache(ds, clf.height, clf.width)  # train's path
    for j, f in enumerate(labelled):
        png = imread(ds.paths[j], cv2.IMREAD_UNCHANGED)
        daemon = frames[f]
        assert png.shape == daemon.image.shape == (240, 300, 3)
        assert np.array_equal(png, daemon.image)  # the saved PNG is the daemon's crop, pixel for pixel
        assert np.array_equal(x_train[j], preprocess(daemon.image, clf.height, clf.width))
        assert np.array_equal(preprocess(cache.get(j), clf.height, clf.width), x_train[j])
        # the interpreter's input tensor (quantised as the bundle's classifier wants it)
        assert np.array_equal(clf.model.prepare(x_train[j]), daemon.tensor)
    # the crop is not the whole frame: without the ROI the model would see something else
    video = VideoFrames(seam_video)
    whole = preprocess(video.get(labelled[0]), clf.height, clf.width)
    video.close()
    assert not np.array_equal(whole, x_train[0])


def test_whole_frames_with_roi_in_the_data_path_give_the_daemon_tensor(seam_video, tmp_path):
    """Frames labelled whole, trained/evaluated with the ROI: the data path crops as the daemon does."""
    frames = VideoFrames(seam_video)
    try:
        lab = open_session(frames, tmp_path / "whole", "station", seam_video.name)
        app = LabelApp(lab, frames)
        server = serve(app, "127.0.0.1", 0)
        t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        t.start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            for f in (3, 17):
                for path, body in (("/api/goto", {"frame": f}), ("/api/key", {"key": "s"})):
                    req = urllib.request.Request(
                        base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
                    )
                    with urllib.request.urlopen(req, timeout=10) as r:
                        st = json.load(r)
            assert st["roi"] is None and st["saved_size"] == [640, 480]
        finally:
            server.shutdown()
            t.join()
            server.server_close()
    finally:
        frames.close()
    clf, dframes = daemon_frames(station_yaml(tmp_path / "station.yaml", seam_video))
    ds = load_dataset(tmp_path / "whole" / "station_data.csv")
    cache = ImageCache(ds, clf.height, clf.width, roi=STATION_ROI)
    x_eval = np.concatenate([x for x, _ in batches(ds, clf.height, clf.width, 8, roi=STATION_ROI)])
    for j, f in enumerate((3, 17)):
        assert np.array_equal(load_image(ds.paths[j], roi=STATION_ROI), dframes[f].image)
        x = preprocess(cache.get(j), clf.height, clf.width)
        assert np.array_equal(x, x_eval[j])
        assert np.array_equal(clf.model.prepare(x), dframes[f].tensor)


def test_page_state_and_saved_crop_with_roi(tmp_path):
    from tests.support.frames import make_video

    video = make_video(tmp_path / "v.avi", 5)
    frames = VideoFrames(video)
    try:
        lab = open_session(frames, tmp_path / "out", "v", roi=(16, 8, 64, 100), roi_origin="--roi")
        st = lab.state()
        assert st["roi"] == [16, 8, 64, 100] and st["frame_size"] == [160, 120]
        assert st["saved_size"] == [64, 100]
        lab.press("n")
        lab.press("s")
        saved = imread(tmp_path / "out" / "v_1.png", cv2.IMREAD_UNCHANGED)
        assert np.array_equal(saved, crop_roi(frames.get(1), (16, 8, 64, 100)))
    finally:
        frames.close()


def test_resuming_with_another_roi_is_refused(tmp_path):
    from tests.support.frames import make_video

    video = make_video(tmp_path / "v.avi", 5)
    frames = VideoFrames(video)
    try:
        lab = open_session(frames, tmp_path / "out", "v")
        lab.press("s")
        with pytest.raises(DataError, match=r"1 saved image\(s\) are 160x120 .* saves 64x64 crops of --roi"):
            open_session(frames, tmp_path / "out", "v", roi=(0, 0, 64, 64))
        lab2 = open_session(frames, tmp_path / "other", "v", roi=(0, 0, 64, 64))
        lab2.press("s")
        with pytest.raises(DataError, match="saves 160x120 whole frames"):
            open_session(frames, tmp_path / "other", "v")
        again = open_session(frames, tmp_path / "other", "v", roi=(0, 0, 64, 64))
        assert again.frame == 1  # the same ROI resumes
    finally:
        frames.close()


# --- --roi / --config parsing -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text,want",
    [("192,112,256,256", (192, 112, 256, 256)), (" 0, 0, 1, 1 ", (0, 0, 1, 1)), ("[10,20,30,40]", (10, 20, 30, 40))],
)
def test_parse_roi(text, want):
    assert parse_roi(text) == want


@pytest.mark.parametrize(
    "text", ["1,2,3", "1,2,3,4,5", "a,b,c,d", "1.5,2,3,4", "", "-1,0,10,10", "0,-2,10,10", "0,0,0,10", "0,0,10,-1"]
)
def test_parse_roi_rejects(text):
    with pytest.raises(DataError, match=r"^--roi "):
        parse_roi(text)


def test_config_roi_and_override(seam_video, tmp_path):
    station = station_yaml(tmp_path / "s.yaml", seam_video)
    c = load_roi(station)
    assert c == RoiChoice(STATION_ROI, f"{station}: camera.roi", (640, 480))
    assert load_roi(station, "1,2,3,4") == RoiChoice((1, 2, 3, 4), "--roi", None)
    assert load_roi(None, None) == RoiChoice() and not RoiChoice().given
    assert load_roi(station_yaml(tmp_path / "n.yaml", seam_video, roi=None)).roi is None
    # the Pi's TLS / password files are not on the workstation: only camera.roi is used
    pi = (
        station_yaml(tmp_path / "pi.yaml", seam_video, extra="")
        .read_text()
        .replace(
            "mqtt:\n  enabled: false\n",
            "mqtt:\n  host: broker.lan\n  tls:\n    ca: /etc/seam-qc/ca.pem\n  password_file: /etc/seam-qc/pw\n",
        )
    )
    (tmp_path / "pi.yaml").write_text(pi)
    assert load_roi(tmp_path / "pi.yaml").roi == STATION_ROI
    # a bad config is an error even with --roi (the daemon's validation, with file:line)
    bad = station_yaml(tmp_path / "bad.yaml", seam_video, roi=(500, 0, 256, 256))
    with pytest.raises(
        ConfigError,
        match=r"bad\.yaml:2: camera: roi \[500, 0, 256, 256\] must lie "
        r"inside the 640x480 frame",
    ):
        load_roi(bad, "0,0,10,10")
    (tmp_path / "typo.yaml").write_text(station.read_text().replace("  roi:", "  rio:"))
    with pytest.raises(ConfigError, match=r"typo\.yaml:7: camera\.rio"):
        load_roi(tmp_path / "typo.yaml")


def test_roi_choice_checks_frames():
    c = RoiChoice((192, 112, 256, 256), "s.yaml: camera.roi", (640, 480))
    c.check_frame(640, 480, "video v.mp4")
    with pytest.raises(
        DataError,
        match=r"video v\.mp4: frames are 1280x720, but s\.yaml: camera\.roi "
        r"refers to 640x480 frames .*give --roi",
    ):
        c.check_frame(1280, 720, "video v.mp4")
    with pytest.raises(
        DataError,
        match=r"video v\.mp4: --roi \[100, 0, 100, 100\] does not fit inside its "
        r"160x120 frame",
    ):
        RoiChoice((100, 0, 100, 100), "--roi").check_frame(160, 120, "video v.mp4")


@pytest.mark.parametrize(
    "command",
    [
        ["label", "--video", "{d}/v.avi", "--out", "{d}/out", "--port", "0"],
        ["synth", "--video", "{d}/s.mp4", "--frames", "10"],
        ["train", "--train", "{d}/x.csv", "--valid", "{d}/x.csv", "--out", "{d}/m.keras"],
        ["evaluate", "--model", str(BUNDLE), "--data", "{d}/x.csv"],
    ],
)
@pytest.mark.parametrize(
    "flags,words,code",
    [
        (["--roi", "1,2,3"], ["--roi '1,2,3'", "X,Y,W,H"], DataError.exit_code),
        (["--roi", "0,0,0,64"], ["--roi '0,0,0,64'", "w and h > 0"], DataError.exit_code),
        (["--config", "{d}/missing.yaml"], ["missing.yaml", "not found"], ConfigError.exit_code),
        (
            ["--config", "{d}/bad.yaml"],
            ["bad.yaml:2", "camera: roi [600, 0, 100, 100]", "640x480"],
            ConfigError.exit_code,
        ),
    ],
)
def test_cli_roi_and_config_errors(tmp_path, command, flags, words, code):
    station_yaml(tmp_path / "bad.yaml", tmp_path / "v.avi", roi=(600, 0, 100, 100))
    args = [a.replace("{d}", str(tmp_path)) for a in command + flags]
    p = run_convert(*args, timeout=120)
    assert_one_line_error(p, code, *[w.replace("{d}", str(tmp_path)) for w in words])
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.mp4").exists()


def test_cli_label_roi_outside_the_video_and_camera_size(tmp_path):
    from tests.support.frames import make_video

    video = make_video(tmp_path / "v.avi", 3)  # 160×120
    p = run_convert(
        "label", "--video", str(video), "--out", str(tmp_path / "o"), "--port", "0", "--roi", "100,0,100,100"
    )
    assert_one_line_error(p, DataError.exit_code, "v.avi", "--roi [100, 0, 100, 100]", "160x120")
    station = station_yaml(tmp_path / "s.yaml", video)  # camera 640×480, the video is 160×120
    p = run_convert(
        "label", "--video", str(video), "--out", str(tmp_path / "o"), "--port", "0", "--config", str(station)
    )
    assert_one_line_error(p, DataError.exit_code, "frames are 160x120", "s.yaml: camera.roi", "640x480", "--roi")


# --- synth --video: the truth is for the ROI it is given ----------------------------------------


def test_synth_video_truth_follows_the_roi(tmp_path):
    from convert.synth import write_video
    from edge.seam import DEFAULT_ROI as ROI

    default = write_video(tmp_path / "d.mp4", 150, seed=3, length_stretches=0)
    same = write_video(tmp_path / "s.mp4", 150, seed=3, length_stretches=0, roi=ROI)
    assert default == same
    assert (tmp_path / "d.truth.csv").read_bytes() == (tmp_path / "s.truth.csv").read_bytes()
    left = (20, 100, 200, 280)
    rows = write_video(tmp_path / "l.mp4", 150, seed=3, length_stretches=0, roi=left)
    assert rows and rows != default
    for r in rows:  # each box (at the defect's middle frame) lies wholly inside the given ROI
        assert left[0] <= r.x and r.x + r.w <= left[0] + left[2], r
        assert left[1] <= r.y and r.y + r.h <= left[1] + left[3], r


@pytest.mark.parametrize(
    "roi,words",
    [
        ((500, 100, 256, 256), "inside the 640x480 video frame"),
        ((0, 100, 120, 256), "120 px wide"),
        ((0, 0, 256, 150), "miss the seam"),
    ],
)
def test_synth_video_bad_roi(tmp_path, roi, words):
    from convert.synth import write_video

    with pytest.raises(DataError, match=words):
        write_video(tmp_path / "v.mp4", 60, roi=roi)
    assert not (tmp_path / "v.mp4").exists()


def test_cli_synth_video_with_config_and_roi(seam_video, tmp_path):
    station = station_yaml(tmp_path / "s.yaml", seam_video, roi=(100, 100, 300, 280))
    p = run_convert(
        "synth", "--video", str(tmp_path / "a.mp4"), "--frames", "40", "--defects", "0", "--config", str(station)
    )
    assert p.returncode == 0, p.stderr
    assert "for ROI [100, 100, 300, 280]" in p.stdout
    p = run_convert(
        "synth",
        "--video",
        str(tmp_path / "b.mp4"),
        "--frames",
        "40",
        "--defects",
        "0",
        "--config",
        str(station),
        "--roi",
        "192,112,256,256",
    )
    assert p.returncode == 0 and "for ROI [192, 112, 256, 256]" in p.stdout
    wide = station_yaml(tmp_path / "w.yaml", seam_video, width=1280, height=720)
    p = run_convert("synth", "--video", str(tmp_path / "c.mp4"), "--frames", "40", "--config", str(wide))
    assert_one_line_error(p, DataError.exit_code, "frames are 640x480", "1280x720")
    p = run_convert("synth", "--out", str(tmp_path / "stills"), "--count", "2", "--roi", "0,0,64,64")
    assert_one_line_error(p, DataError.exit_code, "--video only")


# --- train / evaluate: the ROI goes into the data path -----------------------------------------


@pytest.fixture(scope="module")
def frame_sets(seam_video, tmp_path_factory) -> tuple[Path, Path]:
    """The same 6 frames as a set of whole frames and as a set of the daemon's crops."""
    d = tmp_path_factory.mktemp("sets")
    frames = VideoFrames(seam_video)
    rows = []
    for i in range(6):
        img = frames.get(i * 4)
        cv2.imwrite(str(d / f"whole_{i}.png"), img)
        cv2.imwrite(str(d / f"crop_{i}.png"), crop_roi(img, STATION_ROI))
        rows.append([i % 2 == 0, i % 2 == 1, i % 3 == 1, i < 3])
    frames.close()
    for kind in ("whole", "crop"):
        df = pd.DataFrame(
            [[f"{kind}_{i}.png", *r] for i, r in enumerate(rows)], columns=["name", "good", "error", "break", "length"]
        )
        df.to_csv(d / f"{kind}.csv")
    return d / "whole.csv", d / "crop.csv"


def test_evaluate_with_roi_on_whole_frames_equals_evaluate_on_crops(frame_sets, tmp_path):
    from convert.evaluate import evaluate

    whole, crops = frame_sets
    a = evaluate(BUNDLE, whole, roi=STATION_ROI, threads=1)
    b = evaluate(BUNDLE, crops, threads=1)
    assert np.array_equal(a.probabilities, b.probabilities) and a.metrics["roi"] == list(STATION_ROI)
    c = evaluate(BUNDLE, whole, threads=1)
    assert not np.array_equal(c.probabilities, b.probabilities)
    roi = ",".join(str(v) for v in STATION_ROI)
    p = run_convert(
        "evaluate", "--model", str(BUNDLE), "--data", str(whole), "--roi", roi, "--json", str(tmp_path / "m.json")
    )
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "m.json").read_text())["roi"] == list(STATION_ROI)
    p = run_convert("evaluate", "--model", str(BUNDLE), "--data", str(crops), "--roi", roi)
    line = assert_one_line_error(
        p, DataError.exit_code, "crop_0.png", "ROI [150, 96, 300, 240]", "300x240", "take no ROI"
    )
    assert "crop.csv" in line


def test_train_sequence_with_roi_equals_crops(frame_sets, tmp_path):
    from convert.data import make_sequence

    whole, crops = frame_sets
    a = make_sequence(load_dataset(whole), 64, 64, 4, roi=STATION_ROI)
    b = make_sequence(load_dataset(crops), 64, 64, 4)
    for k in range(len(a)):
        assert np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1])
    with pytest.raises(DataError, match="crop_0.png .*does not fit"):
        make_sequence(load_dataset(crops), 64, 64, 4, roi=STATION_ROI)


@pytest.mark.slow  # trains a model (convert train)
def test_cli_train_with_roi(frame_sets, tmp_path):
    whole, crops = frame_sets
    roi = ",".join(str(v) for v in STATION_ROI)
    out = tmp_path / "m.keras"
    p = run_convert(
        "train",
        "--train",
        str(crops),
        "--valid",
        str(crops),
        "--out",
        str(out),
        "--roi",
        roi,
        "--arch",
        "cnn",
        "--size",
        "32",
        "--filters",
        "2",
        "--epochs",
        "1",
    )
    assert_one_line_error(p, DataError.exit_code, "crop_0.png", "does not fit", "take no ROI")
    assert not out.exists()
    p = run_convert(
        "train",
        "--train",
        str(whole),
        "--valid",
        str(whole),
        "--out",
        str(out),
        "--roi",
        roi,
        "--arch",
        "cnn",
        "--size",
        "32",
        "--filters",
        "2",
        "--epochs",
        "1",
    )
    assert p.returncode == 0, p.stderr
    from convert.models import read_meta

    assert read_meta(out)["roi"] == list(STATION_ROI)
