"""The Pi daemon: camera → classify → decide → publish (+ heatmap worker), one stop event.

Threads: ``capture`` (edge.camera, drops the oldest frame when behind), the main thread
(classification + decision + stats + watchdog; one interpreter built once), ``heatmaps``
(edge.heatmaps, bounded queue) and the publisher's MQTT loop. Every wait is bounded, so a stop
(SIGTERM/SIGINT/SIGHUP, ``--max-frames``, the end of a file source) is noticed within ~0.2 s:

1. ``STOPPING=1`` is sent, capture stops;
2. the decider's open events are flushed as alerts (nothing accepted is lost);
3. the heatmap worker finishes the queued heatmaps — for up to 1.5 s after a signal (systemd
   wants us gone), up to 15 s at the end of a file or ``--max-frames`` — the rest are counted dropped;
4. the publisher flushes what it can, publishes ``offline`` and disconnects — alerts it could
   not deliver stay in the outbox for the next start.

The watchdog (``WATCHDOG=1``) is pinged only while frames flow: a hung pipeline or a camera that
stays away longer than ``WatchdogSec`` gets the service restarted by systemd.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .camera import Capture, Frame, make_source, probe_file_source
from .config import Config, config_line
from .decide import Decider, iso_utc
from .errors import CameraError, ConfigError, ModelError
from .logfmt import event
from .modelswap import ActiveModel, ModelWatcher, identity, load_checked, trusted_keys
from .sdnotify import Notifier, watchdog_interval_s

log = logging.getLogger(__name__)

# Shutdown budget (module docstring, step 3): after a signal systemd is waiting (TimeoutStopSec in
# systemd/seam-qc.service), so the heatmap queue gets little time; at the end of a file or
# --max-frames nobody is waiting and it may finish its queue.
HEATMAP_DRAIN_SIGNAL_S = 1.5
HEATMAP_DRAIN_END_S = 15.0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values, np.float64), q)), 2)


def load_model(cfg: Config, keys: list[Any] | None = None) -> ActiveModel:
    """Load and check the bundle and build the classifier (``edge.modelswap.load_checked``); errors
    name the config key (``file:line: model.bundle: …``)."""
    return load_checked(cfg, keys or [], where=lambda *key: config_line(cfg, *key))


def note_selfcheck(model: ActiveModel) -> None:
    """One line about the self-check: its result, or the warning for a bundle without one."""
    if model.check.max_abs_diff is None:
        log.warning(
            "model: %s has no self-check (exported before seam-qc embedded one): accepted without it; "
            "re-export it with python -m convert export",
            model.bundle.root,
        )
    else:
        log.info("model: %s: %s", model.bundle.root, model.check.describe())


def open_outbox(cfg: Config) -> Any:
    """The durable outbox at ``outbox``, capped by ``outbox_max_mb`` (its directory made if missing)."""
    from .outbox import Outbox

    try:
        Path(cfg.outbox).parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # Outbox names the path in its own error
    return Outbox(cfg.outbox, max_bytes=cfg.outbox_max_bytes)


def check_explainer(cfg: Config, bundle: Any) -> None:
    """Heatmaps need the bundle's Grad-CAM files: say so at start, not at the first alert."""
    gc = bundle.gradcam
    if cfg.heatmaps.method != "litert":  # the Pi has no TensorFlow path (ARCHITECTURE.md §9)
        raise ConfigError(
            f"{config_line(cfg, 'heatmaps', 'method')}: {cfg.heatmaps.method!r} is not "
            "available on the Pi (it needs TensorFlow, ~640 MB per daemon): use litert; "
            "python -m convert heatmaps --method tf explains on a workstation"
        )
    need = [gc.get("explainer") or "explainer", gc.get("head") or "head"]
    missing = [r for r in need if not bundle.has(r)] if gc else ["gradcam"]
    if missing:
        raise ModelError(
            f"{config_line(cfg, 'heatmaps', 'method')}: {cfg.heatmaps.method!r}: the bundle "
            f"{bundle.root} has no {', '.join(missing)} (export it with the explainer, or set "
            "heatmaps.enabled: false)"
        )
    from .gradcam import load_head  # a garbage head.npz: one line now, not a traceback per alert

    try:
        load_head(bundle.path(gc.get("head") or "head"), len(bundle.labels))
    except ModelError as e:
        where = config_line(cfg, "model", "bundle")
        raise ModelError(f"{where}: {e} (or set heatmaps.enabled: false)") from None


def open_source(cfg: Config, model_size: tuple[int, int]) -> Any:
    """``make_source`` with camera errors located in the config file (file:line: camera.key: …)."""
    try:
        return make_source(cfg.camera, model_size)
    except CameraError as e:
        raise located(cfg, e) from None


def located(cfg: Config, err: CameraError) -> CameraError:
    """``err`` with the config file and line of its key (file:line: camera.device: …); as is when
    it names no key."""
    return err if err.key is None else CameraError(f"{config_line(cfg, *err.key)}: {err.detail}")


