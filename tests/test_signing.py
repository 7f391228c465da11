"""Signed bundles (issue 16 #2/#3): convert keygen / sign, the loader's checks, model.trusted_keys.

The bundles here are synthetic (a manifest and small files): signatures and sha256 checks never
open the model files, so no model is trained.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from convert.__main__ import main as convert_main
from edge.bundle import MANIFEST, load_bundle, write_manifest
from edge.errors import ModelError
from edge.signing import SIGNATURE, SignatureError, load_public_key

ROOT = Path(__file__).resolve().parent.parent


def fake_bundle(root: Path, name: str = "fake") -> Path:
    root.mkdir(parents=True)
    (root / "classifier_int8.tflite").write_bytes(b"\x00\x00\x00\x00TFL3 not really a model")
    manifest = {
        "name": name,
        "task": "multilabel",
        "labels": ["good", "error"],
        "input": {"height": 8, "width": 8},
        "classifier": "classifier_int8",
    }
    write_manifest(root, manifest, {"classifier_int8": "classifier_int8.tflite"})
    return root


@pytest.fixture
def keys(tmp_path, capsys):
    assert convert_main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    assert "key id" in capsys.readouterr().out
    return tmp_path / "keys" / "deploy.key", tmp_path / "keys" / "deploy.pub"


def test_keygen_writes_a_private_key_only_its_owner_reads(keys, tmp_path, capsys):
    priv, pub = keys
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in priv.read_bytes() and b"BEGIN PUBLIC KEY" in pub.read_bytes()
    assert len(load_public_key(pub).key_id) == 16
    before = priv.read_bytes()
    # a second keygen must not overwrite the pair the fleet trusts
    assert convert_main(["keygen", "--out", str(tmp_path / "keys")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--force" in err
    assert priv.read_bytes() == before


def test_sign_then_the_loader_verifies_against_trusted_keys(keys, tmp_path, capsys):
    priv, pub = keys
    b = fake_bundle(tmp_path / "b")
    with pytest.raises(SignatureError, match="unsigned bundle"):
        load_bundle(b, trusted_keys=[load_public_key(pub)])
    assert convert_main(["sign", str(b), "--key", str(priv)]) == 0
    kid = load_public_key(pub).key_id
    assert kid in capsys.readouterr().out
    assert load_bundle(b, trusted_keys=[load_public_key(pub)]).signed_by == kid
    assert load_bundle(b).signed_by is None  # no keys configured: signatures are not looked at


def test_bad_signature_and_unknown_key_are_refused(keys, tmp_path):
    priv, pub = keys
    b = fake_bundle(tmp_path / "b")
    assert convert_main(["sign", str(b), "--key", str(priv)]) == 0
    trusted = [load_public_key(pub)]
    # the manifest changed after signing (here: another name; every sha256 still right)
    m = json.loads((b / MANIFEST).read_text())
    m["name"] = "evil"
    write_manifest(b, m, {r: e["path"] for r, e in m["files"].items()})
    with pytest.raises(SignatureError, match="bad signature"):
        load_bundle(b, trusted_keys=trusted)
    # signed by a key the station does not trust
    assert convert_main(["keygen", "--out", str(tmp_path / "other")]) == 0
    assert convert_main(["sign", str(b), "--key", str(tmp_path / "other" / "deploy.key")]) == 0
    with pytest.raises(SignatureError, match="unknown key"):
        load_bundle(b, trusted_keys=trusted)
    # a signature file that is not one
    (b / SIGNATURE).write_text("garbage")
    with pytest.raises(SignatureError, match="not a seam-qc signature"):
        load_bundle(b, trusted_keys=trusted)


def test_sign_refuses_a_corrupt_bundle(keys, tmp_path, capsys):
    priv, _ = keys
    b = fake_bundle(tmp_path / "b")
    (b / "classifier_int8.tflite").write_bytes(b"changed")
    assert convert_main(["sign", str(b), "--key", str(priv)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256" in err
    assert not (b / SIGNATURE).exists()


def test_a_public_key_is_not_a_private_key(keys, tmp_path, capsys):
    _, pub = keys
    b = fake_bundle(tmp_path / "b")
    assert convert_main(["sign", str(b), "--key", str(pub)]) != 0
    assert "not an unencrypted PEM Ed25519 private key" in capsys.readouterr().err
    with pytest.raises(ModelError, match="not a PEM Ed25519 public key"):
        load_public_key(b / MANIFEST)


def test_trusted_keys_that_are_not_keys_are_a_config_error(tmp_path):
    """``model.trusted_keys`` naming a non-key: exit 78, one line naming the file, line and key."""
    cfg = {
        "station": "st",
        "camera": {"source": "file", "device": str(tmp_path / "v.mp4")},
        "model": {"bundle": str(tmp_path / "nowhere"), "trusted_keys": ["deploy.pub"]},
        "mqtt": {"enabled": False},
        "outbox": str(tmp_path / "outbox.sqlite"),
    }
    (tmp_path / "deploy.pub").write_text("not a key\n")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(path), "--check-config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 78, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert f"{path}:" in lines[0] and "model.trusted_keys[0]" in lines[0] and "not a PEM Ed25519 public key" in lines[0]
