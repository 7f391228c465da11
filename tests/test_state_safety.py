"""The daemon's state on disk, with real daemon processes: it deletes only what it wrote, and one
outbox / heatmap directory belongs to one daemon at a time (issue 12 #1, #12).

Helpers come from tests/support/daemon.py (config, start, wait, log events).
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from tests.support.daemon import (
    copy_bundle,
    daemon_config,
    daemon_log,
    error_lines,
    log_summary,
    noise_video,
    start_daemon,
    wait_exit,
)


@pytest.mark.slow  # runs the daemon on the tiny model
def test_heatmaps_dir_in_the_bundle_folder_keeps_the_bundle(tmp_path, tiny_bundle):
    """The exact reproduction: ``heatmaps.dir`` = the bundle folder, a user's holiday photo (300 KB,
    2020) and settings file in it, max_mb 0.5, 150 frames. Retention used to delete them and
    ``manifest.json`` (the next start then exited 78); now it deletes only its own sets."""
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    holiday, settings = bundle / "holiday_1.png", bundle / "settings_1.json"
    holiday.write_bytes(np.random.default_rng(2).integers(0, 255, 300_000, dtype=np.uint8).tobytes())
    settings.write_text('{"language": "de"}\n')
    old = time.mktime((2020, 8, 1, 12, 0, 0, 0, 0, -1))
    for p in bundle.iterdir():
        os.utime(p, (old, old))
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    video = noise_video(tmp_path / "noise.mp4", 150)
    cfg = daemon_config(
        tmp_path,
        bundle,
        video,
        None,
        heatmaps={"dir": str(bundle), "max_mb": 0.5},
        decision={"thresholds": {"error": 0.0}, "max_event_frames": 10},
    )
    assert wait_exit(start_daemon(cfg)) == 0, daemon_log(cfg)[-3000:]
    s = log_summary(daemon_log(cfg))
    assert s["frames"] == 150 and s["heatmaps"]["saved"] >= 10 and s["heatmaps"]["deleted"] >= 5, s
    assert {name: (bundle / name).read_bytes() for name in before} == before
    assert wait_exit(start_daemon(cfg, "--max-frames", "5")) == 0, daemon_log(cfg)[-3000:]  # still a bundle


@pytest.mark.slow  # runs the daemon on the tiny model
def test_two_daemons_never_share_an_outbox_or_a_heatmap_dir(tmp_path, tiny_bundle):
    """A second daemon on a running daemon's outbox (or heatmaps.dir) stops at start-up with one
    line naming the holder's pid and exit 78, instead of delivering every queued alert twice; once
    the first daemon stopped, the same config starts."""
    video = noise_video(tmp_path / "v.mp4", 30)
    shared_outbox, shared_hm = tmp_path / "state" / "outbox.sqlite", tmp_path / "state" / "heatmaps"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    cfg_a = daemon_config(
        tmp_path / "a",
        tiny_bundle,
        video,
        None,
        outbox=str(shared_outbox),
        heatmaps={"dir": str(shared_hm)},
        camera={"loop": True, "realtime": True},
    )
    cfg_b = daemon_config(
        tmp_path / "b",
        tiny_bundle,
        video,
        None,
        outbox=str(shared_outbox),
        heatmaps={"dir": str(tmp_path / "b" / "hm")},
    )
    cfg_c = daemon_config(
        tmp_path / "c",
        tiny_bundle,
        video,
        None,
        outbox=str(tmp_path / "c" / "outbox.sqlite"),
        heatmaps={"dir": str(shared_hm)},
    )
    a = start_daemon(cfg_a)
    try:
        a.wait_event("ready", timeout=120)
        for cfg, what in ((cfg_b, f"outbox {shared_outbox}"), (cfg_c, f"heatmaps.dir {shared_hm}")):
            rc = wait_exit(start_daemon(cfg), 120)
            text = daemon_log(cfg)
            err = error_lines(text)
            assert rc == 78 and len(err) == 1 and "Traceback" not in text, text[-3000:]
            assert what in err[0] and f"pid {a.pid}" in err[0], err
            assert "in use by another seam-qc daemon" in err[0], err
        assert a.poll() is None  # the first daemon runs on, undisturbed
    finally:
        a.send_signal(signal.SIGTERM)
        assert wait_exit(a, 30) == 0, daemon_log(cfg_a)[-3000:]
    assert "Traceback" not in daemon_log(cfg_a)
    assert wait_exit(start_daemon(cfg_b, "--max-frames", "5")) == 0, daemon_log(cfg_b)[-3000:]
    assert wait_exit(start_daemon(cfg_c, "--max-frames", "5")) == 0, daemon_log(cfg_c)[-3000:]
    assert log_summary(daemon_log(cfg_c))["frames"] == 5
