"""``python -m convert demo --config config/demo.yaml`` (what ``make demo`` runs).

1. writes a synthetic seam video with injected defects (``convert.synth.write_video``) and its
   truth CSV into ``demo-out/``;
2. finds a broker: the configured host/port when something answers there, otherwise a private
   Mosquitto (``convert.harness.Broker``) on a free loopback port, stopped at the end, so that a
   newcomer sees MQTT working without installing a service; it prints the command that starts the
   dashboard on that broker;
3. runs the real daemon on it as a subprocess (``python -m edge --config demo-out/demo.run.yaml``,
   the demo config with absolute paths and that broker);
4. prints every alert as it arrives over MQTT (a subscriber on ``<prefix>/<station>/alert``); only
   without any broker (no Mosquitto installed, or ``--no-broker``) from the daemon's log, the alerts
   then waiting in the outbox;
5. prints a summary: frames, fps, alerts vs injected defects (matched by frame range) and where
   the heatmaps are.

``match_alerts`` is the one helper that scores alerts against truth rows (tests use it too).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

DEFAULT_FRAMES = 900
DEFAULT_SEED = 7
VIDEO_W, VIDEO_H, VIDEO_FPS = 640, 480, 30


# --------------------------------------------------------------------------- truth and matching


def read_truth(path: str | os.PathLike) -> list[dict[str, Any]]:
    """``FILE.truth.csv`` → rows with ints for the frame range and box."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append(
                {
                    "defect_id": int(r["defect_id"]),
                    "label": r["label"],
                    "first_frame": int(r["first_frame"]),
                    "last_frame": int(r["last_frame"]),
                    **{k: int(float(r[k])) for k in ("x", "y", "w", "h")},
                }
            )
    return rows


@dataclass
class MatchResult:
    """How alerts line up with injected defects."""

    defects: int
    alerts: int
    detected: list[int] = field(default_factory=list)  # defect ids with >= 1 alert
    missed: list[int] = field(default_factory=list)
    per_defect: dict[int, int] = field(default_factory=dict)  # defect id → alerts matched to it
    false_alerts: list[str] = field(default_factory=list)  # event ids matching no defect

    @property
    def recall(self) -> float:
        return len(self.detected) / self.defects if self.defects else 1.0

    def false_per_1000(self, frames: int) -> float:
        return 1000.0 * len(self.false_alerts) / max(1, frames)


def _alert_range(a: dict) -> tuple[int, int]:
    first = int(a.get("first_frame", a["frame"]))
    last = int(a.get("last_frame", a["frame"]))
    return min(first, int(a["frame"])), max(last, int(a["frame"]))


def match_alerts(alerts: Sequence[dict], truth: Sequence[dict], slack: int = 5, same_label: bool = True) -> MatchResult:
    """Match alerts (ARCHITECTURE.md §6 payloads) to truth rows by overlapping frame ranges.

    An alert matches a defect when its event's frame range (``first_frame``..``last_frame``,
    else ``frame``) overlaps the defect's range widened by ``slack`` frames and — with
    ``same_label`` — the alert's labels include the defect's label (``error`` and ``break``
    count as one family: one defect, one alert, see edge.decide). Each alert is given to the
    overlapping defect whose range is nearest its best frame; alerts matching nothing are false.
    """
    family = {"error": "defect", "break": "defect", "length": "length"}
    res = MatchResult(defects=len(truth), alerts=len(alerts))
    res.per_defect = {int(t["defect_id"]): 0 for t in truth}
    for a in alerts:
        lo, hi = _alert_range(a)
        labels = set(a.get("labels", []))
        fams = {family.get(lab, lab) for lab in labels}
        cands = []
        for t in truth:
            if hi < t["first_frame"] - slack or lo > t["last_frame"] + slack:
                continue
            if same_label and family.get(t["label"], t["label"]) not in fams:
                continue
            mid = (t["first_frame"] + t["last_frame"]) / 2
            cands.append((abs(int(a["frame"]) - mid), int(t["defect_id"])))
        if cands:
            res.per_defect[min(cands)[1]] += 1
        else:
            res.false_alerts.append(str(a.get("event_id")))
    res.detected = [d for d, n in res.per_defect.items() if n > 0]
    res.missed = [d for d, n in res.per_defect.items() if n == 0]
    return res


