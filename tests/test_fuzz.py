"""Fuzz the daemon's inputs: mutated ``config/demo.yaml`` and mutated shipped ``manifest.json``.

Why: the hand-written cases of issue 12 found 17 defects; this finds the next ones. Every case
runs ``--check-config`` and a 5-frame run (``--max-frames 5``) and asserts:

- the exit code is 0, 74 or 78 (never 1), with no traceback and exactly one ``error:`` line on failure;
- each call ends within 10 s;
- ``--check-config`` and the run agree (same exit code, same error line), except the documented
  one: a broker host that does not resolve is an error for ``--check-config`` and a warning for a
  run (a DNS outage must not stop quality control);
- no file outside the configured state paths (``heatmaps.dir``, ``outbox`` and its -wal/-shm/.lock)
  changes: not the bundle, not the video, not the config.

Most cases run in-process (``edge.__main__.main(argv)`` in a worker thread, stderr captured), a
smaller sample as real processes. Mutations come from a seeded generator driven by hypothesis
(derandomized: the same cases in every CI run; a failure prints its seed). The case counts are
printed in the terminal summary (tests/conftest.py). ``SEAMQC_FUZZ_SCALE=0.1`` runs a tenth of them.

The demo config is run with ``mqtt.enabled: false``, as ``convert demo`` does when no broker answers;
mutations turn it back on. ``camera.source`` is never mutated to a live source (usb, rtsp): a
missing camera is retried forever by design, so such a run would not end by itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "edge" / "models" / "default"
DEMO = ROOT / "config" / "demo.yaml"
SCALE = float(os.environ.get("SEAMQC_FUZZ_SCALE", "1"))  # e.g. 0.1 for a quick local look
N_CONFIG = max(1, int(700 * SCALE))
N_MANIFEST = max(1, int(340 * SCALE))
N_SUBPROCESS = max(1, int(12 * SCALE))
CALL_LIMIT_S = 10.0
OK_CODES = (0, 74, 78)
FUZZ_COUNTS: dict[str, Any] = {"config": 0, "manifest": 0, "subprocess": 0, "seconds": 0.0, "exits": {}}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHIPPED / "manifest.json").exists(), reason="needs the shipped bundle"),
]

# ----------------------------------------------------------------------------- the world

INF, NAN = math.inf, math.nan
POOL: list[Any] = [
    0,
    -1,
    1,
    0.5,
    1e-300,
    1e308,
    -1e308,
    INF,
    -INF,
    NAN,
    10**30,
    -(10**30),
    2**63,
    True,
    False,
    None,
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x07",
    "tab\there",
    "new\nline",
    "\x1b[31mred",
    "\x7f",
    "é",
    "日本語",
    "x" * 300,
    "12",
    "1e3",
    "null",
    "true",
    "off",
    "seam.mp4",
    "state",
    [],
    {},
    [1, 2, 3, 4],
    [0, 0, 0, 0],
    [1, "a"],
    [[1]],
    {"a": 1},
    {"x": [1, 2]},
]
CHARS = "abcXYZ09_-.:/ é日\x00\x01\x07\t\n\r\x1b\x7f\u200b\ufeff'\"#&*!%@{}[],"


def _text(rng: random.Random) -> str:
    s = "".join(rng.choice(CHARS) for _ in range(rng.randrange(0, 9)))
    return s.lstrip("/~").replace("..", ".")  # paths stay inside the case folder


def _value(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.6:
        return rng.choice(POOL)
    if r < 0.8:
        return _text(rng)
    return rng.choice([rng.randint(-5, 5000), rng.uniform(-2, 2), 10 ** rng.randint(3, 40), rng.random()])


def _leaves(d: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(d, dict):
        out = [path] if path else []
        for k, v in d.items():
            out += _leaves(v, path + (k,))
        return out
    if isinstance(d, list):
        return [path] + [q for i, v in enumerate(d) for q in _leaves(v, path + (i,))]
    return [path]


def _set(d: Any, path: tuple, value: Any, delete: bool = False) -> None:
    for k in path[:-1]:
        d = d[k]
    if delete:
        del d[path[-1]]
    else:
        d[path[-1]] = value


# ----------------------------------------------------------------------------- config mutations


def _plausible(rng: random.Random, v: Any) -> Any:
    """A value of the same kind, usually valid: keeps a share of the cases running end to end."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return rng.choice([1, 2, 3, 5, 8, 30, 100, v + 1, max(1, v - 1)])
    if isinstance(v, float):
        return rng.choice([0.1, 0.5, 1.0, 2.0, v * 2, v / 2])
    if isinstance(v, str):
        return rng.choice([v, v.upper(), "st-2", "4mm", "any", "debug", "x"])
    if isinstance(v, list):
        return rng.choice([[0, 0, 256, 256], [100, 100, 128, 128], [0, 0, 640, 480], v[:3]])
    return v


