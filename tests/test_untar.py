"""Unpacking received bundles (issue 16 #3): ``edge.untar.extract`` refuses escapes and writes
nothing outside the state directory; a hypothesis fuzz throws hostile archives at it."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.untar import UnpackError, extract


def make_tar(members: list[tuple[str, str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """``(name, kind, data)`` with kind file|dir|symlink|hardlink|fifo → tar bytes (no checks)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, kind, data in members:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
                continue
            ti.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            if kind in ("symlink", "hardlink"):
                ti.linkname = data.decode() or "/etc/passwd"
            tf.addfile(ti)
    return buf.getvalue()


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (links not followed) → file bytes, or None for folders."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = None if os.path.islink(p) else Path(p).read_bytes()
    return out


@pytest.fixture
def state(tmp_path):
    """A state directory with a sentinel beside it: nothing may touch ``tmp_path`` outside ``state``."""
    (tmp_path / "state").mkdir()
    (tmp_path / "outside.txt").write_text("sentinel")
    return tmp_path / "state"


def test_a_plain_bundle_tar_unpacks(state):
    data = make_tar([("manifest.json", "file", b"{}"), ("sub", "dir", b""), ("sub/a.bin", "file", b"x" * 1000)])
    out = extract(io.BytesIO(data), state / "incoming", state)
    assert out == state / "incoming"
    assert tree(out) == {"manifest.json": b"{}", "sub": None, "sub/a.bin": b"x" * 1000}
    assert sorted(os.listdir(state)) == ["incoming"]  # no temporary folder left


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ([("../evil", "file", b"x")], "'..'"),
        ([("a/../../evil", "file", b"x")], "'..'"),
        ([("/etc/evil", "file", b"x")], "absolute"),
        ([("link", "symlink", b"/etc/passwd")], "link"),
        ([("link", "symlink", b"../outside.txt")], "link"),
        ([("hard", "hardlink", b"manifest.json")], "link"),
        ([("fifo", "fifo", b"")], "special file"),
        ([("a", "file", b"1"), ("a", "file", b"2")], "listed twice"),
        ([("a", "file", b"1"), ("a/b", "file", b"2")], "parent is a file"),
        ([("big", "file", b"x" * 5000)], "size cap"),
        ([("a/b/c/d/e/f", "file", b"x")], "deeper"),
        ([("bad\nname", "file", b"x")], "plain relative name"),
    ],
)
def test_hostile_members_refuse_the_whole_archive(state, members, why):
    data = make_tar([("manifest.json", "file", b"{}"), *members])
    with pytest.raises(UnpackError, match=why):
        extract(io.BytesIO(data), state / "incoming", state, max_bytes=4096)
    assert os.listdir(state) == []  # nothing kept, no temporary folder
    assert (state.parent / "outside.txt").read_text() == "sentinel"


def test_destination_must_be_a_new_folder_inside_the_state_directory(state):
    data = make_tar([("a", "file", b"x")])
    for bad in (state.parent / "elsewhere", state, state / ".." / "escape"):
        with pytest.raises(UnpackError, match="inside the state directory"):
            extract(io.BytesIO(data), bad, state)
    (state / "taken").mkdir()
    with pytest.raises(UnpackError, match="exists"):
        extract(io.BytesIO(data), state / "taken", state)
    # a symlink inside the state directory that points out does not lead the extraction out
    os.symlink(state.parent, state / "out")
    with pytest.raises(UnpackError, match="inside the state directory"):
        extract(io.BytesIO(data), state / "out" / "x", state)
    assert not (state.parent / "x").exists() and not (state.parent / "elsewhere").exists()


def test_garbage_is_one_error(state):
    with pytest.raises(UnpackError, match="not a readable tar archive"):
        extract(io.BytesIO(b"this is not a tar archive" * 40), state / "incoming", state)
    data = make_tar([("a", "file", b"x" * 10000)])
    with pytest.raises(UnpackError, match="damaged|not a readable"):
        extract(io.BytesIO(data[:1200]), state / "incoming", state)  # cut inside the member
    assert os.listdir(state) == []


NAME_PARTS = st.sampled_from(["a", "b", "manifest.json", "..", ".", "", "/", "x y", "é", "a\\b", "\x00", "..."])
NAMES = st.lists(NAME_PARTS, min_size=1, max_size=6).map(lambda ps: "/".join(ps))
MEMBERS = st.lists(
    st.tuples(
        NAMES,
        st.sampled_from(["file", "file", "file", "dir", "symlink", "hardlink", "fifo"]),
        st.binary(max_size=300),
    ),
    min_size=1,
    max_size=8,
)
FUZZ_CASES = {"n": 0, "refused": 0}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=MEMBERS, fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
def test_fuzz_nothing_escapes_the_state_directory(tmp_path_factory, members, fmt):
    base = tmp_path_factory.mktemp("fuzz")
    state = base / "state"
    state.mkdir()
    (base / "outside.txt").write_text("sentinel")
    try:
        data = make_tar(members, fmt)
    except (ValueError, UnicodeEncodeError, tarfile.TarError):
        return  # tarfile cannot even write this name: not an archive anyone can send
    FUZZ_CASES["n"] += 1
    try:
        out = extract(io.BytesIO(data), state / "incoming", state, max_bytes=1000)
    except UnpackError:
        FUZZ_CASES["refused"] += 1
        assert os.listdir(state) == []  # refused: nothing kept
    else:
        assert os.listdir(state) == ["incoming"] and out == state / "incoming"
        for dirpath, dirnames, filenames in os.walk(out):
            for n in dirnames + filenames:
                p = Path(dirpath) / n
                assert not p.is_symlink()
                assert os.path.realpath(p).startswith(str(out) + os.sep)
        assert sum(len(v) for v in tree(out).values() if v) <= 1000
    assert sorted(os.listdir(base)) == ["outside.txt", "state"]
    assert (base / "outside.txt").read_text() == "sentinel"


def test_fuzz_ran_both_outcomes():
    """The fuzz above is only worth something if it saw archives accepted and refused."""
    if FUZZ_CASES["n"] == 0:
        pytest.skip("run with the fuzz test")
    assert FUZZ_CASES["refused"] > 0 and FUZZ_CASES["n"] - FUZZ_CASES["refused"] > 0, FUZZ_CASES
