"""Samples kept on the station (edge/samples.py): what the sampler keeps and how often, the folder's
files and retention, verdicts and missed reports applied by the worker, a full disk, and samples
out on a real Mosquitto after the alerts."""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.feedback import FeedbackInbox
from edge.samples import SAMPLE_KIND, RingBuffer, Sample, Sampler, SampleWorker, read_sidecar
from tests.support.fs import tmpfs
from tests.support.mqtt import alert_payload
from tests.support.wait import wait_until

LABELS = ("good", "error", "break", "length")
THR = {"good": 0.5, "error": 0.5, "break": 0.5, "length": 0.5}
MODEL = {"name": "tiny", "sha256": "ab" * 32}


class _Collect:
    """Stands in for the worker: what the sampler hands over."""

    def __init__(self) -> None:
        self.got: list[Sample] = []

    def submit(self, s: Sample) -> bool:
        self.got.append(s)
        return True


def _present(side: dict[str, Any] | None) -> dict[str, Any]:
    """A sidecar the test expects to be there (the store and ``read_sidecar`` give None for a gone one)."""
    assert side is not None
    return side


def _img(i: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _sampler(sink, **kw) -> Sampler:
    args = dict(
        station="st",
        boot="b00t",
        thresholds=THR,
        expected_length="2mm",
        uncertain_margin=0.1,
        uncertain_per_h=60,
        random_good_per_h=30,
        ring=None,
        rng=random.Random(0),
    )
    args.update(kw)
    return Sampler(sink, **args)  # type: ignore[arg-type]


def test_uncertain_frames_are_rate_capped_and_good_frames_sampled_at_random_within_the_rate():
    sink = _Collect()
    sp = _sampler(sink)
    img = _img(0)
    fps, hours = 30, 1.0
    n = int(fps * 3600 * hours)
    for i in range(n):
        t = i / fps
        near = i % 100 == 0  # 1 % of the frames: error 0.45, within 0.1 of its threshold
        scores = {"good": 0.9, "error": 0.45 if near else 0.05, "break": 0.05, "length": 0.9}
        sp.observe(i, t, 1e9 + t, img, scores, quiet=True)
    by = {r: [s for s in sink.got if s.reason == r] for r in ("uncertain", "random_good")}
    assert 55 <= len(by["uncertain"]) <= 60 + 3  # 1,080 candidates, capped at 60 an hour (+ a burst of 3)
    assert 15 <= len(by["random_good"]) <= 50  # Poisson, mean 30 an hour
    gaps = np.diff([s.frame for s in by["random_good"]])
    assert gaps.std() > 0.3 * gaps.mean()  # random times, not a fixed period
    for s in by["uncertain"]:
        assert abs(s.scores["error"] - 0.5) <= 0.1 and s.model_labels == ()
    assert all(s.model_labels == () and s.labels == () for s in by["random_good"])
    assert len({s.sample_id for s in sink.got}) == len(sink.got)


def test_no_random_good_frame_while_an_event_is_open_or_a_label_is_flagged():
    sink = _Collect()
    sp = _sampler(sink, random_good_per_h=36_000, uncertain_margin=0.0)
    for i in range(3000):
        flagged = {"good": 0.1, "error": 0.95, "break": 0.05, "length": 0.9}
        sp.observe(i, i / 30, i / 30, _img(0), flagged, quiet=i % 2 == 0)
        sp.observe(i, i / 30, i / 30, _img(0), {"good": 0.9, "error": 0.0, "break": 0.0, "length": 0.9}, quiet=False)
    assert sink.got == []
    # a 4 mm frame on a 2 mm line is flagged (length below its threshold): never "good"
    for i in range(3000, 6000):
        sp.observe(i, i / 30, i / 30, _img(0), {"good": 0.9, "error": 0.0, "break": 0.0, "length": 0.1}, quiet=True)
    assert sink.got == []


def test_ring_buffer_is_bounded_in_bytes_and_finds_the_frames_around_a_time():
    img = _img(0, 256)  # a 256x256 ROI crop: 196,608 bytes
    ring = RingBuffer(20 * 1024 * 1024, every_n=2)
    for i in range(2000):
        ring.push(i, 1000.0 + i / 30, img, {"error": 0.1})
    assert ring.capacity == 20 * 1024 * 1024 // img.nbytes == len(ring)
    assert len(ring) * img.nbytes <= 20 * 1024 * 1024
    near = ring.around(1000.0 + 1990 / 30, window_s=0.5, limit=5)
    assert [f.seq for f in near] == [1986, 1988, 1990, 1992, 1994]
    assert ring.around(1000.0, 0.5, 5) == []  # long gone


def _worker(root: Path | None, stop: threading.Event, **kw) -> SampleWorker:
    w = SampleWorker(root, stop, station="st", model=MODEL, **kw)
    w.prepare_dir()
    w.start()
    return w


def _stop(w: SampleWorker, stop: threading.Event) -> None:
    stop.set()
    w.close(5.0)
    w.join(10)
    assert not w.is_alive()


def _missed(ts: float, labels=("break",), by="op") -> bytes:
    iso = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"missed": {"ts": iso, "labels": list(labels)}, "by": by}).encode()