def mutate_config(base_text: str, rng: random.Random) -> bytes:
    """One mutated config file: mostly 1 or 2 value mutations (plausible or extreme), else a text mutation."""
    if rng.random() < 0.25:
        return _text_mutation(base_text, rng, yaml_mode=True)
    data = yaml.safe_load(base_text)
    leaves = _leaves(data)
    scalars = [p for p in leaves if not isinstance(_get(data, p), (dict, list))]
    for _ in range(1 if rng.random() < 0.7 else 2):
        path = rng.choice(scalars if rng.random() < 0.85 else leaves)
        op = rng.random()
        try:
            old = _get(data, path)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation replaced the parent
        if path == ("camera", "source"):
            _set(data, path, rng.choice(["file", "webcam", "", 1, None, ["file"]]))
        elif op < 0.4:
            _set(data, path, _plausible(rng, old))
        elif op < 0.85:
            _set(data, path, _value(rng))
        elif op < 0.92:
            _set(data, path, None, delete=True)
        else:
            parent = _get(data, path[:-1])
            if isinstance(parent, dict):
                parent[rng.choice(["extra", "Camera", "fps ", 7, "enabled"])] = _value(rng)
    cam = data.get("camera", {}) if isinstance(data, dict) else None
    if isinstance(data, dict) and (isinstance(cam, dict) or "camera" not in data) and "source" not in (cam or {}):
        # a deleted camera section or source falls back to the live default (usb 0), which is
        # retried for ever by design: keep the file source so the 5-frame run can end
        data["camera"] = {**(cam or {}), "source": "file"}
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=4096)
    if rng.random() < 0.1:
        return _text_mutation(text, rng, yaml_mode=True)
    return text.encode("utf-8")


def _get(d: Any, path: tuple) -> Any:
    for k in path:
        d = d[k]
    return d