def check_file_source(cfg: Config) -> None:
    """A video file must decode one frame now (``edge.camera.probe_file_source``); errors name the line.

    Why: a file that can never be decoded is a config error (78) at start and in ``--check-config``,
    not a "cannot open" retried for ever or a 0-frame loop.
    """
    if cfg.camera.source != "file":
        return  # live sources may be away at start: capture retries them by design
    try:
        probe_file_source(str(cfg.camera.device))
    except CameraError as e:
        raise located(cfg, e) from None


def check_mqtt(cfg: Config, strict: bool) -> None:
    """What the publisher needs at start (topics, password); an unresolvable host only if ``strict``.

    ``--check-config`` is strict about the host (a typo is the likely cause); the running daemon
    only warns, once, and keeps classifying into the outbox: a DNS outage must not stop QC.
    """
    m = cfg.mqtt
    if not m.enabled:
        return
    from .publish import read_password, resolve_problem, topics

    try:
        topics(m.prefix, cfg.station)
        read_password(m)  # also $CREDENTIALS_DIRECTORY (systemd LoadCredential)
    except ConfigError as e:
        raise ConfigError(f"{config_line(cfg, 'mqtt')}: {e}") from None
    problem = resolve_problem(m)
    if problem and strict:
        raise ConfigError(f"{config_line(cfg, 'mqtt', 'host')}: {problem}")
    if problem:
        log.warning(
            "%s: %s; classifying on, alerts wait in the outbox %s until it resolves",
            config_line(cfg, "mqtt", "host"),
            problem,
            cfg.outbox,
        )


def check_rollout(cfg: Config, keys: list[Any]) -> None:
    """``model.rollout`` needs trusted keys, MQTT, a ``model.bundle`` symlink it may swap and, when
    there is one, a readable replay-protection counter file (``RolloutStore.load_issued``: a corrupt
    one stops the start, exit 78, rather than re-opening every recorded rollout to replay)."""
    if not cfg.model.rollout:
        return
    where = config_line(cfg, "model", "rollout")
    if not keys:
        raise ConfigError(f"{where}: rollouts need model.trusted_keys (the deploy key's .pub from convert keygen)")
    if not cfg.mqtt.enabled:
        raise ConfigError(f"{where}: rollouts arrive over MQTT, but mqtt.enabled is false")
    from .rollout import RolloutError, RolloutStore

    store = RolloutStore(cfg.model.bundle)
    problem = store.check()
    if problem:
        raise ConfigError(f"{config_line(cfg, 'model', 'bundle')}: {problem}")
    try:
        store.load_issued()
    except RolloutError as e:
        raise ConfigError(f"{where}: {e}") from None


def check_outbox_path(cfg: Config) -> None:
    """Dry run: refuse what the outbox would refuse at start, creating and changing nothing."""
    from .outbox import Outbox, OutboxError

    path = Path(cfg.outbox)
    anc = path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise OutboxError(f"outbox {path}: cannot create directory {path.parent}: {anc} is not a directory")
    probe = Outbox.__new__(Outbox)  # the outbox's own checks, without opening or locking anything
    probe.path = path
    probe._validate()


