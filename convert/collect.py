"""``python -m convert collect``: every station's training samples from the broker, as one data set.

The stations publish the samples they keep on ``<prefix>/<station>/sample`` (QoS 1, MQTT 5: PNG
bytes, user properties ``sample_id``, ``reason`` and ``sample``, the sidecar as JSON; see
``edge.samples`` and ARCHITECTURE.md §6). This command subscribes to them through the MQTT 5 shared
subscription ``$share/<group>/<prefix>/+/sample``, so several collectors in one group split a
plant's samples between them (the broker hands each message to one member), and writes them into
``--out`` in the seed's format:

* ``<stem>.png``: the sample's PNG, as received (the station's ROI crop, lossless); ``<stem>`` is
  the sample id made file-safe (``edge.heatmaps.safe_name``);
* ``<stem>.json``: the sample's metadata as received (scores, reason, verdict, model …) with the
  topic and the time it arrived;
* ``data.csv``: ``,name,good,error,break,length,source,reviewed``: the seed's columns (an index,
  the image name, ``True``/``False`` per label) plus ``source`` (``station=…; reason=…;
  sample=…; event=…; model=name@version; verdict=…@ts; by=…``, what the sample says) and
  ``reviewed`` (``False``; ``convert label`` sets it when a person confirms or corrects the row).
  ``convert.data`` skips both, so ``split``, ``train`` and ``evaluate`` read the file as it is.

Pre-labels (:func:`prelabels`): ``error`` and ``break`` are the sample's ``labels`` (the labels
the station flagged with its own thresholds, replaced by the operator's when a verdict came);
``good`` is neither; ``length`` (the seed's "2 mm stitches") is the model's ``length`` score
against ``--length-threshold`` (0.5), flipped when the operator's labels and the model's disagree
on ``length`` (a wrong-length flag called a false alarm, or a wrong length the model missed).

One row per ``sample_id``: a sample that arrives again (a re-delivery, or the station's re-publish
after an operator's verdict) never adds a row; a copy with a newer verdict rewrites the row's
labels and source, anything else is counted as a duplicate. A row a person reviewed is kept.

Resumable and crash-safe: the session is persistent (``clean_start`` false, a client id derived
from the host and ``--out``, ``--session-expiry``), and a message is acknowledged only once its
row is on disk, so a killed collector gets the unacknowledged samples (and those published while
it was away) again when it restarts into the same folder. Files are written atomically (temporary
file, fsync, rename); a new row is one appended line, fsynced; an update rewrites the CSV
atomically; a torn last line (power cut during an append) is cut off when the folder is opened.
One collector per folder (``flock`` on the folder, like the daemon's state).

A message that is not a sample (no PNG, no or bad metadata, another topic) is acknowledged,
counted and logged once per reason; it never stops the collector. Progress: a status line on a
terminal, else a line every ``--progress`` new samples.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from convert.brokerargs import read_password
from edge.errors import ConfigError, DataError, SeamQCError
from edge.heatmaps import safe_name
from edge.seam import SEAM_LABELS
from edge.statelock import StateLock, StateLockedError, lock_dir

from .data import META_COLUMNS, csv_rows, parse_seed_bool, parse_source, verdict_ts
from .fileio import atomic_write

LOG = logging.getLogger("seamqc.collect")
CSV_NAME = "data.csv"
HEADER = ("", "name", *SEAM_LABELS, *META_COLUMNS)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BYTES = 16 * 1024 * 1024
MAX_META_BYTES = 256 * 1024
MAX_PACKET = MAX_PNG_BYTES + MAX_META_BYTES + 4096  # told to the broker (MQTT 5)
DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600
EX_IOERR = 74


class IOFailure(SeamQCError):
    """The output folder cannot be written (disk full, read-only): stop, nothing acknowledged."""

    exit_code = EX_IOERR


class BadSample(ValueError):
    """A message that is not a sample; ``reason`` is its short, countable reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason


@dataclass(frozen=True)
class Received:
    """One valid sample off the broker."""

    sample_id: str
    station: str
    topic: str
    meta: dict[str, Any]
    png: bytes


