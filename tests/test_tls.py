"""TLS + authentication against a real Mosquitto TLS listener, with certificates made by `openssl`."""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.config import TlsConfig
from edge.outbox import Outbox
from tests.support.mqtt import MqttSubscriber
from tests.support.wait import wait_until

PASSWORD = "Pw-7f3c9a1e-n0t-in-logs"
USER = "sew-st1"

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None,
    reason="needs the openssl CLI and mosquitto_passwd (mosquitto package)",
)


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    passwords: Path  # mosquitto password_file
    password_file: Path  # what the daemon reads


def openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}"


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key.name,
        "-out",
        crt.name,
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    return crt, key


def make_leaf(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, crt, extf = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    extf.write_text(ext + "\nbasicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key.name,
        "-out",
        csr.name,
        "-subj",
        f"/CN={name}",
        cwd=d,
    )
    openssl(
        "x509",
        "-req",
        "-in",
        csr.name,
        "-CA",
        ca[0].name,
        "-CAkey",
        ca[1].name,
        "-CAcreateserial",
        "-out",
        crt.name,
        "-days",
        "2",
        "-extfile",
        extf.name,
        cwd=d,
    )
    return crt, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "seamqc-test-ca")
    other = make_ca(d, "some-other-ca")
    server = make_leaf(
        d,
        "localhost",
        ca,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature",
    )
    client = make_leaf(d, "seamqc-st1", ca, "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature")
    passwords = d / "mosquitto.passwd"
    r = subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), USER, PASSWORD], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    passwords.chmod(0o600)
    pw = d / "mqtt-password"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    return Pki(ca[0], other[0], server[0], server[1], client[0], client[1], passwords, pw)


@pytest.fixture
def tls_broker(mqtt_broker_factory, pki):
    def make(require_cert: bool = False):
        lines = [f"cafile {pki.ca}", f"certfile {pki.server_cert}", f"keyfile {pki.server_key}", "tls_version tlsv1.2"]
        if require_cert:
            lines.append("require_certificate true")
        return mqtt_broker_factory(
            listener_lines=lines, global_lines=[f"password_file {pki.passwords}"], anonymous=False
        )

    return make


def tls_subscriber(broker, pki: Pki, topic: str = "seamqc/#") -> MqttSubscriber:
    return MqttSubscriber(
        broker.host,
        broker.port,
        topic,
        tls={"ca_certs": str(pki.ca), "certfile": str(pki.client_cert), "keyfile": str(pki.client_key)},
        username=USER,
        password=PASSWORD,
    ).wait_subscribed()


def assert_no_secret(caplog, capfd, sub: MqttSubscriber | None = None) -> None:
    out, err = capfd.readouterr()
    assert PASSWORD not in caplog.text and PASSWORD not in out and PASSWORD not in err
    for rec in caplog.records:
        assert PASSWORD not in rec.getMessage()
    if sub is not None:
        assert all(PASSWORD.encode() not in m.payload for m in sub.messages)


def test_tls_with_ca_and_password_file(pki, tls_broker, mqtt_publisher, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # even paho's packet log must not show the password
    broker = tls_broker()
    sub = tls_subscriber(broker, pki)
    try:
        pub = mqtt_publisher(broker, tls=TlsConfig(ca=pki.ca), username=USER, password_file=pki.password_file)
        sub.wait_for("seamqc/st1/status", lambda m: m.text == "online")
        pub.alert({"event_id": "tls-1", "labels": ["break"]})
        assert sub.wait_for("seamqc/st1/alert").json()["event_id"] == "tls-1"
        assert pub.flush(10) and pub.outbox_depth == 0
        pub.stats({"fps": 30.0})
        sub.wait_for("seamqc/st1/stats")
        pub.stop()
        sub.wait_for("seamqc/st1/status", lambda m: m.text == "offline")
        assert any("Sending CONNECT" in r.getMessage() for r in caplog.records)  # the packet log was on
        assert_no_secret(caplog, capfd, sub)
    finally:
        sub.close()


def test_tls_client_certificate_and_systemd_credential(
    pki, tls_broker, mqtt_publisher, monkeypatch, tmp_path, caplog, capfd
):
    caplog.set_level(logging.DEBUG)
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt-password").write_text(PASSWORD)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))  # systemd LoadCredential=mqtt-password:...
    broker = tls_broker(require_cert=True)
    sub = tls_subscriber(broker, pki)
    try:
        # without a client certificate the broker refuses the handshake: logged, no crash, alert kept
        ob = Outbox(tmp_path / "nocert.sqlite")
        nocert = mqtt_publisher(broker, station="nocert", outbox=ob, tls=TlsConfig(ca=pki.ca), username=USER)
        nocert.alert({"event_id": "kept-1"})
        wait_until(
            lambda: any(r.name == "edge.publish" and "certificate required" in r.getMessage() for r in caplog.records),
            what="failure log",
        )
        assert (
            sum("certificate required" in r.getMessage() for r in caplog.records if r.name == "edge.publish") == 1
        )  # once, not per retry
        assert not nocert.connected and ob.depth() == 1
        nocert.stop(timeout=0.5)

        pub = mqtt_publisher(broker, tls=TlsConfig(ca=pki.ca, cert=pki.client_cert, key=pki.client_key), username=USER)
        pub.alert({"event_id": "tls-cert-1"})
        assert sub.wait_for("seamqc/st1/alert").json()["event_id"] == "tls-cert-1"
        assert pub.flush(10)
        assert_no_secret(caplog, capfd, sub)
        ob.close()
    finally:
        sub.close()


def test_wrong_ca_fails_to_connect_logged_once_without_crash(pki, tls_broker, mqtt_publisher, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge.publish")
    broker = tls_broker()
    ob = Outbox(tmp_path / "o.sqlite")
    pub = mqtt_publisher(
        broker,
        outbox=ob,
        tls=TlsConfig(ca=pki.other_ca),
        username=USER,
        password_file=pki.password_file,
        reconnect_min_s=0.05,
        reconnect_max_s=0.1,
    )
    pub.alert({"event_id": "never-lost"})
    wait_until(lambda: broker.log_text().count("New connection from") >= 3, what="3 handshake attempts")
    assert not pub.connected
    fails = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(fails) == 1 and "certificate verify failed" in fails[0]
    assert PASSWORD not in caplog.text
    pub.stop(timeout=0.5)
    assert [it.event_id for it in ob.pending()] == ["never-lost"]
    ob.close()


def test_wrong_password_is_refused_and_logged_without_it(pki, tls_broker, mqtt_publisher, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    broker = tls_broker()
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password-XYZ\n")
    pub = mqtt_publisher(
        broker, tls=TlsConfig(ca=pki.ca), username=USER, password_file=wrong, reconnect_min_s=0.05, reconnect_max_s=0.1
    )
    wait_until(lambda: broker.log_text().count("not authorised") >= 3, what="3 refused attempts")
    assert not pub.connected
    ours = [r for r in caplog.records if r.name == "edge.publish"]
    refused = [r for r in ours if "refused" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR, [r.getMessage() for r in ours]
    assert "Not authorized" in refused[0].getMessage()
    assert not any("failed" in r.getMessage() or "disconnected" in r.getMessage() for r in ours)
    assert "not-the-password-XYZ" not in caplog.text and PASSWORD not in caplog.text
    pub.stop(timeout=0.5)
