"""edge.config: typed YAML config, errors that name file:line, key and value (exit 78)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.config import Config, MqttConfig, TlsConfig, load_config
from edge.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def make_ca(path: Path) -> Path:
    """A real self-signed CA certificate (the config now loads it like the MQTT client does)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    r = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(path.with_suffix(".key")),
            "-out",
            str(path),
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return path


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
    return msg[len(str(p)) :]


def test_minimal_defaults(tmp_path):
    (tmp_path / "bundle").mkdir()
    cfg = load_config(write(tmp_path, "model: {bundle: bundle}\n"))
    assert isinstance(cfg, Config)
    assert cfg.station == (socket.gethostname().split(".")[0] or "station")
    assert cfg.model.bundle == tmp_path / "bundle"  # relative to the config's dir
    assert cfg.camera.source == "usb" and cfg.camera.roi is None
    assert cfg.mqtt == MqttConfig()
    assert cfg.mqtt.port == 1883 and cfg.mqtt.prefix == "seamqc" and cfg.mqtt.tls is None
    assert cfg.mqtt.max_inflight == 20 and cfg.mqtt.max_queued == 1000 and cfg.mqtt.keepalive == 30
    assert cfg.decision.expected_length == "any"
    assert cfg.source_path == tmp_path / "c.yaml"


@pytest.mark.parametrize(
    "hostname, station", [("line7.factory.example", "line7"), ("sew-03", "sew-03"), ("", "station")]
)
def test_default_station_is_the_short_hostname(tmp_path, monkeypatch, hostname, station):
    (tmp_path / "bundle").mkdir()
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    assert load_config(write(tmp_path, "model: {bundle: bundle}\n")).station == station
    assert load_config(write(tmp_path, "station: st9\nmodel: {bundle: bundle}\n")).station == "st9"


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


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model: {bundle: /b}\ncamera:\n  source: usb\n  fps: abc\n", ":4: camera.fps: 'abc' is not a valid number"),
        ("model: {bundle: /b}\ncamera:\n  sorce: usb\n", ":3: camera.sorce: unknown key"),
        ("modle: {bundle: /b}\n", ":1: modle: unknown key"),
        ("model: {bundle: /b}\nmqtt:\n  port: 70000\n", ":3: mqtt.port: 70000 must be <= 65535"),
        ("model: {bundle: /b}\nmqtt: {port: 0}\n", ":2: mqtt.port: 0 must be >= 1"),
        ("model: {bundle: /b}\ncamera: {source: webcam}\n", ":2: camera.source: 'webcam' must be one of"),
        ("model: {bundle: /b}\ncamera:\n  roi: [1, 2, 3]\n", ":3: camera.roi: [1, 2, 3] must have exactly 4 values"),
        ("model: {bundle: /b}\ncamera:\n  roi: [600, 0, 100, 100]\n", ":2: camera: roi [600, 0, 100, 100] must lie"),
        (
            "model: {bundle: /b}\ndecision:\n  min_frames: 4\n  window: 3\n",
            ":2: decision: min_frames (4) must be <= window (3)",
        ),
        (
            "model: {bundle: /b}\ndecision:\n  thresholds: {error: 1.5}\n",
            ":3: decision.thresholds: thresholds.error: 1.5",
        ),
        (
            "model: {bundle: /b}\ndecision: {expected_length: 3mm}\n",
            ":2: decision.expected_length: '3mm' must be one of",
        ),
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
        (
            "model: {bundle: /b}\ncamera: {source: file, device: 3}\n",
            ":2: camera: camera.device must be a video file path",
        ),
    ],
)
def test_errors_name_line_key_value(tmp_path, text, expected):
    msg = err(tmp_path, text)
    assert msg.startswith(expected), msg


def test_tls_and_password_files_must_exist(tmp_path):
    msg = err(tmp_path, "model: {bundle: /b}\nmqtt:\n  tls:\n    ca: missing-ca.pem\n")
    assert msg.startswith(":4: mqtt.tls.ca: ") and "missing-ca.pem" in msg and "not found" in msg
    msg = err(tmp_path, "model: {bundle: /b}\nmqtt:\n  username: u\n  password_file: nope\n")
    assert msg.startswith(":4: mqtt.password_file: ")
    make_ca(tmp_path / "ca.pem")
    (tmp_path / "pw").write_text("secret\n")
    cfg = load_config(
        write(tmp_path, "model: {bundle: /b}\nmqtt:\n  tls: {ca: ca.pem}\n  username: u\n  password_file: pw\n")
    )
    assert isinstance(cfg.mqtt.tls, TlsConfig) and cfg.mqtt.tls.ca == tmp_path / "ca.pem"
    assert cfg.mqtt.password_file == tmp_path / "pw"


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/seam.yaml")


