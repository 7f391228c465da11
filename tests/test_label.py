"""Labeling: the state machine (keys in, files out) on real video files, the HTTP API, the CLI errors."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from convert.label import LabelApp, VideoFrames, serve
from convert.label_state import KEYS, Labeler, LabelStore, csv_bytes, open_session
from edge.errors import DataError
from edge.seam import SEAM_LABELS as ATTRS
from tests.support.cli import convert_ok
from tests.support.frames import frame_index, make_video
from tests.support.images import imread

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def video7(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("vid") / "seam7.avi", 7)


@pytest.fixture(scope="module")
def video_mp4(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("vid") / "long.mp4", 40, "mp4v")


def session(video: Path, out: Path) -> Labeler:
    return open_session(VideoFrames(video), out, video.stem, video.name)


def press(lab: Labeler, keys: str | list[str]) -> None:
    for k in keys.split() if isinstance(keys, str) else keys:
        lab.press(k)


def read(out: Path, stem: str) -> pd.DataFrame:
    return pd.read_csv(out / f"{stem}_data.csv", index_col=0)


# --- state machine: keys in, files out -------------------------------------------------------


def test_seed_keys_write_seed_files(video7, tmp_path):
    lab = session(video7, tmp_path)
    assert lab.frame == 0 and lab.frames.frame_count == 7
    press(lab, "g s n")  # good, save frame 0, next
    assert lab.values["good"] and lab.frame == 1  # values carried to the next frame
    press(lab, "g e l s n n b s")  # frame 1: error+length; frame 3: error+length+break
    df = read(tmp_path, "seam7")
    assert list(df.columns) == ["name", *ATTRS]
    assert list(df.index) == [0, 1, 2]
    assert list(df["name"]) == ["seam7_0.png", "seam7_1.png", "seam7_3.png"]
    assert df.loc[0, ["good", "error", "break", "length"]].tolist() == [True, False, False, False]
    assert df.loc[1, ["good", "error", "break", "length"]].tolist() == [False, True, False, True]
    assert df.loc[2, ["good", "error", "break", "length"]].tolist() == [False, True, True, True]
    assert df[list(ATTRS)].dtypes.eq(bool).all()
    # byte-identical to what pandas writes for the same table (the seed wrote it with to_csv)
    assert (tmp_path / "seam7_data.csv").read_text() == df.to_csv(lineterminator="\n")
    for name, i in zip(df["name"], (0, 1, 3)):
        img = imread(tmp_path / name)
        assert img.shape == (120, 160, 3)
        assert frame_index(img) == i  # the PNG is that frame, raw
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*df["name"], "seam7_data.csv"])
    # the workstation reader (used by split/train) reads it
    from convert.data import read_csv

    ds = read_csv(tmp_path / "seam7_data.csv")
    assert ds.labels == ATTRS and len(ds) == 3
    assert ds.targets[2].tolist() == [0.0, 1.0, 1.0, 1.0]


def test_navigation_clamps_on_odd_frame_count(video7, tmp_path):
    lab = session(video7, tmp_path)
    press(lab, "PageDown")
    assert lab.frame == 6
    press(lab, "n")
    assert lab.frame == 6 and "last frame" in lab.message
    press(lab, "ArrowRight Shift+ArrowRight")
    assert lab.frame == 6
    press(lab, "ArrowLeft ArrowLeft")
    assert lab.frame == 4
    press(lab, "Shift+ArrowLeft")
    assert lab.frame == 0
    press(lab, "ArrowLeft PageUp")
    assert lab.frame == 0 and "first frame" in lab.message
    press(lab, "End")
    assert lab.frame == 6
    press(lab, "Home Shift+ArrowRight")
    assert lab.frame == 6
    lab.goto(3)
    assert lab.frame == 3 and lab.message == ""
    lab.goto(100)
    assert lab.frame == 6 and "out of range" in lab.message
    lab.goto(-4)
    assert lab.frame == 0
    press(lab, "End s")  # the last frame saves fine
    assert frame_index(imread(tmp_path / "seam7_6.png")) == 6
    press(lab, "x")
    assert "unknown key" in lab.message


def test_seeking_returns_the_right_frames(video_mp4):
    frames = VideoFrames(video_mp4, cache=2)
    assert frames.frame_count == 40
    order = [0, 1, 2, 30, 5, 6, 39, 12, 11, 10, 20, 21, 3, 39, 0]
    for i in order:
        assert frame_index(frames.get(i)) == i
    with pytest.raises(DataError, match="out of range"):
        frames.get(40)
    frames.close()


def test_resave_replaces_row_and_undo(video7, tmp_path):
    lab = session(video7, tmp_path)
    press(lab, "n n g s")
    press(lab, "g e s")  # same frame again, other labels
    df = read(tmp_path, "seam7")
    assert list(df["name"]) == ["seam7_2.png"]  # replaced, no duplicate
    assert df.loc[0, "error"] and not df.loc[0, "good"]
    assert "replaced" in lab.message
    press(lab, "u")  # back to the first save's labels, the image stays
    df = read(tmp_path, "seam7")
    assert list(df["name"]) == ["seam7_2.png"] and df.loc[0, "good"] and not df.loc[0, "error"]
    assert (tmp_path / "seam7_2.png").is_file()
    press(lab, "n n u")  # undo the first save: row and PNG gone, back at its frame
    assert lab.frame == 2
    assert not (tmp_path / "seam7_2.png").exists()
    assert read(tmp_path, "seam7").empty
    assert (tmp_path / "seam7_data.csv").read_text() == ",name,good,error,break,length\n"
    press(lab, "u")
    assert "nothing to undo" in lab.message


def test_undo_removes_only_the_last_save(video7, tmp_path):
    lab = session(video7, tmp_path)
    press(lab, "b Enter Enter Enter")  # save + next, three times
    assert lab.frame == 3
    want = {"good": 0, "error": 0, "break": 3, "length": 0, "unknown": 0, "saved": 3, "contradictory": 0}
    assert lab.counts() == want
    press(lab, "u")
    assert lab.frame == 2
    assert list(read(tmp_path, "seam7")["name"]) == ["seam7_0.png", "seam7_1.png"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["seam7_0.png", "seam7_1.png"]
    assert lab.state()["counts"]["saved"] == 2


def test_resume_after_last_saved_frame(video7, tmp_path):
    lab = session(video7, tmp_path)
    press(lab, "n g s n n l s")  # frames 1 (good) and 3 (good+length)
    assert isinstance(lab.frames, VideoFrames)
    lab.frames.close()
    again = session(video7, tmp_path)
    assert again.frame == 4
    assert again.values == {"good": True, "error": False, "break": False, "length": True}
    want = {"good": 2, "error": 0, "break": 0, "length": 1, "unknown": 0, "saved": 2, "contradictory": 0}
    assert again.counts() == want
    assert "resumed after frame 3" in again.message
    assert again.notes == []
    press(again, "End s")
    assert session(video7, tmp_path).frame == 6  # clamps when the last frame is saved


def test_contradiction_warning_and_count(video7, tmp_path):
    lab = session(video7, tmp_path)
    assert lab.state()["warning"] is None
    press(lab, "g b")
    st = lab.state()
    assert "good" in st["warning"] and "break" in st["warning"]
    press(lab, "e")
    assert "error and break" in lab.state()["warning"]
    press(lab, "s")
    assert "contradictory" in lab.message
    assert lab.counts()["contradictory"] == 1
    press(lab, "g")
    assert lab.state()["warning"] is None


def test_state_is_json_and_lists_keys(video7, tmp_path):
    lab = session(video7, tmp_path)
    press(lab, "l s")
    st = json.loads(json.dumps(lab.state()))
    assert st["frames"] == 7 and st["frame"] == 0 and st["video"] == "seam7.avi"
    assert st["saved"] == {"good": False, "error": False, "break": False, "length": True}
    assert st["can_undo"] and st["undo_frame"] == 0
    assert set(st["keys"]) == set(KEYS) and {"n", "g", "e", "b", "l", "s", "q", "u"} <= set(st["keys"])
    press(lab, "q")
    assert lab.state()["quit"]


# --- crash safety and reconciliation --------------------------------------------------------


def test_failed_csv_write_leaves_no_image_and_old_csv(video7, tmp_path, monkeypatch):
    lab = session(video7, tmp_path)
    press(lab, "g s n")
    before = (tmp_path / "seam7_data.csv").read_bytes()
    import convert.label_state as ls

    real = ls.atomic_write  # type: ignore[attr-defined]  # the name label_state calls (and the test patches)

    def failing(path, data):
        if path.suffix == ".csv":
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(ls, "atomic_write", failing)
    press(lab, "s")
    assert lab.message.startswith("not saved") and "No space left" in lab.message
    assert (tmp_path / "seam7_data.csv").read_bytes() == before
    assert not (tmp_path / "seam7_1.png").exists()
    assert 1 not in lab.store.rows and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    monkeypatch.setattr(ls, "atomic_write", real)
    press(lab, "s")
    assert list(read(tmp_path, "seam7")["name"]) == ["seam7_0.png", "seam7_1.png"]


def test_reconcile_on_open(video7, tmp_path):
    lab = session(video7, tmp_path)
    press(lab, "g s n s n s")  # frames 0, 1, 2
    assert isinstance(lab.frames, VideoFrames)
    lab.frames.close()
    csv_path = tmp_path / "seam7_data.csv"
    t = csv_path.stat().st_mtime
    # a crash between the PNG and the CSV write: an image newer than the CSV without a row
    crashed = tmp_path / "seam7_5.png"
    crashed.write_bytes((tmp_path / "seam7_0.png").read_bytes())
    os.utime(crashed, (t + 5, t + 5))
    # an older image without a row (not ours to delete) and a leftover temp file
    older = tmp_path / "seam7_4.png"
    older.write_bytes((tmp_path / "seam7_0.png").read_bytes())
    os.utime(older, (t - 100, t - 100))
    (tmp_path / ".seam7_data.csv.tmp-999").write_text("half")
    # a row whose image went missing
    (tmp_path / "seam7_1.png").unlink()
    other = tmp_path / "other_3.png"  # another video's image: untouched
    other.write_bytes(b"x")

    again = session(video7, tmp_path)
    notes = "\n".join(again.notes)
    assert not crashed.exists() and "removed 1 image(s) without a CSV row" in notes and "seam7_5.png" in notes
    assert older.exists() and "seam7_4.png" in notes and "kept" in notes
    assert "have no image" in notes and "seam7_1.png" in notes
    assert "temp file" in notes and not (tmp_path / ".seam7_data.csv.tmp-999").exists()
    assert other.exists()
    assert sorted(again.store.rows) == [0, 1, 2]  # rows kept, reported
    assert again.state()["notes"] == again.notes
    press(again, "Home n s")  # saving frame 1 again restores its image
    assert (tmp_path / "seam7_1.png").is_file()
    assert read(tmp_path, "seam7")["name"].tolist() == ["seam7_0.png", "seam7_1.png", "seam7_2.png"]


def test_duplicate_rows_in_csv_collapse_to_one(video7, tmp_path):
    (tmp_path / "seam7_data.csv").write_text(
        ",name,good,error,break,length\n0,seam7_2.png,True,False,False,False\n1,seam7_2.png,False,True,False,False\n"
    )
    (tmp_path / "seam7_2.png").write_bytes(b"png")
    lab = session(video7, tmp_path)
    assert list(lab.store.rows) == [2] and lab.store.rows[2].values == (False, True, False, False)
    press(lab, "s")
    assert read(tmp_path, "seam7")["name"].tolist() == ["seam7_2.png", "seam7_3.png"]


@pytest.mark.parametrize(
    "content, match",
    [
        (",name,good,error\n", "header"),
        (
            ",name,good,error,break,length\n0,seam7_1.png,True,maybe,False,False\n",
            r"seam7_data.csv:2: column 'error' has value 'maybe'",
        ),
        (",name,good,error,break,length\n0,frame1.png,True,False,False,False\n", "is not seam7_<frame>.png"),
        (",name,good,error,break,length\n0,seam7_1.png,True\n", "fields"),
    ],
)
def test_bad_csv_is_one_clear_error(video7, tmp_path, content, match):
    (tmp_path / "seam7_data.csv").write_text(content)
    with pytest.raises(DataError, match=match):
        LabelStore(tmp_path, "seam7").load()


def test_shift_key_saves_cannot_tell_as_an_empty_cell_that_train_leaves_out(video7, tmp_path):
    """Shift+letter: "cannot tell" (e.g. the stitch length at a scale where 2 and 4 mm stitches look
    alike) is saved as an empty cell, as synth writes for wide views; the workstation reads it as
    unknown (NaN: left out of the loss); resuming shows it; a toggle sets the label again."""
    from convert.data import load_dataset

    lab = session(video7, tmp_path)
    press(lab, "g Shift+l")
    assert lab.values["length"] is None and lab.message.startswith("length: cannot tell")
    assert lab.state()["values"]["length"] is None and "Shift+l" in lab.state()["keys"]
    press(lab, "s n Shift+e s")  # frame 0: good, length unknown; frame 1: error unknown too
    assert lab.message == "saved seam7_1.png; cannot tell error, length"
    lines = (tmp_path / "seam7_data.csv").read_text().splitlines()
    assert lines[1:] == ["0,seam7_0.png,True,False,False,", "1,seam7_1.png,True,,False,"]
    df = read(tmp_path, "seam7")  # pandas reads the empty cells as NaN and writes them back the same
    assert df["length"].isna().all() and (tmp_path / "seam7_data.csv").read_text() == df.to_csv(lineterminator="\n")
    ds = load_dataset(tmp_path / "seam7_data.csv")
    i_len, i_err = ATTRS.index("length"), ATTRS.index("error")
    assert np.isnan(ds.targets[:, i_len]).all() and np.isnan(ds.targets[1, i_err]) and ds.targets[0, i_err] == 0.0
    assert lab.counts()["unknown"] == 2 and lab.counts()["error"] == 0 and lab.counts()["good"] == 2
    again = session(video7, tmp_path)  # resumes after frame 1 with its values, the unknowns included
    assert again.frame == 2 and again.values == {"good": True, "error": None, "break": False, "length": None}
    press(again, "l e")
    assert again.values["length"] is True and again.values["error"] is True


def test_csv_bytes_match_pandas():
    from convert.label_state import Row

    rows = [Row(3, "a b,c_3.png", (True, False, True, False)), Row(9, "a b,c_9.png", (False,) * 4)]
    df = pd.DataFrame({"name": [r.name for r in rows], **{a: [r.values[i] for r in rows] for i, a in enumerate(ATTRS)}})
    assert csv_bytes(rows).decode() == df.to_csv(lineterminator="\n")
    back = pd.read_csv(io.BytesIO(csv_bytes(rows)), index_col=0)
    assert back.equals(df)


# --- the HTTP API (no browser) ----------------------------------------------------------------


def test_http_api_and_clean_shutdown(video7, tmp_path):
    frames = VideoFrames(video7)
    lab = open_session(frames, tmp_path, video7.stem, video7.name)
    app = LabelApp(lab, frames)
    server = serve(app, "127.0.0.1", 0)
    port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    t.start()
    base = f"http://127.0.0.1:{port}"

    def post(path, obj, ctype="application/json"):
        req = urllib.request.Request(base + path, json.dumps(obj).encode(), {"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    try:
        with urllib.request.urlopen(base + "/", timeout=10) as r:
            assert b'id="frame"' in r.read()
        for asset in ("/label.js", "/label.css"):
            with urllib.request.urlopen(base + asset, timeout=10) as r:
                assert r.status == 200 and len(r.read()) > 100
        assert post("/api/key", {"key": "e"})["values"]["error"] is True
        st = post("/api/key", {"key": "s"})
        assert st["counts"]["saved"] == 1 and (tmp_path / "seam7_0.png").is_file()
        st = post("/api/goto", {"frame": 5})
        assert st["frame"] == 5 and len(st["frame_tag"]) == 12
        with urllib.request.urlopen(f"{base}/frame/5.jpg?v={st['frame_tag']}", timeout=10) as r:
            assert r.headers["Content-Type"] == "image/jpeg"
            img = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and frame_index(img) == 5
        with urllib.request.urlopen(base + "/frame/2.png", timeout=10) as r:
            shown = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
            assert shown is not None and frame_index(shown) == 2
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/frame/7.jpg", timeout=10)
        assert e.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as e:  # forms from other sites are refused
            post("/api/key", {"key": "u"}, ctype="application/x-www-form-urlencoded")
        assert e.value.code == 415 and (tmp_path / "seam7_0.png").is_file()
        assert post("/api/key", {"key": "q"})["quit"] is True
        t.join(timeout=10)
        assert not t.is_alive()  # q stopped the server
    finally:
        if t.is_alive():
            server.shutdown()
            t.join()
        server.server_close()
        frames.close()


# --- the command: one clear line for bad input ----------------------------------------------


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convert", "label", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == DataError.exit_code, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in p.stderr
    for w in words:
        assert w in lines[0]


def test_cli_missing_video(tmp_path):
    p = run_cli("--video", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "out"), "--port", "0")
    assert_one_line_error(p, "nope.mp4", "no such file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"this is not a video\n" * 200, bytes(range(256)) * 16])
def test_cli_unreadable_video(tmp_path, content):
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(content)
    p = run_cli("--video", str(bad), "--out", str(tmp_path / "out"), "--port", "0")
    assert_one_line_error(p, "garbage.mp4", "OpenCV")


def test_unreadable_video_errors_repeatably(tmp_path):
    bad = tmp_path / "noise.mp4"
    for seed in range(5):  # random bytes make FFmpeg say different things; each is one DataError
        bad.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        with pytest.raises(DataError, match="noise.mp4: OpenCV cannot"):
            VideoFrames(bad)


def test_cli_unwritable_output(video7, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    p = run_cli("--video", str(video7), "--out", str(blocker), "--port", "0")
    assert_one_line_error(p, str(blocker), "not a folder")
    p = run_cli("--video", str(video7), "--out", str(blocker / "sub"), "--port", "0")
    assert_one_line_error(p, str(blocker / "sub"), "cannot create")
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        p = run_cli("--video", str(video7), "--out", str(ro), "--port", "0")
        assert_one_line_error(p, str(ro), "not writable")


def test_cli_port_in_use(video7, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run_cli("--video", str(video7), "--out", str(tmp_path), "--port", str(port))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and f"127.0.0.1:{port}" in p.stderr
    p = run_cli("--video", str(video7), "--out", str(tmp_path), "--port", "70000")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "--port '70000'" in p.stderr


def test_cli_help_names_the_keys():
    p = run_cli("--help")
    assert p.returncode == 0 and "--video" in p.stdout and "undo" in p.stdout


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a script gives its children


@pytest.mark.parametrize("stop", ["q", "SIGINT", "SIGINT, started with it ignored"])
def test_cli_serves_and_stops_cleanly(video7, tmp_path, stop):
    p = subprocess.Popen(
        [sys.executable, "-m", "convert", "label", "--video", str(video7), "--out", str(tmp_path), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint if "ignored" in stop else None,
    )
    assert p.stdout is not None
    masks: list[str] = []
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            if "http://" in line:
                url = line.split("http://", 1)[1].split()[0].rstrip("/")
        assert url and url.startswith("127.0.0.1:")
        req = urllib.request.Request(f"http://{url}/api/key", b'{"key": "s"}', {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.load(r)["counts"]["saved"] == 1
        if stop == "q":
            req = urllib.request.Request(f"http://{url}/api/key", b'{"key": "q"}', {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert json.load(r)["quit"]
        else:
            status = Path(f"/proc/{p.pid}/status").read_text()
            masks += [ln for ln in status.splitlines() if ln.startswith(("SigBlk", "SigIgn"))]
            p.send_signal(signal.SIGINT)  # Ctrl-C in the terminal
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit 30 s after {stop}; the child's signal masks: {masks}")
        assert p.returncode == 0, err
        assert "saved 1 frame(s)" in out and "Traceback" not in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_split_reads_label_output(video7, tmp_path):
    """The pipeline's ``split`` merges our ``*_data.csv`` (skips until that command exists)."""
    if not (ROOT / "convert" / "split.py").is_file():
        pytest.skip("convert split is not in the tree yet")
    lab = session(video7, tmp_path / "labels")
    press(lab, "g Enter Enter e Enter Enter b Enter Enter Enter")
    assert lab.counts()["saved"] == 7
    convert_ok("split", "--data", str(tmp_path / "labels"), "--out", str(tmp_path / "split"), timeout=120)
    parts = [pd.read_csv(tmp_path / "split" / f, index_col=0) for f in ("train.csv", "valid.csv", "test.csv")]
    names = sorted(Path(n).name for df in parts for n in df["name"])
    assert names == sorted(f"seam7_{i}.png" for i in range(7))
