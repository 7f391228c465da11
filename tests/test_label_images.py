"""convert label --images: a folder of images reviewed with the seed's keys, pre-labels from the folder's
data.csv (a convert collect folder, collected here from a real Mosquitto) or none (any folder of
PNG/JPG); the page's HTTP API; the CLI; the CSV feeds split."""

from __future__ import annotations

import json
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

from convert.collect import CSV_NAME, CollectStore, read_rows
from convert.data import parse_source, read_csv
from convert.label import ImageFolder, LabelApp, serve
from convert.label_state import Labeler, open_folder_session
from edge.errors import DataError
from edge.seam import SEAM_LABELS as ATTRS
from tests.support.cli import convert_ok
from tests.support.collect import noise_image
from tests.support.images import imread

ROOT = Path(__file__).resolve().parent.parent


def review(folder: Path, out: Path | None = None) -> Labeler:
    frames = ImageFolder(folder)
    return open_folder_session(frames, frames.paths, out or folder, folder.name)


def press(lab: Labeler, keys: str) -> None:
    for k in keys.split():
        lab.press(k)


def values(lab: Labeler) -> list[bool | None]:
    return [lab.values[a] for a in ATTRS]


@pytest.fixture
def collected(mqtt_broker, collected_folder, tmp_path) -> Path:
    return collected_folder(mqtt_broker, tmp_path / "collected")


def test_review_of_a_collect_folder_shows_prelabels_confirms_corrects_and_resumes(collected):
    names = [r.name for r in read_rows(collected / CSV_NAME)]
    lab = review(collected)
    assert isinstance(lab.frames, ImageFolder)
    assert lab.frames.frame_count == 6 and lab.frame == 0
    assert [p.name for p in lab.frames.paths] == sorted(names)  # frame i is the i-th image by name
    pre = {
        n: tuple(pd.read_csv(collected / CSV_NAME, index_col=0).set_index("name").loc[n, list(ATTRS)]) for n in names
    }
    order = [p.name for p in lab.frames.paths]
    st = lab.state()
    assert st["mode"] == "images" and st["reviewed"] is False and st["counts"]["reviewed"] == 0
    assert tuple(values(lab)) == pre[order[0]]  # pre-labels shown on arrival
    press(lab, "Enter")  # confirm + next
    assert lab.frame == 1 and tuple(values(lab)) == pre[order[1]]
    press(lab, "Enter")
    assert tuple(values(lab)) == pre[order[2]]
    before = values(lab)
    press(lab, "e g Enter")  # correct: toggle error and good, save, next
    corrected = order[2]
    press(lab, "n n u")  # undo the correction: back to its pre-label
    assert lab.frame == 2 and values(lab) == before and lab.state()["reviewed"] is False
    press(lab, "e g Enter")
    assert lab.counts()["reviewed"] == 3
    df = pd.read_csv(collected / CSV_NAME, index_col=0).set_index("name")
    assert sorted(df.index) == sorted(names)  # no row added or lost, images untouched
    assert df.loc[order[0], "reviewed"] and df.loc[order[1], "reviewed"] and df.loc[corrected, "reviewed"]
    assert not df.loc[order[3:], "reviewed"].any()
    assert [bool(v) for v in df.loc[corrected, list(ATTRS)]] == [not before[0], not before[1], *before[2:]]
    assert all(parse_source(df.loc[n, "source"])["station"] == "st1" for n in names)  # source kept
    # the operator's false alarm with break arrived as a break pre-label
    verdict_rows = [n for n in names if "verdict" in parse_source(df.loc[n, "source"])]
    assert verdict_rows == ["st1-b00t-00000003-flagged.png"]
    assert pre[verdict_rows[0]][:3] == (False, False, True)
    # reopened: resumes at the first image no person reviewed
    again = review(collected)
    assert again.frame == 3 and "3 of 6 reviewed" in again.message
    assert tuple(values(again)) == pre[order[3]]
    ds = read_csv(collected / CSV_NAME)  # convert's loader reads it
    assert len(ds) == 6 and ds.labels == ATTRS