# --------------------------------------------------------------------------- video


def make_video(path: str | os.PathLike, frames: int, seed: int) -> list[dict[str, Any]]:
    """Write the synthetic seam video + ``.truth.csv``; returns the truth rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from convert import synth

    synth.write_video(path, frames, seed)
    return read_truth(synth.truth_path(path))


# --------------------------------------------------------------------------- broker


def broker_up(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts connections on the configured broker address."""
    from convert.harness import port_open

    return port_open(host, port, timeout)


# --------------------------------------------------------------------------- the demo


def _fmt_alert(a: dict) -> str:
    scores = ", ".join(f"{k} {v:.2f}" for k, v in a.get("scores", {}).items())
    hm = a.get("heatmap") or "-"
    return (
        f"  ALERT {a.get('event_id')}  frame {a.get('frame')}  labels {','.join(a.get('labels', []))}"
        f"  ({scores})  heatmap {Path(hm).name if hm != '-' else '-'}"
    )


def run_config(
    src_cfg: Path,
    out_dir: Path,
    video: Path,
    bundle: str | None,
    mqtt: bool,
    broker: tuple[str, int] | None = None,
) -> tuple[Path, dict]:
    """The demo config with absolute paths, the video, the broker decision (and a bundle override).

    ``broker``: the (host, port) of a private broker, replacing the configured one.
    """
    import yaml

    data = yaml.safe_load(src_cfg.read_text()) or {}
    data.setdefault("camera", {})["device"] = str(video.resolve())
    data["camera"]["source"] = "file"
    model = data.setdefault("model", {})
    if bundle:
        model["bundle"] = str(Path(bundle).resolve())
    elif not Path(model.get("bundle", "")).is_absolute():
        b = Path(model.get("bundle", "edge/models/default"))
        model["bundle"] = str((src_cfg.parent / b) if (src_cfg.parent / b).exists() else b.resolve())
    data.setdefault("mqtt", {})["enabled"] = bool(mqtt)
    if broker is not None:
        data["mqtt"]["host"], data["mqtt"]["port"] = broker
    data.setdefault("heatmaps", {})["dir"] = str((out_dir / "heatmaps").resolve())
    data["outbox"] = str((out_dir / "outbox.sqlite").resolve())
    out = out_dir / "demo.run.yaml"
    out.write_text(
        "# generated by `python -m convert demo` from " + str(src_cfg) + "\n" + yaml.safe_dump(data, sort_keys=False)
    )
    return out, data


def start_private_broker(out_dir: Path) -> Any:
    """A private Mosquitto on a free loopback port (``convert.harness.Broker``), or None when
    Mosquitto is not installed. No persistence: it lives as long as the demo."""
    from convert.harness import MOSQUITTO, Broker

    if MOSQUITTO is None:
        return None
    return Broker(out_dir / "mosquitto", persistence=False).start()


def dashboard_command(host: str, port: int, prefix: str = "seamqc") -> str:
    """The command that opens the factory-floor dashboard on the demo's broker."""
    extra = f" --prefix {prefix}" if prefix != "seamqc" else ""
    return f"python -m convert dashboard --broker {host} --port {port}{extra}"


