"""Signed rollout helpers (owned by the rollout area): keys, small signed bundles, a station without a daemon.

``InProcessStation`` is the station side of ``edge.rollout`` (inbox, worker, store) wired to plain
recording hooks instead of the daemon: ``check`` loads the bundle with every sha256 and the
manifest's signature verified (``edge.bundle.load_bundle``), ``offer`` records the model, ``state``
records every ``model/state``. Messages go through the inbox (paho's path) and are handled at once.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from edge.bundle import load_bundle, write_manifest
from edge.rollout import Hooks, RolloutInbox, RolloutStore, RolloutWorker
from edge.signing import generate, load_private_key, load_public_key, sign_bundle


def keypair(out: Path, name: str = "deploy") -> tuple[Path, Path]:
    return generate(out, name)


def small_bundle(root: Path, version: str, key: Path | None, size: int = 6000, seed: int = 0) -> Path:
    """A signed synthetic bundle (manifest + one incompressible file of ``size`` bytes)."""
    root.mkdir(parents=True)
    (root / "classifier_int8.tflite").write_bytes(os.urandom(size) if seed == 0 else bytes([seed]) * size)
    manifest = {
        "name": "small",
        "version": version,
        "task": "multilabel",
        "labels": ["good", "error"],
        "input": {"height": 8, "width": 8},
        "classifier": "classifier_int8",
    }
    write_manifest(root, manifest, {"classifier_int8": "classifier_int8.tflite"})
    if key is not None:
        sign_bundle(root, key)
    return root


class InProcessStation:
    """A station's rollout side on ``link`` (a symlink to the running bundle), with recording hooks."""

    def __init__(self, link: Path, pubs: list[Path], max_bytes: int = 1 << 20, boot: str = "boot1") -> None:
        self.link = link
        self.keys = [load_public_key(p) for p in pubs]
        self.states: list[tuple[str, dict[str, Any]]] = []
        self.offers: list[tuple[Any, str, dict[str, Any]]] = []
        self.running = load_bundle(link, verify=True, trusted_keys=self.keys).manifest_sha256
        hooks = Hooks(
            check=self._check,
            offer=self._offer,
            state=self._state,
            running_manifest=lambda: self.running,
        )
        self.inbox = RolloutInbox("seamqc/st/model/set", queue_size=256)
        self.store = RolloutStore(link)
        self.worker = RolloutWorker(
            self.inbox, self.store, self.keys, hooks, threading.Event(), max_bytes=max_bytes, boot=boot
        )

    def _check(self, path: Path) -> Any:
        b = load_bundle(path, verify=True, trusted_keys=self.keys)
        return SimpleNamespace(bundle=b, version=b.version)

    def _state(self, state: str, **kw: Any) -> None:
        self.states.append((state, kw))

    def _offer(self, model: Any, state: str, extra: dict[str, Any]) -> None:
        self.offers.append((model, state, extra))
        self.running = model.bundle.manifest_sha256  # what the main thread's swap does

    def send(self, *payloads: bytes) -> None:
        for p in payloads:
            self.inbox.handle(p)
            while not self.inbox.q.empty():
                self.worker.handle(self.inbox.q.get_nowait())

    def failures(self) -> list[str]:
        return [s for s, _ in self.states if s.startswith("failed")]

    @property
    def running_version(self) -> str:
        return load_bundle(self.link, verify=False).version


class MqttStation(InProcessStation):
    """``InProcessStation`` on a real broker: ``publisher`` (an ``edge.publish.Publisher``, not started)
    subscribes ``model/set`` into the inbox, the worker runs in its thread, every state goes out on the
    retained ``model/state`` as the daemon's does (``model`` {``name``, ``version``, ``manifest_sha256``})."""

    def __init__(self, link: Path, pubs: list[Path], publisher: Any, **kw: Any) -> None:
        super().__init__(link, pubs, **kw)
        self.publisher = publisher
        self.inbox.topic = f"{publisher.cfg.prefix}/{publisher.station}/model/set"
        publisher.listen(self.inbox.topic, self.inbox.on_message)

    def start(self) -> MqttStation:
        self.publisher.start()
        self._publish("active", {})
        self.worker.start()
        return self

    def stop(self) -> None:
        self.worker.stop_event.set()
        self.worker.join(5)

    def _publish(self, state: str, extra: dict[str, Any]) -> None:
        b = load_bundle(self.link, verify=False)
        model = {"name": b.name, "version": b.version, "manifest_sha256": self.running}
        self.publisher.model_state({"state": state, "station": self.publisher.station, "model": model, **extra})

    def _state(self, state: str, **kw: Any) -> None:
        super()._state(state, **kw)
        self._publish(state, kw)

    def _offer(self, model: Any, state: str, extra: dict[str, Any]) -> None:
        super()._offer(model, state, extra)
        self._publish(state, extra)


def private(path: Path) -> Any:
    return load_private_key(path)


def signed_variant(src: Path, dst: Path, version: str, key: Path | None, pad: int = 0) -> Path:
    """A copy of bundle ``src`` with ``version`` (and a ``pad``-byte extra file listed in the manifest), signed."""
    import json
    import shutil

    from edge.bundle import MANIFEST

    shutil.copytree(src, dst)
    (dst / "manifest.sig").unlink(missing_ok=True)
    m = json.loads((dst / MANIFEST).read_text())
    m["version"] = version
    files = {role: e["path"] for role, e in m.pop("files").items()}
    if pad:
        (dst / "padding.bin").write_bytes(os.urandom(pad))
        files["padding"] = "padding.bin"
    write_manifest(dst, m, files)
    if key is not None:
        sign_bundle(dst, key)
    return dst


def raw_publish(broker: Any, topic: str, payloads: list[bytes], timeout: float = 10.0, retain: bool = False) -> None:
    """Publish ``payloads`` (QoS 1, each acknowledged) as a plain paho client: no deploy logic."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        infos = [c.publish(topic, p, qos=1, retain=retain) for p in payloads]
        for info in infos:
            info.wait_for_publish(timeout)
            assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


def low_fps_video(path: Path, frames: int = 20, fps: int = 5, size: tuple[int, int] = (320, 240)) -> Path:
    """Random-noise frames at ``fps``: many daemons on few cores (the fleet test)."""
    import cv2
    import numpy as np

    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    rng = np.random.default_rng(1)
    for _ in range(frames):
        w.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    w.release()
    return path


def shift_selfcheck(root: Path, role: str) -> None:
    """Rewrite ``role``'s expected self-check scores 0.3 off and re-hash the manifest (its signature drops)."""
    import json

    import numpy as np

    from edge import selfcheck
    from edge.bundle import MANIFEST

    with np.load(root / selfcheck.FILE) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[f"scores__{role}"] = np.clip(1.0 - arrays[f"scores__{role}"], 0, 1) * 0.4 + 0.3
    with open(root / selfcheck.FILE, "wb") as f:
        np.savez_compressed(f, **arrays)
    m = json.loads((root / MANIFEST).read_text())
    files = {r: e["path"] for r, e in m.pop("files").items()}
    write_manifest(root, m, files)
    (root / "manifest.sig").unlink(missing_ok=True)
