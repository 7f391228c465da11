"""convert collect: samples published the daemon's way (Sampler → SampleWorker → Publisher.sample) on a
real Mosquitto, collected through an MQTT 5 shared subscription into the seed's CSV: split between
collectors without duplicates or loss, verdicts update rows, kill/restart resumes, bad messages are
counted, and the result loads, splits and fine-tunes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from convert.collect import (
    CSV_NAME,
    HEADER,
    BadSample,
    Collector,
    CollectStore,
    Received,
    parse_message,
    prelabels,
    read_rows,
    source_text,
)
from convert.data import parse_source, read_csv
from edge.errors import ConfigError
from tests.support.collect import noise_image
from tests.support.images import imread
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent


def _png(i: int) -> bytes:
    return cv2.imencode(".png", noise_image(i, 32))[1].tobytes()


def _meta(sid: str, station: str = "st1", **kw) -> dict:
    m = {
        "sample_id": sid,
        "station": station,
        "ts": "2026-12-04T05:00:00.000Z",
        "frame": 7,
        "event_id": None,
        "reason": "uncertain",
        "scores": {"good": 0.6, "error": 0.45, "break": 0.05, "length": 0.9},
        "model_labels": [],
        "labels": [],
        "verdict": None,
        "model": {"name": "tiny", "sha256": "ab" * 32, "version": "v1"},
    }
    m.update(kw)
    return m


def _received(meta: dict, i: int = 0) -> Received:
    return parse_message(f"seamqc/{meta['station']}/sample", _png(i), {"sample": json.dumps(meta)}, "seamqc")


# --- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, model_labels, length_score, want",
    [
        ([], [], 0.9, (True, False, False, True)),  # good, 2 mm
        (["error"], ["error"], 0.2, (False, True, False, False)),  # error, 4 mm
        (["error", "break"], ["error"], 0.7, (False, True, True, True)),
        (["length"], ["length"], 0.2, (True, False, False, False)),  # the model's wrong-length flag: its reading
        ([], ["length"], 0.2, (True, False, False, True)),  # operator: length was fine → the other length
        (["length"], [], 0.8, (True, False, False, False)),  # a wrong length the model missed → flipped
    ],
)
def test_prelabels_follow_the_samples_labels_and_the_length_score(labels, model_labels, length_score, want):
    meta = _meta("s", labels=labels, model_labels=model_labels, scores={"length": length_score, "error": 0.5})
    assert prelabels(meta) == want


def test_source_names_station_reason_ids_model_and_verdict():
    meta = _meta(
        "st1-b00t-00000007-flagged",
        reason="flagged",
        event_id="st1-b00t-3",
        verdict={"verdict": "false_alarm", "labels": [], "by": "anna; x=1", "ts": "2026-12-04T05:01:00.000Z"},
    )
    src = parse_source(source_text(meta, "st1"))
    assert src == {
        "station": "st1",
        "reason": "flagged",
        "sample": "st1-b00t-00000007-flagged",
        "event": "st1-b00t-3",
        "model": "tiny@v1",
        "verdict": "false_alarm@2026-12-04T05:01:00.000Z",
        "by": "anna, x:1",
    }


@pytest.mark.parametrize(
    "topic, payload, user, reason",
    [
        ("seamqc/st1/alert", b"\x89PNG\r\n\x1a\n", {}, "not a sample topic"),
        ("seamqc/st1/sample", b"GIF89a", {}, "not a PNG"),
        ("seamqc/st1/sample", b"\x89PNG\r\n\x1a\nxx", {}, "no 'sample' user property"),
        ("seamqc/st1/sample", b"\x89PNG\r\n\x1a\nxx", {"sample": "{"}, "not JSON"),
        ("seamqc/st1/sample", b"\x89PNG\r\n\x1a\nxx", {"sample": "[1]"}, "not an object"),
        ("seamqc/st1/sample", b"\x89PNG\r\n\x1a\nxx", {"sample": json.dumps(_meta(""))}, "no sample_id"),
        ("seamqc/st2/sample", b"\x89PNG\r\n\x1a\nxx", {"sample": json.dumps(_meta("a"))}, "station in metadata"),
        ("seamqc/st1/sample", b"\x89PNG\r\n\x1a\nxx", {"sample": json.dumps(_meta("a", scores={"x": 1}))}, "seam's"),
        ("seamqc/st1/sample", b"\x89PNG\r\n\x1a\nxx", {"sample": json.dumps(_meta("a", scores=1))}, "scores"),
        ("seamqc/st1/sample", b"\x89PNG\r\n\x1a\nxx", {"sample": json.dumps(_meta("a", labels="e"))}, "labels"),
        ("seamqc/st1/sample", b"\x89PNG\r\n\x1a\nxx", {"sample": json.dumps(_meta("a"))}, "does not decode"),
    ],
)
def test_bad_messages_are_named(topic, payload, user, reason):
    with pytest.raises(BadSample, match=reason):
        parse_message(topic, payload, user, "seamqc")


def test_store_one_row_per_sample_verdicts_update_and_the_csv_loads(tmp_path):
    out = tmp_path / "ds"
    store = CollectStore(out)
    a = _meta("st1-b00t-00000001-flagged", reason="flagged", labels=["error"], model_labels=["error"])
    assert store.add(_received(a, 1), "t") == "new"
    assert store.add(_received(_meta("st1-b00t-00000002-uncertain"), 2), "t") == "new"
    assert store.add(_received(a, 1), "t") == "duplicate"  # a re-delivery
    v1 = {"verdict": "false_alarm", "labels": [], "by": "anna", "ts": "2026-12-04T05:01:00.000Z"}
    assert store.add(_received({**a, "labels": [], "verdict": v1}, 1), "t") == "updated"
    assert store.add(_received(a, 1), "t") == "duplicate"  # the old copy, late: the verdict stays
    assert store.add(_received({**a, "labels": [], "verdict": v1}, 1), "t") == "duplicate"
    store.close()
    df = pd.read_csv(out / CSV_NAME, index_col=0)
    assert list(df.columns) == list(HEADER[1:]) and list(df.index) == [0, 1]
    assert df.loc[0, ["good", "error", "break", "length"]].tolist() == [True, False, False, True]
    assert parse_source(df.loc[0, "source"])["verdict"].startswith("false_alarm@")
    assert not df["reviewed"].any()
    side = json.loads((out / "st1-b00t-00000001-flagged.json").read_text())
    assert side["verdict"] == v1 and side["topic"] == "seamqc/st1/sample"
    ds = read_csv(out / CSV_NAME)  # convert's loader: source/reviewed are not labels
    assert ds.labels == ("good", "error", "break", "length") and len(ds) == 2
    assert ds.targets.tolist() == [[1, 0, 0, 1], [1, 0, 0, 1]]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            CSV_NAME,
            *(f"st1-b00t-0000000{i}-{r}.{e}" for i, r in ((1, "flagged"), (2, "uncertain")) for e in ("png", "json")),
        ]
    )


def test_reopening_resumes_cuts_a_torn_line_and_one_store_per_folder(tmp_path):
    out = tmp_path / "ds"
    store = CollectStore(out)
    for i in range(3):
        store.add(_received(_meta(f"st1-b00t-{i:08d}-uncertain"), i), "t")
    with pytest.raises(ConfigError, match="in use by another collect or label"):
        CollectStore(out)
    store.close()
    with open(out / CSV_NAME, "a") as f:
        f.write("3,st1-b00t-00000003-unc")  # a power cut in the middle of an append
    store = CollectStore(out)
    assert len(store.rows) == 3 and any("torn" in n for n in store.notes)
    assert store.add(_received(_meta("st1-b00t-00000001-uncertain"), 1), "t") == "duplicate"
    assert store.add(_received(_meta("st1-b00t-00000009-uncertain"), 9), "t") == "new"
    store.close()
    rows = read_rows(out / CSV_NAME)
    assert [r.name for r in rows] == [f"st1-b00t-{i:08d}-uncertain.png" for i in (0, 1, 2, 9)]
    assert list(pd.read_csv(out / CSV_NAME, index_col=0).index) == [0, 1, 2, 3]


# --- a real broker ---------------------------------------------------------------------------


def _collector(broker, out: Path, **kw) -> Collector:
    c = Collector(CollectStore(out), broker.host, broker.port, progress_every=1000, **kw)
    c.connect()
    return c


def _close(c: Collector) -> None:
    c.stop.set()
    c.close()
    c.store.close()


def test_two_collectors_share_the_plant_without_duplicates_or_loss(mqtt_broker, sample_station, tmp_path):
    c1 = _collector(mqtt_broker, tmp_path / "c1")
    c2 = _collector(mqtt_broker, tmp_path / "c2")
    try:
        stations = [sample_station(mqtt_broker, "st1"), sample_station(mqtt_broker, "st2")]
        for k in range(15):
            for st in stations:
                st.alert() if k % 3 == 0 else st.uncertain()
        for st in stations:
            st.wait_published(15)
        wait_until(lambda: c1.counts["new"] + c2.counts["new"] >= 30, 30, "30 samples collected")
        time.sleep(0.5)  # nothing more arrives
    finally:
        _close(c1)
        _close(c2)
    rows = {d: pd.read_csv(tmp_path / d / CSV_NAME, index_col=0) for d in ("c1", "c2")}
    names = [n for df in rows.values() for n in df["name"]]
    assert len(names) == len(set(names)) == 30  # no duplicates, no loss
    assert all(len(df) >= 5 for df in rows.values())  # the broker shared them out
    expected = {
        f"{st}-b00t-{f:08d}-{'flagged' if (f - 1) % 3 == 0 else 'uncertain'}.png"
        for st in ("st1", "st2")
        for f in range(1, 16)
    }
    assert set(names) == expected
    for d, df in rows.items():
        for name, src in zip(df["name"], df["source"]):
            s = parse_source(src)
            assert s["station"] == name.split("-")[0] and s["sample"] == name[:-4] and s["model"] == "tiny@v1"
            assert s["reason"] == ("flagged" if "flagged" in name else "uncertain")
            img = imread(tmp_path / d / name)
            station = stations[0] if name.startswith("st1") else stations[1]
            assert np.array_equal(img, station.images(int(name.split("-")[2])))  # the station's crop, lossless
        flagged = df[df["name"].str.contains("flagged")]
        assert flagged["error"].all() and not flagged["good"].any()
        unc = df[df["name"].str.contains("uncertain")]
        assert unc["good"].all() and not unc["error"].any() and not unc["length"].any()  # length 0.2: 4 mm


def test_a_republished_verdict_updates_the_row(mqtt_broker, sample_station, tmp_path):
    c = _collector(mqtt_broker, tmp_path / "out")
    try:
        st = sample_station(mqtt_broker, "st1")
        ev = [st.alert() for _ in range(3)]
        st.wait_published(3)
        wait_until(lambda: c.counts["new"] == 3, 20, "3 samples")
        st.verdict(ev[0], "false_alarm", ["break"])
        st.verdict(ev[1], "confirmed")
        st.wait_published(5)
        wait_until(lambda: c.counts["updated"] == 2, 20, "2 rows updated")
    finally:
        _close(c)
    df = pd.read_csv(tmp_path / "out" / CSV_NAME, index_col=0).set_index("name")
    assert len(df) == 3
    labels = {n: df.loc[n, ["good", "error", "break"]].tolist() for n in df.index}
    assert labels["st1-b00t-00000001-flagged.png"] == [False, False, True]  # the operator's break
    assert labels["st1-b00t-00000002-flagged.png"] == [False, True, False]  # confirmed error
    assert labels["st1-b00t-00000003-flagged.png"] == [False, True, False]  # the model's, no verdict
    src = {n: parse_source(df.loc[n, "source"]) for n in df.index}
    assert src["st1-b00t-00000001-flagged.png"]["verdict"].startswith("false_alarm@")
    assert (
        src["st1-b00t-00000001-flagged.png"]["by"] == "anna" and "verdict" not in src["st1-b00t-00000003-flagged.png"]
    )


def test_cli_killed_and_restarted_resumes_without_duplicates(mqtt_broker, sample_station, collect_cli, tmp_path):
    out = tmp_path / "out"
    first = collect_cli(mqtt_broker, out, "--progress", "5").ready()
    st1, st2 = sample_station(mqtt_broker, "st1"), sample_station(mqtt_broker, "st2")
    for _ in range(20):
        st1.uncertain()
        st2.alert()
    wait_until(lambda: (out / CSV_NAME).is_file() and len(read_rows(out / CSV_NAME)) >= 8, 60, "8 rows")
    os.killpg(first.proc.pid, signal.SIGKILL)  # mid-stream: no clean stop
    first.proc.wait(10)
    at_kill = len(read_rows(out / CSV_NAME))
    for _ in range(10):  # published while no collector runs: the broker keeps them for its session
        st1.uncertain()
    st1.wait_published(30)
    st2.wait_published(20)
    second = collect_cli(mqtt_broker, out, "--timeout", "120", "--progress", "1000").ready()
    wait_until(lambda: len(read_rows(out / CSV_NAME)) >= 50, 60, "all 50 rows after the restart")
    time.sleep(1.0)  # a duplicate would arrive now
    second.proc.send_signal(signal.SIGTERM)
    stdout, stderr = second.communicate(30)
    assert second.proc.returncode == 0, stderr
    rows = read_rows(out / CSV_NAME)
    names = [r.name for r in rows]
    assert len(names) == len(set(names)) == 50
    df = pd.read_csv(out / CSV_NAME, index_col=0)
    assert list(df.index) == list(range(50))
    for name in names:
        assert cv2.imread(str(out / name)) is not None
    assert not list(out.glob(".*tmp*"))
    assert "collected:" in stdout and "Traceback" not in stderr
    assert f"({at_kill} rows already" in stdout  # the restart kept what the killed one wrote


def test_cli_counts_bad_messages_with_one_line_and_stops_at_count(mqtt_broker, sample_station, collect_cli, tmp_path):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    p = collect_cli(mqtt_broker, tmp_path / "out", "--count", "4", "--timeout", "60", "--progress", "2").ready()
    junk = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    junk.connect(mqtt_broker.host, mqtt_broker.port)
    junk.loop_start()
    try:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("sample", "{not json")]
        sent = [
            junk.publish("seamqc/st9/sample", b"not a png" if i % 2 else b"\x89PNG\r\n\x1a\n", qos=1, properties=props)
            for i in range(40)
        ]
        for info in sent:  # acknowledged: the broker queued them to collect before any sample
            info.wait_for_publish(10)
        st = sample_station(mqtt_broker, "st1")
        for _ in range(4):
            st.alert()
        out, err = p.communicate(60)
    finally:
        junk.loop_stop()
        junk.disconnect()
    assert p.proc.returncode == 0, err
    assert "collected: 4 new, 0 updated, 0 duplicate(s), 40 bad" in out
    assert out.count("collect: 2 new") == 1 and "collect: 4 new" in out  # progress every 2
    warned = [ln for ln in err.splitlines() if "ignored a message" in ln]
    assert len(warned) == 2 and "Traceback" not in err  # one line per reason, not per message
    assert len(read_rows(tmp_path / "out" / CSV_NAME)) == 4


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convert", "collect", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_cli_user_errors_are_one_line(tmp_path):
    from tests.support.mqtt import free_port

    port = str(free_port())
    for args, needle in (
        (["--broker", "127.0.0.1", "--port", port, "--out", str(tmp_path / "o")], "cannot connect"),
        (["--broker", "127.0.0.1", "--port", "0", "--out", str(tmp_path / "o")], "--port 0"),
        (["--broker", "127.0.0.1", "--group", "a/b", "--out", str(tmp_path / "o")], "--group"),
        (["--broker", "no-such-host.invalid", "--out", str(tmp_path / "o")], "does not resolve"),
    ):
        p = _cli(*args)
        assert p.returncode == 78, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
    (tmp_path / "f").write_text("x")
    p = _cli("--broker", "127.0.0.1", "--port", port, "--out", str(tmp_path / "f"))
    assert p.returncode != 0 and "not a folder" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # trains the tiny model (tiny_keras) and fine-tunes it for one epoch
def test_collected_data_splits_and_fine_tunes_with_train_init(
    mqtt_broker, sample_station, tiny_dataset, tiny_keras, tmp_path
):
    truth = read_csv(tiny_dataset / "data.csv")

    def image(i: int) -> np.ndarray:
        return imread(truth.paths[i % len(truth)])

    c = _collector(mqtt_broker, tmp_path / "collected")
    try:
        st = sample_station(mqtt_broker, "st1", images=image)
        for k in range(24):
            st.alert() if k % 2 else st.uncertain()
        st.wait_published(24)
        wait_until(lambda: c.counts["new"] == 24, 30, "24 samples")
    finally:
        _close(c)
    run = [sys.executable, "-m", "convert"]
    p = subprocess.run(
        [*run, "split", "--data", str(tmp_path / "collected"), "--out", str(tmp_path / "split")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    parts = {k: read_csv(tmp_path / "split" / f"{k}.csv") for k in ("train", "valid", "test")}
    assert sum(len(d) for d in parts.values()) == 24 and parts["train"].labels == truth.labels
    p = subprocess.run(
        [
            *run,
            "train",
            "--train",
            str(tmp_path / "split" / "train.csv"),
            "--valid",
            str(tmp_path / "split" / "valid.csv"),
            "--out",
            str(tmp_path / "ft.keras"),
            "--init",
            str(tiny_keras),
            "--epochs",
            "1",
            "--batch",
            "8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "ft.keras").is_file()


def test_a_full_disk_stops_collect_with_exit_74_and_a_restart_with_room_loses_nothing(
    mqtt_broker, sample_station, collect_cli, tmp_path
):
    from tests.support.fs import tmpfs

    def big(i: int) -> np.ndarray:
        return noise_image(i, 128)  # ~49 KB as PNG

    with tmpfs(tmp_path / "small", "160k") as out:
        st = sample_station(mqtt_broker, "st1", images=big)
        p = collect_cli(mqtt_broker, out).ready()
        for _ in range(12):
            st.alert()
        stdout, stderr = p.communicate(60)
        assert p.proc.returncode == 74, stderr
        errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and "cannot write sample" in errors[0] and "Traceback" not in stderr
        kept = read_rows(out / CSV_NAME)
        assert 0 < len(kept) < 12 and all(cv2.imread(str(out / r.name)) is not None for r in kept)
        assert not list(out.glob(".*tmp*"))  # no half-written file left
        st.wait_published(12)
        r = subprocess.run(["mount", "-o", "remount,size=4m", str(out)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot grow the tmpfs: {r.stderr.strip()}")
        again = collect_cli(mqtt_broker, out, "--count", str(12 - len(kept)), "--timeout", "60").ready()
        stdout, stderr = again.communicate(90)
        assert again.proc.returncode == 0, stderr
        names = [r.name for r in read_rows(out / CSV_NAME)]
        assert sorted(names) == [f"st1-b00t-{f:08d}-flagged.png" for f in range(1, 13)]  # none lost, none twice


def test_split_of_two_collectors_keeps_one_row_per_sample_the_verdict_or_the_review(tmp_path):
    """Two collectors in one group: the first copy of a sample went to c1, its re-publication with
    the operator's verdict to c2. ``split --data c1 c2`` keeps one row per sample_id: a row a person
    reviewed, else the latest verdict."""
    from convert.split import split

    a = _meta("st1-b00t-00000001-flagged", reason="flagged", labels=["error"], model_labels=["error"])
    v1 = {"verdict": "false_alarm", "labels": [], "by": "anna", "ts": "2026-12-04T05:01:00.000Z"}
    v2 = {"verdict": "confirmed", "labels": ["error"], "by": "ben", "ts": "2026-12-04T05:02:00.000Z"}
    b = _meta("st1-b00t-00000002-flagged", reason="flagged", labels=["error"], model_labels=["error"])
    c1, c2 = CollectStore(tmp_path / "c1"), CollectStore(tmp_path / "c2")
    assert c1.add(_received(a, 1), "t") == "new"  # the first copy, no verdict
    assert c2.add(_received({**a, "labels": [], "verdict": v1}, 1), "t") == "new"  # the verdict, elsewhere
    assert c1.add(_received({**b, "verdict": v2}, 2), "t") == "new"  # b: the later verdict in c1 ...
    assert c2.add(_received({**b, "labels": [], "verdict": v1}, 2), "t") == "new"  # ... the earlier in c2
    for i in range(3, 6):  # samples only one collector saw
        (c1 if i % 2 else c2).add(_received(_meta(f"st1-b00t-0000000{i}-uncertain"), i), "t")
    c1.close()
    c2.close()
    res = split([tmp_path / "c1", tmp_path / "c2"], tmp_path / "split")
    assert res.duplicates == 2 and sum(res.counts.values()) == 5
    rows = pd.concat([pd.read_csv(res.files[k], index_col=0) for k in ("train", "valid", "test")])
    by = {Path(n).name: r for n, r in zip(rows["name"], rows.to_dict("records"))}
    assert len(by) == 5
    assert [by["st1-b00t-00000001-flagged.png"][k] for k in ("good", "error")] == [True, False]  # anna's false alarm
    assert Path(rows["name"][rows["name"].str.endswith("00000001-flagged.png")].iloc[0]).parent.name == "c2"
    assert [by["st1-b00t-00000002-flagged.png"][k] for k in ("good", "error")] == [False, True]  # ben's, later
    # a row a person reviewed wins over any verdict: mark a's first copy reviewed in c1
    text = (tmp_path / "c1" / CSV_NAME).read_text().splitlines()
    text = [ln[: -len("False")] + "True" if "00000001-flagged" in ln else ln for ln in text]
    (tmp_path / "c1" / CSV_NAME).write_text("\n".join(text) + "\n")
    res = split([tmp_path / "c1", tmp_path / "c2"], tmp_path / "split2")
    rows = pd.concat([pd.read_csv(res.files[k], index_col=0) for k in ("train", "valid", "test")])
    kept = rows["name"][rows["name"].str.endswith("00000001-flagged.png")]
    assert res.duplicates == 2 and len(kept) == 1 and Path(kept.iloc[0]).parent.name == "c1"