def start_dashboard(host: str, port: int, prefix: str, out: Path) -> tuple[subprocess.Popen, str]:
    """``python -m convert dashboard`` on the demo's broker (port 8080 when free, else any) → (process,
    its URL, read from the line it prints); its log goes to ``<out>/dashboard.log``."""
    from convert.harness import daemon_env, port_open

    http_port = "0" if port_open("127.0.0.1", 8080) else "8080"
    cmd = [sys.executable, "-m", "convert", "dashboard", "--broker", host, "--port", str(port)]
    cmd += ["--prefix", prefix, "--http-port", http_port]
    log = open(out / "dashboard.log", "w")  # noqa: SIM115 - the child holds it
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=daemon_env())
    finally:
        log.close()
    assert proc.stdout is not None
    for line in proc.stdout:  # it prints its URL once it listens (or exits: EOF)
        if line.startswith("open http://"):
            return proc, line.split()[1]
    proc.wait()
    raise ConfigError(f"demo: the dashboard exited with {proc.returncode} (log: {out / 'dashboard.log'})")


def wait_for_ctrl_c(url: str) -> None:
    """What ``--dashboard`` does after the run: keep the broker and the dashboard up until Ctrl-C."""
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print()


def demo(
    config: str | os.PathLike,
    out_dir: str | os.PathLike = "demo-out",
    frames: int = DEFAULT_FRAMES,
    seed: int = DEFAULT_SEED,
    bundle: str | None = None,
    quiet: bool = False,
    timeout: float = 600.0,
    private_broker: bool = True,
    dashboard: bool = False,
    hold: Callable[[str], None] = wait_for_ctrl_c,
) -> dict[str, Any]:
    """Run the whole demo; returns the summary (also printed).

    ``private_broker``: when no broker answers on the configured host/port, start a private
    Mosquitto for the run (False: alerts wait in the outbox, printed from the daemon's log).
    ``dashboard``: also start ``convert dashboard`` on the broker before the run, print its URL, and
    after the summary call ``hold(url)`` (default: wait for Ctrl-C) before stopping it and the
    private broker.
    """
    from edge.config import load_config
    from edge.errors import ModelError

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    src_cfg = Path(config)
    cfg = load_config(src_cfg)  # validates the demo config itself (file:line errors)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video = out / "seam.mp4"
    host, port = cfg.mqtt.host, cfg.mqtt.port
    up = cfg.mqtt.enabled and broker_up(host, port)
    broker = None
    if cfg.mqtt.enabled and not up and private_broker:
        broker = start_private_broker(out)
        if broker is not None:
            host, port, up = broker.host, broker.port, True
    dash: subprocess.Popen | None = None
    try:
        run_cfg, data = run_config(
            src_cfg, out, video, bundle, mqtt=up, broker=(host, port) if broker is not None else None
        )
        bpath = Path(data["model"]["bundle"])
        if not (bpath / "manifest.json").exists():
            raise ModelError(
                f"{src_cfg}: model.bundle: {bpath}: the shipped model is missing "
                "(run `make shipped-model`, or pass --bundle DIR)"
            )
        topic = f"{cfg.mqtt.prefix}/{cfg.station}/alert"
        if broker is not None:
            say(
                f"demo: no broker answers on {cfg.mqtt.host}:{cfg.mqtt.port}: started a private Mosquitto on "
                f"{host}:{port} for this run (stopped at the end); printing alerts from MQTT {topic}"
            )
        elif up:
            say(f"demo: broker {host}:{port} is up: printing alerts from MQTT {topic}")
        else:
            if not cfg.mqtt.enabled:
                why = "mqtt.enabled is false"
            elif private_broker:
                why = "nothing answers and Mosquitto is not installed for a private one"
            else:
                why = "nothing answers, and --no-broker"
            say(
                f"demo: no broker ({cfg.mqtt.host}:{cfg.mqtt.port}: {why}): alerts go to the outbox; "
                "printing them from the daemon log"
            )
        url = None
        if up and dashboard:
            dash, url = start_dashboard(host, port, cfg.mqtt.prefix, out)
            cmd = dashboard_command(host, port, cfg.mqtt.prefix)
            say(f"demo: dashboard on {url} ({cmd}; log {out / 'dashboard.log'})")
        elif up:
            say(f"demo: to watch it on the dashboard while it runs: {dashboard_command(host, port, cfg.mqtt.prefix)}")
        elif dashboard:
            say("demo: no broker, so no dashboard (--dashboard needs Mosquitto or a broker on the configured port)")
        say(f"demo: writing a {frames}-frame synthetic seam video with injected defects → {video}")
        truth = make_video(video, frames, seed)
        say(f"demo: {len(truth)} injected defects ({', '.join(sorted({t['label'] for t in truth})) or 'none'})")
        result = _run(cfg, data, run_cfg, out, video, truth, host, port, up, topic, say, timeout)
        _summary(result, truth, data, up, broker is not None, host, port, url, out, say)
        if dash is not None and url is not None:
            say(f"demo: the broker and the dashboard ({url}) stay up: Ctrl-C to stop them")
            hold(url)
    finally:
        if dash is not None:
            dash.terminate()
            try:
                dash.wait(10)
            except subprocess.TimeoutExpired:
                dash.kill()
                dash.wait()
            if dash.stdout is not None:
                dash.stdout.close()
        if broker is not None:
            broker.stop()
            say(f"  private Mosquitto on {host}:{port} stopped")
    return result


