"""Signed model rollout over MQTT: ``<prefix>/<station>/model/set`` in, ``model/state`` out (README "Rollout").

Wire format (one MQTT message, QoS 1, not retained): a JSON header of at most ``HEADER_MAX`` bytes,
a newline, then the data (chunks only)::

    {"op": "begin", "id", "name", "version", "size", "sha256", "chunks", "chunk_size", "issued_at",
     "key_id", "signature"}
    {"op": "chunk", "id", "seq"}\\n<bytes>
    {"op": "end", "id"}
    {"op": "rollback", "id", "from", "issued_at", "key_id", "signature"}

``begin`` announces a tar of the bundle (``convert deploy``): its size, its sha256 and an Ed25519
signature over ``signed_begin(id, size, sha256, issued_at)`` by a key of ``model.trusted_keys``;
``chunk`` ``seq`` carries bytes ``seq * chunk_size`` onward (every chunk ``chunk_size`` bytes but the
last); ``end`` closes it. ``rollback`` (signed over ``signed_rollback(id, from, issued_at)``) returns
to the previous bundle when the running one's manifest sha256 is ``from``.

Replay and downgrade protection (as TUF and Uptane do it): ``issued_at`` is an issue counter set by
``convert deploy`` (UTC time in integer nanoseconds, inside the signed bytes). The station keeps the
highest one it accepted per trusted key in ``<dir>/<link>.issued`` (written atomically, fsync'd) and
refuses a signed ``begin`` or ``rollback`` whose counter is not greater (``failed: replayed: …``), so
a message recorded off the wire cannot be sent again to install an older bundle or undo a rollout.
A deliberate downgrade is a fresh ``convert deploy`` of the old bundle: it gets a new counter. A
message without ``issued_at`` (an older ``convert deploy``) is refused, as it could be a replay.

Threads: :meth:`RolloutInbox.on_message` runs in paho's network thread: it parses the header, checks
its types and sizes and ``put_nowait``\\s into a bounded queue, nothing else. :class:`RolloutWorker`
(thread ``rollout``, nice +10) does the rest: signatures, the download file, the sha256, the
extraction (``edge.untar``), the checks (``edge.modelswap.load_checked``, through the daemon) and
the install. The capture and classify threads never wait for it; the running model is replaced by
the main thread between two frames (``ModelWatcher.offer``).

Files, all inside the state directory (the folder of the ``model.bundle`` symlink, not resolved)::

    <dir>/<link>                 model.bundle: a symlink, swapped by rename
    <dir>/<link>.previous        the bundle before the last install (rollback), a symlink
    <dir>/<link>.issued          the highest ``issued_at`` accepted per key id (JSON, replay protection)
    <dir>/rollout-<id>/          an installed bundle (unpacked by edge.untar)
    <dir>/.rollout-<link>/<id>.part, <id>.json   a download in progress (kept across restarts)

A download survives a restart: ``<id>.json`` holds the verified ``begin`` and the number of chunks
already in ``<id>.part`` (written and fsync'd before the count), and the station announces
``downloading`` with ``next`` at start so that ``convert deploy`` sends the rest.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SeamQCError
from .inbox import Inbox

log = logging.getLogger(__name__)

HEADER_MAX = 2048  # bytes of the JSON header
CHUNK_MAX = 1 << 20  # largest chunk accepted (convert deploy sends 64 KiB)
QUEUE_SIZE = 64  # messages; convert deploy keeps at most WINDOW chunks in flight per station
WINDOW = 16  # chunks convert deploy sends ahead of the station's last reported ``next``
REPORT_EVERY = 4  # chunks between two ``downloading`` reports
LOG_EVERY_S = 60.0
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_TEXT = re.compile(r"^[\x20-\x7e]{0,128}$")
OPS = ("begin", "chunk", "end", "rollback")
ISSUED_MAX = (1 << 63) - 1  # issued_at: UTC nanoseconds, a signed 64-bit integer (year 2262)


class RolloutError(SeamQCError):
    """A rollout message or download refused; ``str(err)`` is the reason in ``failed: <reason>``."""


@dataclass(frozen=True)
class Message:
    op: str
    id: str
    header: dict[str, Any]
    data: bytes = b""


def signed_begin(rollout_id: str, size: int, sha256: str, issued_at: int) -> bytes:
    """The bytes a ``begin`` signature covers: the tar's sha256 and size, bound to the rollout id and
    its issue counter (v2: v1 had no counter, so a recorded begin could be replayed)."""
    return f"seam-qc rollout v2\n{rollout_id}\n{size}\n{sha256}\n{issued_at}\n".encode("ascii")


def signed_rollback(rollout_id: str, from_sha: str, issued_at: int) -> bytes:
    """The bytes a ``rollback`` signature covers (v2: with the issue counter, as ``signed_begin``)."""
    return f"seam-qc rollback v2\n{rollout_id}\n{from_sha}\n{issued_at}\n".encode("ascii")


def encode(header: dict[str, Any], data: bytes = b"") -> bytes:
    """One ``model/set`` payload (``convert deploy``)."""
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if len(head) > HEADER_MAX or b"\n" in head:
        raise ValueError("rollout header too long")
    return head + b"\n" + data


def _int(h: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = h.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise RolloutError(f"{key}: {str(v)[:20]!r} is not a whole number in {lo}..{hi}")
    return v


def _str(h: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    v = h.get(key)
    if not isinstance(v, str) or not pattern.match(v):
        raise RolloutError(f"{key}: {str(v)[:40]!r} is not valid")
    return v


_FIELDS = {
    "begin": {"op", "id", "name", "version", "size", "sha256", "chunks", "chunk_size", "key_id", "signature"},
    "chunk": {"op", "id", "seq"},
    "end": {"op", "id"},
    "rollback": {"op", "id", "from", "key_id", "signature"},
}
# parsed when present; a signed message without it (an older convert deploy) is refused by the worker
# with a failed state that says so, not dropped as junk, so that the deployer learns why
_OPTIONAL = {"begin": {"issued_at"}, "chunk": set(), "end": set(), "rollback": {"issued_at"}}


def parse(payload: bytes) -> Message:
    """One ``model/set`` payload → ``Message``, or ``RolloutError`` with a few words why."""
    nl = payload.find(b"\n", 0, HEADER_MAX + 1)
    if nl < 0:
        raise RolloutError(f"no header line within {HEADER_MAX} bytes")
    try:
        h = json.loads(payload[:nl].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RolloutError("header is not JSON") from None
    if not isinstance(h, dict):
        raise RolloutError("header is not a JSON object")
    op = h.get("op")
    if op not in OPS:
        raise RolloutError(f"op: {str(op)[:20]!r} is not one of {', '.join(OPS)}")
    extra = set(h) - _FIELDS[op] - _OPTIONAL[op]
    missing = _FIELDS[op] - set(h)
    if extra or missing:
        raise RolloutError(f"{op}: unexpected {sorted(extra)[:3]}" if extra else f"{op}: missing {sorted(missing)}")
    rid = _str(h, "id", _ID_RE)
    if "issued_at" in h:
        _int(h, "issued_at", 1, ISSUED_MAX)
    data = bytes(payload[nl + 1 :])
    if op != "chunk" and data:
        raise RolloutError(f"{op}: carries {len(data)} bytes of data")
    if op == "begin":
        _str(h, "name", _TEXT)
        _str(h, "version", _TEXT)
        _int(h, "size", 1, 1 << 40)
        _str(h, "sha256", _HEX64)
        _int(h, "chunks", 1, 1 << 24)
        _int(h, "chunk_size", 1, CHUNK_MAX)
        _str(h, "key_id", _KEY_ID)
        _str(h, "signature", re.compile(r"^[A-Za-z0-9+/=]{1,200}$"))
        if h["chunks"] != -(-h["size"] // h["chunk_size"]):
            raise RolloutError(f"begin: {h['chunks']} chunks do not make {h['size']} bytes of {h['chunk_size']}")
    elif op == "chunk":
        _int(h, "seq", 0, 1 << 24)
        if not data or len(data) > CHUNK_MAX:
            raise RolloutError(f"chunk {h['seq']}: {len(data)} bytes")
    elif op == "rollback":
        _str(h, "from", _HEX64)
        _str(h, "key_id", _KEY_ID)
        _str(h, "signature", re.compile(r"^[A-Za-z0-9+/=]{1,200}$"))
    return Message(op, rid, h, data)


def _iso_ns(n: int) -> str:
    """An issue counter (UTC ns) as ISO 8601 to the millisecond, for the refusal line."""
    import datetime as _dt

    try:
        t = _dt.datetime.fromtimestamp(n / 1e9, _dt.UTC)
    except (OverflowError, OSError, ValueError):
        return str(n)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def verify_signature(keys: list[Any], key_id: str, signature_b64: str, message: bytes) -> str:
    """Ed25519 over ``message`` by the trusted key ``key_id`` (``cryptography``) → the key id."""
    key = next((k for k in keys if k.key_id == key_id), None)
    if key is None:
        have = ", ".join(k.key_id for k in keys)
        raise RolloutError(f"signed by unknown key {key_id} (model.trusted_keys has {have})")
    try:
        sig = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        sig = b""
    from cryptography.exceptions import InvalidSignature

    try:
        key.key.verify(sig, message)
    except (InvalidSignature, ValueError):
        raise RolloutError(f"bad signature for key {key_id} ({key.path})") from None
    return key_id


class RolloutInbox(Inbox[Message]):
    """paho's callback for ``model/set``: parse, enqueue or count; never raises, never blocks
    (``edge.inbox.Inbox``; the rollout worker takes from ``q``)."""

    worker = "rollout worker"  # a full queue: the worker sees the gap in the chunk numbers and refuses

    def __init__(self, topic: str, *, queue_size: int = QUEUE_SIZE, log_every_s: float = LOG_EVERY_S) -> None:
        super().__init__(topic, parse, RolloutError, queue_size=queue_size, log_every_s=log_every_s, log=log)

    def _ignored(self, why: str, payload: bytes, more: int) -> None:
        self.log.warning(
            "rollout: message on %s ignored: %s: %r%s (at most one such line per %g s)",
            self.topic,
            why,
            payload[:60],
            f" (+{more} more)" if more else "",
            self._log_every_s,
        )


@dataclass(frozen=True)
class Issued:
    """The last signed message accepted from one key: its issue counter and rollout id."""

    issued_at: int
    id: str


@dataclass
class Download:
    """A verified ``begin`` and how many of its chunks are on disk (``<id>.json``)."""

    begin: dict[str, Any]
    next: int = 0
    lenient: bool = False  # after a restart: chunks beyond ``next`` are still on their way; skip them

    @property
    def id(self) -> str:
        return str(self.begin["id"])

    @property
    def chunks(self) -> int:
        return int(self.begin["chunks"])

    def info(self, boot: str) -> dict[str, Any]:
        b = self.begin
        return {
            "id": self.id,
            "boot": boot,
            "name": b["name"],
            "version": b["version"],
            "next": self.next,
            "chunks": self.chunks,
            "size": b["size"],
        }


class RolloutStore:
    """The files of rollouts beside the ``model.bundle`` symlink (module docstring); one writer: the worker."""

    def __init__(self, link: str | Path) -> None:
        self.link = Path(os.path.abspath(link))
        self.dir = self.link.parent
        self.previous = self.dir / f"{self.link.name}.previous"
        self.issued_path = self.dir / f"{self.link.name}.issued"
        self.work = self.dir / f".rollout-{self.link.name}"

    def check(self) -> str | None:
        """Why rollouts cannot work here, or None."""
        if not self.link.is_symlink():
            return f"{self.link} is not a symlink (rollouts swap it: ln -s BUNDLE {self.link})"
        if not os.access(self.dir, os.W_OK):
            return f"{self.dir} is not writable (the rollout's state directory)"
        return None

    # -- replay protection: the highest issue counter accepted per key
    def load_issued(self) -> dict[str, Issued]:
        """``<link>.issued`` → {key id: the last accepted (issued_at, rollout id)}; missing: nothing yet.

        A file that is there but unreadable or not ours raises ``RolloutError`` naming it, and the
        daemon refuses to start on it (exit 78, ``check_rollout``). That is the safe choice: read as
        "nothing accepted yet", every signed message ever recorded off the wire could be replayed
        again. The file is only ever replaced whole (``record_issued``), so a crash cannot leave half
        of one; deleting it by hand is the way to accept the fleet's current deploys again.
        """
        p = self.issued_path
        try:
            with open(p, "rb") as f:
                raw = f.read(1 << 20)
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise RolloutError(f"{p}: cannot read the rollout counters ({e.strerror or e})") from None
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            doc = None
        try:
            if doc is None:
                raise ValueError("not JSON")
            if not isinstance(doc, dict) or doc.get("format") != 1 or not isinstance(doc.get("keys"), dict):
                raise ValueError("not a seam-qc rollout counter file")
            out = {}
            for kid, v in doc["keys"].items():
                entry = v if isinstance(v, dict) else {}
                n, rid = entry.get("issued_at"), entry.get("id")
                if not _KEY_ID.match(str(kid)) or type(n) is not int or not 0 < n <= ISSUED_MAX:
                    raise ValueError(f"bad entry for key {str(kid)[:20]!r}")
                if not isinstance(rid, str) or not _ID_RE.match(rid):
                    raise ValueError(f"bad rollout id for key {kid}")
                out[kid] = Issued(n, rid)
            return out
        except ValueError as e:
            raise RolloutError(
                f"{p}: corrupt ({str(e)[:80]}); the replay protection of signed rollouts needs it: restore it, or "
                "move it away to start again from nothing (then any validly signed message is accepted once more)"
            ) from None

    def record_issued(self, issued: dict[str, Issued]) -> None:
        """Replace ``<link>.issued`` atomically: a temporary file, fsync, rename, fsync of the folder."""
        doc = {"format": 1, "keys": {k: {"issued_at": v.issued_at, "id": v.id} for k, v in sorted(issued.items())}}
        tmp = self.dir / f".{self.issued_path.name}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write((json.dumps(doc) + "\n").encode("ascii"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.issued_path)
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)  # the rename itself survives a power cut
        finally:
            os.close(dfd)

    # -- the download
    def _meta(self, rid: str) -> Path:
        return self.work / f"{rid}.json"

    def part(self, rid: str) -> Path:
        return self.work / f"{rid}.part"

    def pending(self) -> Download | None:
        """The download in progress from before a restart (its part cut back to ``next`` chunks)."""
        try:
            metas = sorted(self.work.glob("*.json"))
        except OSError:
            return None
        for meta in metas:
            try:
                doc = json.loads(meta.read_text())
                begin, nxt = doc["begin"], int(doc["next"])
                rid = str(begin["id"])
                if not _ID_RE.match(rid) or meta.name != f"{rid}.json":
                    raise ValueError(rid)
                cs = int(begin["chunk_size"])
                have = os.path.getsize(self.part(rid))
                if have < min(nxt * cs, int(begin["size"])):  # fewer bytes than counted: go on from what is there
                    nxt = have // cs
                dl = Download(begin, nxt, lenient=True)
                with open(self.part(rid), "r+b") as f:
                    f.truncate(min(nxt * cs, int(begin["size"])))  # a chunk half written before the crash
                self.save(dl)
                return dl
            except (OSError, ValueError, KeyError, TypeError):
                self.discard_all()
                return None
        return None

    def start(self, begin: dict[str, Any]) -> Download:
        self.discard_all()  # one download at a time: a new begin replaces an unfinished one
        self.work.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.part(begin["id"]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        dl = Download(dict(begin))
        self.save(dl)
        return dl

    def save(self, dl: Download) -> None:
        tmp = self.work / f".{dl.id}.json.tmp"
        tmp.write_text(json.dumps({"begin": dl.begin, "next": dl.next}))
        os.replace(tmp, self._meta(dl.id))

    def append(self, dl: Download, data: bytes) -> None:
        fd = os.open(self.part(dl.id), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        try:
            os.write(fd, data)
            os.fsync(fd)  # the count in <id>.json never runs ahead of the bytes
        finally:
            os.close(fd)
        dl.next += 1
        self.save(dl)

    def digest(self, dl: Download) -> tuple[int, str]:
        h = hashlib.sha256()
        n = 0
        with open(self.part(dl.id), "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
                n += len(block)
        return n, h.hexdigest()

    def discard_all(self) -> None:
        if self.work.is_dir() and not self.work.is_symlink():
            shutil.rmtree(self.work, ignore_errors=True)

    # -- installed bundles
    def unpack(self, dl: Download, max_bytes: int) -> Path:
        from .untar import extract

        dest = self.dir / f"rollout-{dl.id}"
        if dest.is_dir() and not dest.is_symlink() and dest.resolve() not in self._in_use():
            shutil.rmtree(dest)  # a re-sent rollout id, not in use: unpack it again
        return extract(self.part(dl.id), dest, self.dir, max_bytes=max_bytes)

    def _target(self, link: Path) -> str | None:
        try:
            return os.readlink(link)
        except OSError:
            return None

    def _in_use(self) -> set[Path]:
        out = set()
        for link in (self.link, self.previous):
            if link.is_symlink():
                with contextlib.suppress(OSError):
                    out.add(link.resolve())
        return out

    def _point(self, link: Path, target: str) -> None:
        tmp = self.dir / f".{link.name}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)  # atomic: a reader sees the old or the new bundle

    def install(self, new: Path) -> None:
        """``<link>.previous`` → what ``<link>`` pointed to, then ``<link>`` → ``new`` (relative)."""
        old = self._target(self.link)
        if old is not None:
            self._point(self.previous, old)
        self._point(self.link, os.path.relpath(new, self.dir))

    def previous_bundle(self) -> Path | None:
        if not self.previous.is_symlink():
            return None
        t = self._target(self.previous)
        return (self.dir / t) if t is not None else None

    def swap_back(self) -> None:
        """``<link>`` ↔ ``<link>.previous`` (a rollback; a second one goes forward again)."""
        cur, prev = self._target(self.link), self._target(self.previous)
        if cur is None or prev is None:
            raise RolloutError("no previous bundle to roll back to")
        self._point(self.link, prev)
        self._point(self.previous, cur)

    def prune(self) -> list[str]:
        """Remove installed ``rollout-*`` bundles that neither link names; returns their names."""
        keep = self._in_use()
        gone = []
        for d in self.dir.glob("rollout-*"):
            if d.is_dir() and not d.is_symlink() and d.resolve() not in keep:
                shutil.rmtree(d, ignore_errors=True)
                gone.append(d.name)
        return gone


@dataclass
class Hooks:
    """What the worker needs from the daemon (``edge.daemon`` wires them; tests pass their own)."""

    check: Callable[[Path], Any]  # load_checked of a bundle folder beside the running model → ActiveModel
    offer: Callable[[Any, str, dict[str, Any]], None]  # (model, state after the swap, extra) → the main thread
    state: Callable[..., None]  # publish the retained model/state (state, **extra)
    running_manifest: Callable[[], str]  # manifest sha256 of the running model
    exclusive: Callable[[], Any] = field(default=contextlib.nullcontext)  # held while the links change


class RolloutWorker(threading.Thread):
    """Thread ``rollout``: consumes the inbox (module docstring). Counters: one writer, this thread."""

    def __init__(
        self,
        inbox: RolloutInbox,
        store: RolloutStore,
        keys: list[Any],
        hooks: Hooks,
        stop: threading.Event,
        *,
        max_bytes: int,
        boot: str = "",
    ) -> None:
        super().__init__(name="rollout", daemon=True)
        self.inbox = inbox
        self.store = store
        self.keys = keys
        self.hooks = hooks
        self.stop_event = stop
        self.max_bytes = max_bytes
        self.boot = boot
        self.dl: Download | None = None
        self.installs = 0
        self.rollbacks = 0
        self.failures = 0
        self._reported = 0.0
        self._refused: list[str] = []  # ids refused lately: their chunks still on the way are dropped quietly
        self.issued = store.load_issued()  # replay protection (RolloutStore.load_issued); one writer: this thread

    def resume(self) -> None:
        """At start: a download from before a restart is announced, to be continued."""
        self.dl = self.store.pending()
        if self.dl is not None:
            log.info("rollout %s: resuming at chunk %d of %d", self.dl.id, self.dl.next, self.dl.chunks)
            self.hooks.state("downloading", rollout=self.dl.info(self.boot))

    def run(self) -> None:
        from .heatmaps import _lower_thread_priority

        _lower_thread_priority(10)
        while not self.stop_event.is_set():
            try:
                m = self.inbox.q.get(timeout=0.2)
            except queue.Empty:
                continue
            self.handle(m)

    def handle(self, m: Message) -> None:
        """One message (this thread; tests call it directly)."""
        if m.op in ("chunk", "end") and m.id in self._refused:
            return  # the rest of a download already refused (one line, one state)
        try:
            getattr(self, f"_on_{m.op}")(m)
        except RolloutError as e:
            self._fail(m.id, str(e))
        except (OSError, SeamQCError) as e:
            self._fail(m.id, str(e) or type(e).__name__)
        except Exception as e:  # noqa: BLE001 - a bug here must not kill the thread or the line
            log.exception("rollout: unexpected error")
            self._fail(m.id, f"{type(e).__name__}: {e}")

    def _fail(self, rid: str, reason: str) -> None:
        reason = " ".join(reason.split())[:300]
        self.failures += 1
        self._refused = [*self._refused[-7:], rid]
        info = self.dl.info(self.boot) if self.dl is not None and self.dl.id == rid else {"id": rid, "boot": self.boot}
        if self.dl is not None and self.dl.id == rid:
            self.store.discard_all()
            self.dl = None
        log.error("rollout %s refused: %s; the running model continues", rid, reason)
        self.hooks.state(f"failed: {reason}", rollout=info, error=reason)

    def _issued_at(self, m: Message) -> int:
        """The message's issue counter; refused without one (module docstring)."""
        if not self.keys:
            raise RolloutError("no model.trusted_keys: rollouts are refused")
        n = m.header.get("issued_at")
        if n is None:
            raise RolloutError(
                f"{m.op} without issued_at (sent by an older convert deploy: its messages carry no issue counter, "
                "so a recorded one could be replayed); update convert deploy and deploy again"
            )
        return int(n)

    def _fresh(self, m: Message, n: int) -> bool:
        """Accept ``m``'s issue counter (persisted before anything is done) → True; the very message
        accepted last from this key, again (a QoS 1 redelivery) → False: nothing to do; an older one
        → ``RolloutError`` (a replay)."""
        kid = str(m.header["key_id"])
        last = self.issued.get(kid)
        if last is not None and n == last.issued_at and m.id == last.id:
            log.info("rollout %s: %s delivered again (issued_at %d, already accepted); ignored", m.id, m.op, n)
            return False
        if last is not None and n <= last.issued_at:
            raise RolloutError(
                f"replayed: {m.op} issued at {_iso_ns(n)} is not after the last accepted from key {kid} "
                f"({_iso_ns(last.issued_at)}, rollout {last.id}); to install an older bundle, deploy it anew"
            )
        issued = {**self.issued, kid: Issued(n, m.id)}
        self.store.record_issued(issued)  # on disk before the message has any effect
        self.issued = issued
        return True

    def _on_begin(self, m: Message) -> None:
        h = m.header
        n = self._issued_at(m)
        verify_signature(self.keys, h["key_id"], h["signature"], signed_begin(m.id, h["size"], h["sha256"], n))
        if h["size"] > self.max_bytes:
            raise RolloutError(f"bundle of {h['size']} bytes is over model.max_bundle_mb ({self.max_bytes} bytes)")
        dl = self.dl
        if dl is not None and dl.id == m.id and dl.begin == h:  # sent again (deploy restarted or we did)
            dl.lenient = True
            log.info("rollout %s: begin again, continuing at chunk %d of %d", m.id, dl.next, dl.chunks)
        else:
            if not self._fresh(m, n):
                return
            self.dl = dl = self.store.start(h)
            log.info(
                "rollout %s: downloading %s %s (%d bytes, %d chunks, key %s)",
                m.id,
                h["name"],
                h["version"],
                h["size"],
                h["chunks"],
                h["key_id"],
            )
        self._report(force=True)

    def _on_chunk(self, m: Message) -> None:
        dl = self.dl
        seq = int(m.header["seq"])
        if dl is None or dl.id != m.id:
            raise RolloutError(f"chunk {seq} of a rollout that was not begun (or was refused)")
        if seq < dl.next:
            return  # a duplicate (QoS 1 redelivery or a resend): already on disk
        if seq > dl.next:
            if dl.lenient:
                return  # sent before the deployer learnt where we resumed
            raise RolloutError(f"chunk {seq} out of order (expected {dl.next}): chunks missing")
        if seq >= dl.chunks:
            raise RolloutError(f"chunk {seq} beyond the announced {dl.chunks}")
        size, cs = int(dl.begin["size"]), int(dl.begin["chunk_size"])
        want = cs if seq < dl.chunks - 1 else size - cs * (dl.chunks - 1)
        if len(m.data) != want:
            raise RolloutError(f"chunk {seq}: {len(m.data)} bytes, expected {want}")
        dl.lenient = False
        self.store.append(dl, m.data)
        self._report(force=dl.next == dl.chunks)

    def _report(self, force: bool = False) -> None:
        dl = self.dl
        if dl is None:
            return
        now = time.monotonic()
        if force or dl.next % REPORT_EVERY == 0 or now - self._reported > 0.5:
            self._reported = now
            self.hooks.state("downloading", rollout=dl.info(self.boot))

    def _on_end(self, m: Message) -> None:
        dl = self.dl
        if dl is None or dl.id != m.id:
            raise RolloutError("end of a rollout that was not begun (or was refused)")
        if dl.next < dl.chunks:
            raise RolloutError(f"chunks missing: {dl.chunks - dl.next} of {dl.chunks} (from chunk {dl.next})")
        self.hooks.state("verifying", rollout=dl.info(self.boot))
        size, digest = self.store.digest(dl)
        if size != dl.begin["size"] or digest != dl.begin["sha256"]:
            raise RolloutError(
                f"sha256 of the received bundle is {digest[:16]}…, {size} bytes; the signed one is "
                f"{dl.begin['sha256'][:16]}…, {dl.begin['size']} bytes (a corrupted chunk?)"
            )
        t0 = time.monotonic()
        root = self.store.unpack(dl, self.max_bytes)
        try:
            model = self.hooks.check(root)  # signature of the manifest, sha256s, self-check, labels …
        except Exception:
            shutil.rmtree(root, ignore_errors=True)
            raise
        with self.hooks.exclusive():
            self.store.install(root)
            info = dl.info(self.boot)
            self.hooks.offer(model, "active", {"rollout": info})
        self.store.discard_all()
        self.dl = None
        self.installs += 1
        pruned = self.store.prune()
        log.info(
            "rollout %s: %s %s installed as %s (checked in %.2f s; previous kept as %s%s); swapping at the next frame",
            m.id,
            model.bundle.name,
            model.version,
            self.store.link,
            time.monotonic() - t0,
            self.store.previous,
            f"; removed {', '.join(pruned)}" if pruned else "",
        )

    def _on_rollback(self, m: Message) -> None:
        h = m.header
        n = self._issued_at(m)
        verify_signature(self.keys, h["key_id"], h["signature"], signed_rollback(m.id, h["from"], n))
        if not self._fresh(m, n):
            return
        info = {"id": m.id, "boot": self.boot, "from": h["from"]}
        if self.hooks.running_manifest() != h["from"]:
            log.info("rollout %s: rollback: not running %s…; nothing to undo", m.id, h["from"][:12])
            self.hooks.state("rolled_back", rollout={**info, "changed": False})
            return
        prev = self.store.previous_bundle()
        if prev is None:
            raise RolloutError("no previous bundle to roll back to")
        model = self.hooks.check(prev)
        with self.hooks.exclusive():
            self.store.swap_back()
            self.hooks.offer(model, "rolled_back", {"rollout": {**info, "changed": True}})
        self.rollbacks += 1
        log.info("rollout %s: rolling back to %s %s (%s)", m.id, model.bundle.name, model.version, prev)
