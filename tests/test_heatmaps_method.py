"""``heatmaps.method: tf`` is refused on the Pi: one line naming the key and the value, exit 78, from
``--check-config`` and from a run (the Pi has no TensorFlow; ARCHITECTURE.md §9)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.daemon import ROOT, daemon_config, daemon_log, error_lines, noise_video, start_daemon, wait_exit

SHIPPED = ROOT / "edge" / "models" / "default"


@pytest.mark.slow
def test_heatmaps_method_tf_is_exit_78_naming_key_and_value(tmp_path):
    video = noise_video(tmp_path / "v.mp4", 10)
    cfg = daemon_config(tmp_path, SHIPPED, video, None, heatmaps={"method": "tf"})
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(cfg), "--check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 78 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert str(cfg) in err[0] and "heatmaps.method" in err[0] and "'tf'" in err[0] and "litert" in err[0], err[0]
    assert wait_exit(start_daemon(cfg)) == 78
    text = daemon_log(cfg)
    err = error_lines(text)
    assert len(err) == 1 and "heatmaps.method" in err[0] and "Traceback" not in text, text[-3000:]
    # with heatmaps off the key does not matter
    cfg = daemon_config(tmp_path, SHIPPED, video, None, heatmaps={"method": "tf", "enabled": False})
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(cfg), "--check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