def test_worker_writes_png_and_sidecar_applies_verdicts_and_missed_reports(tmp_path, caplog):
    stop = threading.Event()
    inbox = FeedbackInbox("seamqc/st/feedback", LABELS)
    ring = RingBuffer(4 * 1024 * 1024, 1)
    root = tmp_path / "samples"
    w = _worker(root, stop, inbox=inbox, ring=ring, missed_window_s=0.1, missed_max_frames=4)
    t0 = 1_767_000_000.0
    for i in range(60):
        ring.push(i, t0 + i / 30, _img(i), {"error": 0.2})
    sp = _sampler(w)
    scores = {"good": 0.1, "error": 0.93, "break": 0.2, "length": 0.9}
    w.note_alert("st-b00t-1")
    sp.alert("st-b00t-1", 17, t0 + 17 / 30, ("error",), scores, _img(17))
    wait_until(lambda: w.saved == 1, what="the alert's frame written")
    with caplog.at_level(logging.INFO, logger="edge.samples"):
        inbox.handle(json.dumps({"event_id": "st-b00t-1", "verdict": "false_alarm", "labels": ["break"]}).encode())
        inbox.handle(json.dumps({"event_id": "st-old-9", "verdict": "confirmed"}).encode())
        inbox.handle(json.dumps({"event_id": "st-old-10", "verdict": "confirmed"}).encode())
        inbox.handle(_missed(t0 + 30 / 30))
        wait_until(lambda: w.missed == 1 and w.verdicts == 1 and w.unknown == 2, what="feedback handled")
    _stop(w, stop)
    unknown = [r for r in caplog.records if "unknown event_id" in r.getMessage()]
    assert len(unknown) == 1 and "st-old-9" in unknown[0].getMessage()  # one line, not one per message
    sides = {p.stem: read_sidecar(p) for p in root.glob("*.json")}
    assert all(sides.values()) and len(sides) == 1 + 4
    alert = next(s for s in sides.values() if s and s["reason"] == "flagged")
    assert alert["event_id"] == "st-b00t-1" and alert["kind"] == SAMPLE_KIND and alert["station"] == "st"
    assert alert["model_labels"] == ["error"] and alert["labels"] == ["break"]  # the operator's label wins
    assert alert["verdict"]["verdict"] == "false_alarm" and alert["scores"]["error"] == 0.93
    assert alert["frame"] == 17 and alert["model"] == MODEL and alert["ts"].endswith("Z")
    png = cv2.imread(str(root / alert["file"]))
    assert png is not None and np.array_equal(png, _img(17))  # lossless: the model's view
    missed = sorted((s for s in sides.values() if s and s["reason"] == "missed_report"), key=lambda s: s["frame"])
    assert [s["frame"] for s in missed] == [28, 29, 30, 31]  # the 4 closest to the reported time
    assert all(s["labels"] == ["break"] and s["verdict"]["by"] == "op" for s in missed)


def test_retention_deletes_the_oldest_samples_and_never_foreign_files(tmp_path):
    root = tmp_path / "samples"
    root.mkdir()
    (root / "holiday.png").write_bytes(b"x" * 100_000)
    (root / "notes.json").write_text(json.dumps({"kind": SAMPLE_KIND, "sample_id": "notes", "file": "other.png"}))
    stop = threading.Event()
    w = _worker(root, stop, max_mb=1.0, queue_size=64)
    sp = _sampler(w)
    for i in range(40):  # ~49 KB each (64x64 noise would be 12 KB: use 128x128)
        sp.alert(f"st-b00t-{i}", i, 1e9 + i, ("error",), {"error": 0.9}, _img(i, 128))
        wait_until(lambda i=i: w.saved == i + 1, what=f"sample {i}")  # type: ignore[misc]
    _stop(w, stop)
    kept = sorted(int(_present(read_sidecar(p))["frame"]) for p in root.glob("st-*.json"))
    assert w.deleted == 40 - len(kept) > 0 and kept == list(range(40 - len(kept), 40))
    own = sum(p.stat().st_size for p in root.glob("st-*"))
    assert own <= 1024 * 1024 and w.bytes == own
    assert (root / "holiday.png").exists() and (root / "notes.json").exists()
    assert not list(root.glob("*.tmp"))