class Daemon:
    def __init__(self, cfg: Config, max_frames: int | None = None, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.max_frames = max_frames
        self.notifier = notifier or Notifier()
        self.stop = threading.Event()
        self.boot = uuid.uuid4().hex[:8]
        self.started_mono = time.monotonic()
        self.frames = 0
        self.alerts = 0
        self.classify_errors = 0
        self._defect_on = False  # the early signal's state, logged on change (event defect)
        self.inf_ms: list[float] = []
        self.stop_reason = ""
        self.exit_code = 0
        self._last_info = time.monotonic()
        self.publisher: Any = None
        self.outbox: Any = None
        self.heatmaps: Any = None
        self.capture: Capture | None = None
        self.health: Any = None  # edge.health.HealthMonitor, unless health.enabled is false
        self.inbox: Any = None  # edge.feedback.FeedbackInbox (mqtt.feedback)
        self.samples: Any = None  # edge.samples.SampleWorker (samples.enabled or feedback)
        self.sampler: Any = None  # edge.samples.Sampler (samples.enabled)
        self._camera_lost: str | None = None  # why the camera is away (for STATUS=)
        self.watcher: ModelWatcher | None = None  # hot reload (edge.modelswap), built by setup
        self.rollout: Any = None  # edge.rollout.RolloutWorker (model.rollout)
        self.reloads = 0  # models swapped in since start
        self._swapped: dict[str, Any] | None = None  # the swap whose first new frame is still to come
        self._last_frame: tuple[int, float, float] | None = None  # (seq, capture mono, classified mono)
        self._gap_max_s = 0.0  # longest wait between two classified frames since the last stats (a stall)

    # ------------------------------------------------------------------ setup
    def setup(self, dry_run: bool = False) -> None:
        """Validate everything a start needs, then (unless ``dry_run``) build the pipeline.

        ``--check-config`` is ``setup(dry_run=True)``: one path, so it approves exactly what a start
        accepts. A dry run changes nothing on disk (no outbox, no heatmap directory) and treats an
        unresolvable ``mqtt.host`` as an error, where a start only warns.
        """
        cfg = self.cfg
        self.trusted = trusted_keys(cfg, lambda *key: config_line(cfg, *key))
        check_rollout(cfg, self.trusted)
        ident = identity(cfg.model.bundle)  # before loading: a replacement during the load is seen
        self.active = load_model(cfg, self.trusted)
        self.active.identity = ident
        self.bundle, self.clf = self.active.bundle, self.active.clf
        self.runtime = str(getattr(self.clf, "runtime", "unknown"))
        self.labels = tuple(self.bundle.labels)
        thresholds = self.active.thresholds  # the bundle's, with decision.thresholds checked and applied
        self.thresholds = thresholds
        d = cfg.decision
        self.decider = Decider(
            self.labels,
            thresholds,
            expected_length=d.expected_length,
            min_frames=d.min_frames,
            window=d.window,
            max_event_frames=d.max_event_frames,
            cooldown_frames=d.cooldown_frames,
            id_prefix=f"{cfg.station}-{self.boot}",
        )
        self.model_sha = self.active.sha256
        if cfg.health.enabled:
            from .health import HealthMonitor

            self.health = HealthMonitor.from_settings(cfg.health.model_dump())
        self.source = open_source(cfg, (self.bundle.width, self.bundle.height))
        check_file_source(cfg)
        if cfg.heatmaps.enabled:
            check_explainer(cfg, self.bundle)
        check_mqtt(cfg, strict=dry_run)
        if dry_run:
            check_outbox_path(cfg)
            return
        role = self.active.role
        note_selfcheck(self.active)
        log.info(
            "model %s %s (%s, sha256 %s…), input %dx%d, runtime %s, %d thread(s)",
            self.bundle.name,
            self.active.version,
            role,
            self.model_sha[:12],
            self.bundle.width,
            self.bundle.height,
            self.runtime,
            cfg.model.threads,
            extra=event(
                "start",
                station=cfg.station,
                model={
                    "name": self.bundle.name,
                    "role": role,
                    "sha256": self.model_sha,
                    "version": self.active.version,
                },
                input=[self.bundle.width, self.bundle.height],
                runtime=self.runtime,
                threads=cfg.model.threads,
                boot=self.boot,
            ),
        )
        self.frames_q: queue.Queue[Frame] = queue.Queue(maxsize=cfg.camera.queue_size)
        self._setup_outbox_publisher()
        self._setup_heatmaps()
        self.watcher = ModelWatcher(
            cfg.model.bundle,
            self._load_candidate,
            self.stop,
            interval_s=cfg.model.watch_s,
            current=ident,
            on_failed=self._model_failed,
        )
        self._setup_samples()
        self._setup_rollout()

    def _setup_outbox_publisher(self) -> None:
        cfg = self.cfg
        self.outbox = open_outbox(cfg)
        from .homeassistant import Device
        from .publish import Publisher

        # Home Assistant discovery announces only the entities this config feeds
        device = Device(
            model=self.bundle.name,
            health=cfg.health.enabled,
            heatmap=cfg.heatmaps.enabled and cfg.heatmaps.mqtt,
        )
        # with mqtt.enabled false the publisher is an outbox-only sink
        self.publisher = Publisher(cfg.mqtt, cfg.station, self.outbox, device=device)
        if not cfg.mqtt.enabled:
            log.info("mqtt: disabled; alerts are logged and kept in the outbox %s", cfg.outbox)

    def _setup_heatmaps(self) -> None:
        hc = self.cfg.heatmaps
        if not hc.enabled:
            return
        check_explainer(self.cfg, self.bundle)
        from . import gradcam, overlay
        from .heatmaps import HeatmapWorker

        bundle, threads = self.bundle, hc.threads
        # explain the flagged condition: a wrong length on a 2 mm line is the negated length logit
        negate = gradcam.negated_labels(self.cfg.decision.expected_length)

        def factory() -> Any:
            # built lazily in the worker thread, so that its LiteRT pool inherits the worker's nice
            return gradcam.Explainer(bundle, threads=threads, negate=negate)

        self.heatmaps = HeatmapWorker(
            hc.dir,
            self.stop,
            max_mb=hc.max_mb,
            queue_size=hc.queue_size,
            explainer_factory=factory,
            overlay_labels=overlay.overlay_labels,
            overlay_jet=overlay.overlay_jet,
            labels_all=self.labels,
            labels_only_flagged=hc.labels_only_flagged,
            # the latest overlay on MQTT, published from the worker's thread (the publisher exists by then)
            on_overlay=(lambda eid, jpeg: self.publisher.heatmap(eid, jpeg)) if hc.mqtt else None,
        )
        self.heatmaps.prepare_dir()

    def _setup_samples(self) -> None:
        """Feedback in (mqtt.feedback), samples kept and published (samples:): one worker thread, ``samples``.

        The paho callback only validates and enqueues feedback; the main thread only decides and
        hands frames over; writing, feedback and publishing happen in the worker (edge/samples.py).
        """
        cfg, sc = self.cfg, self.cfg.samples
        from .feedback import FeedbackInbox
        from .samples import RingBuffer, Sampler, SampleWorker

        if cfg.mqtt.enabled and cfg.mqtt.feedback:
            m, topic = cfg.mqtt, self.publisher.topics.feedback
            self.inbox = FeedbackInbox(
                topic,
                self.labels,
                junk_limit=m.feedback_junk_limit,
                junk_window_s=m.feedback_junk_window_s,
                pause_s=m.feedback_pause_s,
                # the flood breaker: unsubscribe in paho's thread, subscribe again from the samples worker
                listening=lambda on: self.publisher.set_listening(topic, on),
            )
            self.publisher.listen(self.inbox.topic, self.inbox.on_message)
        if not sc.enabled and self.inbox is None:
            return
        ring = RingBuffer(int(sc.ring_mb * 1024 * 1024), sc.ring_every_n) if sc.enabled else None
        publish = self.publisher.sample if sc.enabled and sc.mqtt and cfg.mqtt.enabled else None
        self.samples = SampleWorker(
            sc.dir if sc.enabled else None,
            self.stop,
            station=cfg.station,
            model=self._sample_model(),
            max_mb=sc.max_mb,
            queue_size=sc.queue_size,
            inbox=self.inbox,
            ring=ring,
            missed_window_s=sc.missed_window_s,
            missed_max_frames=sc.missed_max_frames,
            publish=publish,
            backlog_max=sc.mqtt_backlog,
        )
        if sc.enabled:
            self.samples.prepare_dir()
            self.sampler = Sampler(
                self.samples,
                station=cfg.station,
                boot=self.boot,
                thresholds=self.thresholds,
                expected_length=cfg.decision.expected_length,
                uncertain_margin=sc.uncertain_margin,
                uncertain_per_h=sc.uncertain_per_h,
                random_good_per_h=sc.random_good_per_h,
                ring=ring,
            )

    def _setup_rollout(self) -> None:
        """Signed rollout (model.rollout): paho's thread parses and enqueues, thread ``rollout`` does the rest."""
        cfg = self.cfg
        if not cfg.model.rollout or self.publisher is None or self.watcher is None:
            return
        from .rollout import Hooks, RolloutInbox, RolloutStore, RolloutWorker

        watcher = self.watcher
        inbox = RolloutInbox(f"{cfg.mqtt.prefix}/{cfg.station}/model/set")
        self.publisher.listen(inbox.topic, inbox.on_message)

        def check(path: Path) -> ActiveModel:
            there = cfg.model_copy(update={"model": cfg.model.model_copy(update={"bundle": path})})
            extra = self._check_heatmap_files if cfg.heatmaps.enabled else None
            return load_checked(there, self.trusted, self.active, extra_check=extra)

        def offer(model: ActiveModel, state: str, extra: dict[str, Any]) -> None:
            model.swap_state, model.swap_extra = state, extra
            watcher.offer(model)

        hooks = Hooks(
            check=check,
            offer=offer,
            state=self._publish_model_state,
            running_manifest=lambda: self.active.bundle.manifest_sha256,
            exclusive=watcher.exclusive,
        )
        self.rollout = RolloutWorker(
            inbox,
            RolloutStore(cfg.model.bundle),
            self.trusted,
            hooks,
            self.stop,
            max_bytes=int(cfg.model.max_bundle_mb * 1024 * 1024),
            boot=self.boot,
        )

    def _sample_model(self) -> dict[str, Any]:
        """The running model as a sample's sidecar names it (replaced on a hot reload)."""
        return {"name": self.bundle.name, "sha256": self.model_sha, "version": self.active.version}

    # ------------------------------------------------------------------ running
    def _on_camera_state(self, state: str, why: str) -> None:
        if state in ("lost", "ok"):
            self._camera_lost = why if state == "lost" else None
            self.notifier.status(self._status_text())

    def _status_text(self) -> str:
        """systemd's STATUS=: the camera when it is away, else running with the health state."""
        if self._camera_lost is not None:
            return f"camera lost: {self._camera_lost}; retrying"
        health = f"; health {self.health.state}" if self.health is not None else ""
        model = f"; model {self.bundle.name} {self.active.version}"
        return f"running ({self.runtime}){model}{health}"

    def _publish_health(self) -> None:
        """Retained ``/health`` JSON, log event and STATUS= (at start and when the conditions change)."""
        if self.health is None:
            return
        payload = {"station": self.cfg.station, "ts": iso_utc(time.time()), **self.health.payload()}
        log.info(
            "health: %s",
            self.health.state,
            extra=event("health", msg=f"health {self.health.state}", health=payload),
        )
        self.notifier.status(self._status_text())
        if self.publisher is not None:
            self.publisher.health(payload)

    def _install_signals(self) -> None:
        """SIGTERM and SIGINT stop cleanly (open events alerted, outbox kept); SIGHUP reloads the model.

        SIGHUP (``systemctl reload``, or a dropped SSH session of a daemon run in a terminal) asks
        the ``model-watch`` thread to load ``model.bundle`` again (edge.modelswap); it never stops
        the line, and its default action (die at once, losing the open events) is replaced.
        """

        def handler(signum: int, _frame: Any) -> None:
            watcher = self.watcher
            if signum == signal.SIGHUP and watcher is not None:
                watcher.request()  # sets an event: safe in a signal handler
                return
            self.stop_reason = signal.Signals(signum).name
            self.stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread (tests)
                pass

    def emit(self, alert: Any) -> None:
        cfg = self.cfg
        closed_at = time.time()  # the event just closed: the log's reference for what comes after
        heatmap = None
        ts = iso_utc(alert.ts_wall)
        if self.heatmaps is not None and alert.image is not None:
            heatmap = self.heatmaps.submit(alert.event_id, alert.frame, ts, alert.labels, alert.scores, alert.image)
        payload = alert.payload(cfg.station, self.bundle.name, self.model_sha, heatmap)
        payload["model"]["version"] = self.active.version  # the model running when the alert was emitted
        self.publisher.alert(payload)  # durable first: a logged alert is always in the outbox
        self.alerts += 1
        if self.samples is not None:  # after the outbox: a sample never comes before its alert
            self.samples.note_alert(alert.event_id)
            if self.sampler is not None:
                self.sampler.alert(alert.event_id, alert.frame, alert.ts_wall, alert.labels, alert.scores, alert.image)
        log.info(
            "ALERT %s",
            json.dumps(payload, separators=(",", ":")),
            extra=event(
                "alert",
                msg=f"ALERT {alert.event_id} {','.join(alert.labels)} frame {alert.frame}",
                event_id=alert.event_id,
                labels=list(alert.labels),
                frame=alert.frame,
                first_frame=alert.first_frame,
                last_frame=alert.last_frame,
                closed_at=round(closed_at, 6),
                alert=payload,
            ),
        )

    def stats_payload(self, interval_frames: int, interval_s: float) -> dict[str, Any]:
        """The §6 stats: nested objects (kept for existing readers) plus flat numbers for Grafana."""
        cap = self.capture.stats if self.capture else None
        hm = self.heatmaps
        recent = self.inf_ms[-2000:]
        return {
            "station": self.cfg.station,
            "ts": iso_utc(time.time()),
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "fps": round(interval_frames / interval_s, 2) if interval_s > 0 else 0.0,
            "frames": self.frames,
            "alerts": self.alerts,
            "dropped_frames": cap.dropped if cap else 0,
            # longest wait between two classified frames since the previous stats: a stall (a hot swap,
            # the camera, the CPU) that an average fps hides; 1000/fps when nothing stalled
            "frame_gap_max_ms": round(self._gap_max_s * 1000, 1),
            "camera": cap.as_dict() if cap else {"state": "starting"},
            "inference_ms": {"p50": percentile(recent, 50), "p99": percentile(recent, 99)},
            "classify_errors": self.classify_errors,
            "outbox_depth": self._outbox_depth(),
            "mqtt_connected": bool(getattr(self.publisher, "connected", False)),
            "mqtt_refused": int(getattr(self.publisher, "refused", 0) or 0),
            "mqtt_oversize": int(getattr(self.publisher, "oversize", 0) or 0),
            "mqtt_junk": int(getattr(self.publisher, "junk", 0) or 0),  # ignored inbound messages
            "heatmaps": {
                "saved": hm.saved if hm else 0,
                "dropped": hm.dropped if hm else 0,
                "deleted": hm.deleted if hm else 0,
                "writable": hm.writable if hm else None,
                "ms_p50": percentile(hm.ms, 50) if hm else None,
            },
            "runtime": self.runtime,
            "model": self._model_stats(),
            "model_version": self.active.version,
            "model_reloads": self.reloads,
            "model_reload_failures": self.watcher.failures if self.watcher is not None else 0,
            # signed rollouts (model.rollout; 0 when off): installed, rolled back, refused, junk messages
            "model_rollouts": self.rollout.installs if self.rollout is not None else 0,
            "model_rollbacks": self.rollout.rollbacks if self.rollout is not None else 0,
            "model_rollout_failures": self.rollout.failures if self.rollout is not None else 0,
            "model_set_junk": self.rollout.inbox.junk + self.rollout.inbox.dropped if self.rollout is not None else 0,
            "open_events": self.decider.open_events,
            # flat numeric copies of the nested values: Grafana/Telegraf/HA read one number per key
            "inference_ms_p50": percentile(recent, 50),
            "inference_ms_p99": percentile(recent, 99),
            "heatmaps_saved": hm.saved if hm else 0,
            "heatmaps_dropped": hm.dropped if hm else 0,
            "heatmaps_deleted": hm.deleted if hm else 0,
            "heatmap_ms_p50": percentile(hm.ms, 50) if hm else None,
            "defects_per_hour": round(self.alerts * 3600.0 / max(1.0, time.monotonic() - self.started_mono), 2),
            **self._health_stats(),
            **self._samples_stats(),
        }

    def _samples_stats(self) -> dict[str, Any]:
        """Feedback and samples in ``stats``: flat numbers only (0 when switched off)."""
        ib, sw = self.inbox, self.samples
        ring = getattr(self.sampler, "ring", None)
        return {
            "feedback_received": ib.received if ib else 0,
            "feedback_junk": ib.junk if ib else 0,
            "feedback_dropped": ib.dropped if ib else 0,
            "feedback_paused": int(ib.paused) if ib else 0,  # 1 while the flood breaker has the topic off
            "feedback_pauses": ib.pauses if ib else 0,
            "feedback_unknown": sw.unknown if sw else 0,
            "feedback_verdicts": sw.verdicts if sw else 0,
            "feedback_missed": sw.missed if sw else 0,
            "samples_saved": sw.saved if sw else 0,
            "samples_dropped": sw.dropped if sw else 0,
            "samples_deleted": sw.deleted if sw else 0,
            "samples_mb": round(sw.bytes / 1048576, 2) if sw else 0,
            "samples_published": sw.published if sw else 0,
            "samples_backlog": sw.backlog if sw else 0,
            "samples_publish_dropped": sw.publish_dropped if sw else 0,
            "samples_ring_frames": len(ring) if ring is not None else 0,
        }

    def _health_stats(self) -> dict[str, Any]:
        """Health in ``stats``: the nested payload plus flat values in the style above."""
        h = self.health
        keys = ("ok", "sharpness_ratio", "mean", "clipped_dark", "clipped_bright", "motion")
        if h is None:  # health.enabled: false
            return {"health": None, "health_state": None, **{f"health_{k}": None for k in keys}}
        m, b = h.metrics, h.baseline
        flat = {k: (None if v is None or v != v else round(v, 4)) for k, v in m.items()}  # NaN → None
        ratio = m["sharpness"] / b["sharpness"] if m and b and b["sharpness"] > 0 else None
        return {
            "health": h.payload(),
            "health_state": h.state,
            "health_ok": int(not h.conditions),
            "health_sharpness_ratio": None if ratio is None else round(ratio, 4),
            "health_mean": flat.get("mean"),
            "health_clipped_dark": flat.get("clipped_dark"),
            "health_clipped_bright": flat.get("clipped_bright"),
            "health_motion": flat.get("motion"),
        }

    def _outbox_depth(self) -> int | None:
        try:
            if self.publisher is not None:
                return int(self.publisher.outbox_depth)
            return int(self.outbox.depth()) if self.outbox is not None else None
        except Exception:  # noqa: BLE001 - stats must not fail
            return None

    def _publish_stats(self, payload: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last_info >= 60.0:  # one readable line a minute for journalctl
            self._last_info = now
            cam = payload.get("camera", {})
            log.info(
                "stats: %.1f fps, %d frames, %d alerts, camera %s (dropped %s, corrupt %s), inference "
                "p50 %s ms, outbox %s, heatmaps %s saved / %s dropped",
                payload["fps"],
                payload["frames"],
                payload["alerts"],
                cam.get("state"),
                cam.get("dropped"),
                cam.get("corrupt"),
                payload["inference_ms"]["p50"],
                payload["outbox_depth"],
                payload["heatmaps"]["saved"],
                payload["heatmaps"]["dropped"],
                extra=event("stats", stats=payload),
            )
        log.debug("stats %s", json.dumps(payload))
        if self.publisher is not None:
            try:
                self.publisher.stats(payload)
            except Exception as e:  # noqa: BLE001
                log.warning("stats publish failed: %s", e)

    def run(self) -> int:
        cfg = self.cfg
        self._install_signals()
        cam = cfg.camera
        self.capture = Capture(
            self.source,
            self.frames_q,
            self.stop,
            realtime=cam.realtime,
            loop=cam.loop,
            reconnect_min_s=cam.reconnect_min_s,
            reconnect_max_s=cam.reconnect_max_s,
            on_state=self._on_camera_state,
            prepare=self.clf.prepare,
            measure=self.health.new_probe() if self.health is not None else None,
        )
        if self.publisher is not None:
            self.publisher.start()
        if self.heatmaps is not None:
            self.heatmaps.start()
        if self.samples is not None:
            self.samples.start()
        self.capture.start()
        if self.watcher is not None:
            self.watcher.start()
        self._publish_model_state("active")
        if self.rollout is not None:
            self.rollout.resume()  # a download cut by a restart: announced, to be continued
            self.rollout.start()
        self.notifier.ready(self._status_text())
        self._publish_health()  # the retained state at start: ok until a condition is seen
        log.info(
            "running: station %s, camera %s %s, runtime %s",
            cfg.station,
            cam.source,
            cam.device,
            self.runtime,
            extra=event("ready", station=cfg.station, camera=f"{cam.source} {cam.device}", runtime=self.runtime),
        )
        wd = watchdog_interval_s()
        last_wd = 0.0
        last_stats = time.monotonic()
        frames_at_stats = 0
        stall = cfg.watchdog_stall_s
        try:
            while not self.stop.is_set():
                if self.watcher is not None and self.watcher.pending:
                    self._swap()  # between two frames
                if self.max_frames is not None and self.frames >= self.max_frames:
                    self.stop_reason = f"{self.max_frames} frames"
                    break
                try:
                    frame = self.frames_q.get(timeout=0.2)
                except queue.Empty:
                    frame = None
                    if self.capture.error is not None:  # e.g. the video stopped decoding: exit 78
                        self.stop_reason, self.exit_code = "camera error", self.capture.error.exit_code
                        raise located(self.cfg, self.capture.error) from None
                    if self.capture.ended.is_set() and self.frames_q.empty():
                        self.stop_reason = "end of file"
                        break
                    if not self.capture.is_alive() and not self.stop.is_set():
                        log.error("the capture thread died unexpectedly (a bug); stopping")
                        self.stop_reason, self.exit_code = "capture thread died", 1
                        break
                if frame is not None:
                    self._process(frame)
                now = time.monotonic()
                if (
                    wd is not None
                    and now - last_wd >= wd
                    and self.capture.stats.last_frame_mono
                    and now - self.capture.stats.last_frame_mono < stall
                ):
                    self.notifier.watchdog()
                    last_wd = now
                if now - last_stats >= cfg.stats_interval:
                    self._publish_stats(self.stats_payload(self.frames - frames_at_stats, now - last_stats))
                    self._gap_max_s = 0.0
                    last_stats, frames_at_stats = now, self.frames
        finally:
            self.shutdown(frames_at_stats, last_stats)
        return self.exit_code

    # ------------------------------------------------------------------ hot reload (edge.modelswap)
    def _load_candidate(self) -> ActiveModel:
        """The ``model-watch`` thread: load and check the new bundle beside the running one."""
        extra = self._check_heatmap_files if self.cfg.heatmaps.enabled else None
        return load_checked(self.cfg, self.trusted, self.active, extra_check=extra)

    def _check_heatmap_files(self, bundle: Any) -> None:
        check_explainer(self.cfg, bundle)

    def _model_stats(self) -> dict[str, Any]:
        return {
            **self.active.info(),
            "loaded": iso_utc(self.active.loaded_ts),
            "selfcheck_max_abs_diff": self.active.check.max_abs_diff,
        }

    def _publish_model_state(self, state: str, **extra: Any) -> None:
        """Retained ``model/state``: ``active`` or ``failed: <reason>``, with the running model."""
        if self.publisher is None:
            return
        payload = {
            "state": state,
            "station": self.cfg.station,
            "ts": iso_utc(time.time()),
            "model": self._model_stats(),
            "reloads": self.reloads,
            "failures": self.watcher.failures if self.watcher is not None else 0,
            **extra,
        }
        try:
            self.publisher.model_state(payload)
        except Exception as e:  # noqa: BLE001 - the state is a report; the line goes on
            log.warning("model/state publish failed: %s", e)

    def _model_failed(self, why: str, reason: str) -> None:
        """The ``model-watch`` thread: a candidate was refused; the running model goes on."""
        log.error(
            "model: %s: refused (%s); still running %s %s",
            why,
            reason,
            self.bundle.name,
            self.active.version,
            extra=event(
                "model",
                msg=f"model failed: {reason}",
                state=f"failed: {reason}",
                trigger=why,
                model=self.active.info(),
            ),
        )
        self._publish_model_state(f"failed: {reason}", trigger=why, error=reason)

    def _swap(self) -> None:
        """The main thread, between two frames: the checked model becomes the running one."""
        assert self.watcher is not None
        new = self.watcher.take()
        if new is None:
            return
        t0 = time.perf_counter()
        old = self.active
        self.active, self.bundle, self.clf, self.model_sha = new, new.bundle, new.clf, new.sha256
        self.runtime = str(getattr(new.clf, "runtime", "unknown"))
        self.thresholds.update(new.thresholds)  # in place: other readers hold this dict
        self.decider.thresholds = {lab: float(new.thresholds.get(lab, 0.5)) for lab in self.labels}
        if self.capture is not None:
            self.capture.prepare = new.clf.prepare  # frames prepared for the old input are re-prepared
        if self.heatmaps is not None:
            from . import gradcam

            b, threads = new.bundle, self.cfg.heatmaps.threads
            negate = gradcam.negated_labels(self.cfg.decision.expected_length)
            self.heatmaps.set_explainer_factory(lambda: gradcam.Explainer(b, threads=threads, negate=negate))
        if self.samples is not None:  # samples name the model that scored them
            self.samples.model = self._sample_model()
        self.watcher.retire(old)
        swap_ms = (time.perf_counter() - t0) * 1000
        self.reloads += 1
        cap = self.capture.stats if self.capture is not None else None
        last = self._last_frame
        self._swapped = {
            "swap_ms": round(swap_ms, 3),
            "last_frame_old": last[0] if last else None,
            "dropped_before": cap.dropped if cap else 0,
            "previous": old.info(),
        }
        del old
        note_selfcheck(new)
        log.info(
            "model: now running %s %s (was %s %s), swapped in %.2f ms",
            new.bundle.name,
            new.version,
            self._swapped["previous"]["name"],
            self._swapped["previous"]["version"],
            swap_ms,
            extra=event(
                "model",
                msg=f"model {new.swap_state} {new.version}",
                state=new.swap_state,
                model=new.info(),
                **self._swapped,
                **new.swap_extra,
            ),
        )
        self._publish_model_state(new.swap_state, previous=self._swapped["previous"], **new.swap_extra)
        self.notifier.status(self._status_text())

    def _log_swap(self, frame: Frame) -> None:
        """The first frame the new model classified: how long the line waited across the swap."""
        sw, self._swapped = self._swapped, None
        assert sw is not None
        now = time.monotonic()
        last = self._last_frame
        cap = self.capture.stats if self.capture is not None else None
        fields = {
            "first_frame_new": frame.seq,
            "last_frame_old": sw["last_frame_old"],
            "frames_between": frame.seq - last[0] - 1 if last else None,
            "capture_gap_ms": round((frame.ts_mono - last[1]) * 1000, 2) if last else None,
            "classify_gap_ms": round((now - last[2]) * 1000, 2) if last else None,
            "dropped_during": (cap.dropped if cap else 0) - sw["dropped_before"],
            "swap_ms": sw["swap_ms"],
            "version": self.active.version,
        }
        log.info(
            "model: first frame %d on %s, %s ms after the last frame of the previous model",
            frame.seq,
            self.active.version,
            fields["classify_gap_ms"],
            extra=event("model_swap", msg="model swap", **fields),
        )

    def _process(self, frame: Frame) -> None:
        t0 = time.perf_counter()
        try:
            clf = self.clf
            if frame.tensor is not None and (frame.prepared_by is None or frame.prepared_by == clf.prepare):
                probs = clf.classify_prepared(frame.tensor)
            else:  # no tensor, or one prepared for the model swapped out: start from the image
                probs = clf.classify(frame.image)
        except Exception as e:  # noqa: BLE001 - one bad frame must not stop the line
            self.classify_errors += 1
            if self.classify_errors == 1:
                log.error("classify failed on frame %d: %s (counted in stats)", frame.seq, e)
            return
        self.inf_ms.append((time.perf_counter() - t0) * 1000)
        if len(self.inf_ms) > 10000:
            del self.inf_ms[:5000]
        self.frames += 1
        if self._swapped is not None:
            self._log_swap(frame)
        done, last = time.monotonic(), self._last_frame
        if last is not None and done - last[2] > self._gap_max_s:  # one compare a frame (stats)
            self._gap_max_s = done - last[2]
        self._last_frame = (frame.seq, frame.ts_mono, done)
        scores = {lab: float(p) for lab, p in zip(self.labels, np.asarray(probs).reshape(-1))}
        still = False
        if self.health is not None:
            if self.health.observe(frame.health):  # measured by the capture thread
                self._publish_health()
            still = self.health.still  # an idle line or a frozen camera: no re-alert of a standing event
        for alert in self.decider.update(frame.seq, frame.ts_wall, scores, image=frame.image, idle=still):
            self.emit(alert)
        if self.sampler is not None:
            quiet = self.decider.open_events == 0
            self.sampler.observe(frame.seq, frame.ts_mono, frame.ts_wall, frame.image, scores, quiet)
        on = self.decider.open_events > 0
        if self.publisher is not None:  # early signal: ON when an event opens, OFF when none is open
            self.publisher.defect(on)
        if on is not self._defect_on:  # after the publish: the bench times ON against this capture_ts
            self._defect_on = on
            log.info(
                "defect %s (frame %d)",
                "ON" if on else "OFF",
                frame.seq,
                extra=event("defect", on=on, frame=frame.seq, capture_ts=round(frame.ts_wall, 6)),
            )

    def shutdown(self, frames_at_stats: int = 0, last_stats: float | None = None) -> None:
        t0 = time.monotonic()
        self.notifier.stopping(f"stopping ({self.stop_reason or 'stop'})")
        reason = self.stop_reason or "stop"
        log.info("stopping (%s)", reason, extra=event("stopping", reason=reason, frames=self.frames))
        self.stop.set()
        # a signal (systemd, Ctrl-C) wants us gone within 5 s; the end of a file or --max-frames
        # can let the heatmap worker finish its queue
        by_signal = self.stop_reason.startswith("SIG")
        if self.capture is not None and self.capture.is_alive():
            self.capture.join(timeout=1.0)
        if self.watcher is not None and self.watcher.is_alive():
            self.watcher.wake()
            self.watcher.join(timeout=1.0)  # a load in progress is abandoned with the process
        if self.rollout is not None and self.rollout.is_alive():
            self.rollout.join(timeout=1.0)  # a download in progress is kept on disk for the next start
        try:
            for alert in self.decider.flush():
                self.emit(alert)
        except Exception as e:  # noqa: BLE001
            log.error("flushing open events failed: %s", e)
        if self.heatmaps is not None:
            self.heatmaps.close(drain_s=HEATMAP_DRAIN_SIGNAL_S if by_signal else HEATMAP_DRAIN_END_S)
            if self.heatmaps.is_alive():
                self.heatmaps.join(timeout=self.heatmaps.drain_s + 0.5)
        if self.samples is not None:
            self.samples.close(drain_s=HEATMAP_DRAIN_SIGNAL_S if by_signal else HEATMAP_DRAIN_END_S / 5)
            if self.samples.is_alive():
                self.samples.join(timeout=self.samples.drain_s + 0.5)
        now = time.monotonic()
        final = self.stats_payload(self.frames - frames_at_stats, now - (last_stats or self.started_mono))
        final["fps"] = round(self.frames / max(1e-6, now - self.started_mono), 2)
        self._publish_stats(final)
        log.info(
            "summary %s", json.dumps(final, separators=(",", ":")), extra=event("summary", msg="summary", stats=final)
        )
        if self.publisher is not None:
            try:
                self.publisher.stop(timeout=2.0)
            except Exception as e:  # noqa: BLE001
                log.error("mqtt stop failed: %s", e)
        if self.outbox is not None:
            try:
                self.outbox.close()
            except Exception:  # noqa: BLE001
                pass
        took = time.monotonic() - t0
        log.info(
            "stopped in %.2f s: %d frames, %d alerts",
            took,
            self.frames,
            self.alerts,
            extra=event("stopped", seconds=round(took, 3), frames=self.frames, alerts=self.alerts),
        )
        self.notifier.close()
