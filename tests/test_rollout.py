"""Signed rollout, station side without a daemon (issue 16 #2 #3): wire format, refusals, resume, rollback.

The bundles are small synthetic ones (``tests.support.rollout.small_bundle``), really signed with
keys from ``edge.signing``; the messages are ``convert deploy``'s own (``pack``, ``begin_messages``,
``rollback_message``); the station is ``edge.rollout``'s inbox, worker and store on a real
directory with recording hooks (``InProcessStation``). The daemon and MQTT are in
``tests/test_rollout_daemon.py``.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import tarfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from convert.deploy import begin_messages, pack, rollback_message
from edge import rollout
from edge.bundle import load_bundle
from edge.rollout import RolloutError, parse
from tests.support.rollout import InProcessStation, keypair, private, small_bundle

CHUNK = 512


@pytest.fixture
def fleet(tmp_path):
    """Keys, a state directory ``models/`` with v1 running through the link ``current``, and v2 to send."""
    priv, pub = keypair(tmp_path / "keys")
    other_priv, _ = keypair(tmp_path / "keys", "other")
    models = tmp_path / "state" / "models"
    v1 = small_bundle(models / "v1", "v1", priv)
    link = models / "current"
    os.symlink("v1", link)
    v2 = small_bundle(tmp_path / "work" / "v2", "v2", priv)
    return {"priv": priv, "pub": pub, "other": other_priv, "models": models, "link": link, "v1": v1, "v2": v2}


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def messages(bundle: Path, key: Path, rid: str = "r1", tar: bytes | None = None):
    b = load_bundle(bundle, verify=False)
    return begin_messages(tar if tar is not None else pack(bundle), rid, private(key), b.name, b.version, CHUNK)


def flat(msgs: tuple[bytes, list[bytes], bytes]) -> list[bytes]:
    """(begin, chunks, end) → the payloads in the order deploy sends them."""
    begin, chunks, end = msgs
    return [begin, *chunks, end]


def assert_refused(st: InProcessStation, fleet: dict, reason: str) -> None:
    """One failed state naming ``reason``; the old bundle linked and running; nothing of the rollout left."""
    fails = st.failures()
    assert len(fails) == 1 and reason in fails[0], st.states
    assert not st.offers and st.running_version == "v1"
    assert os.readlink(fleet["link"]) == "v1"
    left = {p.name for p in fleet["models"].iterdir()} - {"current.issued"}  # the begin's counter, if accepted
    assert left == {"v1", "current"}, left


def test_a_signed_bundle_is_downloaded_checked_and_installed_inside_the_state_directory(fleet, tmp_path):
    st = InProcessStation(fleet["link"], [fleet["pub"]])
    outside = tree(tmp_path / "work") | tree(tmp_path / "keys")
    begin, chunks, end = messages(fleet["v2"], fleet["priv"])
    assert len(chunks) >= 8  # really chunked
    st.send(begin, *chunks, end)
    states = [s for s, _ in st.states]
    assert states[0] == "downloading" and states[-1] == "verifying" and not st.failures(), states
    progress = [kw["rollout"]["next"] for s, kw in st.states if s == "downloading"]
    assert progress == sorted(progress) and progress[-1] == len(chunks)
    ((model, state, extra),) = st.offers
    assert state == "active" and model.version == "v2" and extra["rollout"]["id"] == "r1"
    assert model.bundle.signed_by  # the manifest's own signature was checked too
    assert os.readlink(fleet["link"]) == "rollout-r1" and st.running_version == "v2"
    assert os.readlink(fleet["models"] / "current.previous") == "v1"  # kept for the rollback
    assert {p.name for p in fleet["models"].iterdir()} == {
        "v1",
        "current",
        "current.previous",
        "current.issued",  # replay protection: the begin's issue counter
        "rollout-r1",
    }
    assert tree(tmp_path / "work") | tree(tmp_path / "keys") == outside  # nothing written outside
    # QoS 1 may deliver a message twice: a duplicate chunk after the install changes nothing
    st.send(chunks[0])
    assert len(st.offers) == 1


@pytest.mark.parametrize(
    "case, reason",
    [
        ("bad_signature", "bad signature"),
        ("unknown_key", "unknown key"),
        ("oversize", "over model.max_bundle_mb"),
        ("corrupted_chunk", "sha256 of the received bundle"),
        ("out_of_order", "out of order"),
        ("missing_last", "chunks missing"),
        ("short_chunk", "bytes, expected"),
        ("dotdot_member", "'..'"),
        ("link_member", "link"),
        ("unsigned_manifest", "unsigned bundle"),
        ("bad_sha_in_bundle", "sha256"),
        ("no_issued_at", "begin without issued_at (sent by an older convert deploy"),
    ],
)
def test_refused_with_one_line_and_a_failed_state_the_old_bundle_stays(fleet, case, reason, caplog):
    max_bytes = 1 << 20
    priv = fleet["priv"]
    tar = None
    if case == "oversize":
        max_bytes = 1000
    if case == "unknown_key":
        priv = fleet["other"]
    if case in ("dotdot_member", "link_member", "unsigned_manifest", "bad_sha_in_bundle"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for p in sorted(fleet["v2"].iterdir()):
                if case == "unsigned_manifest" and p.name == "manifest.sig":
                    continue
                data = p.read_bytes()
                if case == "bad_sha_in_bundle" and p.suffix == ".tflite":
                    data = data[:-1] + bytes([data[-1] ^ 1])
                info = tarfile.TarInfo(p.name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            if case == "dotdot_member":
                info = tarfile.TarInfo("../escape.txt")
                info.size = 3
                tf.addfile(info, io.BytesIO(b"bad"))
            if case == "link_member":
                info = tarfile.TarInfo("evil")
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
        tar = buf.getvalue()
    begin, chunks, end = messages(fleet["v2"], priv, tar=tar)
    if case == "bad_signature":  # the trusted key's id, someone else's signature
        h = json.loads(begin.split(b"\n")[0])
        forged = json.loads(messages(fleet["v2"], fleet["other"])[0].split(b"\n")[0])
        h["signature"] = forged["signature"]
        begin = rollout.encode(h)
    if case == "no_issued_at":  # the v1 wire format: no issue counter, signed over the v1 bytes
        h = json.loads(begin.split(b"\n")[0])
        del h["issued_at"]
        v1 = f"seam-qc rollout v1\nr1\n{h['size']}\n{h['sha256']}\n".encode()
        h["signature"] = base64.b64encode(private(priv).sign(v1)).decode()
        begin = rollout.encode(h)
    if case == "corrupted_chunk":
        head, _, data = chunks[2].partition(b"\n")
        chunks[2] = head + b"\n" + data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]
    if case == "out_of_order":
        chunks = [chunks[0], chunks[2], chunks[1], *chunks[3:]]
    if case == "missing_last":
        chunks = chunks[:-1]
    if case == "short_chunk":
        chunks[1] = chunks[1][:-5]
    st = InProcessStation(fleet["link"], [fleet["pub"]], max_bytes=max_bytes)
    with caplog.at_level(logging.ERROR, logger="edge.rollout"):
        st.send(begin, *chunks, end)
    assert_refused(st, fleet, reason)
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and reason in lines[0].getMessage()  # one line, not one per chunk


def test_a_download_resumes_after_a_restart(fleet):
    begin, chunks, end = messages(fleet["v2"], fleet["priv"])
    half = len(chunks) // 2
    st = InProcessStation(fleet["link"], [fleet["pub"]], boot="boot1")
    st.send(begin, *chunks[:half])
    # a restart: a new worker on the same directory announces where it is
    st2 = InProcessStation(fleet["link"], [fleet["pub"]], boot="boot2")
    st2.worker.resume()
    ((state, kw),) = st2.states
    assert state == "downloading" and kw["rollout"]["next"] == half and kw["rollout"]["boot"] == "boot2"
    # chunks the deployer sent before it learnt where we are are skipped, then it goes on from `next`
    st2.send(chunks[half + 2], begin, *chunks[half:], end)
    assert not st2.failures(), st2.states
    assert [s for _, s, _ in st2.offers] == ["active"] and st2.running_version == "v2"


def test_a_new_rollout_replaces_an_unfinished_one(fleet):
    st = InProcessStation(fleet["link"], [fleet["pub"]])
    b1, c1, _ = messages(fleet["v2"], fleet["priv"], "old")
    st.send(b1, *c1[:3])
    b2, c2, e2 = messages(fleet["v2"], fleet["priv"], "new")
    st.send(b2, *c2, e2)
    assert not st.failures() and os.readlink(fleet["link"]) == "rollout-new"
    assert not list((fleet["models"]).glob(".rollout-*/old.*"))


def test_rollback_returns_to_the_previous_bundle_and_is_signed(fleet):
    st = InProcessStation(fleet["link"], [fleet["pub"]])
    begin, chunks, end = messages(fleet["v2"], fleet["priv"])
    st.send(begin, *chunks, end)
    v2_sha = load_bundle(fleet["link"], verify=False).manifest_sha256
    # unsigned by a trusted key: refused, nothing moves
    st.send(rollback_message("rb0", private(fleet["other"]), v2_sha))
    assert "unknown key" in st.failures()[-1] and os.readlink(fleet["link"]) == "rollout-r1"
    st.send(rollback_message("rb1", private(fleet["priv"]), v2_sha))
    model, state, extra = st.offers[-1]
    assert state == "rolled_back" and model.version == "v1" and extra["rollout"]["changed"] is True
    assert os.readlink(fleet["link"]) == "v1" and os.readlink(fleet["models"] / "current.previous") == "rollout-r1"
    # a station not running the bundle rolled back from has nothing to undo
    n = len(st.offers)
    st.send(rollback_message("rb2", private(fleet["priv"]), v2_sha))
    state, kw = st.states[-1]
    assert state == "rolled_back" and kw["rollout"]["changed"] is False and len(st.offers) == n
    assert os.readlink(fleet["link"]) == "v1"


def test_replayed_begins_and_rollbacks_are_refused_a_fresh_deploy_of_an_older_bundle_is_not(fleet, tmp_path, caplog):
    """Replay protection (issue 16): messages recorded off the wire and sent again are refused with one
    line and ``failed: replayed: …`` (the running model stays); deploying the old bundle anew works."""
    from edge.signing import load_public_key

    st = InProcessStation(fleet["link"], [fleet["pub"]])
    kid = load_public_key(fleet["pub"]).key_id
    v3 = small_bundle(tmp_path / "work" / "v3", "v3", fleet["priv"])
    begin, chunks, end = messages(fleet["v2"], fleet["priv"], "a")
    recorded_v2 = [begin, *chunks, end]
    st.send(*recorded_v2)
    st.send(*flat(messages(v3, fleet["priv"], "b")))
    assert not st.failures() and st.running_version == "v3"

    def refused(*payloads: bytes, op: str) -> None:
        n = len(st.failures())
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="edge.rollout"):
            st.send(*payloads)
        new = st.failures()[n:]
        assert len(new) == 1 and new[0].startswith(f"failed: replayed: {op} issued at "), st.states[-3:]
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(lines) == 1 and "replayed" in lines[0] and "the running model continues" in lines[0], lines

    # 1. an older signed bundle sent again, chunks and all: refused at its begin, v3 keeps running
    refused(*recorded_v2, op="begin")
    assert st.running_version == "v3" and os.readlink(fleet["link"]) == "rollout-b" and len(st.offers) == 2
    # 2. a signed rollback recorded off the wire: valid once ...
    v3_sha = st.running
    recorded_rb = rollback_message("rb1", private(fleet["priv"]), v3_sha)
    st.send(recorded_rb)
    assert st.states[-1][0] != "failed" and st.running_version == "v2"
    st.send(*flat(messages(v3, fleet["priv"], "c")))  # v3 again, deployed anew
    assert st.running_version == "v3" and st.running == v3_sha
    # ... and refused when sent again, although the station runs the bundle it names
    refused(recorded_rb, op="rollback")
    assert st.running_version == "v3" and os.readlink(fleet["link"]) == "rollout-c"
    # 3. a deliberate downgrade: the older bundle deployed anew gets a new issue counter
    fresh = flat(messages(fleet["v2"], fleet["priv"], "d"))
    st.send(*fresh)
    assert st.running_version == "v2" and st.failures() == st.failures()[:2]
    offers = len(st.offers)
    # 4. the same begin delivered twice (QoS 1) after the install is not a replay: ignored, no state
    n_states = len(st.states)
    st.send(fresh[0])
    assert len(st.states) == n_states and len(st.offers) == offers
    # 5. the counter is on disk (the last begin's issued_at, per key) and a restarted station keeps it
    doc = json.loads((fleet["models"] / "current.issued").read_text())
    assert doc == {
        "format": 1,
        "keys": {kid: {"issued_at": json.loads(fresh[0].split(b"\n")[0])["issued_at"], "id": "d"}},
    }
    st2 = InProcessStation(fleet["link"], [fleet["pub"]], boot="boot2")
    st2.send(*recorded_v2, recorded_rb)
    assert [s.split(" issued at")[0] for s in st2.failures()] == [
        "failed: replayed: begin",
        "failed: replayed: rollback",
    ]
    assert not st2.offers and st2.running_version == "v2"


def test_a_rollback_without_an_issue_counter_is_refused(fleet):
    st = InProcessStation(fleet["link"], [fleet["pub"]])
    st.send(*flat(messages(fleet["v2"], fleet["priv"])))
    h = json.loads(rollback_message("rb", private(fleet["priv"]), st.running).split(b"\n")[0])
    del h["issued_at"]
    st.send(rollout.encode(h))
    assert st.failures() == [
        "failed: rollback without issued_at (sent by an older convert deploy: its messages carry no issue counter, "
        "so a recorded one could be replayed); update convert deploy and deploy again"
    ]
    assert st.running_version == "v2"


@pytest.mark.parametrize(
    "content, why",
    [
        (b"{not json", "not JSON"),
        (b'{"format": 1, "keys": {"0123456789abcdef": {"issued_at": "soon", "id": "a"}}}', "bad entry"),
        (b"[]", "not a seam-qc rollout counter file"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_a_corrupt_counter_file_stops_the_rollout_side_with_one_line_naming_it(fleet, content, why):
    (fleet["models"] / "current.issued").write_bytes(content)
    with pytest.raises(RolloutError) as e:
        InProcessStation(fleet["link"], [fleet["pub"]])
    msg = str(e.value)
    assert msg.startswith(f"{fleet['models'] / 'current.issued'}: corrupt (") and why in msg and "\n" not in msg


def test_a_station_without_a_previous_bundle_refuses_a_rollback(fleet):
    st = InProcessStation(fleet["link"], [fleet["pub"]])
    st.send(rollback_message("rb", private(fleet["priv"]), st.running))
    assert "no previous bundle" in st.failures()[0] and os.readlink(fleet["link"]) == "v1"


def test_old_installed_bundles_are_pruned_keeping_current_and_previous(fleet, tmp_path):
    st = InProcessStation(fleet["link"], [fleet["pub"]])
    v3 = small_bundle(tmp_path / "work" / "v3", "v3", fleet["priv"])
    for rid, b in (("a", fleet["v2"]), ("b", v3), ("c", fleet["v2"])):
        begin, chunks, end = messages(b, fleet["priv"], rid)
        st.send(begin, *chunks, end)
    assert not st.failures()
    assert (
        os.readlink(fleet["link"]) == "rollout-c" and os.readlink(fleet["models"] / "current.previous") == "rollout-b"
    )
    assert {p.name for p in fleet["models"].iterdir()} == {
        "v1",
        "current",
        "current.previous",
        "current.issued",
        "rollout-b",
        "rollout-c",
    }
    assert (fleet["models"] / "v1").is_dir()  # not ours (no rollout- prefix): never deleted


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"no newline", "no header line"),
        (b"[1]\n", "not a JSON object"),
        (b'{"op":"begin"}\n', "missing"),
        (b'{"op":"chunk","id":"r1","seq":0,"x":1}\nab', "unexpected"),
        (b'{"op":"chunk","id":"../x","seq":0}\nab', "id"),
        (b'{"op":"chunk","id":"r1","seq":-1}\nab', "seq"),
        (b'{"op":"chunk","id":"r1","seq":true}\nab', "seq"),
        (b'{"op":"chunk","id":"r1","seq":0}\n', "0 bytes"),
        (b'{"op":"end","id":"r1"}\nextra', "carries"),
        (b'{"op":"exec","id":"r1"}\n', "op"),
        (b"\xff\xfe\n", "not JSON"),
    ],
)
def test_parse_refuses_malformed_messages(payload, why):
    with pytest.raises(RolloutError, match=why):
        parse(payload)


def test_junk_on_model_set_is_counted_and_logged_once(fleet, caplog):
    st = InProcessStation(fleet["link"], [fleet["pub"]])
    with caplog.at_level(logging.WARNING, logger="edge.rollout"):
        for i in range(200):
            st.inbox.handle(b"junk %d" % i)
    assert st.inbox.junk == 200 and st.inbox.q.empty()
    assert len([r for r in caplog.records if "ignored" in r.getMessage()]) == 1
    assert not st.states  # junk is not a rollout: no state


def test_no_trusted_keys_refuses_every_rollout(fleet):
    st = InProcessStation(fleet["link"], [fleet["pub"]])
    st.worker.keys = []
    st.send(messages(fleet["v2"], fleet["priv"])[0])
    assert "no model.trusted_keys" in st.failures()[0]


# -- user errors of the CLI and the daemon's config -----------------------------------------------


def test_deploy_user_errors_are_one_line(fleet, tmp_path, capsys, mqtt_broker):
    from convert.__main__ import main as convert_main

    base = ["--broker", mqtt_broker.host, "--port", str(mqtt_broker.port), "--discover-s", "0.3"]
    cases = [
        ([str(tmp_path / "nope"), "--stations", "*", "--key", str(fleet["priv"])], 78, "not found"),
        ([str(fleet["v2"]), "--stations", "*", "--key", str(fleet["pub"])], 78, "private key"),
        ([str(fleet["v2"]), "--stations", "nobody-*", "--key", str(fleet["priv"])], 1, "no station"),
        ([str(fleet["v2"]), "--stations", "*", "--key", str(fleet["priv"]), "--canary", "-1"], 78, "--canary"),
    ]
    for args, code, text in cases:
        assert convert_main(["deploy", *args, *base]) == code, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and text in err, err
    # a broker that does not answer
    dead = ["--broker", "127.0.0.1", "--port", "1", "--stations", "*", "--key", str(fleet["priv"])]
    assert convert_main(["deploy", str(fleet["v2"]), *dead]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect" in err


def test_deploy_fails_for_offline_and_mute_stations(fleet, capsys, mqtt_broker):
    """A station whose retained status is offline (its last will) is reported failed and not sent; one
    that is online but never answers the begin (no model.rollout) fails after --answer-s."""
    from convert.__main__ import main as convert_main
    from tests.support.rollout import raw_publish

    raw_publish(mqtt_broker, "seamqc/st-off/status", [b"offline"], retain=True)
    raw_publish(mqtt_broker, "seamqc/st-mute/status", [b"online"], retain=True)  # no model.rollout there
    args = ["--broker", mqtt_broker.host, "--port", str(mqtt_broker.port), "--discover-s", "0.5", "--answer-s", "1"]
    rc = convert_main(["deploy", str(fleet["v2"]), "--stations", "st-*", "--key", str(fleet["priv"]), *args])
    out = capsys.readouterr().out
    assert rc == 1 and "st-off: failed: offline (not sent)" in out and "0 of 2 stations done" in out
    assert "st-mute: failed: no answer to the begin within 1 s (is model.rollout on?)" in out


@pytest.mark.parametrize(
    "model, why",
    [
        ({"rollout": True}, "model.rollout: rollouts need model.trusted_keys"),
        ({"rollout": True, "trusted_keys": ["KEY"], "bundle": "DIR"}, "is not a symlink"),
        ({"rollout": True, "trusted_keys": ["KEY"], "issued": b"garbage"}, "current.issued: corrupt (not JSON)"),
    ],
)
def test_daemon_config_for_rollouts_is_checked_at_start(fleet, tmp_path, model, why):
    import subprocess
    import sys

    import yaml

    m = {"bundle": str(fleet["link"]), **model}
    m["trusted_keys"] = [str(fleet["pub"]) for _ in m.get("trusted_keys", [])]
    if "issued" in m:  # the replay-protection counter file, corrupt: exit 78, not "nothing accepted yet"
        (fleet["models"] / "current.issued").write_bytes(m.pop("issued"))
    if m["bundle"] == "DIR":
        m["bundle"] = str(fleet["v1"])
    cfg = {
        "station": "st",
        "camera": {"source": "file", "device": str(tmp_path / "none.mp4")},
        "model": m,
        "mqtt": {"host": "127.0.0.1"},
        "outbox": str(tmp_path / "outbox.sqlite"),
    }
    path = tmp_path / "seam-qc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(path), "--check-config"],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
    )
    assert r.returncode == 78, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and why in lines[0] and str(path) in lines[0], r.stderr


def _readme_acl(marker: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    return text.split(marker, 1)[1].split("```", 2)[1].strip("\n")


def test_readme_acl_lets_only_the_deploy_user_publish_model_set(
    fleet, tmp_path, mqtt_broker_factory, mqtt_publisher, capsys
):
    """The README's ACL (feedback block + deploy block, as documented) on a real Mosquitto: deploy works
    as the deploy user; a station, even for itself, is refused in its PUBACK."""
    import shutil
    import subprocess

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.reasoncodes import ReasonCode

    from convert.__main__ import main as convert_main
    from tests.support.rollout import MqttStation
    from tests.support.wait import wait_until

    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs mosquitto_passwd (mosquitto package)")
    users = {"deploy": "d3pl0y", "st1": "s1pw", "st2": "s2pw", "dashboard": "d4sh"}
    pw = tmp_path / "passwd"
    for i, (u, p) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", "-b", *([] if i else ["-c"]), str(pw), u, p], check=True)
        (tmp_path / f"{u}.pw").write_text(p + "\n")
    acl = tmp_path / "acl"
    acl.write_text(_readme_acl("**Who may publish feedback.**") + "\n\n" + _readme_acl("**Who may deploy.**") + "\n")
    broker = mqtt_broker_factory(global_lines=[f"password_file {pw}", f"acl_file {acl}"], anonymous=False)
    pub = mqtt_publisher(broker, station="st1", start=False, username="st1", password_file=tmp_path / "st1.pw")
    station = MqttStation(fleet["link"], [fleet["pub"]], pub).start()
    try:
        wait_until(lambda: pub.connected, what="station connected")
        args = ["--broker", broker.host, "--port", str(broker.port), "--discover-s", "1", "--timeout", "30"]
        login = ["--username", "deploy", "--password-file", str(tmp_path / "deploy.pw")]
        rc = convert_main(["deploy", str(fleet["v2"]), "--stations", "st*", "--key", str(fleet["priv"]), *args, *login])
        assert rc == 0 and station.running_version == "v2" and [s for _, s, _ in station.offers] == ["active"]
        # deploy logged in as the dashboard (reads everything, may not write model/set): the broker
        # refuses the begin in its PUBACK and deploy says so at once
        other = ["--username", "dashboard", "--password-file", str(tmp_path / "dashboard.pw")]
        t0 = time.monotonic()
        rc = convert_main(["deploy", str(fleet["v1"]), "--stations", "st1", "--key", str(fleet["priv"]), *args, *other])
        out = capsys.readouterr().out
        assert rc == 1 and "st1: failed: the broker refused model/set (Not authorized" in out, out
        assert time.monotonic() - t0 < 10 and station.running_version == "v2"

        def refused_for(user: str) -> ReasonCode:
            got: list[ReasonCode] = []
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-{user}", protocol=mqtt.MQTTv5)
            c.username_pw_set(user, users[user])
            c.on_publish = lambda c, u, mid, rc, props: got.append(rc)
            c.connect(broker.host, broker.port)
            c.loop_start()
            try:
                c.publish("seamqc/st1/model/set", b'{"op":"end","id":"x"}\n', qos=1)
                wait_until(lambda: got, what=f"{user}'s PUBACK")
            finally:
                c.loop_stop()
                c.disconnect()
            return got[0]

        for user in ("st2", "st1", "dashboard"):  # another station, the station itself, the dashboard
            reason = refused_for(user)
            assert reason.is_failure and "authori" in str(reason).lower(), (user, reason)
        time.sleep(0.5)
        assert not station.failures(), station.states  # none of the refused messages reached the station
    finally:
        station.stop()


def test_resume_trusts_only_the_bytes_on_disk(fleet):
    """A part shorter than its count (a disk that lost the tail) resumes from the whole chunks it has."""
    begin, chunks, end = messages(fleet["v2"], fleet["priv"])
    st = InProcessStation(fleet["link"], [fleet["pub"]])
    st.send(begin, *chunks[:6])
    part = next(fleet["models"].glob(".rollout-current/*.part"))
    with open(part, "r+b") as f:
        f.truncate(CHUNK * 3 + 100)  # 3 whole chunks and a piece of the 4th
    st2 = InProcessStation(fleet["link"], [fleet["pub"]], boot="boot2")
    st2.worker.resume()
    assert st2.states[0][1]["rollout"]["next"] == 3 and part.stat().st_size == CHUNK * 3
    st2.send(begin, *chunks[3:], end)
    assert not st2.failures() and st2.running_version == "v2"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hst.binary(max_size=300) | hst.builds(lambda h, d: h + b"\n" + d, hst.binary(max_size=200), hst.binary(max_size=50))
)
def test_parse_fuzz_never_raises_anything_but_a_refusal(payload):
    try:
        m = parse(payload)
    except RolloutError:
        return
    assert m.op in rollout.OPS and rollout._ID_RE.match(m.id)


@settings(max_examples=200, deadline=None)
@given(
    hst.fixed_dictionaries(
        {"op": hst.sampled_from(rollout.OPS), "id": hst.text(max_size=70)},
        optional={
            "seq": hst.integers(-5, 1 << 25) | hst.booleans() | hst.text(max_size=3),
            "size": hst.integers(-1, 1 << 41) | hst.floats(allow_nan=True),
            "chunks": hst.integers(-1, 1 << 25),
            "chunk_size": hst.integers(-1, 1 << 21),
            "sha256": hst.text(max_size=70),
            "from": hst.text(max_size=70),
            "key_id": hst.text(max_size=20),
            "signature": hst.text(max_size=100),
            "name": hst.text(max_size=200),
            "version": hst.text(max_size=200),
            "extra": hst.none(),
        },
    ),
    hst.binary(max_size=20),
)
def test_parse_fuzz_of_headers_keeps_every_field_in_range(header, data):
    try:
        m = parse(json.dumps(header).encode() + b"\n" + data)
    except RolloutError:
        return
    h = m.header
    if m.op == "chunk":
        assert type(h["seq"]) is int and h["seq"] >= 0 and 0 < len(m.data) <= rollout.CHUNK_MAX
    if m.op == "begin":
        assert 0 < h["chunk_size"] <= rollout.CHUNK_MAX and h["chunks"] * h["chunk_size"] >= h["size"] > 0
