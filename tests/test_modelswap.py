"""Hot reload (issue 16 #1): the self-check export embeds, the loader's checks, and a daemon that
swaps bundles mid-video without a frame gap and keeps its model when the new one is bad.

Bundles are the tiny model really exported (``tiny_bundle``); variants are copies whose manifest
is rewritten through ``edge.bundle.write_manifest`` (every sha256 recomputed), then damaged where
a test needs damage.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edge import selfcheck
from edge.bundle import MANIFEST, load_bundle, write_manifest
from edge.classify import Classifier
from edge.errors import ModelError
from edge.modelswap import load_checked
from tests.support.daemon import check_alert_payload, daemon_config, noise_video, start_daemon, wait_exit
from tests.support.mqtt import MOSQUITTO, SKIP_REASON

pytestmark = pytest.mark.slow  # every test here needs the trained tiny model


def variant(src: Path, dst: Path, version: str, edit=None) -> Path:
    """A copy of bundle ``src`` with ``version`` (and ``edit(manifest, dst)``), sha256s rewritten."""
    shutil.copytree(src, dst)
    m = json.loads((dst / MANIFEST).read_text())
    m["version"] = version
    if edit is not None:
        edit(m, dst)
    files = {role: e["path"] for role, e in m.pop("files").items()}
    write_manifest(dst, m, files)
    return dst


def shift_selfcheck(m: dict, root: Path) -> None:
    """Expected scores 0.3 off: what a bundle assembled from two exports would carry."""
    with np.load(root / selfcheck.FILE) as z:
        arrays = {k: z[k] for k in z.files}
    for k in arrays:
        if k.startswith("scores__"):
            arrays[k] = np.clip(1.0 - arrays[k], 0, 1) * 0.4 + 0.3
    with open(root / selfcheck.FILE, "wb") as f:
        np.savez_compressed(f, **arrays)


def rename_label(m: dict, root: Path) -> None:
    m["labels"] = ["defect" if lab == "error" else lab for lab in m["labels"]]
    m["thresholds"] = {("defect" if k == "error" else k): v for k, v in m["thresholds"].items()}


def cfg_for(bundle: Path, thresholds: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        model=SimpleNamespace(bundle=bundle, role=None, threads=1),
        decision=SimpleNamespace(thresholds=thresholds or {}),
    )


def test_export_embeds_a_selfcheck_both_classifiers_pass(tiny_bundle):
    b = load_bundle(tiny_bundle)
    sc = b.manifest["selfcheck"]
    assert sc["role"] == "selfcheck" and b.has("selfcheck") and sc["count"] == 4
    assert b.version  # export writes one
    with np.load(b.path("selfcheck")) as z:
        assert z["images"].shape == (4, b.height, b.width, 3) and z["images"].dtype == np.uint8
        spread = z["scores__classifier_int8"]
    assert spread.shape == (4, len(b.labels)) and float(spread.max() - spread.min()) > 0.05  # not all one score
    for role in ("classifier_int8", "classifier_fp32"):
        res = selfcheck.run(b, Classifier(b, role=role, threads=1))
        assert res.count == 4 and res.max_abs_diff is not None and res.max_abs_diff <= 1e-5  # same file, same runtime


def test_loader_refuses_a_failing_selfcheck_and_takes_a_bundle_without_one(tiny_bundle, tmp_path):
    bad = variant(tiny_bundle, tmp_path / "bad", "bad", shift_selfcheck)
    with pytest.raises(ModelError, match=r"self-check failed: classifier_int8 gives .* \(\|Δ\| .* > tolerance 0.05\)"):
        load_checked(cfg_for(bad), [])

    def drop(m: dict, root: Path) -> None:
        del m["selfcheck"], m["files"]["selfcheck"]
        (root / selfcheck.FILE).unlink()

    old = variant(tiny_bundle, tmp_path / "old", "old", drop)
    model = load_checked(cfg_for(old), [])
    assert model.check.max_abs_diff is None and "no self-check" in model.check.describe()
    # a tolerance the manifest cannot ask for
    loose = variant(tiny_bundle, tmp_path / "loose", "loose", lambda m, r: m["selfcheck"].update(tolerance=1.0))
    with pytest.raises(ModelError, match="selfcheck.tolerance"):
        load_checked(cfg_for(loose), [])


def test_loader_refuses_other_labels_than_the_running_model(tiny_bundle, tmp_path):
    running = load_checked(cfg_for(tiny_bundle), [])
    other = variant(tiny_bundle, tmp_path / "other", "other", rename_label)
    with pytest.raises(ModelError, match="differ from the running model's .* needs a restart"):
        load_checked(cfg_for(other), [], running)
    # the config's thresholds must name labels of the new bundle too
    with pytest.raises(Exception, match="decision.thresholds.error"):
        load_checked(cfg_for(other, {"error": 0.3}), [])


def swap_link(link: Path, target: Path) -> None:
    """Atomic directory-symlink swap: a new link renamed over the old one."""
    tmp = link.with_name(link.name + ".new")
    os.symlink(target, tmp)
    os.replace(tmp, link)


@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
def test_daemon_swaps_mid_video_without_a_gap_and_keeps_its_model_when_the_new_one_is_bad(
    tmp_path, tiny_bundle, mqtt_broker, mqtt_subscriber
):
    models = tmp_path / "models"
    models.mkdir()
    v1 = variant(tiny_bundle, models / "v1", "v1")
    # v2 runs the float classifier: another file, another input tensor type than v1's int8 model
    v2 = variant(tiny_bundle, models / "v2", "v2", lambda m, r: m.update(classifier="classifier_fp32"))
    current = models / "current"
    os.symlink(v1, current)
    sub = mqtt_subscriber(mqtt_broker, "seamqc/test-st/#").wait_subscribed()
    cfg = daemon_config(
        tmp_path,
        current,
        noise_video(tmp_path / "v.mp4", 30),
        mqtt_broker,
        camera={"loop": True, "realtime": True},  # 30 fps until stopped
        model={"bundle": str(current), "threads": 1, "watch_s": 0.2},
        decision={"thresholds": {"error": 0.0}, "max_event_frames": 10},  # an alert every ~0.3 s
        heatmaps={"enabled": False},
    )
    proc = start_daemon(cfg)
    state_topic, alert_topic = "seamqc/test-st/model/state", "seamqc/test-st/alert"
    st = sub.wait_for(state_topic, lambda m: m.json()["state"] == "active", timeout=90).json()
    assert st["model"]["version"] == "v1" and st["model"]["selfcheck_max_abs_diff"] is not None
    sub.wait_for(alert_topic, lambda m: m.json()["model"]["version"] == "v1", timeout=30)

    swap_link(current, v2)  # mid-video
    swap = proc.wait_event("model_swap", timeout=30)
    assert swap.get("version") == "v2"
    assert swap.get("frames_between") == 0 and swap.get("dropped_during") == 0  # no frame lost
    assert swap.get("classify_gap_ms") < 1000 and swap.get("capture_gap_ms") < 1000  # no gap over 1 s
    st = sub.wait_for(state_topic, lambda m: m.json()["model"]["version"] == "v2", timeout=10).json()
    assert st["state"] == "active" and st["previous"]["version"] == "v1" and st["reloads"] == 1
    sub.wait_for(alert_topic, lambda m: m.json()["model"]["version"] == "v2", timeout=30)
    stats = sub.wait_for("seamqc/test-st/stats", lambda m: m.json()["model_version"] == "v2", timeout=10).json()
    assert stats["model"]["sha256"] == load_bundle(v2).sha256("classifier_fp32") != load_bundle(v1).sha256()

    # bad bundles, one after the other: each is refused with its reason, v2 keeps running
    bad_sha = variant(tiny_bundle, models / "bad-sha", "bad-sha")
    with open(bad_sha / "classifier_int8.tflite", "r+b") as f:
        f.seek(200)
        f.write(b"\xff\xfe")
    bad_check = variant(tiny_bundle, models / "bad-check", "bad-check", shift_selfcheck)
    bad_labels = variant(tiny_bundle, models / "bad-labels", "bad-labels", rename_label)
    cases = [
        (bad_sha, "does not match files.classifier_int8.sha256"),
        (bad_check, "self-check failed"),
        (bad_labels, "labels"),
    ]
    for n, (bundle, reason) in enumerate(cases, start=1):
        swap_link(current, bundle)
        msg = sub.wait_for(state_topic, lambda m, n=n: m.json().get("failures") == n, timeout=30)
        st = msg.json()
        assert st["state"].startswith("failed: ") and reason in st["state"], st["state"]
        assert st["model"]["version"] == "v2"  # the running model, unchanged
        ev = proc.wait_event(
            "model",
            lambda e, r=reason: e.get("state", "").startswith("failed") and r in e.get("state"),  # type: ignore[misc]
        )
        assert ev.get("level") == "ERROR"
    assert proc.poll() is None
    n_alerts = len(sub.on(alert_topic))
    sub.wait_count(alert_topic, n_alerts + 2, timeout=30)  # the line goes on
    assert all(m.json()["model"]["version"] == "v2" for m in sub.on(alert_topic)[n_alerts:])

    # a late subscriber sees the retained failure
    late = mqtt_subscriber(mqtt_broker, state_topic).wait_subscribed()
    kept = late.wait_for(state_topic, timeout=10)
    assert kept.retain and kept.json()["state"].startswith("failed: ") and "labels" in kept.json()["state"]

    # SIGHUP after fixing the link: back to v1, active again
    swap_link(current, v1)
    proc.send_signal(signal.SIGHUP)
    back = sub.wait_for(state_topic, lambda m: m.json().get("reloads") == 2, timeout=30).json()
    assert back["state"] == "active" and back["model"]["version"] == "v1" and back["previous"]["version"] == "v2"
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 20) == 0
    events = proc.snapshot()
    assert "Traceback" not in "\n".join(e.line for e in events)
    alerts = [e.get("alert") for e in events if e.name == "alert"]
    for a in alerts:
        check_alert_payload(a, "test-st", load_bundle(v1).labels)
    # every alert logged after a swap carries the version swapped in, every one before the one before
    running, versions = "v1", []
    for e in events:
        if e.name == "model" and e.get("state") == "active":
            running = e.get("model")["version"]
        if e.name == "alert":
            versions.append((e.get("alert")["model"]["version"], running))
    assert versions and all(got == want for got, want in versions), versions
    assert {got for got, _ in versions} >= {"v1", "v2"}
