"""Load, check and hot-swap the model bundle (ARCHITECTURE.md §2 and §5, README "Hot reload").

``load_checked`` is the one way a bundle becomes the running model, at start and on reload:
signature (with ``model.trusted_keys``), manifest, every file's sha256, the classifier built and
probed (input shape, one output per label), the bundle's self-check (``edge.selfcheck``), the
config's ``decision.thresholds`` keys among its labels, the Grad-CAM files when heatmaps are on,
and, on reload, the running model's labels and task unchanged (the decider's open events, the
alerts' consumers and Home Assistant's entities are per label: a change of labels needs a restart).

``ModelWatcher`` is the ``model-watch`` thread. Every ``model.watch_s`` seconds it stats the
``model.bundle`` path and its ``manifest.json`` (device, inode, mtime, size: a few microseconds,
never on the capture or classify thread); a new identity, or SIGHUP (``request``), loads the new
bundle beside the running one with ``load_checked``. A bundle that passes is handed to the main
thread (``take``), which swaps it in between two frames; one that fails is logged once, reported
(``model/state`` ``failed: <reason>``) and not retried until the identity changes again or SIGHUP.
Supported replacements are atomic ones: a directory symlink swapped with ``rename`` (``ln -s
new tmp && mv -T tmp bundle``), a directory renamed over the path (``renameat2`` exchange, as
``convert export --force`` does, or ``mv old away && mv new bundle``: a path missing for a moment is
waited out). Copying files into the running bundle's folder is not: the watcher may see a half
copy, which fails its sha256 check; finish the copy and send SIGHUP.

The old interpreter is released by this thread (``retire``), not by the main thread, so the swap
itself costs the main thread a few attribute assignments.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import selfcheck
from .bundle import MANIFEST, Bundle, load_bundle
from .errors import ConfigError, ModelError, SeamQCError

log = logging.getLogger(__name__)

Identity = tuple[int, int, int, int, int]


@dataclass
class ActiveModel:
    """A checked bundle with its built classifier: what the main thread runs."""

    bundle: Bundle
    clf: Any  # edge.classify.Classifier
    role: str
    thresholds: dict[str, float]  # the bundle's, overridden by decision.thresholds
    check: selfcheck.Result
    identity: Identity | None = None
    loaded_ts: float = field(default_factory=time.time)
    # what model/state says once it is swapped in: ``active``, or ``rolled_back`` (edge.rollout)
    swap_state: str = "active"
    swap_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """The running classifier file's sha256 (the alerts' ``model.sha256`` since the first release)."""
        return self.bundle.sha256(self.role)

    @property
    def version(self) -> str:
        return self.bundle.version

    def info(self) -> dict[str, Any]:
        """The ``model`` object of alerts, stats and ``model/state``."""
        return {
            "name": self.bundle.name,
            "version": self.version,
            "sha256": self.sha256,
            "manifest_sha256": self.bundle.manifest_sha256,
            "role": self.role,
            "signed_by": self.bundle.signed_by,
        }


def identity(root: str | Path) -> Identity | None:
    """(device, directory inode, manifest inode, mtime ns, size) of the bundle path; None if missing.

    ``os.stat`` follows a symlinked bundle path, so a swapped link changes the directory inode.
    """
    try:
        d = os.stat(root)
        m = os.stat(Path(root) / MANIFEST)
    except OSError:
        return None
    return (d.st_dev, d.st_ino, m.st_ino, m.st_mtime_ns, m.st_size)


def trusted_keys(cfg: Any, where: Callable[..., str]) -> list[Any]:
    """The public keys of ``model.trusted_keys``; a bad one is a ConfigError naming the key's line."""
    paths = list(cfg.model.trusted_keys or [])
    if not paths:
        return []
    from .signing import load_public_key

    keys = []
    for i, p in enumerate(paths):
        try:
            keys.append(load_public_key(p))
        except ModelError as e:
            raise ConfigError(f"{where('model', 'trusted_keys', i)}: {e}") from None
    return keys


def _dotted(*key: Any) -> str:
    return ".".join(str(k) for k in key)


def load_checked(
    cfg: Any,
    keys: list[Any],
    running: ActiveModel | None = None,
    extra_check: Callable[[Bundle], None] | None = None,
    where: Callable[..., str] | None = None,
) -> ActiveModel:
    """Everything in the module docstring, or one ``SeamQCError`` line.

    ``where(*key)`` locates a config key (the daemon's start passes ``config_line``: errors then
    read ``file:line: model.bundle: …``); without it (reload) the line starts with the file at fault.
    """
    loc = where or _dotted
    pre = f"{where('model', 'bundle')}: " if where is not None else ""
    try:
        bundle = load_bundle(cfg.model.bundle, verify=True, trusted_keys=keys or None)
    except ModelError as e:
        raise type(e)(f"{pre}{e}") from None
    from .classify import Classifier

    role = cfg.model.role or bundle.classifier_role
    if not bundle.has(role):
        raise ModelError(
            f"{loc('model', 'role')}: {role!r}: no such role in {bundle.root / MANIFEST} "
            f"(has: {', '.join(bundle.files)})"
        )
    try:
        clf = Classifier(bundle, role=role, threads=cfg.model.threads)
        probe = clf.classify(np.zeros((bundle.height, bundle.width, 3), np.uint8))
    except SeamQCError as e:
        raise ModelError(f"{pre}{e}") from None
    except Exception as e:  # noqa: BLE001 - LiteRT raises bare ValueError/RuntimeError on bad files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{pre}{bundle.path(role)}: not a usable TFLite model ({msg})") from None
    n_out = np.asarray(probe).reshape(-1).shape[0]
    if n_out != len(bundle.labels):
        raise ModelError(
            f"{pre}{bundle.path(role)}: the model has {n_out} outputs but the manifest lists "
            f"{len(bundle.labels)} labels"
        )
    if running is not None:
        old = running.bundle
        if bundle.labels != old.labels or bundle.task != old.task:
            raise ModelError(
                f"{bundle.root / MANIFEST}: labels {list(bundle.labels)} ({bundle.task}) differ from the running "
                f"model's {list(old.labels)} ({old.task}); a change of labels needs a restart"
            )
    thresholds = dict(bundle.thresholds)
    for lab, t in cfg.decision.thresholds.items():
        if lab not in bundle.labels:
            raise ConfigError(
                f"{loc('decision', 'thresholds', lab)}: {lab!r} is not a label of the model "
                f"({', '.join(bundle.labels)})"
            )
        thresholds[lab] = float(t)
    if extra_check is not None:
        extra_check(bundle)
    try:
        check = selfcheck.run(bundle, clf)
    except ModelError as e:
        raise ModelError(f"{pre}{e}") from None
    return ActiveModel(bundle, clf, role, thresholds, check)