def test_any_folder_of_images_is_labelled_into_a_seed_csv_that_splits(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(12):
        ext = "jpg" if i % 3 == 0 else "png"
        cv2.imwrite(str(imgs / f"img{i}.{ext}"), noise_image(i, 40))
    (imgs / "notes.txt").write_text("not an image")
    lab = review(imgs, tmp_path / "labels")
    assert isinstance(lab.frames, ImageFolder)
    assert [p.name for p in lab.frames.paths][:3] == ["img0.jpg", "img1.png", "img2.png"]  # 2 before 10
    assert lab.frame == 0 and values(lab) == [False] * 4 and "0 of 12 reviewed" in lab.message
    press(lab, "g Enter Enter e g Enter")  # carried to the next image when it has no row, like frames
    assert lab.frame == 3 and lab.counts()["saved"] == 3
    press(lab, "u")
    assert lab.frame == 2 and (imgs / "img2.png").is_file()  # undo never deletes an image
    press(lab, "Enter " * 10)
    df = pd.read_csv(tmp_path / "labels" / CSV_NAME, index_col=0)
    assert len(df) == 12 and df["reviewed"].all()
    assert sorted(Path(n).name for n in df["name"]) == sorted(p.name for p in imgs.iterdir() if p.suffix != ".txt")
    assert all(n.startswith("../imgs/") for n in df["name"])  # relative to the CSV
    convert_ok("split", "--data", str(tmp_path / "labels"), "--out", str(tmp_path / "split"), timeout=120)
    n = sum(len(read_csv(tmp_path / "split" / f)) for f in ("train.csv", "valid.csv", "test.csv"))
    assert n == 12


def test_an_empty_cell_is_cannot_tell_in_review_and_stays_empty(tmp_path):
    """A folder whose CSV leaves a label empty (synth's wide views, or Shift+letter in an earlier
    review) is reviewed with that label unknown; confirming keeps the cell empty, and collect's
    reader reads it back; a cell that is neither True, False nor empty is one clear error."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        cv2.imwrite(str(imgs / f"img{i}.png"), noise_image(i, 40))
    (imgs / CSV_NAME).write_text(
        ",name,good,error,break,length\n0,img0.png,True,False,False,\n1,img1.png,False,True,False,True\n"
    )
    lab = review(imgs)
    assert lab.frame == 0 and values(lab) == [True, False, False, None]
    press(lab, "Enter")  # confirmed as it is: the cell stays empty
    assert lab.message == "confirmed img0.png: good; cannot tell length"
    assert values(lab) == [False, True, False, True]
    press(lab, "Shift+b Enter")
    rows = read_rows(imgs / CSV_NAME)
    assert [r.values for r in rows] == [(True, False, False, None), (False, True, None, True)]
    assert [r.reviewed for r in rows] == [True, True] and lab.counts()["unknown"] == 2
    (imgs / CSV_NAME).write_text(",name,good,error,break,length\n0,img0.png,True,False,False,maybe\n")
    with pytest.raises(DataError, match=r"data.csv:2: expected True, False or empty in the label columns"):
        review(imgs)


def test_page_api_serves_the_images_with_their_prelabels(collected):
    frames = ImageFolder(collected)
    lab = open_folder_session(frames, frames.paths, collected, collected.name)
    app = LabelApp(lab, frames)
    server = serve(app, "127.0.0.1", 0)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    t.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def post(path, obj):
        req = urllib.request.Request(base + path, json.dumps(obj).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    try:
        with urllib.request.urlopen(base + "/api/state", timeout=10) as r:
            st = json.load(r)
        assert st["mode"] == "images" and st["frames"] == 6 and st["reviewed"] is False
        assert st["values"] == st["saved"] and st["source"].startswith("station=st1")
        with urllib.request.urlopen(f"{base}/frame/0.png?v={st['frame_tag']}", timeout=10) as r:
            img = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and np.array_equal(img, imread(frames.paths[0]))
        st = post("/api/key", {"key": "Enter"})
        assert st["frame"] == 1 and st["counts"]["reviewed"] == 1 and st["message"].startswith("confirmed ")
        st = post("/api/goto", {"frame": 0})
        assert st["reviewed"] is True
        assert post("/api/key", {"key": "q"})["quit"] is True
        t.join(10)
        assert not t.is_alive()
    finally:
        if t.is_alive():
            server.shutdown()
            t.join()
        server.server_close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convert", "label", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    cv2.imwrite(str(tmp_path / "a.png"), noise_image(0, 8))
    for args, code, needle in (
        (["--images", str(tmp_path / "nope")], DataError.exit_code, "no such folder"),
        (["--images", str(tmp_path / "empty")], DataError.exit_code, "no images"),
        (["--images", str(tmp_path), "--roi", "0,0,4,4"], 78, "not with --images"),
        (["--video", str(tmp_path / "v.mp4")], 78, "--out: required with --video"),
    ):
        p = _cli(*args, "--port", "0")
        lines = p.stderr.strip().splitlines()
        assert p.returncode == code and len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr
    p = _cli("--images", str(tmp_path), "--video", "x.mp4")
    assert p.returncode == 2 and "not allowed with" in p.stderr


def test_cli_reviews_a_folder_and_refuses_one_collect_is_writing(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"s{i}.png"), noise_image(i, 16))
    store = CollectStore(tmp_path)  # a collector holds the folder
    try:
        p = _cli("--images", str(tmp_path), "--port", "0")
        assert p.returncode == 78 and "in use by another collect or label" in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    finally:
        store.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "convert", "label", "--images", str(tmp_path), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "http://" in line:
                url = line.split("http://", 1)[1].split()[0].rstrip("/")
        assert url, proc.stderr.read() if proc.poll() is not None else "no URL"
        for key in ("b", "Enter", "q"):
            req = urllib.request.Request(
                f"http://{url}/api/key", json.dumps({"key": key}).encode(), {"Content-Type": "application/json"}
            )
            urllib.request.urlopen(req, timeout=10).read()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "reviewed 1 of 3 image(s)" in out and "Traceback" not in err
        df = pd.read_csv(tmp_path / CSV_NAME, index_col=0)
        assert list(df["name"]) == ["s0.png"] and bool(df.loc[0, "break"]) and bool(df.loc[0, "reviewed"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