def test_the_store_reads_back_no_sidecar_it_wrote_and_forgets_what_retention_deleted(tmp_path, monkeypatch):
    """Publishing a sample and marking it published read nothing back (the flood's cost is the
    PNG); what retention deleted is gone for publishing too; a sample of an earlier run is read once."""
    import edge.samples as samples

    reads: list[str] = []
    real = samples.read_sidecar

    def counted(path):
        reads.append(path.name)
        return real(path)

    monkeypatch.setattr(samples, "read_sidecar", counted)
    store = samples.SampleStore(tmp_path, 10**9)
    made = [
        Sample(f"st-b00t-{i:08d}-uncertain", "uncertain", i, 1e9 + i, {"error": 0.5}, (), (), _img(i)) for i in range(3)
    ]
    stems = [store.save(s, "st", MODEL) for s in made]
    _present(store.sidecar(stems[0]))["labels"] = ["error"]  # a copy
    assert _present(store.update(stems[0], published=True))["published"] is True
    assert _present(store.sidecar(stems[0]))["labels"] == [] and reads == []
    assert _present(real(tmp_path / f"{stems[0]}.json"))["published"] is True
    store.max_bytes = 1
    assert store.enforce(keep=stems[2]) == 2
    assert store.sidecar(stems[0]) is None and store.update(stems[1], published=True) is None
    assert store.total == store.items[stems[2]] == sum(p.stat().st_size for p in tmp_path.glob(f"{stems[2]}.*"))
    again = samples.SampleStore(tmp_path, 10**9)
    again.scan()
    reads.clear()
    assert again.unpublished == [stems[2]] and again.total == store.total
    assert _present(again.sidecar(stems[2]))["published"] is False and again.update(stems[2], published=True)
    assert reads == [f"{stems[2]}.json"]


def test_a_full_samples_disk_drops_samples_and_counts_them_while_the_outbox_takes_every_alert(tmp_path, caplog):
    from edge.outbox import Outbox
    from edge.publish import encode

    with tmpfs(tmp_path / "tiny", "256k") as small:
        outbox = Outbox(tmp_path / "outbox.sqlite")
        stop = threading.Event()
        w = _worker(small, stop, max_mb=50, queue_size=64)
        sp = _sampler(w)
        with caplog.at_level(logging.ERROR, logger="edge.samples"):
            for i in range(30):
                sp.alert(f"e{i}", i, 1e9 + i, ("error",), {"error": 0.9}, _img(i, 128))
                outbox.put(f"e{i}", "seamqc/st/alert", encode(alert_payload(i)))
            wait_until(lambda: w.saved + w.dropped == 30, what="every sample written or dropped")
        _stop(w, stop)
        assert outbox.depth() == 30  # every alert stored
        assert w.dropped > 0 and w.saved > 0 and w.writable is False
        assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1  # logged once
        assert not list(small.glob("*.tmp"))  # partial writes removed
        outbox.close()


class _Info:
    def __init__(self) -> None:
        self.acked = False

    def is_published(self) -> bool:
        return self.acked


def test_samples_wait_for_the_publisher_go_one_at_a_time_and_survive_a_restart(tmp_path):
    root = tmp_path / "samples"
    allowed = threading.Event()
    sent: list[tuple[dict, bytes, _Info]] = []

    def publish(meta: dict, png: bytes):
        if not allowed.is_set():
            return None  # alerts pending / offline
        info = _Info()
        sent.append((meta, png, info))
        return info

    stop = threading.Event()
    w = _worker(root, stop, publish=publish, backlog_max=5, queue_size=64)
    sp = _sampler(w)
    for i in range(8):
        sp.alert(f"e{i}", i, 1e9 + i, ("error",), {"error": 0.9}, _img(i))
    wait_until(lambda: w.saved == 8, what="8 samples written")
    assert w.backlog == 5 and w.publish_dropped == 3 and sent == []  # oldest 3 beyond the cap
    _stop(w, stop)
    # restart: the unpublished samples are found in the folder
    stop = threading.Event()
    w = _worker(root, stop, publish=publish, backlog_max=100)
    wait_until(lambda: w.backlog == 8, what="backlog rebuilt from the folder")
    allowed.set()
    wait_until(lambda: len(sent) == 1, what="first sample sent")
    assert w.backlog == 7  # one in flight, no second before its acknowledgement
    for k in range(8):
        wait_until(lambda k=k: len(sent) == k + 1, what=f"sample {k} sent")  # type: ignore[misc]
        sent[k][2].acked = True
    wait_until(lambda: w.published == 8, what="8 acknowledged")
    _stop(w, stop)
    assert [m["frame"] for m, _, _ in sent] == list(range(8))  # oldest first
    meta, png, _ = sent[0]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and meta["reason"] == "flagged" and meta["event_id"] == "e0"
    assert set(meta) >= {"sample_id", "station", "ts", "frame", "scores", "reason", "labels", "verdict"}
    assert all(_present(read_sidecar(p))["published"] is True for p in root.glob("*.json"))


