"""edge.outbox: durable, ordered, idempotent, and loud on every storage failure."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge.errors import SeamQCError
from edge.outbox import Outbox, OutboxError
from tests.support.fs import IS_ROOT, tmpfs

ROOT = Path(__file__).resolve().parent.parent


def test_put_pending_ack_keeps_order_and_survives_reopen(tmp_path):
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path)
    ids = [f"ev-{i:03d}" for i in range(50)]
    t_put = time.time()
    for i, ev in enumerate(ids):
        ob.put(ev, "seamqc/s1/alert", f'{{"i":{i}}}')
    t_end = time.time()
    assert ob.depth() == 50
    items = ob.pending()
    assert [it.event_id for it in items] == ids
    assert [(it.topic, it.payload) for it in items] == [("seamqc/s1/alert", f'{{"i":{i}}}'.encode()) for i in range(50)]
    created = [it.created for it in items]  # the wall-clock time of each put, kept in put order
    assert t_put <= created[0] and created == sorted(created) and created[-1] <= t_end
    assert items[7].payload == b'{"i":7}' and items[7].topic == "seamqc/s1/alert"
    assert [it.seq for it in items] == sorted(it.seq for it in items)
    assert ob.ack("ev-000") is True
    assert ob.ack("ev-000") is False  # already gone
    assert ob.ack_many(["ev-001", "ev-002", "nope"]) == 2
    ob.close()
    ob.close()  # idempotent

    again = Outbox(path)
    assert again.depth() == 47
    assert [it.event_id for it in again.pending()] == ids[3:]
    again.put("ev-new", "t", b"\x00\xffbinary")
    assert again.pending()[-1].event_id == "ev-new"
    assert again.pending()[-1].payload == b"\x00\xffbinary"
    again.close()


def test_put_is_idempotent_on_event_id(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as ob:
        ob.put("a", "t", b"first")
        ob.put("b", "t", b"second")
        ob.put("a", "t", b"retry with other bytes")  # a retry of the same event: ignored
        assert ob.depth() == 2
        assert [(it.event_id, it.payload) for it in ob.pending()] == [("a", b"first"), ("b", b"second")]


def test_pending_limit_and_after_seq_page_in_order(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as ob:
        for i in range(10):
            ob.put(f"e{i}", "t", str(i))
        first = ob.pending(limit=4)
        assert [it.event_id for it in first] == ["e0", "e1", "e2", "e3"]
        rest = ob.pending(limit=100, after_seq=first[-1].seq)
        assert [it.event_id for it in rest] == [f"e{i}" for i in range(4, 10)]
        assert ob.pending(after_seq=rest[-1].seq) == []


def test_creates_parent_dir_and_private_file(tmp_path):
    path = tmp_path / "var" / "lib" / "seam-qc" / "outbox.sqlite"
    with Outbox(path) as ob:
        ob.put("x", "t", "y")
        for f in path.parent.iterdir():  # the db and its -wal/-shm carry alert contents: owner only
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_threads_put_concurrently_without_loss(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite")
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(100):
                ob.put(f"t{t}-{i:03d}", "t", b"p")
                if i % 10 == 0:
                    ob.depth()
                    ob.pending(limit=5)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert ob.depth() == 400
    items = ob.pending()
    for t in range(4):  # each producer's own order is kept
        mine = [it.event_id for it in items if it.event_id.startswith(f"t{t}-")]
        assert mine == sorted(mine) and len(mine) == 100
    ob.close()


def test_put_is_on_disk_when_it_returns_even_if_the_process_is_killed(tmp_path):
    path = tmp_path / "o.sqlite"
    code = (
        "import os, signal, sys; sys.path.insert(0, sys.argv[1]);"
        "from edge.outbox import Outbox; ob = Outbox(sys.argv[2]);"
        "[ob.put(f'k{i:03d}', 't', b'x' * 100) for i in range(200)];"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(ROOT), str(path)], timeout=60)
    assert r.returncode == -9
    with Outbox(path) as ob:
        assert [it.event_id for it in ob.pending()] == [f"k{i:03d}" for i in range(200)]


def test_corrupt_database_is_a_clear_error(tmp_path):
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not sqlite " * 500)
    with pytest.raises(OutboxError) as ei:
        Outbox(path)
    msg = str(ei.value)
    assert str(path) in msg and "not a database" in msg and "move it aside" in msg
    assert isinstance(ei.value, SeamQCError) and ei.value.exit_code != 0


def test_size_cap_reached_raises_and_keeps_what_was_stored(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite", max_bytes=64 * 1024)
    stored = 0
    with pytest.raises(OutboxError) as ei:
        for i in range(10_000):
            ob.put(f"e{i}", "t", b"x" * 1000)
            stored += 1
    assert "full" in str(ei.value) and str(ob.path) in str(ei.value)
    assert 0 < stored < 10_000
    assert ob.depth() == stored  # nothing already committed was lost
    ob.close()


def test_full_disk_raises_and_recovers_when_space_is_freed(tmp_path):
    mnt = tmp_path / "small"
    with tmpfs(mnt, "256k"):
        ballast = mnt / "ballast"
        ballast.write_bytes(b"\0" * 64 * 1024)
        ob = Outbox(mnt / "o.sqlite")
        stored = 0
        with pytest.raises(OutboxError) as ei:
            for i in range(100_000):
                ob.put(f"e{i}", "t", os.urandom(2000))
                stored += 1
        assert "full" in str(ei.value).lower()
        assert stored > 0
        ob.close()
        with pytest.raises(OutboxError):  # still full: start-up fails loudly too
            Outbox(mnt / "o.sqlite")
        ballast.unlink()  # the operator frees space
        with Outbox(mnt / "o.sqlite") as again:  # everything committed before the error is there
            assert [it.event_id for it in again.pending()] == [f"e{i}" for i in range(stored)]


def test_read_only_location_raises_at_open_and_at_runtime(tmp_path):
    if not IS_ROOT:  # file permissions are enough for a normal user
        d = tmp_path / "ro"
        d.mkdir()
        Outbox(d / "o.sqlite").close()
        (d / "o.sqlite").chmod(0o400)
        d.chmod(0o500)
        try:
            with pytest.raises(OutboxError) as ei:
                Outbox(d / "o.sqlite")
            assert str(d / "o.sqlite") in str(ei.value)
            with pytest.raises(OutboxError):
                Outbox(d / "new" / "o.sqlite")
        finally:
            d.chmod(0o700)
        return
    # root ignores permissions: use a real read-only file system instead
    mnt = tmp_path / "mnt"
    with tmpfs(mnt, "1m"):
        with Outbox(mnt / "o.sqlite") as ob:
            ob.put("before", "t", "kept")
        r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"remount read-only not permitted: {r.stderr.strip()}")
        try:
            with pytest.raises(OutboxError) as ei:  # at start-up, not at the first alert
                Outbox(mnt / "o.sqlite")
            assert str(mnt / "o.sqlite") in str(ei.value)
            with pytest.raises(OutboxError) as ei:
                Outbox(mnt / "sub" / "o.sqlite")
            assert "cannot create directory" in str(ei.value)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], capture_output=True)
        with Outbox(mnt / "o.sqlite") as again:
            assert [it.event_id for it in again.pending()] == ["before"]


def test_use_after_close_is_an_error(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite")
    ob.close()
    with pytest.raises(OutboxError, match="after close"):
        ob.put("x", "t", "y")


# ------------------------------------------------------------------- nothing that is not ours (issue 12 #3)


def _snapshot(d: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry of ``d``: mode and, for regular files, content."""
    out = {}
    for p in d.iterdir():
        st = os.lstat(p)
        out[p.name] = (st.st_mode, p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
    return out


def test_non_sqlite_file_is_refused_and_left_as_it_is(tmp_path):
    """An existing file that is not SQLite used to get mode 0600 before being rejected."""
    path = tmp_path / "notes.txt"
    path.write_text("my notes, not an outbox\n")
    path.chmod(0o644)
    before = _snapshot(tmp_path)
    with pytest.raises(OutboxError) as ei:
        Outbox(path)
    msg = str(ei.value)
    assert str(path) in msg and "not a database" in msg and "left untouched" in msg, msg
    assert ei.value.exit_code == 74
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert _snapshot(tmp_path) == before  # no lock, no -wal/-shm, no chmod


def _char_device_like_dev_null(d: Path) -> Path:
    """A character device with /dev/null's numbers (1, 3), made in the test's folder: the test must
    not put the host's real /dev/null at stake should the outbox ever regress."""
    dev = d / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError) as e:
        pytest.skip(f"mknod not permitted here ({e})")
    dev.chmod(0o666)
    return dev


