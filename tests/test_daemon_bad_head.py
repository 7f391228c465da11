"""A garbage ``head.npz`` (with a matching sha256) in the daemon's bundle: one line and exit 78 at
start-up, from ``--check-config`` and from a run, instead of a traceback per alert (issue 12 #13)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.daemon import (
    ROOT,
    copy_bundle,
    daemon_config,
    daemon_log,
    error_lines,
    log_alerts,
    noise_video,
    start_daemon,
    wait_exit,
)
from tests.support.heads import garbage_heads, replace_head


@pytest.mark.slow  # trains the tiny model (tiny_keras / tiny_bundle)
@pytest.mark.parametrize("kind", ["random", "truncated", "wrong-kernel-shape", "nan-kernel"])
def test_garbage_head_is_exit_78_at_start(tmp_path, tiny_bundle, kind):
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    head = replace_head(bundle, garbage_heads((bundle / "head.npz").read_bytes())[kind])
    video = noise_video(tmp_path / "v.mp4", 20)
    cfg = daemon_config(tmp_path, bundle, video, None, decision={"thresholds": {"error": 0.0}, "max_event_frames": 5})
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(cfg), "--check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 78 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert str(head) in err[0] and "model.bundle" in err[0] and str(cfg) in err[0], err[0]
    assert wait_exit(start_daemon(cfg)) == 78
    text = daemon_log(cfg)
    err = error_lines(text)
    assert len(err) == 1 and str(head) in err[0], text[-3000:]
    assert "Traceback" not in text and not log_alerts(text), text[-3000:]