def parse_message(topic: str, payload: bytes, user: dict[str, str], prefix: str) -> Received:
    """A ``<prefix>/<station>/sample`` message → ``Received``; ``BadSample`` names what is wrong."""
    parts = topic.split("/")
    if len(parts) != len(prefix.split("/")) + 2 or "/".join(parts[:-2]) != prefix or parts[-1] != "sample":
        raise BadSample("not a sample topic", topic[:120])
    station = parts[-2]
    if not payload.startswith(PNG_MAGIC):
        raise BadSample("payload is not a PNG")
    if len(payload) > MAX_PNG_BYTES:
        raise BadSample("PNG too large", f"{len(payload)} bytes")
    raw = user.get("sample")
    if raw is None:
        raise BadSample("no 'sample' user property (not an MQTT 5 sample)")
    if len(raw) > MAX_META_BYTES:
        raise BadSample("'sample' metadata too large")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise BadSample("'sample' metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise BadSample("'sample' metadata is not an object")
    sid = meta.get("sample_id")
    if not isinstance(sid, str) or not sid.strip() or len(sid) > 256:
        raise BadSample("no sample_id")
    if user.get("sample_id") not in (None, sid):
        raise BadSample("sample_id property and metadata differ")
    if meta.get("station") not in (None, station):
        raise BadSample("station in metadata differs from the topic's", f"{meta.get('station')!r} on {topic}")
    scores = meta.get("scores")
    if not isinstance(scores, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in scores.values()
    ):
        raise BadSample("scores missing or not numbers")
    unknown = set(scores) - set(SEAM_LABELS)
    if unknown:
        raise BadSample("labels are not the seam's", ",".join(sorted(unknown))[:120])
    for key in ("labels", "model_labels"):
        val = meta.get(key, [])
        if not isinstance(val, list) or not all(isinstance(x, str) for x in val):
            raise BadSample(f"{key} is not a list of labels")
    if meta.get("verdict") is not None and not isinstance(meta.get("verdict"), dict):
        raise BadSample("verdict is not an object")
    img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise BadSample("PNG does not decode")
    return Received(sid, station, topic, meta, payload)


def prelabels(meta: dict[str, Any], length_threshold: float = 0.5) -> tuple[bool, ...]:
    """The seed's ``good, error, break, length`` for a sample (see the module doc)."""
    labels = set(meta.get("labels") or ())
    model_labels = set(meta.get("model_labels") or ())
    error, brk = "error" in labels, "break" in labels
    p = (meta.get("scores") or {}).get("length")
    two_mm = p is not None and float(p) >= length_threshold
    if ("length" in labels) != ("length" in model_labels):
        two_mm = not two_mm
    values = {"good": not (error or brk), "error": error, "break": brk, "length": two_mm}
    return tuple(values[a] for a in SEAM_LABELS)


def _clean(value: Any) -> str:
    return " ".join(str(value).replace(";", ",").replace("=", ":").split())[:160]


def source_text(meta: dict[str, Any], station: str) -> str:
    """The ``source`` cell: ``station=…; reason=…; sample=…; event=…; model=…; verdict=…@ts; by=…``."""
    parts = {"station": station, "reason": meta.get("reason"), "sample": meta.get("sample_id")}
    if meta.get("event_id"):
        parts["event"] = meta["event_id"]
    model = meta.get("model")
    if isinstance(model, dict) and (model.get("name") or model.get("version")):
        parts["model"] = f"{model.get('name') or '?'}@{model.get('version') or str(model.get('sha256') or '?')[:12]}"
    verdict = meta.get("verdict")
    if isinstance(verdict, dict) and verdict.get("verdict"):
        parts["verdict"] = f"{verdict['verdict']}@{verdict.get('ts') or ''}"
        if verdict.get("by"):
            parts["by"] = verdict["by"]
    return "; ".join(f"{k}={_clean(v)}" for k, v in parts.items() if v is not None)


@dataclass
class Row:
    name: str
    values: tuple[bool | None, ...]  # None: an empty cell (nobody can tell; ``label``'s Shift+key)
    source: str
    reviewed: bool = False


def csv_text(rows: list[Row], header: bool = True, start: int = 0) -> str:
    """Rows in the seed's layout (pandas ``to_csv``: index, name, ``True``/``False``) plus the meta columns."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(HEADER)
    for i, r in enumerate(rows, start=start):
        w.writerow(
            [
                i,
                r.name,
                *("" if v is None else "True" if v else "False" for v in r.values),
                r.source,
                "True" if r.reviewed else "False",
            ]
        )
    return buf.getvalue()


def read_rows(path: Path) -> list[Row]:
    """The rows of a collect CSV (``label`` writes the same layout); one ``DataError`` line otherwise."""
    lines = csv_rows(path)
    if not lines:
        return []
    header = tuple(h.strip() for h in lines[0])
    if header[1:] != HEADER[1:]:
        raise DataError(f"{path}: header {','.join(header)!r}, expected {','.join(HEADER)!r} (a collect data set)")
    rows = []
    for lineno, fields in enumerate(lines[1:], start=2):
        if not fields or all(not c.strip() for c in fields):
            continue
        if len(fields) != len(HEADER):
            raise DataError(f"{path}:{lineno}: {len(fields)} fields, header has {len(HEADER)}")
        cells = [c.strip() for c in fields[2 : 2 + len(SEAM_LABELS)]]
        vals = tuple(parse_seed_bool(v) for v in cells)
        reviewed = parse_seed_bool(fields[-1])
        if any(b is None and v for b, v in zip(vals, cells)) or reviewed is None:
            raise DataError(
                f"{path}:{lineno}: expected True, False or empty in the label columns, True or False in reviewed"
            )
        rows.append(Row(fields[1].strip(), vals, fields[-2], bool(reviewed)))
    return rows


def _fsync_append(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        data = text.encode("utf-8")
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(28, "short write (disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)


class CollectStore:
    """The output folder: images, metadata, ``data.csv``; one row per sample id (see the module doc)."""

    def __init__(self, out: str | Path, length_threshold: float = 0.5) -> None:
        self.dir = Path(out)
        self.csv_path = self.dir / CSV_NAME
        self.length_threshold = length_threshold
        self.rows: OrderedDict[str, Row] = OrderedDict()  # stem → row, in CSV order
        self.notes: list[str] = []
        self._lock: StateLock | None = None
        if self.dir.exists() and not self.dir.is_dir():
            raise DataError(f"--out {self.dir}: exists and is not a folder")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".collect-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise DataError(f"--out {self.dir}: not writable ({e.strerror or e})") from None
        try:
            self._lock = lock_dir(
                self.dir, f"--out {self.dir}", "one collector (or label) per folder: give another --out"
            )
        except StateLockedError as e:
            raise ConfigError(str(e).replace("another seam-qc daemon", "another collect or label")) from None
        self._load()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _load(self) -> None:
        for tmp in self.dir.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)
        if self.csv_path.exists():
            data = self.csv_path.read_bytes()
            if data and not data.endswith(b"\n"):  # an append torn by a power cut: cut it off
                keep = data.rfind(b"\n") + 1
                with open(self.csv_path, "r+b") as f:
                    f.truncate(keep)
                    os.fsync(f.fileno())
                self.notes.append(f"cut off a torn last line of {self.csv_path.name} ({len(data) - keep} bytes)")
            for row in read_rows(self.csv_path):
                self.rows[Path(row.name).stem] = row
        orphans = [
            p.name
            for p in self.dir.glob("*.png")
            if p.stem not in self.rows and (self.dir / f"{p.stem}.json").is_file()
        ]
        if orphans:
            self.notes.append(
                f"{len(orphans)} sample image(s) without a row (an interrupted write; the broker sends them again): "
                + ", ".join(sorted(orphans)[:3])
            )

    def add(self, s: Received, received_at: str) -> str:
        """Store one sample: ``new``, ``updated`` (a newer verdict) or ``duplicate``; ``IOFailure`` on disk errors."""
        stem = safe_name(s.sample_id)
        values = prelabels(s.meta, self.length_threshold)
        source = source_text(s.meta, s.station)
        old = self.rows.get(stem)
        if old is not None:
            if old.reviewed or not isinstance(s.meta.get("verdict"), dict):
                return "duplicate"
            old_ts, new_ts = verdict_ts(parse_source(old.source)), verdict_ts(parse_source(source))
            if old_ts is not None and (new_ts or "") <= old_ts:
                return "duplicate"
        side = {**s.meta, "topic": s.topic, "received": received_at, "file": f"{stem}.png"}
        try:
            if old is None:
                atomic_write(self.dir / f"{stem}.png", s.png)
            atomic_write(self.dir / f"{stem}.json", (json.dumps(side, indent=1, ensure_ascii=False) + "\n").encode())
            row = Row(f"{stem}.png", values, source)
            if old is None:
                if not self.csv_path.exists():
                    atomic_write(self.csv_path, csv_text([]).encode())
                _fsync_append(self.csv_path, csv_text([row], header=False, start=len(self.rows)))
                self.rows[stem] = row
                return "new"
            self.rows[stem] = row
            try:
                atomic_write(self.csv_path, csv_text(list(self.rows.values())).encode())
            except BaseException:
                self.rows[stem] = old
                raise
            return "updated"
        except OSError as e:
            raise IOFailure(f"{self.dir}: cannot write sample {s.sample_id} ({e.strerror or e})") from None


def _user_props(msg: Any) -> dict[str, str]:
    user: dict[str, str] = {}
    for pair in getattr(getattr(msg, "properties", None), "UserProperty", None) or ():
        if isinstance(pair, tuple | list) and len(pair) == 2:
            user[str(pair[0])] = str(pair[1])
    return user


def default_client_id(out: Path, group: str) -> str:
    """Stable across restarts into the same folder (so the broker keeps the session for it)."""
    key = f"{socket.gethostname()}:{out.resolve()}:{group}"
    return f"seamqc-collect-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


class Collector:
    """The paho client (MQTT 5, persistent session, manual acknowledgements) feeding a ``CollectStore``."""

    def __init__(
        self,
        store: CollectStore,
        host: str,
        port: int = 1883,
        *,
        prefix: str = "seamqc",
        group: str = "seamqc-collect",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S,
        progress_every: int = 100,
        status: Any = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.store, self.host, self.port = store, host, port
        self.prefix, self.group = prefix, group
        self.topic = f"$share/{group}/{prefix}/+/sample"
        self.session_expiry_s = session_expiry_s
        self.client_id = client_id or default_client_id(store.dir, group)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=15)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.failed: SeamQCError | None = None
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()  # new, updated, duplicate, bad
        self.bad: Counter[str] = Counter()
        self.stations: Counter[str] = Counter()
        self.progress_every = max(1, progress_every)
        self.status = status  # a text stream for a \r status line (a terminal), or None
        self._status_at = 0.0
        self._stopping = False
        self._lock = threading.Lock()

    # ---- connecting
    def connect(self, timeout: float = 10.0) -> None:
        """Connect, subscribe and wait for the SUBACK; a broker that cannot be used is one ``ConfigError`` line."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        props.MaximumPacketSize = MAX_PACKET
        try:
            self.client.connect(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"--broker {self.host}:{self.port}: cannot connect ({getattr(e, 'strerror', None) or e})"
            ) from None
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self.subscribed.is_set() and self.failed is None:
            if time.monotonic() > deadline:
                self.close()
                raise ConfigError(
                    f"--broker {self.host}:{self.port}: no answer to CONNECT/SUBSCRIBE within {timeout:g} s"
                )
            self.subscribed.wait(0.05)
        if self.failed is not None:
            self.close()
            raise self.failed

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.failed = ConfigError(f"--broker {self.host}:{self.port}: refused the connection ({reason_code})")
            self.stop.set()
            return
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        refused = [str(rc) for rc in reason_codes if getattr(rc, "is_failure", False)]
        if refused:
            self.failed = ConfigError(
                f"--broker {self.host}:{self.port}: refused the subscription {self.topic} ({refused[0]}; "
                "the broker must support MQTT 5 shared subscriptions and its ACL allow reading the sample topics)"
            )
            self.stop.set()
            return
        if self.subscribed.is_set():
            LOG.info("reconnected to %s:%d", self.host, self.port)
        self.subscribed.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not self._stopping:
            LOG.warning("lost the broker %s:%d (%s); reconnecting", self.host, self.port, reason_code)

    # ---- messages (paho's thread)
    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if self.stop.is_set():
            return  # not acknowledged: the broker sends it again to the next collector of the group
        try:
            outcome = self.handle(msg.topic, bytes(msg.payload), _user_props(msg))
        except IOFailure as e:
            self.failed = e
            self.stop.set()
            return  # not acknowledged
        except Exception as e:  # noqa: BLE001 - a bug here must not kill paho's thread nor lose the sample silently
            LOG.exception("collect: handling a message on %s failed: %s", msg.topic, e)
            self.failed = IOFailure(f"collect: handling a message on {msg.topic} failed ({e})")
            self.stop.set()
            return
        client.ack(msg.mid, msg.qos)
        if outcome == "new":
            self._progress()

    def handle(self, topic: str, payload: bytes, user: dict[str, str]) -> str:
        """One message: ``new``, ``updated``, ``duplicate`` or ``bad`` (logged once per reason, counted)."""
        try:
            s = parse_message(topic, payload, user, self.prefix)
        except BadSample as e:
            with self._lock:
                self.counts["bad"] += 1
                self.bad[e.reason] += 1
                first = self.bad[e.reason] == 1
            if first:
                LOG.warning("collect: ignored a message on %s: %s (logged once per reason, counted)", topic[:120], e)
            return "bad"
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        outcome = self.store.add(s, now)
        with self._lock:
            self.counts[outcome] += 1
            if outcome == "new":
                self.stations[s.station] += 1
        return outcome

    def summary(self) -> str:
        c = self.counts
        st = ", ".join(f"{k} {v}" for k, v in sorted(self.stations.items()))
        bad = f" ({', '.join(f'{k}: {v}' for k, v in self.bad.most_common())})" if self.bad else ""
        return (
            f"{c['new']} new, {c['updated']} updated, {c['duplicate']} duplicate(s), {c['bad']} bad{bad}"
            + (f"; stations: {st}" if st else "")
            + f"; {len(self.store.rows)} rows in {self.store.csv_path}"
        )

    def _progress(self) -> None:
        if self.status is not None:
            now = time.monotonic()
            if now - self._status_at >= 0.5:
                self._status_at = now
                self.status.write(f"\rcollect: {self.summary()}\x1b[K")
                self.status.flush()
        elif self.counts["new"] % self.progress_every == 0:
            print(f"collect: {self.summary()}", flush=True)

    def close(self) -> None:
        """Disconnect (the session stays on the broker for the next start) and stop paho's thread."""
        self._stopping = True
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def _stop_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def check_args(args: argparse.Namespace) -> None:
    """Settings that cannot work: one ``ConfigError`` line (exit 78) before anything is opened."""
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: not a TCP port (1-65535)")
    for flag, value in (("--prefix", args.prefix), ("--group", args.group)):
        if not value or any(c in value for c in "+#\0/ ") or not value.isprintable():
            raise ConfigError(f"{flag} {value!r}: one topic level, no / + # or spaces")
    if args.count is not None and args.count < 1:
        raise ConfigError(f"--count {args.count}: at least 1")
    if args.timeout is not None and not args.timeout > 0:
        raise ConfigError(f"--timeout {args.timeout}: seconds, more than 0")
    if not 0.0 <= args.length_threshold <= 1.0:
        raise ConfigError(f"--length-threshold {args.length_threshold}: between 0 and 1")
    if args.progress < 1:
        raise ConfigError(f"--progress {args.progress}: at least 1")
    try:
        socket.getaddrinfo(args.broker, args.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"--broker {args.broker!r} does not resolve ({getattr(e, 'strerror', None) or e})") from None


def run(args: argparse.Namespace) -> int:
    check_args(args)
    password = read_password(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    store = CollectStore(args.out, args.length_threshold)
    collector = None
    try:
        for note in store.notes:
            print(f"note: {note}", file=sys.stderr, flush=True)
        collector = Collector(
            store,
            args.broker,
            args.port,
            prefix=args.prefix,
            group=args.group,
            client_id=args.client_id,
            username=args.username,
            password=password,
            session_expiry_s=args.session_expiry,
            progress_every=args.progress,
            status=sys.stderr if sys.stderr.isatty() else None,
        )
        already = len(store.rows)
        collector.connect()
        print(
            f"collecting {collector.topic} from {args.broker}:{args.port} into {store.csv_path} "
            f"({already} rows already; client id {collector.client_id})",
            flush=True,
        )
        signal.signal(signal.SIGTERM, _stop_signal)
        deadline = time.monotonic() + args.timeout if args.timeout else None
        try:
            while not collector.stop.is_set():
                if args.count is not None and collector.counts["new"] >= args.count:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
                collector.stop.wait(0.1)
        except KeyboardInterrupt:
            pass
        collector.stop.set()
        collector.close()
        if collector.status is not None:
            collector.status.write("\n")
        print(f"collected: {collector.summary()}", flush=True)
        if collector.failed is not None:
            raise collector.failed
        if args.count is not None and collector.counts["new"] < args.count:
            print(
                f"error: --timeout {args.timeout:g} s: {collector.counts['new']} of --count {args.count} new samples",
                file=sys.stderr,
                flush=True,
            )
            return 1
        return 0
    finally:
        store.close()


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "collect",
        help="collect every station's training samples from the broker into a pre-labelled data set",
        description="Subscribe to $share/<group>/<prefix>/+/sample (MQTT 5 shared subscription, QoS 1, persistent "
        "session) and write each sample into --out: <sample>.png, <sample>.json and one row of data.csv (the seed's "
        "format with the model's pre-labels, plus source and reviewed columns). One row per sample_id; a re-published "
        "sample with a newer verdict updates its row. Restart into the same --out to resume. Review with "
        "`convert label --images DIR`, then `convert split` and `convert train --init`.",
    )
    p.add_argument("--broker", required=True, help="MQTT broker host")
    p.add_argument("--port", type=_int, default=1883, help="MQTT broker port (default 1883)")
    p.add_argument("--out", required=True, help="output folder (data.csv, PNGs, JSON); resumed when it exists")
    p.add_argument("--prefix", default="seamqc", help="topic prefix (default seamqc)")
    p.add_argument("--group", default="seamqc-collect", help="shared subscription group (default seamqc-collect)")
    p.add_argument("--count", type=_int, default=None, help="stop after N new samples (scripts)")
    p.add_argument("--timeout", type=_float, default=None, help="stop after S seconds (with --count: exit 1 if short)")
    p.add_argument(
        "--length-threshold",
        type=_float,
        default=0.5,
        help="the model's length score at or above this pre-labels 'length' (2 mm stitches) (default 0.5)",
    )
    p.add_argument("--progress", type=_int, default=100, help="off a terminal: a line every N new samples")
    p.add_argument("--client-id", default=None, help="MQTT client id (default: derived from the host and --out)")
    p.add_argument(
        "--session-expiry",
        type=_int,
        default=DEFAULT_SESSION_EXPIRY_S,
        help="seconds the broker keeps the session (and queues samples) while away (default 7 days)",
    )
    p.add_argument("--username", default=None, help="MQTT user name (the ACL must let it read <prefix>/+/sample)")
    p.add_argument("--password-file", default=None, help="file holding the MQTT password")
    p.set_defaults(func=run)
