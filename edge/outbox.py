"""Durable outbox: an alert is committed to disk before it is published and deleted only when acked.

Why SQLite: one file, atomic commits, crash-safe with WAL + ``synchronous=FULL`` (each ``put`` is
on disk when it returns, so a power cut right after the decider accepted an alert cannot lose it),
and stdlib-only. Order is the insertion order (an AUTOINCREMENT ``seq``), so redelivery after an
outage or a restart keeps the order the alerts happened in.

Every failure (disk full, read-only file or directory, corrupt database) raises ``OutboxError``
with the path and the cause: the daemon must stop loudly rather than drop alerts silently.

Nothing that is not ours is changed: the path is validated before anything is written (a device
such as ``/dev/null``, a directory, a file that is not SQLite, or another program's SQLite database
is refused as it is), and only a file the outbox creates itself gets mode 0600.

One outbox, one daemon: ``<outbox>.lock`` beside it is locked (``flock``) for the outbox's life and
holds the owner's pid; a second daemon on the same outbox would deliver every queued alert a second
time, so it stops at start-up naming the holder (``edge.statelock``, exit 78).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge.errors import SeamQCError
from edge.statelock import StateLock, lock_file

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
_OWN_TABLES = frozenset({"outbox", "meta", "sqlite_sequence"})
SQLITE_HEADER = b"SQLite format 3\x00"
LOCK_HINT = (
    "two daemons must not share one outbox (each would deliver every queued alert): give each "
    "daemon its own outbox path"
)


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
    card; the daemon's config key ``outbox_max_mb``); reaching it raises ``OutboxError`` exactly
    like a full disk, and the message names that key.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int | None = None, lock: bool = True):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._state_lock: StateLock | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutboxError(
                f"outbox {self.path}: cannot create directory {self.path.parent}: {e.strerror or e}"
            ) from e
        self._validate()  # before anything is written: a device or a foreign file stays untouched
        if lock:
            lock_path = self.path.with_name(self.path.name + ".lock")
            try:
                self._state_lock = lock_file(lock_path, f"outbox {self.path}", LOCK_HINT)
            except OSError as e:
                raise OutboxError(
                    f"outbox {self.path}: cannot open the lock file {lock_path}: {e.strerror or e}"
                ) from e
        try:
            self._open(max_bytes)
        except BaseException:
            self._release_state_lock()
            raise

    def _validate(self) -> bool:
        """Refuse (changing nothing) a path that is not a regular file holding a SQLite database or
        nothing; True when the file exists."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise OutboxError(f"outbox {self.path}: cannot access: {e.strerror or e}") from e
        if stat.S_ISDIR(st.st_mode):
            raise OutboxError(
                f"outbox {self.path}: is a directory; the outbox must be a file path "
                f"(e.g. {self.path / 'outbox.sqlite'})"
            )
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a character device"
                if stat.S_ISCHR(st.st_mode)
                else "a block device"
                if stat.S_ISBLK(st.st_mode)
                else "a FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "a socket"
                if stat.S_ISSOCK(st.st_mode)
                else "not a regular file"
            )
            raise OutboxError(
                f"outbox {self.path}: is {kind}, not a database file; left untouched: "
                "set outbox to a file path of its own"
            )
        if st.st_size == 0:
            return True  # an empty file (e.g. made with `install -m 0600 /dev/null`): SQLite initialises it
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except OSError as e:
            raise OutboxError(f"outbox {self.path}: cannot read: {e.strerror or e}") from e
        if head != SQLITE_HEADER:
            raise OutboxError(
                f"outbox {self.path}: not a database (no SQLite header); left untouched: "
                "move it aside or set outbox to another path"
            )
        return True

    def _create(self) -> None:
        """Create the file ourselves, 0600 from the start (SQLite gives -wal/-shm the same mode)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            # created meanwhile: not ours, checked like any other; or a dangling link (SQLite would follow it)
            if not self._validate():
                raise OutboxError(
                    f"outbox {self.path}: is a symbolic link to a missing file; set outbox to the real path"
                ) from None
            return
        except OSError as e:
            raise OutboxError(f"outbox {self.path}: cannot create: {e.strerror or e}") from e
        try:
            os.fchmod(fd, 0o600)  # ours: 0600 whatever the umask
        finally:
            os.close(fd)

    def _open(self, max_bytes: int | None) -> None:
        if not self._validate():  # again, under the lock
            self._create()
        try:
            conn = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise OutboxError(f"outbox {self.path}: cannot open: {e}") from e
        self._conn = conn
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables - _OWN_TABLES:
                foreign = ", ".join(sorted(tables - _OWN_TABLES))
                raise OutboxError(
                    f"outbox {self.path}: a SQLite database of something else (tables: "
                    f"{foreign}); left untouched: set outbox to a file of its own"
                )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(
                    f"outbox {self.path}: cannot enable WAL journal (got {mode!r}); "
                    "is the directory writable and on a local file system?"
                )
            conn.execute("PRAGMA synchronous=FULL")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise OutboxError(
                    f"outbox {self.path}: database is corrupt ({check}); move it aside to start with an empty outbox"
                )
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
        if "full" in low and self.max_bytes is not None:
            mb = self.max_bytes / (1024 * 1024)
            hint = (
                f" (the outbox is capped at outbox_max_mb: {mb:g} in the config: raise it, or free disk"
                " space; undelivered alerts are kept)"
            )
        elif "full" in low:
            hint = " (free disk space; undelivered alerts are kept)"
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
                    (str(event_id), topic, sqlite3.Binary(data), time.time()),
                )
            except sqlite3.Error as e:
                raise self._error(f"cannot store event {event_id}", e) from e

    def pending(self, limit: int | None = None, after_seq: int = 0) -> list[Item]:
        """Undelivered messages in insertion order (``seq > after_seq``), at most ``limit``."""
        sql = "SELECT seq, event_id, topic, payload, created FROM outbox WHERE seq > ? ORDER BY seq"
        args: tuple[int, ...] = (int(after_seq),)
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

    def ack_many(self, event_ids: Iterable[str]) -> int:
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

    def _release_state_lock(self) -> None:
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None

    def close(self) -> None:
        """Checkpoint the WAL, close and release the lock; idempotent."""
        with self._lock:
            if self._conn is None:
                self._release_state_lock()
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # the WAL is replayed at the next open; nothing is lost
            self._close_quietly()
            self._release_state_lock()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r})"
