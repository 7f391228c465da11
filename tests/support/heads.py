"""Broken Grad-CAM heads (``head.npz``) put into a real bundle: how the CLI and the daemon must refuse them."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def replace_head(bundle: Path, data: bytes) -> Path:
    """Put ``data`` in the bundle's head.npz and re-hash it in the manifest (a bad file with a matching
    sha256: what a broken export or a hand edit leaves, and what the sha check cannot catch)."""
    import json

    from edge.bundle import sha256_file

    m = json.loads((bundle / "manifest.json").read_text())
    head = bundle / m["files"]["head"]["path"]
    head.write_bytes(data)
    m["files"]["head"]["sha256"] = sha256_file(head)
    (bundle / "manifest.json").write_text(json.dumps(m))
    return head


def _npz(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def garbage_heads(good: bytes) -> dict[str, bytes]:
    """Bad head.npz files, from random bytes to a well-formed file with unusable weights."""
    import io
    import json

    with np.load(io.BytesIO(good), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    spec = json.loads(str(arrays["spec"]))
    dense = next(st for st in spec["steps"] if st["kind"] == "dense")
    wrong = dict(arrays, **{dense["kernel"]: np.zeros((3, 3), np.float32)})
    nan = dict(arrays, **{dense["kernel"]: np.full_like(arrays[dense["kernel"]], np.nan)})
    no_steps = dict(arrays, spec=np.array(json.dumps({k: v for k, v in spec.items() if k != "steps"})))
    return {
        "random": np.random.default_rng(0).integers(0, 256, 700, dtype=np.uint8).tobytes(),
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "spec-not-object": _npz(spec=np.array("[1, 2]")),
        "no-steps": _npz(**no_steps),
        "wrong-kernel-shape": _npz(**wrong),
        "nan-kernel": _npz(**nan),
    }
