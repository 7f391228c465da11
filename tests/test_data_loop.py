"""The data loop end to end (issue 14 #6), on a real Mosquitto, from a model that never saw the fabric:

The station model is ``tests/data/unseen-felt-bundle``: the project's first bundle (commit e837734,
resnet-int8-gap, 8 filters), trained on the single-look generator before the fabric families
existed, so it never saw ``felt`` (nor ``fleece``); re-exported with today's exporter (see
tests/data/README.md). The shipped bundle (edge/models/default) saw every family in training and is
retrained from time to time, so it stays out of the loop entirely.

1. the daemon (samples on, feedback on) runs on a 1,800-frame felt video (the look of seed 0);
2. a scripted operator answers every alert from the truth CSV (confirmed / false_alarm) and reports
   every defect that passed without an alert;
3. ``collect`` (in-process, the shared subscription) writes the samples; the review is automatic
   from the truth, through the ``label --images`` state machine (Enter-by-Enter, like a person);
4. ``split``, ``train --init`` (the single-look bundle, lr 1e-3, nothing frozen, 20 epochs, every
   error image five times per epoch: ``--oversample error=5``), ``export``;
5. the daemon again, single-look and fine-tuned, on a *new* 1,800-frame video of the same fabric
   (same look and bobbin thread, other defects and layout: ``synth.write_video(style_seed=…)``; 33
   error/break defects, of which the single-look model misses 12, no false alarms).

Target (issue 14 #6): misses + false alarms on the new video drop by at least half; asserted.
Measured (README "The data loop"): with the recipe of 2026-12-05 (``--oversample error=3``, 10
epochs) 12 -> 4, 3, 3 in the test's runs and 2-6 offline, then 7 in a CI run of 2026-12-06 and 6,
6, 6 (three training seeds) on a round kept that day: the 8-filter model was still under-fitting
(the fine-tuned bundle found 79 % of the error images it was trained on). With 20 epochs and
``error=5`` the two rounds kept on 2026-12-06 gave 2, 2, 2, 2 (two seeds each), and the test's
next run 1. Without ``--oversample`` the rounds of 2026-12-05 gave 6-8 (mean 6.8), and with the
recipe before that (``--freeze 2 --lr 3e-4``) 7-9: the round's data is mostly good frames (about
30-50 error images of 170), and the misses left are skipped stitches that look like the rest of
this thick-thread line.

Why felt, and why a 60 s loop video: ``felt`` and ``fleece`` are the families the single-look
model never saw. With a 900-frame loop video round 1 gave too little to learn from (felt: 100
samples, 74 reviewed), so the line runs twice as long (1,800 frames): 250-276 samples, 186-222
reviewed. The check video is as long, so one defect is 3 % of the result rather than 6 %.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from convert.collect import Collector, CollectStore
from convert.demo import match_alerts, read_truth
from convert.harness import DaemonProcess, MqttSubscriber
from convert.label import ImageFolder
from convert.label_state import open_folder_session
from edge.seam import SEAM_LABELS as ATTRS
from tests.support.cli import convert_ok

ROOT = Path(__file__).resolve().parent.parent
# never saw felt: the e837734 single-look model, re-exported (tests/data/README.md)
STATION = ROOT / "tests" / "data" / "unseen-felt-bundle"
FAMILY, STYLE = "felt", 0  # the look: felt as seed 0 draws it
TRAIN_SEED, CHECK_SEED = 0, 10  # layout and defects of the loop's video and of the check video
LOOP_FRAMES, CHECK_FRAMES = 1800, 1800  # round 1 runs 60 s at 30 fps; the check video as long


def _video(path: Path, seed: int, frames: int) -> list[dict]:
    from convert import synth

    synth.write_video(path, frames, seed, families=[FAMILY], style_seed=STYLE)
    return read_truth(synth.truth_path(path))


def _config(work: Path, tag: str, video: Path, bundle: Path, broker=None) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["station"] = "loop"
    cfg["camera"].update(device=str(video), realtime=broker is not None)  # the loop replays at 30 fps
    cfg["model"]["bundle"] = str(bundle)
    cfg["heatmaps"] = {"enabled": False, "dir": str(work / f"heatmaps-{tag}")}
    cfg["outbox"] = str(work / f"outbox-{tag}.sqlite")
    cfg["mqtt"]["enabled"] = broker is not None
    if broker is not None:
        cfg["mqtt"].update(host=broker.host, port=broker.port, feedback=True)
        cfg["samples"] = {
            "enabled": True,
            "dir": str(work / f"samples-{tag}"),
            "uncertain_margin": 0.2,
            "uncertain_per_h": 36_000,
            "random_good_per_h": 7_200,
            "queue_size": 64,
            "missed_window_s": 1.0,
            "missed_max_frames": 10,
        }
    path = work / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(cfg: Path, log: Path, on_event=None) -> list[dict]:
    alerts: list[dict] = []
    proc = DaemonProcess(cfg, log_path=log)
    try:
        for ev in proc:
            if ev.name == "alert":
                alerts.append(ev.data["alert"])
            if on_event is not None:
                on_event(ev)
        assert proc.wait(60) == 0, proc.tail(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return alerts


def _errors(alerts: list[dict], truth: list[dict]) -> dict[str, int]:
    r = match_alerts(alerts, truth)
    return {"missed": len(r.missed), "false": len(r.false_alerts), "errors": len(r.missed) + len(r.false_alerts)}


def _truth_labels(frame: int, truth: list[dict]) -> dict[str, bool] | None:
    """The seed's labels of a video frame from the truth, None near a defect's edge (partly in view)."""
    err = brk = four = False
    for t in truth:
        lo, hi = t["first_frame"], t["last_frame"]
        if t["label"] == "length":  # a stretch of the other length: 4 mm on this 2 mm line
            if lo <= frame <= hi:
                four = True
            elif lo - 3 <= frame <= hi + 3:
                return None
        elif lo <= frame <= hi:
            err |= t["label"] == "error"
            brk |= t["label"] == "break"
        elif lo - 4 <= frame <= hi + 4:
            return None
    return {"good": not (err or brk), "error": err, "break": brk, "length": not four}


class Operator:
    """Answers every alert from the truth, and reports the defects that passed without one."""

    def __init__(self, broker, truth: list[dict]) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.truth = truth
        self.answers: list[str] = []
        self.matched: set[int] = set()
        self.reported: set[int] = set()
        self.ready_at: float | None = None
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.sub = MqttSubscriber(broker.host, broker.port, "seamqc/loop/alert", on_message=self.on_alert)
        self.sub.wait_subscribed()

    def send(self, body: dict, what: str) -> None:
        self.client.publish("seamqc/loop/feedback", json.dumps(body), qos=1)
        with self.lock:
            self.answers.append(what)

    def on_alert(self, m) -> None:
        a = m.json()
        r = match_alerts([a], self.truth)
        if r.detected:
            d = next(t for t in self.truth if t["defect_id"] == r.detected[0])
            with self.lock:
                self.matched.add(d["defect_id"])
            self.send(
                {"event_id": a["event_id"], "verdict": "confirmed", "labels": [d["label"]], "by": "op"}, "confirmed"
            )
        else:
            self.send({"event_id": a["event_id"], "verdict": "false_alarm", "labels": [], "by": "op"}, "false_alarm")

    def on_event(self, ev) -> None:
        """The daemon's log events drive the clock: frame f is shown at ready + f / 30 s."""
        if ev.name == "ready":
            self.ready_at = time.time()
        if self.ready_at is None:
            return
        now_frame = (time.time() - self.ready_at) * 30
        for t in self.truth:
            if t["label"] == "length" or t["defect_id"] in self.reported or t["last_frame"] + 40 > now_frame:
                continue
            self.reported.add(t["defect_id"])
            with self.lock:
                if t["defect_id"] in self.matched:
                    continue
            ts = self.ready_at + (t["first_frame"] + t["last_frame"]) / 2 / 30
            iso = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            self.send({"missed": {"ts": iso, "labels": [t["label"]]}, "by": "op"}, "missed")

    def close(self) -> None:
        self.sub.close()
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.slow  # two synthetic videos, a 60 s replay, a fine-tune and an export: about 4-4.5 minutes
@pytest.mark.timeout(1500)  # 726 s on a slow day of the 2-core VM (2026-12-06): over the suite's 600
def test_one_round_of_the_data_loop_cuts_misses_and_false_alarms(mqtt_broker, tmp_path):
    work = tmp_path
    loop_video, check_video = work / "felt-loop.mp4", work / "felt-check.mp4"
    truth = _video(loop_video, TRAIN_SEED, LOOP_FRAMES)
    check_truth = _video(check_video, CHECK_SEED, CHECK_FRAMES)
    before = _errors(_run(_config(work, "before", check_video, STATION), work / "before.log"), check_truth)

    # round 1: the station runs, the operator answers, collect writes the samples
    collector = Collector(CollectStore(work / "collected"), mqtt_broker.host, mqtt_broker.port, progress_every=10_000)
    collector.connect()
    op = Operator(mqtt_broker, truth)
    try:
        loop_alerts = _run(_config(work, "round1", loop_video, STATION, mqtt_broker), work / "round1.log", op.on_event)
        time.sleep(2.0)  # the last samples and verdict re-publishes on their way
    finally:
        op.close()
        collector.stop.set()
        collector.close()
        collector.store.close()
    round1 = _errors(loop_alerts, truth)
    assert len(op.answers) >= len(loop_alerts) and collector.counts["bad"] == 0
    assert collector.counts["new"] >= 150  # measured 259-285 (1,800 frames, the single-look model)

    # review from the truth through the label --images session: set the labels, Enter, next
    frames = ImageFolder(work / "collected")
    review = open_folder_session(frames, frames.paths, work / "collected", "collected")
    changed = ambiguous = 0
    for i, png in enumerate(frames.paths):
        want = _truth_labels(int(json.loads(png.with_suffix(".json").read_text())["frame"]), truth)
        review.goto(i)
        if want is None:
            ambiguous += 1
            continue
        changed += review.values != want
        review.values = dict(want)
        review.press("s")
    df = pd.read_csv(work / "collected" / "data.csv", index_col=0)
    reviewed = df[df["reviewed"]].reset_index(drop=True)
    assert len(reviewed) == len(frames.paths) - ambiguous
    (work / "reviewed").mkdir()
    reviewed.assign(name=[str(work / "collected" / n) for n in reviewed["name"]]).to_csv(work / "reviewed" / "data.csv")

    # fine-tune the station's model on what the line saw, export, and run it on the new video
    convert_ok("split", "--data", str(work / "reviewed"), "--out", str(work / "split"))
    convert_ok(
        "train",
        "--train",
        str(work / "split" / "train.csv"),
        "--valid",
        str(work / "split" / "valid.csv"),
        "--out",
        str(work / "loop1.keras"),
        "--init",
        str(STATION),
        "--lr",
        "1e-3",
        "--oversample",
        "error=5",
        "--epochs",
        "20",
        "--patience",
        "20",
        "--batch",
        "16",
        timeout=900,
    )
    # the fine-tune is not XLA-compiled: the suite sets SEAMQC_TRAIN_XLA=0 (tests/conftest.py)
    with zipfile.ZipFile(max((work / "loop1_checkpoints").glob("ckpt-e*.keras"))) as z:
        assert json.loads(z.read("config.json"))["compile_config"]["jit_compile"] is False
    convert_ok(
        "export",
        "--model",
        str(work / "loop1.keras"),
        "--calibration",
        str(work / "split" / "train.csv"),
        "--out",
        str(work / "loop1-bundle"),
        "--model-version",
        "loop1",
        timeout=900,
    )
    after = _errors(_run(_config(work, "after", check_video, work / "loop1-bundle"), work / "after.log"), check_truth)
    counts = {a: int(reviewed[a].sum()) for a in ATTRS}
    print(
        f"\ndata loop on {FAMILY} (look of seed {STYLE}): round 1 {round1} answers "
        f"{ {k: op.answers.count(k) for k in sorted(set(op.answers))} }; collected {dict(collector.counts)}; "
        f"reviewed {len(reviewed)} ({changed} corrected, {ambiguous} ambiguous left out; {counts}); "
        f"check video: single-look {before} → fine-tuned {after}"
    )
    # measured: 12 (12 of 33 defects missed, no false alarms) in every run; the margin leaves room
    # for TFLite rounding on another CPU while still asserting a model that is wrong on felt
    assert before["errors"] >= 9
    # the target: misses + false alarms at most half of the single-look model's. Measured
    # with this recipe: 12 -> 2 on two kept rounds (two training seeds each), 1 in the test; the
    # 10-epoch x3 recipe before gave 2-7, and its 7 failed a CI run
    assert after["errors"] * 2 <= before["errors"]
