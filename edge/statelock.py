"""Exclusive locks on the daemon's state (the outbox, the heatmap directory), held for its life.

Why: two daemons sharing one outbox both deliver every alert queued during a broker stall (each
alert arrives twice), and two heatmap workers on one directory delete each other's sets. The
second daemon must stop at start-up with one line naming the holder, not run side by side.

``fcntl.flock`` locks belong to the open file: the kernel drops them when the holder exits, even
on SIGKILL or a power cut, so there is no stale lock to clean up. The outbox's lock is a file
beside it (``<outbox>.lock``, 0600, holding the pid); the heatmap directory is locked through a
file descriptor of the directory itself, so that nothing but heatmaps ever appears in it. The
holder's pid comes from the lock file, else from ``/proc/locks``.

A locked state is a configuration mistake (two configs naming the same path): exit 78, so that
systemd does not restart the second service in a loop.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import ConfigError


class StateLockedError(ConfigError):
    """Another process holds the lock: the message names the path and the holder's pid."""


def _holder_from_proc_locks(fd: int) -> int | None:
    """The pid holding a flock on the file behind ``fd``, from ``/proc/locks`` (Linux)."""
    try:
        st = os.fstat(fd)
        wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" (blocked waiters carry "->")
                if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
                    continue
                if parts[5] == wanted:
                    return int(parts[4])
    except (OSError, ValueError):
        return None
    return None


def _flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
            return False
        raise


class StateLock:
    """One held lock; :meth:`release` (or process exit) drops it."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd: int | None = fd
        self.path = path

    def release(self) -> None:
        """Drop the lock; idempotent."""
        if self.fd is not None:
            try:
                os.close(self.fd)  # closing the last descriptor releases the flock
            except OSError:
                pass
            self.fd = None

    def __del__(self) -> None:
        self.release()


def lock_file(lock_path: str | os.PathLike[str], what: str, hint: str) -> StateLock:
    """Lock ``lock_path`` (created 0600 if missing, like the state it guards) and write our pid into it.

    ``what`` names the state in the error line (``outbox /var/lib/seam-qc/outbox.sqlite``), ``hint``
    says what to change. Raises :class:`StateLockedError` when another process holds it, OSError
    when the file cannot be opened.
    """
    path = Path(lock_path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not _flock(fd):
            pid = None
            try:
                pid = int(os.pread(fd, 32, 0).split()[0])
            except (OSError, ValueError, IndexError):
                pid = _holder_from_proc_locks(fd)
            who = f"pid {pid}" if pid else "a process whose pid is unknown"
            raise StateLockedError(f"{what}: in use by another seam-qc daemon ({who}, lock file {path}); {hint}")
        data = f"{os.getpid()}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except BaseException:
        os.close(fd)
        raise
    return StateLock(fd, path)


def lock_dir(directory: str | os.PathLike[str], what: str, hint: str) -> StateLock:
    """Lock the directory itself (no file is created in it); see :func:`lock_file`."""
    path = Path(directory)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not _flock(fd):
            pid = _holder_from_proc_locks(fd)
            who = f"pid {pid}" if pid else "another process"
            raise StateLockedError(f"{what}: in use by another seam-qc daemon ({who}); {hint}")
    except BaseException:
        os.close(fd)
        raise
    return StateLock(fd, path)