def _text_mutation(text: str, rng: random.Random, yaml_mode: bool) -> bytes:
    lines = text.splitlines(keepends=True)
    i = rng.randrange(len(lines)) if lines else 0
    op = rng.choice(
        [
            "latin1",
            "utf16",
            "bom",
            "truncate",
            "bytes",
            "dup_line",
            "dup_section",
            "anchor",
            "control",
            "tab",
            "nest",
            "empty",
        ]
        if yaml_mode
        else ["latin1", "utf16", "bom", "truncate", "bytes", "dup_key", "control", "nest", "empty"]
    )
    raw = text.encode("utf-8")
    if op == "latin1":
        lines.insert(i, "# café crème\n" if yaml_mode else "")
        out = "".join(lines)
        if not yaml_mode:
            out = out.replace('"seam-default"', '"seam-défaut"')
        return out.encode(rng.choice(["latin-1", "cp1252"]), errors="replace")
    if op == "utf16":
        return text.encode(rng.choice(["utf-16", "utf-16-le", "utf-16-be"]))
    if op == "bom":
        return b"\xef\xbb\xbf" + raw
    if op == "truncate":
        return raw[: rng.randrange(len(raw) + 1)]
    if op == "bytes":
        k = rng.randrange(len(raw) + 1)
        return raw[:k] + rng.randbytes(rng.randint(1, 6)) + raw[k:]
    if op == "dup_line" and lines:
        lines.insert(rng.choice([i + 1, len(lines)]), lines[i] if lines[i].endswith("\n") else lines[i] + "\n")
    elif op == "dup_section":
        tops = [j for j, ln in enumerate(lines) if ln[:1].isalpha()]
        j = rng.choice(tops)
        end = next((k for k in tops if k > j), len(lines))
        block = lines[j:end]
        if len(block) > 1 and rng.random() < 0.7:
            b = rng.randrange(1, len(block))
            block[b] = block[b].split(":")[0] + ": " + json.dumps(_value(rng), default=str) + "\n"
        lines += ["\n"] + block
    elif op == "anchor" and lines:
        ln = lines[i]
        if ": " in ln:
            lines[i] = ln.replace(": ", ": &a ", 1)
        lines.append(rng.choice(["extra: *a\n", "station: *a\n", "x: &b [*a, *a]\n"]))
    elif op == "control":
        k = rng.randrange(len(text) + 1)
        return (text[:k] + chr(rng.choice([0, 1, 7, 8, 11, 12, 27, 127, 0x85, 0x2028])) + text[k:]).encode("utf-8")
    elif op == "tab" and lines:
        lines[i] = "\t" + lines[i].lstrip(" ")
    elif op == "nest":
        depth = rng.choice([5, 20, 40, 200, 5000])
        if yaml_mode:
            lines.append(f"extra: {'[' * depth}{']' * depth}\n")
        else:
            return text.replace('"metrics": {', '"metrics": ' + "[" * depth + "]" * depth + ', "m2": {', 1).encode()
    elif op == "dup_key":
        return (
            text.replace("{", '{"task": "multiclass", ', 1).encode()
            if rng.random() < 0.5
            else text.replace('"labels"', '"labels": ["a"], "labels"', 1).encode()
        )
    elif op == "empty":
        return rng.choice([b"", b"\n", b"null\n", b"[]\n", b"0\n", b"{}\n"])
    return "".join(lines).encode("utf-8")


# ----------------------------------------------------------------------------- manifest mutations

MANIFEST_KEYS: list[tuple] = [
    ("labels",),
    ("labels", 0),
    ("labels", 3),
    ("thresholds",),
    ("thresholds", "good"),
    ("thresholds", "error"),
    ("thresholds", "break"),
    ("thresholds", "length"),
    ("input",),
    ("input", "height"),
    ("input", "width"),
    ("input", "channel_order"),
    ("input", "preprocessing"),
    ("input", "channels"),
    ("files",),
    ("files", "classifier_int8"),
    ("files", "classifier_int8", "path"),
    ("files", "classifier_int8", "sha256"),
    ("files", "head", "path"),
    ("files", "explainer", "path"),
    ("files", "head"),
    ("classifier",),
    ("gradcam",),
    ("gradcam", "explainer"),
    ("gradcam", "head"),
    ("gradcam", "layer"),
    ("gradcam", "feature_shape"),
    ("gradcam", "peak_ref"),
    ("gradcam", "peak_ref", 0),
    ("format_version",),
    ("task",),
    ("name",),
    ("metrics",),
]
MANIFEST_VALUES: list[Any] = [
    "head",
    "explainer",
    "classifier_fp32",
    "classifier_int8",
    "keras",
    "head.npz",
    "explainer.tflite",
    "model.keras",
    "classifier_fp32.tflite",
    "manifest.json",
    "good",
    ["good", "good", "break", "length"],
    ["good", "error", "break"],
    ["good", "error", "break", "length", "extra"],
    128,
    64,
    0.0,
    1.0,
    1,
    2,
    "multiclass",
    "RGB",
    "BGR",
    {"good": 0.5},
    [32, 32, 32],
    [None, None, None, None],
]


def mutate_manifest(base: dict, rng: random.Random) -> bytes:
    """One mutated manifest.json: 1 to 3 key mutations (JSON may carry NaN/Infinity), or a text mutation."""
    m = json.loads(json.dumps(base))
    if rng.random() < 0.8:
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(MANIFEST_KEYS)
            try:
                if rng.random() < 0.12:
                    _set(m, path, None, delete=True)
                else:
                    _set(m, path, rng.choice(MANIFEST_VALUES) if rng.random() < 0.4 else _value(rng))
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation removed the parent
        text = json.dumps(m, ensure_ascii=rng.random() < 0.5)
        if rng.random() < 0.8:
            return text.encode("utf-8")
    else:
        text = json.dumps(m, indent=2)
    return _text_mutation(text, rng, yaml_mode=False)