def test_cli_prints_one_line_and_exits_78(tmp_path):
    p = write(tmp_path, "model: {bundle: /b}\ncamera:\n  fps: abc\n")
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(p)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 78
    assert r.stderr.strip() == f"error: {p}:3: camera.fps: 'abc' is not a valid number"
    assert "Traceback" not in r.stderr and r.stdout == ""


# --------------------------------------------------------------------------- issue 12: hardening

SHIPPED = ROOT / "edge" / "models" / "default"


@pytest.mark.parametrize(
    "text, expected",
    [
        # numbers at the extremes: NaN/inf pass every range check unless refused (#5: max_mb .inf overflowed)
        ("model: {bundle: /b}\nheatmaps:\n  max_mb: .inf\n", ":3: heatmaps.max_mb: inf is not a finite number"),
        (
            "model: {bundle: /b}\ndecision:\n  thresholds: {error: .nan}\n",
            ":3: decision.thresholds.error: nan is not a",
        ),
        ("model: {bundle: /b}\nheatmaps: {max_mb: 1.0e+300}\n", ":2: heatmaps.max_mb: 1e+300 must be <= 1000000000"),
        # a 1e12 s backoff killed the capture thread (threading timeout overflow)
        (
            "model: {bundle: /b}\ncamera:\n  reconnect_max_s: 1.0e+12\n",
            ":3: camera.reconnect_max_s: 1000000000000.0 must be <= 3600",
        ),
        (
            "model: {bundle: /b}\nmqtt: {reconnect_min_s: 1.0e+12}\n",
            ":2: mqtt.reconnect_min_s: 1000000000000.0 must be <=",
        ),
        (
            "model: {bundle: /b}\ndecision: {window: 100000000000000000000}\n",
            ":2: decision.window: 100000000000000000000 must",
        ),
        (
            "model: {bundle: /b}\ncamera: {device: 100000000000000000000}\n",
            ":2: camera.device: 100000000000000000000 is not a",
        ),
        ("model: {bundle: /b}\nmqtt: {max_inflight: 70000}\n", ":2: mqtt.max_inflight: 70000 must be <= 65535"),
        ("model: {bundle: /b}\nstats_interval: 1.0e+300\n", ":2: stats_interval: 1e+300 must be <= 86400"),
        # mqtt.host '' made paho raise at connect: exit 1 with a traceback
        ("model: {bundle: /b}\nmqtt:\n  host: ''\n", ":3: mqtt.host: '' is not a host name or address"),
        ("model: {bundle: /b}\nmqtt:\n  host: 'broker .lan'\n", ":3: mqtt.host: 'broker .lan' is not a host name"),
        # control characters: a NUL in a path made os.stat raise ValueError deep inside the run
        ('model: {bundle: "/b\\0x"}\n', ":1: model.bundle: '/b\\x00x' contains a control character"),
        ('model: {bundle: /b}\nheatmaps: {dir: "hm\\e[31m"}\n', ":2: heatmaps.dir: 'hm\\x1b[31m' contains a control"),
        ('model: {bundle: /b}\nmqtt: {username: "\\0"}\n', ":2: mqtt.username: '\\x00' contains a control character"),
        ("model: {bundle: /b}\ncamera: {device: ''}\n", ":2: camera.device: '' is not a device, file or URL"),
        # a huge value is named, not dumped
        (
            "model: {bundle: /b}\nstation: '" + "x" * 5000 + "'\n",
            ":2: station: 'xxxxxxxxxxxxxxxx'... (5000 characters) is",
        ),
        ("model: {bundle: /b}\ncamera: {fps: " + "9" * 5000 + "}\n", ": not a usable value (Exceeds the limit"),
    ],
)
def test_extreme_values_exit_78_with_one_line(tmp_path, text, expected):
    msg = err(tmp_path, text)
    assert msg.startswith(expected), msg
    assert len(msg) < 300, msg


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "model: {bundle: /b}\ncamera:\n  source: file\nstation: a\ncamera:\n  source: usb\n",
            ":5: camera: duplicate key (first at line 2;",
        ),
        (
            "model: {bundle: /b}\ncamera:\n  fps: 10\n  width: 320\n  fps: 30\n",
            ":5: camera.fps: duplicate key (first at line 3;",
        ),
        ("model: {bundle: /b, bundle: /c}\n", ":1: model.bundle: duplicate key (first at line 1;"),
    ],
)
def test_duplicate_keys_name_both_lines(tmp_path, text, expected):
    """A second ``camera:`` block used to replace the first silently (the source became usb 0)."""
    assert err(tmp_path, text).startswith(expected)


