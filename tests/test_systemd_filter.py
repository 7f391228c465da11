"""The heatmap worker's nice +10 really happens under the shipped unit's system-call filter.

``SystemCallFilter=~@privileged @resources`` denies ``setpriority`` (it is in ``@resources``), and the
worker used to swallow the EPERM: heatmaps then competed with capture and classification at full
priority. The unit re-allows ``setpriority`` (an unprivileged process can only *lower* its priority).

Three proofs, strongest first, each skipped only when this machine cannot give it:

* ``systemd-run`` with the unit's filter lines: a real transient service starts a ``HeatmapWorker``
  and reports its thread's nice (needs systemd as PID 1; skipped in containers without it);
* the same filter rebuilt with libseccomp exactly as systemd builds it (allow-list of the unit's
  ``SystemCallFilter=`` lines in order, groups expanded by ``systemd-analyze syscall-filter``,
  ``@default`` always allowed, everything else ``SystemCallErrorNumber=EPERM``), loaded into a child
  process that starts a ``HeatmapWorker``: runs wherever libseccomp and systemd-analyze exist;
* ``systemd-analyze security --offline`` (systemd's own parser of the unit) reports that
  ``setpriority`` is allowed.

Each fails on the unit without ``SystemCallFilter=setpriority``; the rebuilt filter is also checked to
refuse ``setpriority`` without that line, so the test cannot pass by building a filter that allows all.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "seam-qc.service"
ANALYZE = shutil.which("systemd-analyze")
SYSTEMD_RUN = shutil.which("systemd-run")
LIBSECCOMP = ctypes.util.find_library("seccomp")
BOOTED_WITH_SYSTEMD = Path("/run/systemd/system").is_dir()

# Runs in the child: (optionally) load the filter given as JSON in argv[1], start a HeatmapWorker,
# print {"base": main thread's nice, "worker": the worker thread's nice, "warned": log line seen}.
CHILD = r"""
import ctypes, ctypes.util, errno, json, logging, os, sys, threading, time
sys.path.insert(0, os.environ["SEAMQC_ROOT"])
spec = json.loads(sys.argv[1]) if len(sys.argv) > 1 else None
if spec is not None:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    SCMP_ACT_ALLOW, SCMP_ACT_ERRNO = 0x7FFF0000, 0x00050000
    ctx = lib.seccomp_init(SCMP_ACT_ERRNO | spec["errno"])
    for name in spec["allow"]:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr >= 0:  # names of other architectures do not resolve here
            lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0)
    if lib.seccomp_load(ctx) != 0:
        sys.exit("seccomp_load failed")
import numpy as np
from edge.heatmaps import HeatmapWorker
records = []
class H(logging.Handler):
    def emit(self, r): records.append(r.getMessage())
logging.getLogger("edge.heatmaps").addHandler(H())
stop = threading.Event()
w = HeatmapWorker(os.environ["SEAMQC_HM"], stop, explainer_factory=lambda: None,
                  overlay_labels=lambda *a: None, overlay_jet=lambda *a: None)
w.start()
deadline = time.monotonic() + 10
while w.niced is None and time.monotonic() < deadline:
    time.sleep(0.01)
out = {"base": os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
       "worker": os.getpriority(os.PRIO_PROCESS, w.native_id),
       "niced": w.niced, "warned": any("priority" in m for m in records)}
stop.set(); w.close(0.5); w.join(5)
print(json.dumps(out))
"""


def unit_filter_lines(text: str) -> list[str]:
    """The unit's ``SystemCallFilter=`` values, in order."""
    return [ln.split("=", 1)[1].strip() for ln in text.splitlines() if ln.strip().startswith("SystemCallFilter=")]


def unit_errno(text: str) -> int:
    import errno

    for ln in text.splitlines():
        if ln.strip().startswith("SystemCallErrorNumber="):
            return int(getattr(errno, ln.split("=", 1)[1].strip()))
    return errno.EPERM


