"""Durable outbox: an alert is committed to disk before it is published and deleted only when acked.

Why SQLite: one file, atomic commits, crash-safe with WAL + ``synchronous=FULL`` (each ``put`` is
on disk when it returns, so a power cut right after the decider accepted an alert cannot lose it),
and stdlib-only. Order is the insertion order (an AUTOINCREMENT ``seq``), so redelivery after an
outage or a restart keeps the order the alerts happened in.

Every failure (disk full, read-only file or directory, corrupt database) raises ``OutboxError``
with the path and the cause: the daemon must stop loudly rather than drop alerts silently.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge.errors import SeamQCError

EX_IOERR = 74  # sysexits: an I/O error the operator must fix (disk, permissions), not a config typo

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT    NOT NULL UNIQUE,
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    created  REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class OutboxError(SeamQCError):
    """The outbox cannot store or read alerts (disk full, read-only, corrupt): never continue silently."""

    exit_code = EX_IOERR


@dataclass(frozen=True)
class Item:
    """One undelivered message; ``seq`` is the insertion order."""

    seq: int
    event_id: str
    topic: str
    payload: bytes
    created: float


class Outbox:
    """A thread-safe SQLite queue of undelivered messages, keyed by a stable ``event_id``.

    ``max_bytes`` optionally caps the database size (so a week-long broker outage cannot fill the SD
    card); reaching it raises ``OutboxError`` exactly like a full disk.
    """

    def __init__(self, path: str | os.PathLike, max_bytes: int | None = None):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutboxError(f"outbox {self.path}: cannot create directory {self.path.parent}: "
                              f"{e.strerror or e}") from e
        try:
            # Create the file ourselves so it is 0600 from the start (SQLite gives -wal/-shm the same mode).
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            os.chmod(self.path, 0o600)
        except OSError as e:
            raise OutboxError(f"outbox {self.path}: cannot open for writing: {e.strerror or e}") from e
        try:
            conn = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as e:
            raise OutboxError(f"outbox {self.path}: cannot open: {e}") from e
        self._conn = conn
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"outbox {self.path}: cannot enable WAL journal (got {mode!r}); "
                                  "is the directory writable and on a local file system?")
            conn.execute("PRAGMA synchronous=FULL")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise OutboxError(f"outbox {self.path}: database is corrupt ({check}); "
                                  "move it aside to start with an empty outbox")
            conn.executescript(_SCHEMA)
            if max_bytes is not None:
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count={max(1, int(max_bytes) // page)}")
            # A real write at open: a read-only file/dir or a full disk fails now, at start-up, not at the
            # first alert an hour later.
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('opened', ?)", (repr(time.time()),))
        except OutboxError:
            self._close_quietly()
            raise
        except sqlite3.Error as e:
            self._close_quietly()
            raise self._error("cannot open", e) from e

    # -- helpers ------------------------------------------------------------------------------
    def _error(self, what: str, e: sqlite3.Error) -> OutboxError:
        msg = str(e)
        hint = ""
        low = msg.lower()
        if "full" in low:
            hint = " (free disk space or raise the outbox size limit; undelivered alerts are kept)"
        elif "readonly" in low or "read-only" in low or "unable to open" in low:
            hint = " (the file and its directory must be writable by the daemon)"
        elif "not a database" in low or "malformed" in low or "corrupt" in low:
            hint = " (corrupt database: move it aside to start with an empty outbox)"
        return OutboxError(f"outbox {self.path}: {what}: {msg}{hint}")

    def _close_quietly(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"outbox {self.path}: used after close()")
        return self._conn

    # -- API ----------------------------------------------------------------------------------
    def put(self, event_id: str, topic: str, payload: bytes | str) -> None:
        """Store a message; on disk when this returns. A second put of the same event_id is a no-op."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        with self._lock:
            try:
                self._db().execute(
                    "INSERT OR IGNORE INTO outbox(event_id, topic, payload, created) VALUES(?, ?, ?, ?)",
                    (str(event_id), topic, sqlite3.Binary(data), time.time()))
            except sqlite3.Error as e:
                raise self._error(f"cannot store event {event_id}", e) from e

    def pending(self, limit: int | None = None, after_seq: int = 0) -> list[Item]:
        """Undelivered messages in insertion order (``seq > after_seq``), at most ``limit``."""
        sql = "SELECT seq, event_id, topic, payload, created FROM outbox WHERE seq > ? ORDER BY seq"
        args: tuple = (int(after_seq),)
        if limit is not None:
            sql += " LIMIT ?"
            args += (int(limit),)
        with self._lock:
            try:
                rows = self._db().execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise self._error("cannot read", e) from e
        return [Item(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    def ack(self, event_id: str) -> bool:
        """Delete a delivered message; False when it was not (or no longer) in the outbox."""
        with self._lock:
            try:
                cur = self._db().execute("DELETE FROM outbox WHERE event_id = ?", (str(event_id),))
            except sqlite3.Error as e:
                raise self._error(f"cannot delete event {event_id}", e) from e
        return cur.rowcount > 0

    delete = ack

    def ack_many(self, event_ids) -> int:
        """Delete several delivered messages in one transaction (one fsync); returns how many."""
        ids = [(str(e),) for e in event_ids]
        if not ids:
            return 0
        with self._lock:
            db = self._db()
            try:
                db.execute("BEGIN IMMEDIATE")
                before = db.total_changes
                db.executemany("DELETE FROM outbox WHERE event_id = ?", ids)
                n = db.total_changes - before
                db.execute("COMMIT")
            except sqlite3.Error as e:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise self._error(f"cannot delete {len(ids)} events", e) from e
        return n

    def depth(self) -> int:
        """Number of undelivered messages."""
        with self._lock:
            try:
                return self._db().execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            except sqlite3.Error as e:
                raise self._error("cannot count", e) from e

    def close(self) -> None:
        """Checkpoint the WAL and close; idempotent."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # the WAL is replayed at the next open; nothing is lost
            self._close_quietly()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r})"