def _summary(
    result: dict[str, Any],
    truth: list[dict[str, Any]],
    data: dict,
    up: bool,
    private: bool,
    host: str,
    port: int,
    url: str | None,
    out: Path,
    say: Any,
) -> None:
    """summary.json and the printed summary of a run."""
    res = result.pop("_match")
    result["broker"] = {"host": host, "port": port, "private": private} if up else None
    result["dashboard"] = url
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    n_frames = result["frames"]
    say("")
    say(
        f"demo summary: {n_frames} frames in {result['wall_s']:.1f} s ({result['fps']} fps classified, runtime "
        f"{result['runtime']}, inference p50 {(result['inference_ms'] or {}).get('p50')} ms)"
    )
    say(
        f"  alerts: {result['alerts']} (via {result['via']}); injected defects: {len(truth)}, "
        f"alerted: {len(res.detected)} ({100 * res.recall:.0f} %), missed: {len(res.missed)}, "
        f"false alerts: {len(res.false_alerts)}"
    )
    if result["earlier_alerts"]:
        say(f"  also delivered: {result['earlier_alerts']} alert(s) an earlier run had left in the outbox")
    multi = {d: n for d, n in res.per_defect.items() if n > 1}
    if multi:
        say(f"  defects with more than one alert: {multi}")
    hm = result["heatmaps"]
    say(f"  heatmaps: {hm['overlays']} of {result['alerts']} alerts have an overlay in {hm['dir']}")
    if not up:
        say(f"  outbox: {data['outbox']} holds {result['outbox']['depth']} alert(s) for the next broker connection")
    say(f"  summary written to {out / 'summary.json'}")