@pytest.mark.parametrize("kind", ["chardev", "fifo", "directory"])
def test_special_files_are_refused_and_left_as_they_are(tmp_path, kind):
    """``outbox: /dev/null`` run as root used to chmod the device to 0600 (breaking the host)."""
    if kind == "chardev":
        path = _char_device_like_dev_null(tmp_path)
        words = "character device"
    elif kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path, 0o644)
        words = "FIFO"
    else:
        path = tmp_path / "adir"
        path.mkdir(mode=0o755)
        words = "is a directory"
    before = _snapshot(tmp_path)
    with pytest.raises(OutboxError) as ei:
        Outbox(path)
    assert str(path) in str(ei.value) and words in str(ei.value), ei.value
    assert _snapshot(tmp_path) == before  # mode unchanged, nothing created beside it


def test_dev_null_itself_is_refused_and_keeps_its_mode():
    """The exact reproduction, on the real /dev/null (safe now that the path is validated first)."""
    if not os.path.exists("/dev/null") or not stat.S_ISCHR(os.stat("/dev/null").st_mode):
        pytest.skip("no /dev/null character device")
    mode = os.stat("/dev/null").st_mode
    with pytest.raises(OutboxError, match="character device"):
        Outbox("/dev/null")
    assert os.stat("/dev/null").st_mode == mode
    assert not os.path.exists("/dev/null.lock")