class ModelWatcher(threading.Thread):
    """The ``model-watch`` thread (module docstring). The main thread calls ``take`` and ``retire``."""

    def __init__(
        self,
        root: str | Path,
        loader: Callable[[], ActiveModel],
        stop: threading.Event,
        *,
        interval_s: float = 1.0,
        current: Identity | None = None,
        on_failed: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(name="model-watch", daemon=True)
        self.root = Path(root)
        self.loader = loader
        self.stop_event = stop
        self.interval_s = interval_s
        self.on_failed = on_failed
        self._seen = current  # identity of the running bundle, or of the last attempt
        self._requested = threading.Event()
        self._lock = threading.Lock()
        self._exclusive = threading.Lock()  # one load-and-hand-over at a time: this thread's or a rollout's
        self._pending: ActiveModel | None = None
        self._retired: list[ActiveModel] = []
        self._missing_logged = False
        self.attempts = 0
        self.failures = 0
        self.last_error = ""

    # -- any thread
    def request(self) -> None:
        """Reload now (SIGHUP); safe from a signal handler: it only sets an event."""
        self._requested.set()

    def wake(self) -> None:
        """Call after setting the stop event: the thread sees it now, not after its next ``watch_s``
        (a 5-frame run waited a whole second here)."""
        self._requested.set()

    def exclusive(self) -> threading.Lock:
        """Held by a rollout (edge.rollout) while it swaps the bundle link and ``offer``s the model."""
        return self._exclusive

    def offer(self, model: ActiveModel) -> None:
        """A model checked elsewhere (a rollout), for the main thread; call with ``exclusive()`` held.

        The bundle path's identity becomes the seen one, so this thread does not load it again.
        """
        ident = identity(self.root)
        model.identity = ident
        self._seen = ident
        with self._lock:
            if self._pending is not None:
                self._retired.append(self._pending)
            self._pending = model

    # -- the main thread
    @property
    def pending(self) -> bool:
        return self._pending is not None

    def take(self) -> ActiveModel | None:
        """The checked model waiting to be swapped in, once."""
        with self._lock:
            model, self._pending = self._pending, None
        return model

    def retire(self, model: ActiveModel) -> None:
        """Hand the replaced model over; this thread drops it (interpreter teardown off the main thread)."""
        with self._lock:
            self._retired.append(model)

    # -- this thread
    def run(self) -> None:
        wait = self.interval_s if self.interval_s > 0 else 0.5
        while not self.stop_event.is_set():
            signalled = self._requested.wait(wait)
            if self.stop_event.is_set():
                break
            with self._lock:
                retired, self._retired = self._retired, []
            del retired  # the old interpreters are freed here
            if signalled:
                self._requested.clear()
                with self._exclusive:
                    self._attempt("SIGHUP", identity(self.root))
                continue
            if self.interval_s <= 0:
                continue
            ident = identity(self.root)
            if ident is None:
                if not self._missing_logged:
                    self._missing_logged = True
                    log.warning("model: %s is missing; the running model continues (logged once)", self.root)
                continue
            self._missing_logged = False
            if ident != self._seen:
                with self._exclusive:
                    ident = identity(self.root)  # a rollout may have installed and offered it meanwhile
                    if ident is not None and ident != self._seen:
                        self._attempt("bundle replaced", ident)

    def _attempt(self, why: str, ident: Identity | None) -> None:
        self._seen = ident  # a failed bundle is not retried until it changes again (or SIGHUP)
        self.attempts += 1
        t0 = time.monotonic()
        try:
            model = self.loader()
        except SeamQCError as e:
            self._fail(why, str(e))
            return
        except Exception as e:  # noqa: BLE001 - a bug here must not kill the thread or the line
            self._fail(why, f"{type(e).__name__}: {e}")
            return
        model.identity = ident
        log.info(
            "model: %s: loaded %s %s beside the running one in %.2f s (%s); swapping at the next frame",
            why,
            model.bundle.name,
            model.version,
            time.monotonic() - t0,
            model.check.describe(),
        )
        with self._lock:
            if self._pending is not None:  # never taken (no frame yet): the newer one wins
                self._retired.append(self._pending)
            self._pending = model

    def _fail(self, why: str, reason: str) -> None:
        reason = " ".join(reason.split())[:500]
        self.failures += 1
        self.last_error = reason
        if self.on_failed is not None:
            self.on_failed(why, reason)
