"""Unpack a received bundle tar under the state directory, refusing anything that could escape it.

``extract(archive, dest, state_dir, max_bytes=...)`` accepts only regular files and directories
whose names are relative, free of ``..``, control characters and empty parts, and at most
``MAX_DEPTH`` deep; a symlink, hard link, device, FIFO, an absolute name, a ``..``, a duplicate
name, more than ``max_members`` members or more than ``max_bytes`` of content (counted as it is
written, not taken from the header) refuses the whole archive with one ``UnpackError`` line.

Nothing is written outside ``state_dir``: ``dest`` must lie inside it (resolved), the archive is
unpacked into a fresh temporary folder beside ``dest`` (created with ``O_EXCL``, files opened with
``O_NOFOLLOW | O_EXCL`` under directories this function made), and renamed to ``dest`` only when
every member passed; on any refusal the temporary folder is removed. Python's ``tarfile`` only
parses headers here; its ``extract``/``extractall`` are not used.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

from .errors import ModelError

MAX_BYTES = 256 << 20  # a bundle is a few MB; the daemon passes its configured cap
MAX_MEMBERS = 64
MAX_DEPTH = 4
MAX_NAME = 255
_BAD = re.compile(r"[\x00-\x1f\x7f\\]")


class UnpackError(ModelError):
    """The archive is refused; nothing of it was kept."""


def _check_name(name: str) -> tuple[str, ...]:
    if not name or len(name) > 1024 or _BAD.search(name):
        raise UnpackError(f"member {name[:80]!r}: not a plain relative name")
    if name.startswith("/"):
        raise UnpackError(f"member {name[:80]!r}: absolute path")
    parts = tuple(p for p in PurePosixPath(name).parts if p != ".")
    if not parts:
        raise UnpackError(f"member {name[:80]!r}: empty name")
    if ".." in parts:
        raise UnpackError(f"member {name[:80]!r}: '..' in the path")
    if len(parts) > MAX_DEPTH or any(len(p) > MAX_NAME for p in parts):
        raise UnpackError(f"member {name[:80]!r}: nested deeper than {MAX_DEPTH} or a name too long")
    return parts


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def extract(
    archive: str | Path | IO[bytes],
    dest: str | Path,
    state_dir: str | Path,
    max_bytes: int = MAX_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Path:
    """Unpack ``archive`` (a path or a binary file object) to ``dest`` (must not exist) → ``dest``."""
    state = Path(os.path.realpath(state_dir))
    dest = Path(dest)
    target = Path(os.path.realpath(dest.parent)) / dest.name
    if not state.is_dir():
        raise UnpackError(f"{state_dir}: state directory not found")
    if dest.name in ("", ".", "..") or not _inside(target, state) or target == state:
        raise UnpackError(f"{dest}: must be a new folder inside the state directory {state}")
    if os.path.lexists(target):
        raise UnpackError(f"{target}: exists")
    tmp = target.with_name(f".{target.name}.unpack-{os.getpid()}")
    os.mkdir(tmp, 0o700)  # O_EXCL semantics: fails if anything (a link included) is there
    ok = False
    try:
        _unpack(archive, tmp, max_bytes, max_members)
        os.rename(tmp, target)
        ok = True
        return target
    finally:
        if not ok:
            shutil.rmtree(tmp, ignore_errors=True)


def _unpack(archive: str | Path | IO[bytes], tmp: Path, max_bytes: int, max_members: int) -> None:
    try:
        tf = (
            tarfile.open(archive, mode="r:*")
            if isinstance(archive, (str, Path))
            else tarfile.open(fileobj=archive, mode="r:*")
        )
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UnpackError(f"not a readable tar archive ({type(e).__name__}: {str(e)[:120]})") from None
    total = 0
    seen: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    with tf:
        try:
            for n, m in enumerate(tf):
                if n >= max_members:
                    raise UnpackError(f"more than {max_members} members")
                parts = _check_name(m.name)
                if not (m.isreg() or m.isdir()):
                    kind = "link" if (m.issym() or m.islnk()) else "special file"
                    raise UnpackError(f"member {m.name[:80]!r}: a {kind} (only files and folders are accepted)")
                if parts in seen:
                    raise UnpackError(f"member {m.name[:80]!r}: listed twice")
                seen.add(parts)
                for i in range(1, len(parts)):  # parents: made here, never followed if someone else made them
                    d = parts[:i]
                    if d not in dirs:
                        if d in seen and d not in dirs:
                            raise UnpackError(f"member {m.name[:80]!r}: its parent is a file")
                        os.mkdir(tmp.joinpath(*d), 0o700)
                        dirs.add(d)
                        seen.add(d)
                path = tmp.joinpath(*parts)
                if m.isdir():
                    if parts not in dirs:
                        os.mkdir(path, 0o700)
                        dirs.add(parts)
                    continue
                if m.size > max_bytes - total:
                    raise UnpackError(f"member {m.name[:80]!r}: over the size cap of {max_bytes} bytes")
                src = tf.extractfile(m)
                if src is None:
                    raise UnpackError(f"member {m.name[:80]!r}: unreadable")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        total += len(chunk)
                        if total > max_bytes:
                            raise UnpackError(f"member {m.name[:80]!r}: over the size cap of {max_bytes} bytes")
                        out.write(chunk)
                os.chmod(path, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
        except (tarfile.TarError, EOFError, OSError) as e:
            if isinstance(e, FileExistsError):
                raise UnpackError(f"member clashes with another ({e.filename})") from None
            raise UnpackError(f"damaged tar archive ({type(e).__name__}: {str(e)[:120]})") from None