# ----------------------------------------------------------------------------- running one case


class World(dict):
    """The shared assets (a dict with a short repr: hypothesis prints it with a failing seed)."""

    def __repr__(self) -> str:
        return f"World({self['root']})"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """Assets shared read-only by every case: a copy of the shipped bundle, a 10-frame video, the base config."""
    import cv2
    import numpy as np

    root = tmp_path_factory.mktemp("fuzz")
    assets = root / "assets"
    shutil.copytree(SHIPPED, assets / "bundle")
    w = cv2.VideoWriter(str(assets / "seam.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), 30, (640, 480))
    rng = np.random.default_rng(0)
    for _ in range(10):
        w.write(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    w.release()
    text = DEMO.read_text()
    for old, new in (
        ("device: demo-out/seam.mp4", "device: ../assets/seam.mp4"),
        ("bundle: edge/models/default", "bundle: ../assets/bundle"),
        ("dir: demo-out/heatmaps", "dir: state/heatmaps"),
        ("outbox: demo-out/outbox.sqlite", "outbox: state/outbox.sqlite"),
        ("mqtt:\n", "mqtt:\n  enabled: false\n"),
    ):
        assert old in text, f"config/demo.yaml changed: {old!r} not found; update tests/test_fuzz.py"
        text = text.replace(old, new, 1)
    return World(
        root=root,
        assets=assets,
        config=text,
        n=0,
        manifest=json.loads((SHIPPED / "manifest.json").read_text()),
        shipped=(SHIPPED / "manifest.json").read_bytes(),
    )


def _snapshot(*dirs: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for d in dirs:
        for base, subdirs, files in os.walk(d):
            for name in subdirs + files:
                p = Path(base) / name
                st_ = p.lstat()
                out[str(p)] = (st_.st_mode, st_.st_size, st_.st_mtime_ns, os.readlink(p) if p.is_symlink() else None)
    return out


def _state_paths(cfg_path: Path) -> list[Path]:
    """What the config names as the daemon's state (empty when it does not load)."""
    from edge.config import load_config
    from edge.errors import SeamQCError

    try:
        cfg = load_config(cfg_path)
    except SeamQCError:
        return []
    ob = Path(cfg.outbox)
    return [Path(cfg.heatmaps.dir)] + [ob.with_name(ob.name + s) for s in ("", "-wal", "-shm", "-journal", ".lock")]


def _allowed(path: str, state: list[Path]) -> bool:
    p = Path(path)
    return any(p == s or s in p.parents or p in s.parents for s in state)


def call_in_process(argv: list[str]) -> tuple[int | None, str, float]:
    """``edge.__main__.main(argv)`` in a worker thread (signal handlers stay the test's): code, stderr, seconds."""
    from edge.__main__ import main

    buf, res = io.StringIO(), {}
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def target() -> None:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(io.StringIO()):
            res["code"] = main(argv)

    t0 = time.monotonic()
    th = threading.Thread(target=target, name="fuzz-main", daemon=True)
    try:
        th.start()
        th.join(CALL_LIMIT_S + 5)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    return res.get("code"), buf.getvalue(), time.monotonic() - t0


def call_subprocess(argv: list[str], cwd: Path) -> tuple[int | None, str, float]:
    t0 = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        r = subprocess.run(
            [sys.executable, "-m", "edge", *argv],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=CALL_LIMIT_S + 20,
            env=env,
            errors="replace",
        )
        return r.returncode, r.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as e:
        return None, str(e.stderr or ""), time.monotonic() - t0


def _errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error: ")]


def run_case(world: dict, config: bytes, manifest: bytes | None, call: Callable = call_in_process) -> None:
    """Write the case, run --check-config and a 5-frame run, assert the contract (see the module docstring)."""
    world["n"] += 1
    case = world["root"] / f"case{world['n']}"
    case.mkdir()
    cfg = case / "c.yaml"
    cfg.write_bytes(config)
    if manifest is not None:
        b = case / "bundle"
        b.mkdir()
        for f in (world["assets"] / "bundle").iterdir():
            if f.name != "manifest.json":
                (b / f.name).symlink_to(f)
        (b / "manifest.json").write_bytes(manifest)
    before = _snapshot(world["assets"], case)
    old_cwd = os.getcwd()
    os.chdir(case)
    try:
        results = []
        for argv in (["--config", str(cfg), "--check-config"], ["--config", str(cfg), "--max-frames", "5"]):
            code, err, secs = call(argv) if call is call_in_process else call(argv, case)
            what = f"{' '.join(argv[2:])} on {cfg} ({config[:2000]!r})"
            assert code in OK_CODES, f"{what}: exit {code}\n{err[-3000:]}"
            assert "Traceback" not in err and "unexpected error" not in err, f"{what}:\n{err[-3000:]}"
            assert secs <= CALL_LIMIT_S, f"{what}: {secs:.1f} s"
            assert code == 0 or len(_errors(err)) == 1, f"{what}: not one error line:\n{err[-3000:]}"
            results.append((code, _errors(err)))
        (cc, cerr), (rc, rerr) = results
        exits = FUZZ_COUNTS["exits"]
        exits[cc, rc] = exits.get((cc, rc), 0) + 1
        dns = cc == 78 and rc == 0 and "does not resolve" in cerr[0]
        assert (cc, cerr) == (rc, rerr) or dns, (
            f"--check-config and the run disagree on {cfg}: {results}\n{config[:2000]!r}"
        )
        state = _state_paths(cfg)
        after = _snapshot(world["assets"], case)
        changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
        outside = [p for p in changed if not _allowed(p, state)]
        assert not outside, f"files outside the state paths changed: {outside} (state: {state})"
        if cc != 0:
            assert not any(p in after and p not in before for p in map(str, state[1:2])), (
                "a refused config made an outbox"
            )
    finally:
        os.chdir(old_cwd)
    shutil.rmtree(case, ignore_errors=True)


_SETTINGS: dict[str, Any] = dict(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@settings(max_examples=N_CONFIG, **_SETTINGS)
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzz_config(world, seed):
    t0 = time.monotonic()
    run_case(world, mutate_config(world["config"], random.Random(seed)), None)
    FUZZ_COUNTS["config"] += 1
    FUZZ_COUNTS["seconds"] += time.monotonic() - t0


@settings(max_examples=N_MANIFEST, **_SETTINGS)
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzz_manifest(world, seed):
    t0 = time.monotonic()
    cfg = world["config"].replace("bundle: ../assets/bundle", "bundle: bundle").encode()
    run_case(world, cfg, mutate_manifest(world["manifest"], random.Random(seed)))
    FUZZ_COUNTS["manifest"] += 1
    FUZZ_COUNTS["seconds"] += time.monotonic() - t0


@pytest.mark.parametrize("seed", range(N_SUBPROCESS))
def test_fuzz_real_processes(world, seed):
    """A sample as real processes: what the in-process cases assume (one line, exit codes) holds for the CLI."""
    t0 = time.monotonic()
    rng = random.Random(1000 + seed)
    if seed % 2:
        cfg = world["config"].replace("bundle: ../assets/bundle", "bundle: bundle").encode()
        run_case(world, cfg, mutate_manifest(world["manifest"], rng), call=call_subprocess)
    else:
        run_case(world, mutate_config(world["config"], rng), None, call=call_subprocess)
    FUZZ_COUNTS["subprocess"] += 1
    FUZZ_COUNTS["seconds"] += time.monotonic() - t0


def test_fuzz_base_config_runs(world):
    """The unmutated base passes both, so the mutations start from a config that runs (not from a refusal)."""
    run_case(world, world["config"].encode(), None)
    assert FUZZ_COUNTS["exits"].get((0, 0), 0) >= 1


def test_fuzz_left_the_shipped_bundle_alone(world):
    assert (SHIPPED / "manifest.json").read_bytes() == world["shipped"]
