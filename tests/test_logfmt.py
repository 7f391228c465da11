"""``log_format: json`` (edge.logfmt): one JSON object per line with events, text output unchanged,
the key validated like every other (exit 78, one line). The daemon's own JSON log on a real run is
checked in tests/test_daemon.py (every line parses, its alert events match the MQTT alerts)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest

from convert.harness import errors, parse_log
from edge.config import load_config
from edge.errors import ConfigError
from edge.logfmt import JsonFormatter, event, text_format
from tests.support.daemon import ROOT

FIELDS = {"ts", "level", "logger", "msg"}


def record(msg: str, *args: object, extra: dict | None = None, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("edge.daemon", logging.INFO, __file__, 1, msg, args, exc_info)
    for k, v in (extra or {}).items():
        setattr(rec, k, v)
    return rec


def test_json_line_has_fields_and_event():
    ev = event("stopping", reason="end of file", frames=42)
    line = JsonFormatter().format(record("stopping (%s)", "end of file", extra=ev))
    d = json.loads(line)
    assert set(d) == FIELDS | {"event", "reason", "frames"}
    assert d["msg"] == "stopping (end of file)" and d["event"] == "stopping" and d["frames"] == 42
    assert d["level"] == "INFO" and d["logger"] == "edge.daemon" and d["ts"].endswith("Z")


def test_json_msg_override_and_traceback_stay_on_one_line():
    ev = event("alert", msg="ALERT st-1 error frame 3", event_id="st-1", alert={"event_id": "st-1", "x": "ü"})
    line = JsonFormatter().format(record("ALERT %s", '{"long": "payload"}', extra=ev, exc=True))
    assert "\n" not in line
    d = json.loads(line)
    assert d["msg"] == "ALERT st-1 error frame 3" and d["alert"]["x"] == "ü"
    assert "Traceback" in d["exc"] and "boom" in d["exc"]


def test_event_fields_cannot_shadow_the_base_fields():
    with pytest.raises(ValueError, match="reserved"):
        event("alert", msg="x", level="oops")


def test_text_format_ignores_the_event():
    fmt = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    rec = record("stopping (%s)", "SIGTERM", extra=event("stopping", reason="SIGTERM", frames=1))
    assert fmt.format(rec) == "INFO edge.daemon: stopping (SIGTERM)"


def test_text_format_stamps_time_unless_journald_does(monkeypatch):
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert text_format().startswith("%(asctime)s ")
    monkeypatch.setenv("INVOCATION_ID", "abc")
    assert text_format() == "%(levelname)s %(name)s: %(message)s"


def _config(tmp_path, **extra: str):
    body = textwrap.dedent(
        f"""\
        station: st1
        model:
          bundle: {tmp_path / "no-bundle"}
        outbox: {tmp_path / "outbox.sqlite"}
        """
    )
    body += "".join(f"{k}: {v}\n" for k, v in extra.items())
    p = tmp_path / "c.yaml"
    p.write_text(body)
    return p


def test_log_format_key_is_validated(tmp_path):
    assert load_config(_config(tmp_path)).log_format == "text"
    assert load_config(_config(tmp_path, log_format="json")).log_format == "json"
    with pytest.raises(ConfigError) as e:
        load_config(_config(tmp_path, log_format="yaml"))
    msg = str(e.value)
    assert e.value.exit_code == 78 and "\n" not in msg
    assert f"{tmp_path / 'c.yaml'}:5" in msg and "log_format" in msg and "'yaml'" in msg, msg


def run_edge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_bad_log_format_is_one_line_exit_78(tmp_path):
    r = run_edge("--config", str(_config(tmp_path, log_format="xml")))
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 78 and len(err) == 1 and err[0].startswith("error: "), r.stderr
    assert "log_format" in err[0] and "'xml'" in err[0] and str(tmp_path / "c.yaml") in err[0], err


def test_json_mode_errors_are_json_exit_events(tmp_path):
    """With ``--log-format json`` even a start-up error is a JSON line: an ``exit`` event naming it."""
    r = run_edge("--config", str(_config(tmp_path)), "--log-format", "json")
    lines = r.stderr.splitlines()
    parsed = [json.loads(line) for line in lines]
    assert r.returncode == 78 and len(parsed) == 1, r.stderr
    d = parsed[0]
    assert FIELDS <= set(d) and d["event"] == "exit" and d["exit_code"] == 78 and d["level"] == "ERROR"
    assert "model.bundle" in d["error"] and str(tmp_path / "no-bundle") in d["error"]
    assert errors(parse_log(r.stderr)) == [f"error: {d['error']}"]


def test_native_stderr_is_wrapped_in_json():
    """What C++ libraries write to fd 2 (LiteRT's XNNPACK line) becomes a JSON record too."""
    code = textwrap.dedent(
        """\
        import logging, os
        from edge.logfmt import close_logging, event, setup_logging
        setup_logging("INFO", "json")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\nWARNING: odd\\n")
        logging.getLogger("edge.daemon").info("ready", extra=event("ready", station="st1"))
        close_logging()
        """
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    parsed = [json.loads(line) for line in r.stderr.splitlines()]
    assert all(FIELDS <= set(d) for d in parsed)
    native = {d["msg"]: d for d in parsed if d["logger"] == "edge.native"}
    assert native["INFO: Created TensorFlow Lite XNNPACK delegate for CPU."]["level"] == "INFO"
    assert native["WARNING: odd"]["level"] == "WARNING"
    assert [d["station"] for d in parsed if d.get("event") == "ready"] == ["st1"]