def _run(
    cfg: Any,
    data: dict,
    run_cfg: Path,
    out: Path,
    video: Path,
    truth: list[dict[str, Any]],
    host: str,
    port: int,
    up: bool,
    topic: str,
    say: Any,
    timeout: float,
) -> dict[str, Any]:
    """The daemon run itself: the alert subscriber (when a broker is up), the daemon, the scores."""
    from convert.harness import DaemonProcess, MqttSubscriber, errors
    from edge.errors import ConfigError

    alerts: dict[str, dict] = {}  # event id → alert, in arrival order
    lock = threading.Lock()
    this_run: list[str] = []  # "<station>-<boot>-": event ids of this run (from the daemon's start event)

    def on_alert(a: dict) -> None:
        eid = str(a.get("event_id"))
        with lock:
            if eid in alerts:
                return
            alerts[eid] = a
        earlier = bool(this_run) and not eid.startswith(this_run[0])
        say(_fmt_alert(a) + ("  (an earlier run's, from the outbox)" if earlier else ""))

    listener = None
    if up:

        def on_message(m: Any) -> None:
            try:
                a = m.json()
            except ValueError:
                return
            if isinstance(a, dict) and "event_id" in a:
                on_alert(a)

        listener = MqttSubscriber(host, port, topic, client_id=f"seamqc-demo-{os.getpid()}", on_message=on_message)
        try:
            listener.wait_subscribed(5)
        except AssertionError:  # it answered TCP but not MQTT: print from the log instead
            listener.close()
            listener = None
    log_path = out / "daemon.log"
    t0 = time.monotonic()
    summary_line: dict = {}
    log_alerts: list[dict] = []
    proc = DaemonProcess(run_cfg, log_path=log_path, cwd=None)
    say(f"demo: running {' '.join(proc.cmd)}  (log: {log_path})")
    try:
        for ev in proc:  # the daemon's JSON log events, as they come
            if ev.name == "start" and ev.get("boot"):
                this_run.append(f"{ev.get('station')}-{ev.get('boot')}-")
            elif ev.name == "alert":
                log_alerts.append(ev.data["alert"])
                if listener is None:
                    on_alert(ev.data["alert"])
            elif ev.name == "summary":
                summary_line = ev.data.get("stats") or {}
            for line in errors([ev]):
                say("  " + line)
            if time.monotonic() - t0 > timeout and proc.poll() is None:
                proc.terminate()
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - t0
    ours = [str(a.get("event_id")) for a in log_alerts]
    if listener is not None:
        deadline = time.monotonic() + 5  # the last alerts are still on their way from the broker
        while not all(e in alerts for e in ours) and time.monotonic() < deadline:
            time.sleep(0.05)
        listener.close()
    if rc != 0:
        tail = errors(proc.snapshot())[-1:] or [proc.tail(1) or "(no output)"]
        err = ConfigError(f"the daemon exited with {rc}: {tail[0]} (log: {log_path})")
        err.exit_code = rc if 0 < rc < 256 else 1
        raise err
    # this run's alerts only (an earlier run's outbox may be delivered too), as they came over MQTT
    final = [alerts[e] for e in ours if e in alerts] if listener is not None else log_alerts
    n_frames = int(summary_line.get("frames", 0))
    res = match_alerts(final, truth)
    hm_dir = Path(data["heatmaps"]["dir"])
    # this run's alerts only: the directory keeps earlier runs' heatmaps (retention trims it)
    n_hm = sum((hm_dir / f"{a.get('event_id')}.overlay.jpg").is_file() for a in final)
    return {
        "frames": n_frames,
        "fps": summary_line.get("fps"),
        "inference_ms": summary_line.get("inference_ms"),
        "runtime": summary_line.get("runtime"),
        "wall_s": round(wall, 1),
        "alerts": len(final),
        "alerts_missing_on_mqtt": len(ours) - len(final),
        "earlier_alerts": len(set(alerts) - set(ours)),
        "via": "mqtt" if listener is not None else "daemon log (outbox)",
        "defects": len(truth),
        "detected": len(res.detected),
        "missed": res.missed,
        "false_alerts": len(res.false_alerts),
        "alerts_per_defect": res.per_defect,
        "heatmaps": {"dir": str(hm_dir), "overlays": n_hm},
        "outbox": {"path": data["outbox"], "depth": summary_line.get("outbox_depth")},
        "video": str(video),
        "truth": str(video.with_suffix(".truth.csv")),
        "_match": res,
    }


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run the edge daemon on a generated seam video (make demo)", description=__doc__.splitlines()[0]
    )
    p.add_argument("--config", default="config/demo.yaml", help="demo config (default: config/demo.yaml)")
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help=f"video length (default {DEFAULT_FRAMES})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--bundle", help="use this model bundle instead of the config's")
    p.add_argument(
        "--no-broker",
        action="store_true",
        help="do not start a private Mosquitto when no broker answers (alerts then wait in the outbox)",
    )
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="also start `convert dashboard` on the broker, print its URL, keep both up after the run until Ctrl-C",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.errors import DataError

    if args.frames < 30:
        raise DataError(f"--frames {args.frames}: use at least 30 frames")
    demo(
        args.config,
        args.out,
        args.frames,
        args.seed,
        args.bundle,
        private_broker=not args.no_broker,
        dashboard=args.dashboard,
    )
    return 0