def test_another_programs_sqlite_database_is_refused_unchanged(tmp_path):
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (name TEXT)")
    con.execute("INSERT INTO users VALUES ('ann')")
    con.commit()
    con.close()
    path.chmod(0o644)
    data = path.read_bytes()
    with pytest.raises(OutboxError) as ei:
        Outbox(path)
    assert str(path) in str(ei.value) and "users" in str(ei.value)
    assert path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_an_existing_outbox_keeps_the_mode_its_owner_gave_it(tmp_path):
    """Only a file the outbox creates is made 0600; an empty file prepared by an admin is used as is."""
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"")
    path.chmod(0o640)
    with Outbox(path) as ob:
        ob.put("a", "t", "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    with Outbox(path) as ob:
        assert ob.depth() == 1


# ------------------------------------------------------------------- one outbox, one owner (issue 12 #12)

HOLDER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from edge.outbox import Outbox
ob = Outbox(sys.argv[2])
print("READY", flush=True)
time.sleep(120)
"""


def test_second_opener_is_refused_naming_the_holder_pid(tmp_path):
    """A second process on the same outbox stops with one line naming the holder's pid (exit 78);
    the lock dies with the holder, even on SIGKILL."""
    from edge.statelock import StateLockedError

    path = tmp_path / "outbox.sqlite"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(ROOT), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "READY"
        with pytest.raises(StateLockedError) as ei:
            Outbox(path)
        msg = str(ei.value)
        assert f"pid {holder.pid}" in msg and str(path) in msg and f"{path}.lock" in msg, msg
        assert ei.value.exit_code == 78 and "\n" not in msg
    finally:
        holder.kill()
        holder.wait(10)
    with Outbox(path) as ob:  # SIGKILL released it
        ob.put("after", "t", "x")
        with pytest.raises(StateLockedError, match=f"pid {os.getpid()}"):
            Outbox(path)  # in one process too
    with Outbox(path) as again:  # close() released it
        assert again.depth() == 1