def test_samples_out_on_mqtt5_only_after_the_alerts_when_the_broker_link_comes_up(
    tmp_path, mqtt_broker, mqtt_subscriber, mqtt_publisher
):
    sub = mqtt_subscriber(mqtt_broker, ["seamqc/st1/alert", "seamqc/st1/sample"], v5=True)
    pub = mqtt_publisher(mqtt_broker, station="st1", start=False)  # no link yet: as while the broker is down
    stop = threading.Event()
    w = _worker(tmp_path / "samples", stop, publish=pub.sample)
    sp = _sampler(w)
    for i in range(5):
        pub.alert(alert_payload(i, station="st1"))
        sp.alert(f"evt-{i:04d}", i, 1e9 + i, ("error",), {"error": 0.9}, _img(i, 128))
    wait_until(lambda: w.saved == 5, what="samples written while there is no link")
    assert w.backlog == 5 and w.published == 0  # samples wait
    pub.start()
    wait_until(lambda: w.published == 5, timeout=30, what="samples published")
    _stop(w, stop)
    order = [m.topic.rsplit("/", 1)[1] for m in sub.messages]
    assert order.count("alert") == 5 and order.count("sample") == 5
    assert order.index("sample") > max(i for i, t in enumerate(order) if t == "alert")  # alerts first
    m = sub.on("seamqc/st1/sample")[0]
    user = dict(m.user)
    meta = json.loads(user["sample"])
    assert user["sample_id"] == meta["sample_id"] and user["reason"] == meta["reason"] == "flagged"
    img = cv2.imdecode(np.frombuffer(m.payload, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (128, 128, 3)


@pytest.mark.parametrize("enabled", [False, True])
def test_samples_config_is_strict_and_defaults_beside_the_outbox(tmp_path, enabled):
    import yaml

    from edge.config import load_config
    from edge.errors import ConfigError

    cfg = {
        "model": {"bundle": "b"},
        "outbox": str(tmp_path / "state" / "outbox.sqlite"),
        "samples": {"enabled": enabled},
    }
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    c = load_config(p)
    assert c.samples.dir == tmp_path / "state" / "samples" and c.mqtt.feedback is True
    for bad, why in (
        ({"max_mb": 0}, "max_mb"),
        ({"ring_mb": 21}, "ring_mb"),
        ({"uncertian_margin": 0.1}, "unknown key"),
    ):
        p.write_text(yaml.safe_dump({**cfg, "samples": bad}))
        with pytest.raises(ConfigError, match=why):
            load_config(p)


def test_a_verdict_on_a_sample_in_flight_publishes_it_again_with_the_verdict(tmp_path):
    sent: list[tuple[dict, _Info]] = []

    def publish(meta: dict, png: bytes):
        info = _Info()
        sent.append((meta, info))
        return info

    stop = threading.Event()
    inbox = FeedbackInbox("seamqc/st/feedback", LABELS)
    w = _worker(tmp_path / "samples", stop, publish=publish, inbox=inbox)
    w.note_alert("e1")
    _sampler(w).alert("e1", 5, 1e9, ("error",), {"error": 0.9}, _img(5))
    wait_until(lambda: len(sent) == 1, what="the sample in flight")
    inbox.handle(json.dumps({"event_id": "e1", "verdict": "confirmed", "by": "op"}).encode())
    wait_until(lambda: w.verdicts == 1, what="the verdict applied")
    sent[0][1].acked = True
    wait_until(lambda: len(sent) == 2, what="the sample sent again")
    sent[1][1].acked = True
    wait_until(lambda: w.published == 2, what="both acknowledged")
    _stop(w, stop)
    assert sent[0][0]["verdict"] is None
    assert sent[1][0]["verdict"]["verdict"] == "confirmed" and sent[1][0]["labels"] == ["error"]
    assert sent[0][0]["sample_id"] == sent[1][0]["sample_id"]
