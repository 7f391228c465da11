"""systemd/seam-qc.service verifies cleanly; edge.sdnotify speaks the sd_notify datagram protocol."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from edge.sdnotify import Notifier, watchdog_interval_s
from tests.support.systemd import unit_for_this_machine

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "seam-qc.service"
ANALYZE = shutil.which("systemd-analyze")


def test_unit_has_the_required_settings():
    text = UNIT.read_text()
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            settings.setdefault(k.strip(), []).append(v.strip())
    for key, value in [
        ("Type", "notify"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "78"),
        ("StateDirectory", "seam-qc"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("CapabilityBoundingSet", ""),
        ("SupplementaryGroups", "video"),
    ]:
        assert value in settings.get(key, []), key
    assert "@system-service" in settings["SystemCallFilter"]
    assert settings["RestrictAddressFamilies"][0].split()[:3] == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert int(settings["WatchdogSec"][0]) > 0
    allow = " ".join(settings["DeviceAllow"])
    assert "char-video4linux" in allow and "char-media" in allow and "dma_heap" in allow
    assert any(v.startswith("mqtt-password:") for v in settings["LoadCredential"])
    assert "--config" in settings["ExecStart"][0] and "-m edge" in settings["ExecStart"][0]


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
def test_systemd_analyze_verify_is_silent(tmp_path):
    assert ANALYZE is not None
    r = subprocess.run(
        [ANALYZE, "verify", str(unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")
def test_systemd_analyze_security_exposure_is_low(tmp_path):
    assert ANALYZE is not None
    r = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    if "--offline" in r.stderr and r.returncode != 0:
        pytest.skip("this systemd-analyze has no --offline")
    line = [s for s in r.stdout.splitlines() if "Overall exposure level" in s]
    assert line, r.stdout + r.stderr
    score = float(line[-1].split(":")[1].split()[0])
    print(line[-1])
    assert score <= 3.0


def _socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    return s, path


def test_notifier_sends_datagrams(tmp_path, monkeypatch):
    s, path = _socket(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier()
    assert n.enabled
    assert n.ready("running (litert)")
    assert s.recv(4096).decode() == "READY=1\nSTATUS=running (litert)"
    assert n.watchdog()
    assert s.recv(4096).decode() == "WATCHDOG=1"
    assert n.stopping()
    assert s.recv(4096).decode() == "STOPPING=1\nSTATUS=stopping"
    n.close()
    s.close()


def test_notifier_is_a_noop_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and n.ready() is False and n.watchdog() is False


def test_watchdog_interval(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval_s() is None