ALIAS_BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_alias_bomb_is_refused_before_anything_walks_it(tmp_path):
    """Nine lines that expand to 9**9 strings: refused at once, in a real process, in bounded memory."""
    import resource

    def cap_memory() -> None:  # before the fix this grew ~150 MB/s forever
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    p = write(tmp_path, ALIAS_BOMB)
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(p), "--check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=cap_memory,
    )
    assert time.monotonic() - t0 < 20
    assert r.returncode == 78 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        f"error: {p}:1: YAML anchors and aliases (&name, *name) are not allowed in the config: write the values out"
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model: &m {bundle: /b}\n", ":1: YAML anchors and aliases"),
        ("x: &x /b\nmodel: {bundle: *x}\n", ":1: YAML anchors and aliases"),
        ("model: {bundle: /b}\ndecision: {thresholds: " + "[" * 40 + "]" * 40 + "}\n", ":2: nested deeper than 16"),
        ("model: {bundle: /b}\nstation: 'a\x07b'\n", ":2: not valid YAML (character #x0007 is not allowed)"),
        ("model: {bundle: /b}\n? [a, b]\n: 1\n", ":2: (top level): a key must be a plain name"),
        (
            "model: {bundle: /b}\n---\nstation: x\n",
            ":2: not valid YAML (expected a single document in the stream: but found another",
        ),
    ],
)
def test_yaml_structure_refused_with_its_line(tmp_path, text, expected):
    assert err(tmp_path, text).startswith(expected)


@pytest.mark.parametrize(
    "data, expected",
    [
        ("# café\nmodel: {bundle: /b}\n".encode("latin-1"), ":1: byte 0xe9 at column 6 is not UTF-8"),
        ("model: {bundle: /b}\n# crème\n".encode("cp1252"), ":2: byte 0xe8 at column 5 is not UTF-8"),
        ("model: {bundle: /b}\n".encode("utf-16"), ":1: the file is UTF-16 or binary"),
        ("model: {bundle: /b}\n".encode("utf-16-le"), ":1: the file is UTF-16 or binary"),
        (b"model: {bundle: /b}\n\x00\x01\x02", ":2: a NUL byte: a binary file"),
        (bytes(range(256)) * 4, ":1: the file is UTF-16 or binary"),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), ":1: byte 0x89 at column 1 is not UTF-8"),
        (b"# " + b"x" * (2 << 20), ": larger than 1 MiB"),
    ],
)
def test_encodings_and_binary_files_exit_78(tmp_path, data, expected):
    """A Latin-1 comment used to be exit 1 with a traceback (load_config caught only OSError)."""
    p = tmp_path / "c.yaml"
    p.write_bytes(data)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.exit_code == 78 and "\n" not in str(ei.value)
    assert str(ei.value).startswith(f"{p}{expected}"), str(ei.value)


def test_utf8_bom_is_fine(tmp_path):
    (tmp_path / "b").mkdir()
    p = tmp_path / "c.yaml"
    p.write_bytes("\ufeffstation: naïve\nmodel: {bundle: b}\n".encode("utf-8"))
    assert load_config(p).station == "naïve"


