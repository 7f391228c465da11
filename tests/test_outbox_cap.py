"""The outbox size cap is a config key (``outbox_max_mb``): the message that tells operators to
raise it names a key that exists, and setting it changes the cap the daemon's outbox runs with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import Config, load_config
from edge.daemon import open_outbox
from edge.errors import ConfigError
from edge.outbox import OutboxError

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, cap: str | None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "c.yaml"
    lines = [
        f"model: {{bundle: {ROOT / 'edge/models/default'}}}",
        "mqtt: {enabled: false}",
        "heatmaps: {enabled: false}",
        f"outbox: {tmp_path / 'outbox.sqlite'}",
    ]
    if cap is not None:
        lines.append(f"outbox_max_mb: {cap}")
    p.write_text("\n".join(lines) + "\n")
    return p


def _fill(cfg: Config) -> tuple[int, str]:
    """Alerts of ~1 kB the daemon's own outbox takes before it is full, and the error it then gives."""
    outbox = open_outbox(cfg)  # what Daemon.setup opens
    stored = 0
    try:
        with pytest.raises(OutboxError) as ei:
            for i in range(100_000):
                outbox.put(f"e{i}", "seamqc/s/alert", b"x" * 1000)
                stored += 1
    finally:
        outbox.close()
    return stored, str(ei.value)


def test_the_key_sets_the_cap_and_the_message_names_it(tmp_path):
    small, msg = _fill(load_config(_config(tmp_path / "a", "0.125")))
    assert "outbox_max_mb: 0.125" in msg and "raise it" in msg and str(tmp_path / "a") in msg
    assert "outbox_max_mb" in Config.model_fields  # the key the message names exists
    large, _ = _fill(load_config(_config(tmp_path / "b", "0.5")))
    assert 0 < small < large and large > 3 * small  # four times the cap holds about four times the alerts


def test_no_key_means_no_cap(tmp_path):
    cfg = load_config(_config(tmp_path, None))
    assert cfg.outbox_max_mb is None and cfg.outbox_max_bytes is None


@pytest.mark.parametrize(("value", "expected"), [("0", "must be > 0"), ("-5", "must be > 0"), ("lots", "'lots'")])
def test_bad_value_is_one_line_naming_key_and_value(tmp_path, value, expected):
    p = _config(tmp_path, value)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.exit_code == 78
    msg = str(ei.value)
    assert "\n" not in msg and f"{p}:5: outbox_max_mb: " in msg and expected in msg, msg
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(p), "--check-config"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 78 and "Traceback" not in r.stderr and "outbox_max_mb" in r.stderr, r.stderr
