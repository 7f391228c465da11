"""edge.config: typed YAML config, errors that name file:line, key and value (exit 78)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import Config, MqttConfig, TlsConfig, load_config
from edge.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def err(tmp_path: Path, text: str) -> str:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.exit_code == 78
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(str(p))
    return msg[len(str(p)):]


def test_minimal_defaults(tmp_path):
    (tmp_path / "bundle").mkdir()
    cfg = load_config(write(tmp_path, "model: {bundle: bundle}\n"))
    assert isinstance(cfg, Config)
    assert cfg.station == socket.gethostname().split(".")[0] or cfg.station
    assert cfg.model.bundle == tmp_path / "bundle"          # relative to the config's dir
    assert cfg.camera.source == "usb" and cfg.camera.roi is None
    assert cfg.mqtt == MqttConfig()
    assert cfg.mqtt.port == 1883 and cfg.mqtt.prefix == "seamqc" and cfg.mqtt.tls is None
    assert cfg.mqtt.max_inflight == 20 and cfg.mqtt.max_queued == 1000 and cfg.mqtt.keepalive == 30
    assert cfg.decision.expected_length == "any"
    assert cfg.source_path == tmp_path / "c.yaml"


def test_relative_paths_fall_back_to_cwd(tmp_path, monkeypatch):
    cfgdir = tmp_path / "config"
    cfgdir.mkdir()
    (tmp_path / "edge" / "models" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write(cfgdir, "model: {bundle: edge/models/x}\nheatmaps: {dir: out/hm}\n"))
    assert cfg.model.bundle == tmp_path / "edge" / "models" / "x"
    assert cfg.heatmaps.dir == cfgdir / "out" / "hm"  # neither exists: the config's dir wins


def test_shipped_configs_load(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(ROOT / "config" / "demo.yaml")
    assert cfg.camera.source == "file" and cfg.camera.roi == (192, 112, 256, 256)
    assert cfg.model.bundle in (ROOT / "edge" / "models" / "default", ROOT / "config" / "edge" / "models" / "default")
    if (ROOT / "edge" / "models" / "default").exists():
        assert cfg.model.bundle == ROOT / "edge" / "models" / "default"
    # the Pi example validates completely; only its TLS CA file is (rightly) missing here
    with pytest.raises(ConfigError) as ei:
        load_config(ROOT / "config" / "seam-qc.yaml")
    assert "mqtt.tls.ca: '/etc/seam-qc/ca.pem': CA certificate file not found" in str(ei.value)


@pytest.mark.parametrize("text, expected", [
    ("model: {bundle: /b}\ncamera:\n  source: usb\n  fps: abc\n", ":4: camera.fps: 'abc' is not a valid number"),
    ("model: {bundle: /b}\ncamera:\n  sorce: usb\n", ":3: camera.sorce: unknown key"),
    ("modle: {bundle: /b}\n", ":1: modle: unknown key"),
    ("model: {bundle: /b}\nmqtt:\n  port: 70000\n", ":3: mqtt.port: 70000 must be <= 65535"),
    ("model: {bundle: /b}\nmqtt: {port: 0}\n", ":2: mqtt.port: 0 must be >= 1"),
    ("model: {bundle: /b}\ncamera: {source: webcam}\n", ":2: camera.source: 'webcam' must be one of"),
    ("model: {bundle: /b}\ncamera:\n  roi: [1, 2, 3]\n", ":3: camera.roi: [1, 2, 3] must have exactly 4 values"),
    ("model: {bundle: /b}\ncamera:\n  roi: [600, 0, 100, 100]\n", ":2: camera: roi [600, 0, 100, 100] must lie"),
    ("model: {bundle: /b}\ndecision:\n  min_frames: 4\n  window: 3\n", ":2: decision: min_frames (4) must be <= window (3)"),
    ("model: {bundle: /b}\ndecision:\n  thresholds: {error: 1.5}\n", ":3: decision.thresholds: thresholds.error: 1.5"),
    ("model: {bundle: /b}\ndecision: {expected_length: 3mm}\n", ":2: decision.expected_length: '3mm' must be one of"),
    ("station: sew/03\nmodel: {bundle: /b}\n", ":1: station: 'sew/03' is not a valid station id"),
    ("station: 'sew 03'\nmodel: {bundle: /b}\n", ":1: station: 'sew 03' is not a valid station id"),
    ("model: {bundle: /b}\nmqtt: {enabled: maybe}\n", ":2: mqtt.enabled: 'maybe' is not a valid boolean"),
    ("model: {bundle: /b, threads: many}\n", ":1: model.threads: 'many' is not a valid integer"),
    ("model: {bundle: /b}\ncamera:\n  decode_threads: -1\n", ":3: camera.decode_threads: -1 must be >= 0"),
    ("camera: {}\n", ": model: required key is missing"),
    ("model: {bundle: /b}\ncamera: [1, 2]\n", ":2: camera: [1, 2] must be a mapping"),
    ("- a\n- b\n", ":1: the top level must be a mapping"),
    ("model: {bundle: /b\n", ":2: not valid YAML"),
    ("model: {bundle: /b}\nlog_level: chatty\n", ":2: log_level: 'CHATTY' must be one of"),
    ("model: {bundle: /b}\ncamera: {source: file, device: 3}\n", ":2: camera: camera.device must be a video file path"),
])
def test_errors_name_line_key_value(tmp_path, text, expected):
    msg = err(tmp_path, text)
    assert msg.startswith(expected), msg


def test_tls_and_password_files_must_exist(tmp_path):
    msg = err(tmp_path, "model: {bundle: /b}\nmqtt:\n  tls:\n    ca: missing-ca.pem\n")
    assert msg.startswith(":4: mqtt.tls.ca: ") and "missing-ca.pem" in msg and "not found" in msg
    msg = err(tmp_path, "model: {bundle: /b}\nmqtt:\n  username: u\n  password_file: nope\n")
    assert msg.startswith(":4: mqtt.password_file: ")
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "pw").write_text("secret\n")
    cfg = load_config(write(tmp_path, "model: {bundle: /b}\nmqtt:\n  tls: {ca: ca.pem}\n  username: u\n"
                                      "  password_file: pw\n"))
    assert isinstance(cfg.mqtt.tls, TlsConfig) and cfg.mqtt.tls.ca == tmp_path / "ca.pem"
    assert cfg.mqtt.password_file == tmp_path / "pw"


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/seam.yaml")


def test_cli_prints_one_line_and_exits_78(tmp_path):
    p = write(tmp_path, "model: {bundle: /b}\ncamera:\n  fps: abc\n")
    r = subprocess.run([sys.executable, "-m", "edge", "--config", str(p)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78
    assert r.stderr.strip() == f"error: {p}:3: camera.fps: 'abc' is not a valid number"
    assert "Traceback" not in r.stderr and r.stdout == ""