def expand(item: str, seen: set[str] | None = None) -> set[str]:
    """A system call or ``@group`` → system call names (groups expanded recursively by systemd)."""
    if not item.startswith("@"):
        return {item}
    seen = set() if seen is None else seen
    if item in seen:
        return set()
    seen.add(item)
    assert ANALYZE is not None
    r = subprocess.run(
        [ANALYZE, "syscall-filter", "--no-pager", item], capture_output=True, text=True, timeout=30, check=True
    )
    out: set[str] = set()
    for ln in r.stdout.splitlines()[1:]:
        name = ln.strip()
        if name and not name.startswith("#"):
            out |= expand(name, seen)
    return out


def allow_list(lines: list[str]) -> set[str]:
    """systemd's reading of ``SystemCallFilter=`` lines when the first one is an allow-list: later
    lines without ``~`` add, with ``~`` remove; ``@default`` is always allowed."""
    assert lines and not lines[0].startswith("~"), "the unit's filter is expected to be an allow-list"
    allowed = expand("@default")
    for value in lines:
        invert = value.startswith("~")
        names: set[str] = set()
        for item in value.lstrip("~").split():
            names |= expand(item)
        allowed = allowed - names if invert else allowed | names
    return allowed


def run_child(tmp_path: Path, spec: dict | None) -> dict:
    env = dict(os.environ, SEAMQC_ROOT=str(ROOT), SEAMQC_HM=str(tmp_path / "hm"))
    args = [sys.executable, "-c", CHILD] + ([json.dumps(spec)] if spec is not None else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)")


@needs_analyze
@pytest.mark.skipif(LIBSECCOMP is None, reason="libseccomp not found (apt-get install libseccomp2)")
def test_worker_is_niced_under_the_units_filter_rebuilt_with_libseccomp(tmp_path):
    from edge.heatmaps import NICE_INCREMENT

    text = UNIT.read_text()
    lines = unit_filter_lines(text)
    spec = {"allow": sorted(allow_list(lines)), "errno": unit_errno(text)}
    got = run_child(tmp_path, spec)
    assert got["niced"] is True and not got["warned"], got
    assert got["worker"] == min(19, got["base"] + NICE_INCREMENT), got

    # the same filter without the unit's setpriority line refuses it: the worker stays at the
    # pipeline's priority and says so once (before the fix: silently)
    without = [v for v in lines if v != "setpriority"]
    assert without != lines, "the unit must re-allow setpriority after denying @resources"
    got = run_child(tmp_path, {"allow": sorted(allow_list(without)), "errno": unit_errno(text)})
    assert got["niced"] is False and got["warned"], got
    assert got["worker"] == got["base"], got


@needs_analyze
def test_systemd_analyze_sees_setpriority_allowed(tmp_path):
    from tests.support.systemd import unit_for_this_machine

    assert "setpriority" in expand("@resources")  # what the deny line takes away ...
    assert ANALYZE is not None
    r = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    if "--offline" in r.stderr and r.returncode != 0:
        pytest.skip("this systemd-analyze has no --offline")
    line = [ln for ln in r.stdout.splitlines() if "SystemCallFilter=~@resources" in ln]
    assert line and "setpriority is allowed" in line[0], r.stdout  # ... and the unit gives back


@pytest.mark.slow
@pytest.mark.skipif(
    SYSTEMD_RUN is None or not BOOTED_WITH_SYSTEMD or os.geteuid() != 0,
    reason="needs systemd as PID 1 and root for systemd-run (not in this container)",
)
def test_worker_is_niced_in_a_transient_unit_with_the_units_filter(tmp_path):
    from edge.heatmaps import NICE_INCREMENT

    text = UNIT.read_text()
    props = [f"SystemCallFilter={v}" for v in unit_filter_lines(text)]
    props += [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip().startswith(("SystemCallErrorNumber=", "SystemCallArchitectures=", "NoNewPrivileges="))
    ]
    tmp_path.chmod(0o755)
    assert SYSTEMD_RUN is not None
    cmd = [SYSTEMD_RUN, "--wait", "--pipe", "--quiet", "--collect"]
    for p in props:
        cmd += ["-p", p]
    cmd += [f"--setenv=SEAMQC_ROOT={ROOT}", f"--setenv=SEAMQC_HM={tmp_path / 'hm'}", sys.executable, "-c", CHILD]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["worker"] == min(19, got["base"] + NICE_INCREMENT) and not got["warned"], got
