"""Ed25519 signatures over a bundle's manifest (``cryptography``; no home-made crypto).

The manifest pins every file of the bundle by sha256, so one signature over its exact bytes covers
the whole bundle. ``convert sign`` writes it detached, next to the manifest, as ``manifest.sig``::

    {"format": 1, "algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64, 64 bytes>"}

``key_id`` is the first 16 hex digits of the sha256 of the raw 32-byte public key: it names the
key in error lines and lets the loader pick the key without trying each. Keys are PEM files:
``convert keygen`` writes ``<name>.key`` (PKCS #8, unencrypted, mode 0600: keep it on the
workstation) and ``<name>.pub`` (SubjectPublicKeyInfo), which stations list in ``model.trusted_keys``.

With ``model.trusted_keys`` configured, the loader refuses an unsigned bundle, a signature that
does not verify and a key it does not trust, each with one line (``SignatureError``); without it,
signatures are not looked at. ``cryptography`` is imported only when keys are used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError

SIGNATURE = "manifest.sig"
ALGORITHM = "ed25519"
MAX_SIG_BYTES = 4096
MAX_KEY_BYTES = 16384


class SignatureError(ModelError):
    """Unsigned, badly signed or signed by an untrusted key: the bundle is refused."""


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    path: Path
    key: Any  # cryptography's Ed25519PublicKey


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ModelError("signatures need the 'cryptography' package: pip install 'seam-qc[edge]'") from None
    return serialization, ed25519


def key_id(public_key: Any) -> str:
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read_small(path: Path, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ModelError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if len(data) > limit:
        raise ModelError(f"{path}: larger than {limit} bytes: not a {what}")
    return data


def load_public_key(path: str | Path) -> TrustedKey:
    """A PEM Ed25519 public key; anything else is one ModelError naming the file."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    data = _read_small(path, MAX_KEY_BYTES, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ModelError(f"{path}: not a PEM Ed25519 public key (convert keygen writes one as <name>.pub)")
    return TrustedKey(key_id(key), path, key)


def load_private_key(path: str | Path) -> Any:
    serialization, ed25519 = _crypto()
    path = Path(path)
    data = _read_small(path, MAX_KEY_BYTES, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ModelError(f"{path}: not an unencrypted PEM Ed25519 private key (convert keygen writes one)")
    return key


def generate(out_dir: str | Path, name: str = "deploy", force: bool = False) -> tuple[Path, Path]:
    """Write ``<name>.key`` (0600) and ``<name>.pub`` in ``out_dir``; existing files need ``force``."""
    serialization, ed25519 = _crypto()
    out = Path(out_dir)
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (priv_path, pub_path):
        if (p.exists() or p.is_symlink()) and not force:
            raise ModelError(f"{p}: exists (use --force to replace the key pair)")
    out.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for path, data, mode in ((priv_path, priv, 0o600), (pub_path, pub, 0o644)):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)  # the umask may have taken bits away from the public key
        os.replace(tmp, path)
    return priv_path, pub_path


def sign_bundle(root: str | Path, key_path: str | Path) -> tuple[Path, str]:
    """Sign ``root/manifest.json``'s bytes with the private key; writes ``root/manifest.sig`` → (path, key id).

    The caller checks the bundle first (``convert sign`` loads it with every sha256 verified).
    """
    root = Path(root)
    key = load_private_key(key_path)
    raw = _read_small(root / "manifest.json", 16 << 20, "manifest")
    kid = key_id(key.public_key())
    doc = {
        "format": 1,
        "algorithm": ALGORITHM,
        "key_id": kid,
        "signature": base64.b64encode(key.sign(raw)).decode("ascii"),
    }
    out = root / SIGNATURE
    tmp = root / f".{SIGNATURE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(doc) + "\n")
    os.replace(tmp, out)
    return out, kid


def verify(root: str | Path, manifest_raw: bytes, keys: list[TrustedKey]) -> str:
    """Check ``root/manifest.sig`` over ``manifest_raw`` (the bytes the loader parses) → the key id.

    Raises ``SignatureError`` (one line): unsigned, unreadable, unknown key, bad signature.
    """
    root = Path(root)
    spath = root / SIGNATURE
    if not spath.is_file():
        raise SignatureError(f"{root}: unsigned bundle (no {SIGNATURE}; sign it with python -m convert sign)")
    try:
        doc = json.loads(_read_small(spath, MAX_SIG_BYTES, "signature").decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or doc.get("algorithm") != ALGORITHM or not isinstance(doc.get("key_id"), str):
        raise SignatureError(f"{spath}: not a seam-qc signature (expected JSON with algorithm ed25519 and key_id)")
    kid = str(doc["key_id"])[:64]
    key = next((k for k in keys if k.key_id == kid), None)
    if key is None:
        trusted = ", ".join(k.key_id for k in keys)
        raise SignatureError(f"{spath}: signed by unknown key {kid!r} (model.trusted_keys has {trusted})")
    try:
        sig = base64.b64decode(str(doc.get("signature", "")), validate=True)
    except (binascii.Error, ValueError):
        sig = b""
    from cryptography.exceptions import InvalidSignature

    try:
        key.key.verify(sig, manifest_raw)
    except (InvalidSignature, ValueError):
        raise SignatureError(
            f"{spath}: bad signature over {root / 'manifest.json'} for key {kid} ({key.path})"
        ) from None
    return kid