def test_latin1_comment_on_the_command_line_is_78_not_a_traceback(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes((ROOT / "config" / "demo.yaml").read_text().replace("# The demo", "# Démo").encode("latin-1"))
    for extra in ([], ["--check-config"]):
        r = subprocess.run(
            [sys.executable, "-m", "edge", "--config", str(p), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 78, r.stderr
        assert r.stderr.strip() == (
            f"error: {p}:1: byte 0xe9 at column 4 is not UTF-8: save the file as UTF-8 "
            "(an editor wrote Latin-1 or Windows-1252?)"
        )


def test_tls_files_are_loaded_not_just_found(tmp_path):
    """A garbage CA passed --check-config and failed the run: now both load it like paho does."""
    (tmp_path / "ca.pem").write_text("garbage\n")
    msg = err(tmp_path, "model: {bundle: /b}\nmqtt:\n  tls:\n    ca: ca.pem\n")
    assert msg.startswith(f":4: mqtt.tls.ca: '{tmp_path / 'ca.pem'}': not a usable CA certificate file")
    make_ca(tmp_path / "ca.pem")
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    (tmp_path / "key.pem").write_text("nope\n")
    msg = err(tmp_path, "model: {bundle: /b}\nmqtt:\n  tls:\n    ca: ca.pem\n    cert: cert.pem\n    key: key.pem\n")
    assert msg.startswith(":5: mqtt.tls.cert: ") and "not a usable certificate and key" in msg


def test_password_file_must_hold_a_password_and_need_a_user_name(tmp_path):
    (tmp_path / "pw").write_text("\n")
    msg = err(tmp_path, "model: {bundle: /b}\nmqtt:\n  username: u\n  password_file: pw\n")
    assert msg == f":4: mqtt.password_file: '{tmp_path / 'pw'}': the password file is empty"
    (tmp_path / "pw").write_bytes(b"caf\xe9\n")
    msg = err(tmp_path, "model: {bundle: /b}\nmqtt:\n  username: u\n  password_file: pw\n")
    assert msg.endswith("the password file is not UTF-8 text")
    (tmp_path / "pw").write_text("s3cret\n")
    msg = err(tmp_path, "model: {bundle: /b}\nmqtt:\n  password_file: pw\n")
    assert msg.startswith(":2: mqtt: password_file is set but username is not")


@pytest.mark.parametrize("value", ["hunter2-Secret", "'Tr0ub4dor&3 x'", '"Secr3t\\tWord"', "12345678901234567890123"])
def test_password_written_in_place_of_the_path_is_never_echoed(tmp_path, value):
    p = write(tmp_path, f"model: {{bundle: /b}}\nmqtt:\n  username: u\n  password_file: {value}\n")
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(p), "--check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78 and r.stderr.startswith(f"error: {p}:4: mqtt.password_file: "), r.stderr
    secret = value.strip("'\"").replace("\\t", "\t")
    for part in (p for p in (secret, *secret.split(), repr(secret)[1:-1]) if len(p) >= 4):
        assert part not in r.stderr and part not in r.stdout


def test_check_config_and_start_share_one_validation_path(tmp_path, monkeypatch):
    """``--check-config`` is ``Daemon.setup(dry_run=True)``: nothing is validated twice, or only once."""
    from edge import __main__ as cli
    from edge import daemon as daemon_mod

    (tmp_path / "b").mkdir()
    p = write(tmp_path, "model: {bundle: b}\n")
    calls = []

    def fake_setup(self, dry_run: bool = False) -> None:
        calls.append(dry_run)
        raise ConfigError(f"{p}:1: model.bundle: refused by setup")

    monkeypatch.setattr(daemon_mod.Daemon, "setup", fake_setup)
    assert cli.main(["--config", str(p), "--check-config"]) == 78
    assert cli.main(["--config", str(p), "--max-frames", "1"]) == 78
    assert calls == [True, False]


# --------------------------------------------------------------------------- --check-config agrees with a start


def _video(path: Path, frames: int) -> Path:
    import cv2
    import numpy as np

    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 30, (640, 480))
    for i in range(frames):
        w.write(np.full((480, 640, 3), 40 + i, np.uint8))
    w.release()
    return path


def _daemon_yaml(tmp_path: Path, video: Path, extra: str = "", mqtt: str = "  enabled: false\n") -> Path:
    return write(
        tmp_path,
        f"""station: st
camera: {{source: file, device: {video}, roi: [192, 112, 256, 256], realtime: false}}
model: {{bundle: {SHIPPED}, threads: 1}}
mqtt:
{mqtt}heatmaps: {{dir: {tmp_path / "hm"}}}
outbox: {tmp_path / "outbox.sqlite"}
{extra}""",
    )


def _both(cfg: Path) -> list[subprocess.CompletedProcess]:
    return [
        subprocess.run(
            [sys.executable, "-m", "edge", "--config", str(cfg), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for extra in (["--check-config"], ["--max-frames", "5"])
    ]


def _video_case(tmp_path: Path, kind: str) -> tuple[Path, str]:
    video = tmp_path / "v.mp4"
    if kind == "zero-byte":
        video.write_bytes(b"")
    elif kind == "text-as-mp4":
        video.write_text("this is not a video\n")
    elif kind == "truncated":
        data = _video(tmp_path / "full.mp4", 30).read_bytes()
        video.write_bytes(data[: len(data) // 3])
    elif kind == "zero-frames-loop":
        _video(video, 0)
        return video, "loop: true"
    return video, ""


@pytest.mark.skipif(not (SHIPPED / "manifest.json").exists(), reason="needs the shipped bundle")
@pytest.mark.parametrize(
    "case",
    [
        "unknown-threshold-label",
        "max_mb-inf",
        "zero-byte",
        "text-as-mp4",
        "truncated",
        "zero-frames-loop",
        "garbage-ca",
        "empty-password-file",
        "password-without-user",
        "reconnect-1e12",
        "host-empty",
    ],
)
def test_check_config_refuses_what_the_start_refuses(tmp_path, case):
    """Each used to pass ``--check-config`` (exit 0) and then fail the start (exit 78 or 1), or loop forever."""
    video, cam = (
        _video_case(tmp_path, case)
        if case in ("zero-byte", "text-as-mp4", "truncated", "zero-frames-loop")
        else (_video(tmp_path / "v.mp4", 8), "")
    )
    mqtt, extra, key = "  enabled: false\n", "", "camera.device"
    if cam:
        video_yaml = _daemon_yaml(tmp_path, video).read_text().replace("realtime: false}", f"realtime: false, {cam}}}")
        write(tmp_path, video_yaml)
    if case == "unknown-threshold-label":
        extra, key = "decision:\n  thresholds: {eror: 0.5}\n", "decision.thresholds.eror"
    elif case == "max_mb-inf":
        extra, key = "", "heatmaps.max_mb"
    elif case == "garbage-ca":
        (tmp_path / "ca.pem").write_text("garbage\n")
        mqtt, key = "  host: localhost\n  tls: {ca: ca.pem}\n", "mqtt.tls.ca"
    elif case == "empty-password-file":
        (tmp_path / "pw").write_text("")
        mqtt, key = "  host: localhost\n  username: u\n  password_file: pw\n", "mqtt.password_file"
    elif case == "password-without-user":
        (tmp_path / "pw").write_text("secret\n")
        mqtt, key = "  host: localhost\n  password_file: pw\n", "mqtt:"
    elif case == "reconnect-1e12":
        extra, key = "", "camera.reconnect_max_s"
    elif case == "host-empty":
        mqtt, key = "  host: ''\n", "mqtt.host"
    if not cam:
        cfg = _daemon_yaml(tmp_path, video, extra, mqtt)
        if case == "max_mb-inf":
            cfg.write_text(cfg.read_text().replace("heatmaps: {dir:", "heatmaps: {max_mb: .inf, dir:"))
        if case == "reconnect-1e12":
            cfg.write_text(cfg.read_text().replace("realtime: false}", "realtime: false, reconnect_max_s: 1.0e+12}"))
    else:
        cfg = tmp_path / "c.yaml"
    check, start = _both(cfg)
    for r in (check, start):
        assert r.returncode == 78, (case, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {cfg}:") and f" {key}" in errors[0], errors
    assert [ln for ln in check.stderr.splitlines() if ln.startswith("error: ")] == [
        ln for ln in start.stderr.splitlines() if ln.startswith("error: ")
    ]
    assert not (tmp_path / "outbox.sqlite").exists()  # refused before anything was created


@pytest.mark.slow  # the start really runs the daemon (5 frames)
@pytest.mark.skipif(not (SHIPPED / "manifest.json").exists(), reason="needs the shipped bundle")
def test_check_config_creates_nothing(tmp_path):
    video = _video(tmp_path / "v.mp4", 8)
    cfg = _daemon_yaml(tmp_path, video)
    before = sorted(p.name for p in tmp_path.iterdir())
    check = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(cfg), "--check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and check.stdout.startswith(f"{cfg}: OK (station st"), check.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # a dry run: no outbox, no heatmaps dir
    start = _both(cfg)[1]
    assert start.returncode == 0, start.stderr[-2000:]
    assert (tmp_path / "outbox.sqlite").exists()


def test_path_the_os_cannot_look_up_is_resolved_not_a_traceback(tmp_path):
    # found by tests/test_fuzz.py: a 300-byte file name made Path.exists() raise ENAMETOOLONG
    from edge.config import _resolve

    long = Path("x" * 300)
    assert _resolve(tmp_path, long) == tmp_path / long
