"""``deploy``: send a signed model bundle to stations over MQTT, or roll them back (README "Rollout").

``deploy BUNDLE --broker HOST --stations GLOB --key FILE.key [--canary N]`` checks and signs the
bundle (``convert sign``: ``manifest.sig``), packs it as a tar, signs the tar's sha256 and sends it
in chunks (QoS 1, each acknowledged by the broker) to ``<prefix>/<station>/model/set`` of every
station whose name matches GLOB (stations are found by their retained ``status``/``model/state``).
Progress comes from the stations' retained ``model/state`` (``downloading`` … ``active`` or
``failed: reason``); each station is sent at most ``edge.rollout.WINDOW`` chunks ahead of the
``next`` it reported, so no station's queue overflows, and a station that restarted mid-download
continues where it reported. ``--canary N`` sends to the first N stations (by name), waits until
they are ``active`` on the bundle and stay online, active and healthy for ``--canary-s`` seconds,
then sends to the rest. ``--rollback`` asks the stations running BUNDLE to return to their previous
bundle. Every signed message carries an issue counter (``issued_at``, ``issue_counter``): stations
refuse one that is not newer than the last they accepted, so a recorded message cannot be replayed;
deploying an older bundle again is a new rollout with a new counter. Exit 0 when every station
ended where asked, 1 otherwise; 78 for a bad bundle or key.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import io
import json
import sys
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convert.brokerargs import read_password
from edge.errors import ConfigError, SeamQCError

CHUNK = 64 * 1024


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy", help="send a signed bundle to stations over MQTT (or roll back)", description=__doc__.splitlines()[0]
    )
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (convert export)")
    p.add_argument("--broker", required=True, metavar="HOST", help="MQTT broker")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--stations", required=True, metavar="GLOB", help="station names, e.g. 'sew-*' (quote it)")
    p.add_argument("--key", required=True, metavar="FILE.key", help="private key from convert keygen")
    p.add_argument("--canary", type=int, default=0, metavar="N", help="first N stations, then the rest")
    p.add_argument("--canary-s", type=float, default=30.0, metavar="S", help="canaries must stay healthy this long")
    p.add_argument("--rollback", action="store_true", help="return the stations running BUNDLE to their previous one")
    p.add_argument("--prefix", default="seamqc", help="topic prefix (mqtt.prefix)")
    p.add_argument("--username", help="broker user (the deploy user of the ACL)")
    p.add_argument("--password-file", metavar="FILE", help="file holding the broker password")
    p.add_argument("--ca", metavar="FILE", help="CA certificate: connect with TLS")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="give up on a wave after S seconds")
    p.add_argument(
        "--answer-s", type=float, default=20.0, metavar="S", help="a station must answer the begin within S seconds"
    )
    p.add_argument("--discover-s", type=float, default=1.5, metavar="S", help="time to collect the stations")
    p.add_argument("--chunk-kb", type=int, default=CHUNK // 1024, metavar="KB", help="chunk size (64)")
    p.set_defaults(func=run)


# -- what is sent ---------------------------------------------------------------------------------


def pack(root: str | Path) -> bytes:
    """A tar (gzip) of the bundle: ``manifest.json``, ``manifest.sig`` and the files it lists, nothing else."""
    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text())
    names = ["manifest.json", "manifest.sig"] + sorted({str(e["path"]) for e in manifest["files"].values()})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tf:
        for name in names:
            path = root / name
            if not path.is_file() or path.is_symlink():
                raise ConfigError(f"{path}: missing or not a plain file (needed in the bundle's tar)")
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sign(key: Any, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode("ascii")


_last_issued = 0
_issued_lock = threading.Lock()


def issue_counter() -> int:
    """The ``issued_at`` of a new signed message: UTC time in integer nanoseconds, strictly greater
    than the last one this process issued (stations refuse a counter that is not greater than the
    last they accepted from the key: replay protection, ``edge.rollout``)."""
    global _last_issued
    with _issued_lock:
        _last_issued = max(time.time_ns(), _last_issued + 1)
        return _last_issued


def begin_messages(
    tar: bytes, rollout_id: str, key: Any, name: str, version: str, chunk: int = CHUNK, issued_at: int | None = None
) -> tuple[bytes, list[bytes], bytes]:
    """(begin, chunks, end) payloads of one rollout (``edge.rollout`` wire format); ``issued_at``
    defaults to a fresh ``issue_counter()``."""
    from edge import rollout as wire
    from edge.signing import key_id

    issued = issue_counter() if issued_at is None else issued_at
    sha = hashlib.sha256(tar).hexdigest()
    n = -(-len(tar) // chunk)
    begin = {
        "op": "begin",
        "id": rollout_id,
        "name": name[:128],
        "version": version[:128],
        "size": len(tar),
        "sha256": sha,
        "chunks": n,
        "chunk_size": chunk,
        "issued_at": issued,
        "key_id": key_id(key.public_key()),
        "signature": sign(key, wire.signed_begin(rollout_id, len(tar), sha, issued)),
    }
    chunks = [
        wire.encode({"op": "chunk", "id": rollout_id, "seq": i}, tar[i * chunk : (i + 1) * chunk]) for i in range(n)
    ]
    return wire.encode(begin), chunks, wire.encode({"op": "end", "id": rollout_id})


def rollback_message(rollout_id: str, key: Any, from_sha: str, issued_at: int | None = None) -> bytes:
    """The signed ``rollback`` payload; ``issued_at`` defaults to a fresh ``issue_counter()``."""
    from edge import rollout as wire
    from edge.signing import key_id

    n = issue_counter() if issued_at is None else issued_at
    return wire.encode(
        {
            "op": "rollback",
            "id": rollout_id,
            "from": from_sha,
            "issued_at": n,
            "key_id": key_id(key.public_key()),
            "signature": sign(key, wire.signed_rollback(rollout_id, from_sha, n)),
        }
    )


# -- the stations as the broker shows them -----------------------------------------------------


@dataclass
class Station:
    name: str
    status: str | None = None  # online / offline (retained status)
    state: dict[str, Any] | None = None  # last model/state
    health: str | None = None  # last health state
    # this rollout
    begun: bool = False
    begun_at: float = 0.0  # when the (last) begin went out
    boot: str | None = None  # the station's boot id once it acknowledged the begin
    next: int = 0  # the chunk it expects
    sent: int = 0
    ended: bool = False
    result: str | None = None  # "active", "rolled_back", "failed: …"
    shown: str = ""
    pending: list[Any] = field(default_factory=list)  # MQTTMessageInfo not yet acknowledged


class Deployer:
    """One paho client (MQTT 5): subscribes to the stations' retained topics, publishes ``model/set``."""

    def __init__(self, args: argparse.Namespace, out: Any = None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.args = args
        self.prefix = args.prefix
        self.out = out or sys.stdout
        self.lock = threading.Lock()
        self.stations: dict[str, Station] = {}
        self.connected = threading.Event()
        self.refused: dict[int, str] = {}  # mid → reason of a refused PUBACK
        self.conn_error = ""
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"seamqc-deploy-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        if args.username:
            self.client.username_pw_set(args.username, read_password(args))
        if args.ca:
            self.client.tls_set(ca_certs=args.ca)
        self.client.max_inflight_messages_set(64)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    def connect(self, timeout: float = 10.0) -> None:
        try:
            self.client.connect(self.args.broker, self.args.port, keepalive=30)
        except (OSError, ValueError) as e:
            raise SeamQCError(f"--broker {self.args.broker}:{self.args.port}: cannot connect ({e})") from None
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.close()
            why = self.conn_error or "no answer"
            raise SeamQCError(f"--broker {self.args.broker}:{self.args.port}: not connected ({why})")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.conn_error = str(rc)
            return
        p = self.prefix
        client.subscribe([(f"{p}/+/status", 1), (f"{p}/+/model/state", 1), (f"{p}/+/health", 1)])
        self.connected.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        if rc is not None and getattr(rc, "is_failure", False):
            with self.lock:
                self.refused[mid] = str(rc)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        name, _, kind = msg.topic[len(self.prefix) + 1 :].partition("/")
        if not name:
            return
        with self.lock:
            st = self.stations.setdefault(name, Station(name))
            try:
                if kind == "status":
                    status = msg.payload.decode("utf-8", "replace")
                    if status == "online" and st.status != "online" and st.begun and st.result is None:
                        st.begun, st.boot = False, None  # it restarted: begin again, it says where it is
                    st.status = status
                elif kind == "model/state":
                    st.state = json.loads(msg.payload)
                elif kind == "health":
                    st.health = str(json.loads(msg.payload).get("state"))
            except (ValueError, AttributeError):
                pass

    def publish(self, st: Station, payload: bytes) -> None:
        info = self.client.publish(f"{self.prefix}/{st.name}/model/set", payload, qos=1)
        st.pending.append(info)

    def say(self, st: Station, text: str) -> None:
        if text != st.shown:
            st.shown = text
            print(f"{st.name}: {text}", file=self.out, flush=True)


def _match(states: dict[str, Station], glob: str) -> list[Station]:
    return [states[n] for n in sorted(states) if fnmatch.fnmatchcase(n, glob)]


def _rollout_of(st: Station, rid: str) -> dict[str, Any] | None:
    r = (st.state or {}).get("rollout")
    return r if isinstance(r, dict) and r.get("id") == rid else None


def _step_send(d: Deployer, st: Station, rid: str, begin: bytes, chunks: list[bytes], end: bytes, target: str) -> None:
    """One pass for one station (the caller holds ``d.lock``): read its state, send what it may take."""
    from edge.rollout import WINDOW

    state = st.state or {}
    mine = _rollout_of(st, rid)
    text = str(state.get("state", ""))
    if state.get("model", {}).get("manifest_sha256") == target and text == "active" and (mine or not st.begun):
        st.result = "active"
        return
    if mine is not None and text.startswith("failed"):
        st.result = text
        return
    for info in st.pending:
        if info.mid in d.refused:
            st.result = f"failed: the broker refused model/set ({d.refused[info.mid]}: check its ACL)"
            return
    st.pending = [i for i in st.pending if not i.is_published()]
    if mine is not None and text in ("downloading", "verifying"):
        if mine.get("boot") != st.boot:  # first answer, or the station restarted: go on from its next
            st.boot, st.sent, st.ended = mine.get("boot"), int(mine.get("next", 0)), False
        st.next = max(int(mine.get("next", 0)), 0)
        d.say(st, f"{text} {100 * st.next // len(chunks) // 10 * 10} %")
    if not st.begun:
        d.publish(st, begin)
        st.begun, st.begun_at = True, time.monotonic()
        d.say(st, "begin sent")
        return
    if st.boot is None:  # chunks only once the station accepted the begin (its signature, size)
        if time.monotonic() - st.begun_at > d.args.answer_s and st.status == "online":
            st.result = f"failed: no answer to the begin within {d.args.answer_s:g} s (is model.rollout on?)"
        return
    while st.sent < len(chunks) and st.sent < st.next + WINDOW and len(st.pending) < WINDOW:
        d.publish(st, chunks[st.sent])
        st.sent += 1
    if st.sent == len(chunks) and not st.ended and not st.pending and st.next >= len(chunks):
        d.publish(st, end)
        st.ended = True


def _wave(d: Deployer, wave: list[Station], step: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with d.lock:
            for st in wave:
                if st.result is None:
                    step(st)
            for st in wave:
                if st.result is not None:
                    d.say(st, st.result)  # once: say() repeats nothing
            if all(st.result is not None for st in wave):
                return
        time.sleep(0.05)
    with d.lock:
        for st in wave:
            if st.result is None:
                st.result = f"failed: no answer within {timeout:g} s (last state: {(st.state or {}).get('state')})"
                d.say(st, st.result)


def _canary_hold(d: Deployer, wave: list[Station], target: str, hold_s: float) -> str | None:
    """Every canary online, active on ``target`` and healthy for ``hold_s``; else why not."""
    end = time.monotonic() + hold_s
    while True:
        with d.lock:
            for st in wave:
                s = st.state or {}
                if st.status != "online":
                    return f"canary {st.name} went {st.status}"
                if s.get("state") != "active" or s.get("model", {}).get("manifest_sha256") != target:
                    return f"canary {st.name} is {s.get('state')!r} on {s.get('model', {}).get('version')}"
                if st.health not in (None, "ok"):
                    return f"canary {st.name} health is {st.health!r}"
        if time.monotonic() >= end:
            return None
        time.sleep(0.1)


def run(args: argparse.Namespace) -> int:
    from edge.bundle import load_bundle
    from edge.signing import TrustedKey, key_id, load_private_key, sign_bundle

    if args.canary < 0 or args.chunk_kb < 1 or args.chunk_kb > 1024:
        raise ConfigError("--canary must be >= 0 and --chunk-kb in 1..1024")
    key = load_private_key(args.key)
    rid = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    if args.rollback:
        target = load_bundle(args.bundle, verify=False).manifest_sha256
    else:
        load_bundle(args.bundle, verify=True)  # every sha256 checked before anything is signed
        sign_bundle(args.bundle, args.key)
        pub = TrustedKey(key_id(key.public_key()), Path(args.key), key.public_key())
        bundle = load_bundle(args.bundle, verify=True, trusted_keys=[pub])
        target = bundle.manifest_sha256
        tar = pack(args.bundle)
        begin, chunks, end = begin_messages(tar, rid, key, bundle.name, bundle.version, args.chunk_kb * 1024)
        many = "s" if len(chunks) != 1 else ""
        print(
            f"rollout {rid}: {bundle.name} {bundle.version} ({len(tar)} bytes, {len(chunks)} chunk{many}), "
            f"key {key_id(key.public_key())}",
            flush=True,
        )
    d = Deployer(args)
    d.connect()
    try:
        time.sleep(max(0.0, args.discover_s))  # the retained status and model/state of every station
        with d.lock:
            stations = _match(d.stations, args.stations)
        if not stations:
            raise SeamQCError(f"--stations {args.stations!r}: no station on {args.broker}:{args.port} matches")
        for st in stations:
            if st.status != "online":
                st.result = f"failed: {st.status or 'no status'} (not sent)"
                d.say(st, st.result)
        live = [st for st in stations if st.result is None]
        if args.rollback:
            msg = rollback_message(rid, key, target)

            def step(st: Station) -> None:
                mine = _rollout_of(st, rid)
                text = str((st.state or {}).get("state", ""))
                if mine is not None and (text == "rolled_back" or text.startswith("failed")):
                    st.result = text
                    return
                for info in st.pending:
                    if info.mid in d.refused:
                        st.result = f"failed: the broker refused model/set ({d.refused[info.mid]})"
                        return
                if not st.begun:
                    d.publish(st, msg)
                    st.begun, st.begun_at = True, time.monotonic()
                    d.say(st, "rollback sent")
                elif time.monotonic() - st.begun_at > args.answer_s and st.status == "online":
                    st.result = f"failed: no answer to the rollback within {args.answer_s:g} s (is model.rollout on?)"

            _wave(d, live, step, args.timeout)
            ok = all(st.result == "rolled_back" for st in stations)
        else:
            canary = live[: args.canary] if args.canary else []
            rest = live[len(canary) :]

            def step(st: Station) -> None:
                _step_send(d, st, rid, begin, chunks, end, target)

            if canary:
                print(f"canary: {', '.join(st.name for st in canary)}", flush=True)
                _wave(d, canary, step, args.timeout)
                why = None
                if any(st.result != "active" for st in canary):
                    why = "a canary failed"
                else:
                    print(f"canary: active; holding {args.canary_s:g} s", flush=True)
                    why = _canary_hold(d, canary, target, args.canary_s)
                if why is not None:
                    for st in rest:
                        st.result = f"failed: not sent ({why})"
                        d.say(st, st.result)
                    rest = []
                    print(f"canary: {why}; the rest is not sent", flush=True)
            _wave(d, rest, step, args.timeout)
            ok = all(st.result == "active" for st in stations)
        for st in stations:
            s = st.state or {}
            print(f"  {st.name:24s} {st.result}  ({s.get('model', {}).get('version')})")
        failed = [st.name for st in stations if st.result not in ("active", "rolled_back")]
        tail = f"; failed: {', '.join(failed)}" if failed else ""
        print(f"{len(stations) - len(failed)} of {len(stations)} stations done{tail}", flush=True)
        return 0 if ok else 1
    finally:
        d.close()
