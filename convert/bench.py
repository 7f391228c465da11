"""``bench``: latency, throughput, heatmap cost, memory, start-up and alert latency in one run.

``python -m convert bench [--quick] [--json FILE] [--bundle DIR]`` (``make bench``) prints a
markdown table with the targets (PASS/MISS) and writes the JSON of DESIGN §4. Everything is
measured side by side in ONE run and reported as ratios too, because a shared machine is noisy:
absolute numbers drift between runs, ratios measured minutes apart drift much less.

What runs where (so that one runtime's thread pools never disturb another's numbers):

* TensorFlow (Keras eager ``model(x)``, ``tf.function``, the full-TF Grad-CAM, the export of the
  model variants) runs in worker subprocesses, one per thread count (TF's intra-op pool size is
  fixed once TF starts); this process never imports TensorFlow.
* LiteRT latencies run in this process, interleaved in rounds so drift hits all variants alike.
* The daemon runs as ``python -m edge`` subprocesses on generated configs against a private
  Mosquitto on a free loopback port; its frame rate comes from its own retained ``stats``
  messages (Δframes / Δuptime between stats, so start-up is excluded), RSS from psutil.

Knobs used to load the daemon on purpose ("forced" runs): ``decision.thresholds.error: 0``
makes every frame flag ``error`` and ``decision.max_event_frames: K`` then closes one event (one
alert, one heatmap) every K frames: K = 20 gives heatmaps on 5 % of frames.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge.errors import ConfigError, ModelError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = Path("edge/models/default")
ROI = [192, 112, 256, 256]
LABELS_EXPLAINED = ("error", "break", "length")  # every label that can be flagged
MOBILENET_V2_MACS = 300e6  # multiply-adds at 224×224 (Sandler et al. 2018)

# XNNPACK README (google/XNNPACK, benchmarked Feb 8 2022, end2end-bench, 4 threads,
# Raspberry Pi 4 BCM2711 ARM64): MobileNet v2 1.0 FP32 46 ms, INT8 (per-channel) 17 ms.
PI4_MNV2_MS = {"fp32": 46.0, "int8": 17.0}
PI5_OVER_PI4 = (2.0, 3.0)  # Raspberry Pi 5 announcement: "2-3x the CPU performance" of Pi 4

TARGETS = {  # name: (json path, comparison, value, text)
    "e2e_over_bound": (">=", 0.90, "daemon fps / bare interpreter bound"),
    "heatmap_throughput_loss": ("<=", 0.10, "fps loss with heatmaps on ~5 % of frames"),
    "heatmap_ratio_litert": ("<=", 1.5, "LiteRT Grad-CAM (all labels) / one float forward"),
    "rss_litert_mb": ("<=", 150.0, "daemon RSS, LiteRT only (MB)"),
    "startup_s": ("<=", 2.0, "process start → first classified frame (s), no TF"),
}


@dataclass(frozen=True)
class Plan:
    quick: bool
    iters: int
    warmup: int
    rounds: int
    archs: tuple[str, ...]
    tf_threads: tuple[int, ...]
    lite_threads: tuple[int, ...]
    mobilenet: bool
    steady_s: float
    stats_interval: float
    startup_runs: int
    video_frames: int
    min_alerts: int
    e2e_runs: int
    hm_pairs: int
    hm_steady_s: float
    heatmap_repeats: int


def make_plan(quick: bool, cores: int) -> Plan:
    all_t = max(1, cores)
    threads = tuple(sorted({1, all_t}))
    if quick:
        return Plan(True, 30, 5, 2, (), (all_t,), threads, False, 2.0, 0.4, 1, 150, 3, 1, 1, 1.6, 10)
    return Plan(False, 240, 20, 4, ("resnet", "resnet-int8", "cnn"), threads, threads, True, 5.0, 1.0, 3,
                420, 10, 2, 3, 5.0, 40)


# ----------------------------------------------------------------------------- small helpers


def pct(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q))


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"p50": round(pct(values, 50), 3), "p99": round(pct(values, 99), 3),
            "mean": round(float(np.mean(values)), 3), "n": len(values)}


def time_interleaved(fns: dict[str, Callable[[], Any]], iters: int, warmup: int,
                     rounds: int) -> dict[str, list[float]]:
    """Per-call ms of each function; calls are done in rounds (a,b,c,a,b,c…) so drift hits all alike."""
    import time as _t

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    per = max(1, -(-iters // rounds))
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(per):
                t0 = _t.perf_counter()
                fn()
                out[k].append((_t.perf_counter() - t0) * 1e3)
    return out


def machine_info() -> dict[str, Any]:
    import importlib.metadata as md

    def ver(*names: str) -> str | None:
        for n in names:
            try:
                return md.version(n)
            except md.PackageNotFoundError:
                continue
        return None

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(), "usable_cores": usable,
        "os": platform.platform(), "python": platform.python_version(),
        "tensorflow": ver("tensorflow-cpu", "tensorflow"), "keras": ver("keras"),
        "ai_edge_litert": ver("ai-edge-litert"), "numpy": ver("numpy"),
        "opencv": ver("opencv-python-headless", "opencv-python"), "paho_mqtt": ver("paho-mqtt"),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _env() -> dict[str, str]:
    """The environment for subprocesses: this checkout first on the import path."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _iso_to_epoch(ts: str) -> float:
    d = _dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.timezone.utc)
    return d.timestamp()


# ----------------------------------------------------------------------------- TF worker (subprocess)


def count_macs(model) -> int:
    """Multiply-accumulates of one forward pass (Conv2D, DepthwiseConv2D, Dense; the rest is small)."""
    macs = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "DepthwiseConv2D", "Dense"):
            k = tuple(int(v) for v in layer.kernel.shape)
            out = tuple(int(v) for v in layer.output.shape[1:-1])
            pos = int(np.prod(out)) if out else 1
            macs += pos * int(np.prod(k))
        elif hasattr(layer, "layers"):  # nested model
            macs += count_macs(layer)
    return int(macs)


def _tf_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a subprocess: TF latencies (+ exports, FLOPs, TF Grad-CAM) at ``spec['threads']``."""
    threads = int(spec["threads"])
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    from convert.models import build_model, read_meta
    from convert.tflite import keras_to_tflite

    out_dir = Path(spec["out_dir"])
    h, w, filters, n = int(spec["height"]), int(spec["width"]), int(spec["filters"]), int(spec["n_labels"])
    res: dict[str, Any] = {"threads": threads, "models": {}, "latency": {}}
    models: dict[str, Any] = {}
    keras.utils.set_random_seed(0)
    for arch in spec.get("archs", []):
        models[arch] = build_model(arch, n, h, w, filters)
    if spec.get("bundle_keras"):
        models["bundle"] = keras.models.load_model(spec["bundle_keras"], compile=False)
    if spec.get("mobilenet"):
        models["mobilenet_v2"] = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)
    for name, m in models.items():
        ih, iw = (int(v) for v in m.inputs[0].shape[1:3])
        info = {"macs": count_macs(m), "params": int(m.count_params()), "height": ih, "width": iw}
        if name == "bundle":
            info["meta"] = read_meta(spec["bundle_keras"])
        if spec.get("export") and name != "bundle":
            for kind, q in (("fp32", "none"), ("int8", "dynamic")):
                p = out_dir / f"{name}.{kind}.tflite"
                p.write_bytes(keras_to_tflite(m, ih, iw, q))
                info[f"tflite_{kind}"] = str(p)
                info[f"tflite_{kind}_bytes"] = p.stat().st_size
        res["models"][name] = info
    fns = {}
    rng = np.random.default_rng(0)
    for name, m in models.items():
        if name == "mobilenet_v2" and not spec.get("time_mobilenet"):
            continue
        ih, iw = (int(v) for v in m.inputs[0].shape[1:3])
        xt = tf.constant(rng.standard_normal((1, ih, iw, 3)).astype(np.float32))
        fn = tf.function(lambda t, _m=m: _m(t, training=False))
        fns[f"{name}|keras"] = (lambda _m=m, _x=xt: _m(_x, training=False).numpy())
        fns[f"{name}|tf.function"] = (lambda _f=fn, _x=xt: _f(_x).numpy())
    times = time_interleaved(fns, int(spec["iters"]), int(spec["warmup"]), int(spec["rounds"]))
    for k, v in times.items():
        name, rt = k.split("|")
        res["latency"].setdefault(name, {})[rt] = summary_ms(v)

    if spec.get("heatmap_bundle"):
        import cv2

        from edge.gradcam import measure_cost
        from edge.preprocess import preprocess

        frame = cv2.imread(spec["frame"])
        cost = measure_cost(spec["heatmap_bundle"], frame, list(spec["labels"]),
                            threads=int(spec["hm_threads"]), repeats=int(spec["hm_repeats"]), method="tf")
        m = models.get("bundle") or keras.models.load_model(spec["bundle_keras"], compile=False)
        ih, iw = (int(v) for v in m.inputs[0].shape[1:3])
        x = tf.constant(preprocess(frame, ih, iw)[None])
        fwd = time_interleaved({"k": lambda: m(x, training=False).numpy()},
                               int(spec["hm_repeats"]), 2, 1)["k"]
        res["heatmap_tf"] = {"explain_ms": cost["explain_ms"], "forward_litert_fp32_ms": cost["forward_ms"],
                             "forward_keras_ms": float(np.median(fwd))}
    return res


def _fallback_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Subprocess: an untrained int8-friendly ResNet exported as a bundle (when none is shipped yet)."""
    import keras

    from convert.export import export_bundle
    from convert.models import build_model, save_model
    from convert.synth import write_dataset

    out = Path(spec["out"])
    work = out.parent / (out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    keras.utils.set_random_seed(0)
    size, filters = int(spec["size"]), int(spec["filters"])
    labels = ["good", "error", "break", "length"]
    model = build_model("resnet-int8", len(labels), size, size, filters)
    kpath = work / "untrained.keras"
    save_model(model, kpath, {"labels": labels, "task": "multilabel", "arch": "resnet-int8", "height": size,
                              "width": size, "filters": filters, "trained_on": "untrained (bench fallback)"})
    write_dataset(work / "cal", 48, seed=7)
    export_bundle(kpath, work / "cal" / "data.csv", out, force=True, name="bench-untrained", int8="dynamic")
    shutil.rmtree(work, ignore_errors=True)
    return {"bundle": str(out)}


def _worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    fn = {"tf": _tf_worker, "fallback": _fallback_worker}[spec["kind"]]
    res = fn(spec)
    Path(spec["result"]).write_text(json.dumps(res))
    return 0


def run_worker(spec: dict[str, Any], work: Path, tag: str, timeout: float = 900) -> dict[str, Any]:
    spec = dict(spec, result=str(work / f"{tag}.result.json"))
    sp = work / f"{tag}.spec.json"
    sp.write_text(json.dumps(spec))
    log = work / f"{tag}.log"
    env = dict(_env(), TF_CPP_MIN_LOG_LEVEL="2")
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "convert.bench", "--worker", str(sp)], stdout=f, stderr=f,
                            env=env, cwd=str(ROOT), timeout=timeout).returncode
    if rc != 0:
        tail = [ln for ln in log.read_text().strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
        raise ModelError(f"bench worker {tag} failed (exit {rc}): {tail[0][:300]} (log: {log})")
    return json.loads(Path(spec["result"]).read_text())


# ----------------------------------------------------------------------------- LiteRT (this process)


def litert_latency(files: dict[str, str], threads: tuple[int, ...], plan: Plan) -> dict[str, dict[str, dict]]:
    """{name|runtime: path} → {name: {runtime: {threads: summary}}}, interleaved per thread count."""
    from edge.classify import open_interpreter

    out: dict[str, dict[str, dict]] = {}
    rng = np.random.default_rng(1)
    for t in threads:
        fns = {}
        for key, path in files.items():
            interp, _ = open_interpreter(path, t)
            d = interp.get_input_details()[0]
            o = interp.get_output_details()[0]["index"]
            x = rng.standard_normal(tuple(d["shape"])).astype(np.float32)
            if d["dtype"] != np.float32:  # full-int8 input
                x = np.zeros(tuple(d["shape"]), d["dtype"])

            def call(_i=interp, _x=x, _n=d["index"], _o=o):
                _i.set_tensor(_n, _x)
                _i.invoke()
                return _i.get_tensor(_o)

            fns[key] = call
        for key, v in time_interleaved(fns, plan.iters, plan.warmup, plan.rounds).items():
            name, rt = key.split("|")
            out.setdefault(name, {}).setdefault(rt, {})[str(t)] = summary_ms(v)
    return out


def pipeline_costs(bundle: Path, video: Path, frame: np.ndarray, threads: int, plan: Plan) -> dict[str, Any]:
    """Per-frame ms of the daemon's two threads' steps, interleaved.

    Capture thread: decode + ROI copy (one FFmpeg thread, the daemon's default), then ``prepare``
    (preprocess + quantise). Classifier thread: ``classify_prepared`` (set_tensor + invoke + read).
    ``classify`` (all of it in one thread, as before the split) is timed for comparison.
    """
    import cv2

    from edge.classify import Classifier

    clf = Classifier(bundle, threads=threads)
    params = [cv2.CAP_PROP_N_THREADS, 1] if hasattr(cv2, "CAP_PROP_N_THREADS") else []
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, params)
    x, y, w, h = ROI
    tensor = clf.prepare(frame)

    def decode() -> np.ndarray:
        ok, img = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, img = cap.read()
        return np.ascontiguousarray(img[y:y + h, x:x + w]).copy()

    try:
        fns = {"decode_roi": decode, "prepare": lambda: clf.prepare(frame),
               "classify_prepared": lambda: clf.classify_prepared(tensor),
               "classify": lambda: clf.classify(frame)}
        t = time_interleaved(fns, plan.iters, plan.warmup, plan.rounds)
    finally:
        cap.release()
    p50 = {k: round(pct(v, 50), 3) for k, v in t.items()}
    capture_ms = p50["decode_roi"] + p50["prepare"]
    return {"ms_p50": p50, "threads": threads, "capture_thread_ms": round(capture_ms, 3),
            "serial_bound_fps": round(1000 / (capture_ms + p50["classify_prepared"]), 1),
            "overlapped_bound_fps": round(1000 / max(capture_ms, p50["classify_prepared"]), 1)}


class BoundProbe:
    """The bare interpreter bound, sampled in bursts right before and after each e2e daemon run.

    The machine's load changes from minute to minute, so the bound that the daemon's frame rate is
    compared with is measured interleaved with the daemon runs, not minutes earlier.
    """

    def __init__(self, path: str, threads: int) -> None:
        from edge.classify import open_interpreter

        self.interp, _ = open_interpreter(path, threads)
        d = self.interp.get_input_details()[0]
        self.i_in, self.dtype, self.shape = d["index"], d["dtype"], tuple(d["shape"])
        self.i_out = self.interp.get_output_details()[0]["index"]
        self.x = np.random.default_rng(2).standard_normal(self.shape).astype(np.float32) \
            if self.dtype == np.float32 else np.zeros(self.shape, self.dtype)
        self.samples: list[float] = []

    def burst(self, n: int, warmup: int = 5) -> None:
        def call() -> None:
            self.interp.set_tensor(self.i_in, self.x)
            self.interp.invoke()
            self.interp.get_tensor(self.i_out)

        self.samples += time_interleaved({"b": call}, n, warmup, 1)["b"]


# ----------------------------------------------------------------------------- broker, listener, daemon


class LocalBroker:
    """A private Mosquitto on a free loopback port (no persistence), stopped by ``stop``."""

    def __init__(self, work: Path) -> None:
        sbin = Path("/usr/sbin/mosquitto")
        exe = shutil.which("mosquitto") or (str(sbin) if sbin.exists() else None)
        if exe is None:
            raise ConfigError("bench: mosquitto not found (apt-get install mosquitto; `make bench` does it)")
        self.port = _free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        f"log_dest file {work / 'mosquitto.log'}\n")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"bench: mosquitto did not start on port {self.port} "
                                  f"(log: {work / 'mosquitto.log'})")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Listener:
    """Loopback paho subscriber on ``seamqc/#``: every message with its receive time."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.msgs: list[tuple[float, str, bytes]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"seamqc-bench-{os.getpid()}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("seamqc/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not ready.wait(5):
            raise ConfigError(f"bench: cannot subscribe on the local broker (port {port})")

    def _on_message(self, client, userdata, msg) -> None:
        now = time.time()
        with self.lock:
            self.msgs.append((now, msg.topic, bytes(msg.payload)))

    def of(self, station: str, kind: str) -> list[tuple[float, dict]]:
        topic = f"seamqc/{station}/{kind}"
        with self.lock:
            items = [(t, p) for t, tp, p in self.msgs if tp == topic]
        out = []
        for t, p in items:
            try:
                out.append((t, json.loads(p)))
            except ValueError:
                continue
        return out

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


@dataclass
class DaemonRun:
    tag: str
    rc: int
    t_spawn: float
    lines: list[tuple[float, str]]
    rss: list[tuple[float, float]]  # (time, MB)
    tf_mapped: bool | None
    first_heatmap_t: float | None
    stop_t: float | None = None
    summary: dict = field(default_factory=dict)

    def line_time(self, needle: str) -> float | None:
        for t, ln in self.lines:
            if needle in ln:
                return t
        return None


def daemon_config(work: Path, tag: str, bundle: Path, video: Path, port: int | None, *, threads: int,
                  realtime: bool, loop: bool, forced_every: int | None, heatmaps: str | None,
                  stats_interval: float, hm_threads: int) -> tuple[Path, str]:
    import yaml

    station = f"bench-{tag}"
    decision: dict[str, Any] = {"expected_length": "2mm", "min_frames": 2, "window": 3}
    if forced_every:
        decision = {"expected_length": "any", "min_frames": 1, "window": 1, "thresholds": {"error": 0.0},
                    "max_event_frames": int(forced_every)}
    hm_dir = work / f"heatmaps-{tag}"
    shutil.rmtree(hm_dir, ignore_errors=True)
    cfg = {
        "station": station,
        "camera": {"source": "file", "device": str(video), "width": 640, "height": 480, "fps": 30, "roi": ROI,
                   "realtime": realtime, "loop": loop},
        "model": {"bundle": str(bundle), "threads": threads},
        "decision": decision,
        "mqtt": ({"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 1}
                 if port else {"enabled": False}),
        "heatmaps": ({"enabled": True, "dir": str(hm_dir), "method": heatmaps, "threads": hm_threads,
                      "max_mb": 200} if heatmaps else {"enabled": False, "dir": str(hm_dir)}),
        "outbox": str(work / f"outbox-{tag}.sqlite"),
        "stats_interval": stats_interval,
        "log_level": "INFO",
    }
    for suffix in ("", "-wal", "-shm"):
        Path(str(cfg["outbox"]) + suffix).unlink(missing_ok=True)
    p = work / f"daemon-{tag}.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p, station


def run_daemon(cfg: Path, tag: str, work: Path, *, max_frames: int | None = None,
               steady_s: float | None = None, stop_after_heatmap_s: float | None = None,
               stop_when: Callable[[], bool] | None = None, timeout: float = 120.0) -> DaemonRun:
    """Run ``python -m edge`` until it exits, ``steady_s`` after its ``running`` line, or a condition."""
    import psutil

    cmd = [sys.executable, "-m", "edge", "--config", str(cfg)]
    if max_frames:
        cmd += ["--max-frames", str(max_frames)]
    env = dict(_env(), PYTHONUNBUFFERED="1")
    hm_dir = work / f"heatmaps-{tag}"
    lines: list[tuple[float, str]] = []
    t_spawn = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=env, cwd=str(ROOT))

    def reader() -> None:
        assert proc.stdout is not None
        for ln in proc.stdout:
            lines.append((time.time(), ln.rstrip("\n")))

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    ps = psutil.Process(proc.pid)
    rss: list[tuple[float, float]] = []
    tf_mapped = None
    first_hm = None
    running_t = None
    stop_t = None
    try:
        while proc.poll() is None:
            now = time.time()
            try:
                rss.append((now, ps.memory_info().rss / 2 ** 20))
            except psutil.Error:
                pass
            if running_t is None and any(" running: " in ln for _, ln in lines[-20:]):
                running_t = now
            if first_hm is None and hm_dir.is_dir() and any(hm_dir.glob("*.json")):
                first_hm = now
            if tf_mapped is None and running_t is not None and now - running_t > 0.5:
                try:
                    tf_mapped = any("site-packages/tensorflow/" in m.path for m in ps.memory_maps())
                except psutil.Error:
                    pass
            want_stop = (
                (steady_s is not None and running_t is not None and now - running_t >= steady_s)
                or (stop_after_heatmap_s is not None and first_hm is not None
                    and now - first_hm >= stop_after_heatmap_s)
                or (stop_when is not None and stop_when())
            )
            if want_stop and stop_t is None:
                stop_t = now
                proc.send_signal(signal.SIGTERM)
            if now - t_spawn > timeout:
                proc.kill()
                break
            time.sleep(0.1)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    th.join(timeout=5)
    (work / f"daemon-{tag}.log").write_text("\n".join(f"{t:.3f} {ln}" for t, ln in lines) + "\n")
    run = DaemonRun(tag, rc, t_spawn, lines, rss, tf_mapped, first_hm, stop_t)
    for _, ln in lines:
        if " summary " in ln:
            try:
                run.summary = json.loads(ln.split(" summary ", 1)[1])
            except ValueError:
                pass
    if rc not in (0, -signal.SIGTERM):
        tail = [ln for _, ln in lines if ln.strip()][-1:] or ["(no output)"]
        raise ModelError(f"bench: daemon run {tag} exited with {rc}: {tail[0][:300]} "
                         f"(log: {work / f'daemon-{tag}.log'})")
    return run


def stats_fps(listener: Listener, station: str, run: DaemonRun) -> dict[str, Any]:
    """fps between the daemon's periodic stats messages (start-up and shutdown excluded)."""
    stop_line = run.line_time(" stopping (")
    msgs = [(t, m) for t, m in listener.of(station, "stats") if stop_line is None or t < stop_line]
    pts = [(float(m["uptime_s"]), int(m["frames"])) for _, m in msgs if m.get("frames", 0) > 0]
    if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
        (u0, f0), (u1, f1) = pts[0], pts[-1]
        return {"fps": round((f1 - f0) / (u1 - u0), 2), "frames": f1 - f0, "seconds": round(u1 - u0, 2),
                "source": "stats (Δframes/Δuptime)", "stats_messages": len(pts)}
    s = run.summary
    return {"fps": s.get("fps"), "frames": s.get("frames"), "seconds": s.get("uptime_s"),
            "source": "summary (includes start-up)", "stats_messages": len(pts)}


def steady_rss(run: DaemonRun, after: float | None) -> dict[str, float | None]:
    pts = [mb for t, mb in run.rss if after is None or t >= after]
    if not pts:
        return {"max": None, "median": None}
    return {"max": round(max(pts), 1), "median": round(float(np.median(pts)), 1), "samples": len(pts)}


# ----------------------------------------------------------------------------- inputs


def bundle_info(bundle: Path) -> dict[str, Any]:
    from convert.models import read_meta
    from edge.bundle import load_bundle

    b = load_bundle(bundle)
    meta = read_meta(b.path("keras")) if b.has("keras") else {}
    src = b.manifest.get("source") or {}
    filters = meta.get("filters")
    return {"path": str(bundle), "name": b.name, "height": b.height, "width": b.width,
            "labels": list(b.labels), "arch": src.get("arch") or meta.get("arch"), "filters": filters,
            "int8_quantization": ((b.manifest.get("parity") or {}).get("int8") or {}).get("quantization"),
            "roles": list(b.files), "has_keras": b.has("keras"), "has_explainer": bool(b.gradcam)}


def resolve_bundle(arg: str | None, work_root: Path) -> tuple[Path, str]:
    if arg:
        p = Path(arg)
        if not (p / "manifest.json").is_file():
            raise ModelError(f"--bundle {p}: no manifest.json there (not a model bundle)")
        return p.resolve(), "given"
    shipped = ROOT / DEFAULT_BUNDLE
    if (shipped / "manifest.json").is_file():
        return shipped, "shipped"
    fb = work_root / "fallback-bundle"
    if not (fb / "manifest.json").is_file():
        _say(f"{DEFAULT_BUNDLE} is not shipped yet: exporting an untrained int8-friendly ResNet "
             f"(128×128, filters 8, as `convert ship`) to {fb}")
        work_root.mkdir(parents=True, exist_ok=True)
        run_worker({"kind": "fallback", "out": str(fb), "size": 128, "filters": 8}, work_root, "fallback")
    return fb, "fallback (untrained, shipped bundle missing)"


def make_inputs(work: Path, frames: int, seed: int = 5) -> tuple[Path, Path, list]:
    """The synthetic seam video (dense defects) and one ROI frame with a defect, for heatmaps."""
    import cv2

    from convert.synth import write_video

    video = work / f"seam-{frames}.mp4"
    truth_csv = video.with_suffix(".truth.csv")
    if not (video.is_file() and truth_csv.is_file()):
        write_video(video, frames, seed=seed, defect_every_mm=36)
    import csv

    truth = list(csv.DictReader(open(truth_csv)))
    defects = [r for r in truth if r["label"] in ("error", "break")] or truth
    idx = (int(defects[0]["first_frame"]) + int(defects[0]["last_frame"])) // 2 if defects else frames // 2
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
    ok, img = cap.read()
    cap.release()
    if not ok:
        raise ModelError(f"{video}: cannot read frame {idx}")
    x, y, w, h = ROI
    frame = work / "frame.png"
    cv2.imwrite(str(frame), img[y:y + h, x:x + w])
    return video, frame, truth


# ----------------------------------------------------------------------------- the bench


def bench(bundle_arg: str | None, quick: bool, work_root: Path, json_path: Path | None) -> dict[str, Any]:
    t_start = time.monotonic()
    phases: dict[str, float] = {}
    last = [t_start]

    def _lap() -> float:
        now = time.monotonic()
        d, last[0] = round(now - last[0], 1), now
        return d

    work_root = Path(work_root).resolve()  # the daemon resolves config paths against the config's folder
    machine = machine_info()
    cores = int(machine["usable_cores"] or 1)
    plan = make_plan(quick, cores)
    work_root.mkdir(parents=True, exist_ok=True)
    bundle, bundle_src = resolve_bundle(bundle_arg, work_root)
    binfo = bundle_info(bundle)
    binfo["source"] = bundle_src
    binfo["untrained"] = bundle_src.startswith("fallback")
    h, w = binfo["height"], binfo["width"]
    filters = int(binfo["filters"] or 8)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=str(work_root)))
    hm_threads = 1 if cores <= 2 else 2  # the worker must not starve capture + classify
    labels = [lab for lab in LABELS_EXPLAINED if lab in binfo["labels"]] or list(binfo["labels"])
    notes: list[str] = [
        "TF runs in worker subprocesses (one per thread count: TF fixes its pools at start); LiteRT and "
        "numpy Grad-CAM in the bench process, which never imports TensorFlow.",
    ]
    _say(f"{'quick' if quick else 'full'} run on {machine['cpu']} ({cores} cores), bundle {bundle} "
         f"({bundle_src}, {h}x{w}, filters {filters}); work dir {work}")

    _say("writing the synthetic seam video")
    video, frame_png, _ = make_inputs(work_root, plan.video_frames)
    phases["setup"] = _lap()

    # ---- 1. TF side (subprocesses)
    tf_res: dict[int, dict] = {}
    for i, t in enumerate(sorted(plan.tf_threads, reverse=True)):
        first = i == 0
        _say(f"TF worker, {t} thread(s){': export + FLOPs + TF Grad-CAM' if first else ''}")
        spec = {"kind": "tf", "threads": t, "out_dir": str(work), "height": h, "width": w, "filters": filters,
                "n_labels": len(binfo["labels"]), "archs": list(plan.archs), "export": first,
                "bundle_keras": str(Path(bundle) / "model.keras") if binfo["has_keras"] else None,
                "mobilenet": plan.mobilenet and first, "time_mobilenet": False,
                "iters": plan.iters, "warmup": plan.warmup, "rounds": plan.rounds}
        if first and binfo["has_keras"]:
            spec.update(heatmap_bundle=str(bundle), frame=str(frame_png), labels=labels,
                        hm_threads=hm_threads, hm_repeats=plan.heatmap_repeats)
        if not binfo["has_keras"]:
            spec["bundle_keras"] = None
        tf_res[t] = run_worker(spec, work, f"tf{t}")
    phases["tf_workers"] = _lap()
    models = tf_res[max(tf_res)]["models"] if tf_res else {}  # the first worker (most threads) exports

    # ---- 2. LiteRT latencies (this process)
    from edge.bundle import load_bundle

    b = load_bundle(bundle)
    files = {"bundle|litert-int8": str(b.path("classifier_int8"))}
    if b.has("classifier_fp32"):
        files["bundle|litert-fp32"] = str(b.path("classifier_fp32"))
    for name, info in models.items():
        if "tflite_fp32" in info:
            files[f"{name}|litert-fp32"] = info["tflite_fp32"]
            files[f"{name}|litert-int8"] = info["tflite_int8"]
    _say(f"LiteRT latencies: {len(files)} models × threads {list(plan.lite_threads)}")
    latency = litert_latency(files, plan.lite_threads, plan)
    for t, r in tf_res.items():
        for name, rts in r["latency"].items():
            for rt, s in rts.items():
                latency.setdefault(name, {}).setdefault(rt, {})[str(t)] = s
    ratios = latency_ratios(latency)
    phases["litert_latency"] = _lap()

    # one core is left to capture (decode + ROI) and the heatmap worker, as the README advises for
    # model.threads; the bound is taken at the same thread count
    daemon_threads = max(1, cores - 1)
    import cv2

    frame = cv2.imread(str(frame_png))
    pipeline = pipeline_costs(bundle, video, frame, daemon_threads, plan)

    # ---- 3. heatmap cost, LiteRT path (this process)
    from edge.gradcam import measure_cost

    heatmap_ms: dict[str, Any] = {"labels": labels, "threads": hm_threads}
    if binfo["has_explainer"]:
        _say("Grad-CAM cost, LiteRT path")
        c = measure_cost(bundle, frame, labels, threads=hm_threads, repeats=plan.heatmap_repeats,
                         method="litert")
        heatmap_ms.update(litert=round(c["explain_ms"], 3), forward_litert_fp32=round(c["forward_ms"], 3),
                          ratio_litert=round(c["ratio"], 3))
    tfh = (tf_res.get(max(tf_res)) or {}).get("heatmap_tf") if tf_res else None
    if tfh:
        heatmap_ms.update(tf=round(tfh["explain_ms"], 3), forward_keras=round(tfh["forward_keras_ms"], 3),
                          ratio_tf=round(tfh["explain_ms"] / tfh["forward_keras_ms"], 3),
                          ratio_tf_vs_litert_forward=(
                              round(tfh["explain_ms"] / heatmap_ms["forward_litert_fp32"], 3)
                              if heatmap_ms.get("forward_litert_fp32") else None))

    phases["litert_heatmaps"] = _lap()
    # ---- 4. the daemon
    broker = LocalBroker(work)
    listener = None
    try:
        listener = Listener(broker.port)
        probe = BoundProbe(str(b.path("classifier_int8")), daemon_threads)
        daemon = run_daemon_suite(plan, work, bundle, video, broker.port, listener, daemon_threads,
                                  hm_threads, binfo, probe)
    finally:
        if listener is not None:
            listener.close()
        broker.stop()
    phases["daemon"] = _lap()

    e2e = daemon["e2e"]
    bound_ms = e2e["bound_ms_p50"]
    bound_fps = round(1000.0 / bound_ms, 2) if bound_ms else None
    e2e_fps = e2e["fps"]
    result: dict[str, Any] = {
        "format": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine,
        "bundle": binfo,
        "settings": {"iters": plan.iters, "warmup": plan.warmup, "rounds": plan.rounds,
                     "daemon_threads": daemon_threads, "heatmap_threads": hm_threads,
                     "video_frames": plan.video_frames, "steady_s": plan.steady_s,
                     "stats_interval": plan.stats_interval},
        "models": models,
        "latency_ms": latency,
        "ratios": ratios,
        "bound_fps": bound_fps,
        "e2e_fps": e2e_fps,
        "e2e": {**e2e, "ratio_to_bound": round(e2e_fps / bound_fps, 3) if e2e_fps and bound_fps else None,
                "ratio_to_overlapped_bound": (round(e2e_fps / pipeline["overlapped_bound_fps"], 3)
                                              if e2e_fps else None)},
        "pipeline_ms": pipeline,
        "heatmaps_e2e": daemon["heatmaps_e2e"],
        "heatmap_ms": heatmap_ms,
        "rss_mb": daemon["rss_mb"],
        "startup_s": daemon["startup_s"],
        "startup": daemon["startup"],
        "alert_latency_ms": daemon["alert_latency_ms"],
        "notes": notes + daemon["notes"],
    }
    result["pi_estimates"] = pi_estimates(result)
    result["targets"] = evaluate_targets(result)
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    result["phases_s"] = phases
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return result


def latency_ratios(latency: dict) -> dict[str, dict[str, float]]:
    """Keras p50 / runtime p50 at the same thread count (> 1: faster than Keras eager)."""
    out: dict[str, dict[str, float]] = {}
    for name, rts in latency.items():
        ref = rts.get("keras") or {}
        for rt, per in rts.items():
            if rt == "keras":
                continue
            for t, s in per.items():
                if t in ref and s["p50"] > 0:
                    out.setdefault(name, {})[f"{rt}@{t}"] = round(ref[t]["p50"] / s["p50"], 2)
    return out


def run_daemon_suite(plan: Plan, work: Path, bundle: Path, video: Path, port: int, listener: Listener,
                     threads: int, hm_threads: int, binfo: dict, probe: BoundProbe) -> dict[str, Any]:
    notes: list[str] = []
    si = plan.stats_interval

    def cfg(tag: str, **kw: Any) -> tuple[Path, str]:
        kw.setdefault("stats_interval", si)
        return daemon_config(work, tag, bundle, video, port, threads=threads, hm_threads=hm_threads, **kw)

    # start-up: process start → first classified frame ("stopping (1 frames)" follows it at once)
    starts, to_running, tf_maps = [], [], []
    for i in range(plan.startup_runs):
        c, _ = cfg(f"start{i}", realtime=False, loop=False, forced_every=None, heatmaps=None)
        _say(f"daemon start-up run {i + 1}/{plan.startup_runs}")
        r = run_daemon(c, f"start{i}", work, max_frames=1, timeout=60)
        t1 = r.line_time("stopping (1 frames)")
        if t1 is not None:
            starts.append(t1 - r.t_spawn)
        tr = r.line_time(" running: ")
        if tr is not None:
            to_running.append(tr - r.t_spawn)
    startup_s = round(float(np.median(starts)), 3) if starts else None

    # end to end, heatmaps off, the bundle's own decisions
    e2e_runs = []
    for i in range(plan.e2e_runs):
        probe.burst(max(15, plan.iters // 2))
        c, st_nat = cfg(f"e2e{i}", realtime=False, loop=True, forced_every=None, heatmaps=None)
        _say(f"daemon e2e run (heatmaps off), {plan.steady_s:.0f} s steady ({i + 1}/{plan.e2e_runs})")
        r_nat = run_daemon(c, f"e2e{i}", work, steady_s=plan.steady_s + si, timeout=plan.steady_s + 90)
        e2e_runs.append((r_nat, stats_fps(listener, st_nat, r_nat)))
    probe.burst(max(15, plan.iters // 2))
    ok = [f for _, f in e2e_runs if str(f["source"]).startswith("stats")]
    sec = sum(f["seconds"] for f in ok)
    if sec:
        fps = {"fps": round(sum(f["frames"] for f in ok) / sec, 2), "frames": sum(f["frames"] for f in ok),
               "seconds": round(sec, 2), "source": "stats (Δframes/Δuptime)",
               "per_run_fps": [f["fps"] for f in ok]}
    else:
        fps = e2e_runs[-1][1]
    r_nat = e2e_runs[-1][0]
    bound_ms = pct(probe.samples, 50)
    e2e = {**fps, "alerts": r_nat.summary.get("alerts"),
           "dropped_frames": r_nat.summary.get("dropped_frames"), "threads": threads,
           "inference_ms": r_nat.summary.get("inference_ms"),
           "bound_ms_p50": round(bound_ms, 3), "bound_samples": len(probe.samples),
           "config": "file source, realtime false, loop, heatmaps off, bundle thresholds, "
                     "expected_length 2mm; bound sampled in bursts before and after each run"}
    rss_nohm = steady_rss(r_nat, r_nat.line_time(" running: "))
    tf_maps.append(r_nat.tf_mapped)

    # heatmaps on ~5 % of frames (forced: one event / alert / heatmap every 20 frames), against the
    # same forced alerts with heatmaps off; off/on runs alternate so the machine's drift hits both
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    r_hm = None
    for i in range(plan.hm_pairs):
        for kind in ("off", "on"):
            tag = f"hm{kind}{i}"
            c, st = cfg(tag, realtime=False, loop=True, forced_every=20,
                        heatmaps="litert" if kind == "on" else None)
            _say(f"daemon e2e run, alerts on 5 % of frames, heatmaps {kind} ({i + 1}/{plan.hm_pairs})")
            r = run_daemon(c, tag, work, steady_s=plan.hm_steady_s + si, timeout=plan.hm_steady_s + 90)
            runs[kind].append({**stats_fps(listener, st, r), "alerts": r.summary.get("alerts"),
                               "frames_total": r.summary.get("frames"),
                               "heatmaps": r.summary.get("heatmaps")})
            if kind == "on":
                r_hm = r
                tf_maps.append(r.tf_mapped)

    def pooled(rs: list[dict]) -> float | None:
        ok = [x for x in rs if str(x["source"]).startswith("stats")]
        sec = sum(x["seconds"] or 0 for x in ok)
        return round(sum(x["frames"] or 0 for x in ok) / sec, 2) if sec else None

    fps_on, fps_off = pooled(runs["on"]), pooled(runs["off"])
    al = sum(x["alerts"] or 0 for x in runs["on"])
    fr = sum(x["frames_total"] or 0 for x in runs["on"])
    heatmaps_e2e = {
        "fps_on": fps_on, "fps_off": fps_off,
        "loss": round(1 - fps_on / fps_off, 3) if fps_on and fps_off else None,
        "pairs": plan.hm_pairs, "per_run_fps": {k: [x["fps"] for x in v] for k, v in runs.items()},
        "alerts": al, "frames": fr, "alert_fraction": round(al / fr, 3) if fr else None,
        "heatmaps_saved": sum((x["heatmaps"] or {}).get("saved") or 0 for x in runs["on"]),
        "heatmaps_dropped": sum((x["heatmaps"] or {}).get("dropped") or 0 for x in runs["on"]),
        "heatmap_worker_ms_p50": [(x["heatmaps"] or {}).get("ms_p50") for x in runs["on"]],
        "heatmap_threads": hm_threads, "model_threads": threads,
        "config": "decision.thresholds.error 0, min_frames 1, window 1, max_event_frames 20 (an alert "
                  "every 20 frames) in both; heatmaps litert on / off; off and on runs alternate",
    }
    assert r_hm is not None
    rss_lite = steady_rss(r_hm, r_hm.first_heatmap_t or r_hm.line_time(" running: "))

    # memory with the full-TF Grad-CAM path: until the first TF heatmap is written, plus 2 s
    rss_tf: dict[str, Any] = {"max": None}
    tf_first_s = None
    if binfo["has_keras"]:
        c, _ = cfg("tf", realtime=True, loop=True, forced_every=10, heatmaps="tf")
        _say("daemon run with heatmaps.method tf (RSS)")
        r_tf = run_daemon(c, "tf", work, stop_after_heatmap_s=1.0 if plan.quick else 2.0, timeout=120)
        rss_tf = steady_rss(r_tf, r_tf.first_heatmap_t)
        rt = r_tf.line_time(" running: ")
        if r_tf.first_heatmap_t and rt:
            tf_first_s = round(r_tf.first_heatmap_t - rt, 2)

    # alert latency: the video at its real 30 fps, the bundle's decisions, heatmaps on (LiteRT)
    alert = alert_latency(plan, cfg, work, listener, notes, natural=not binfo.get("untrained"))

    rss_mb = {"litert": rss_lite["max"], "litert_median": rss_lite["median"],
              "litert_no_heatmaps": rss_nohm["max"], "tf": rss_tf["max"], "tf_median": rss_tf.get("median"),
              "tf_first_heatmap_after_s": tf_first_s,
              "tensorflow_mapped_in_litert_daemon": any(bool(x) for x in tf_maps if x is not None)}
    startup = {"runs_s": [round(s, 3) for s in starts],
               "to_running_line_s": [round(s, 3) for s in to_running],
               "how": "spawn of `python -m edge --max-frames 1` → its 'stopping (1 frames)' log line "
                      "(logged right after the first frame is classified); TensorFlow not imported"}
    return {"e2e": e2e, "heatmaps_e2e": heatmaps_e2e, "rss_mb": rss_mb, "startup_s": startup_s,
            "startup": startup, "alert_latency_ms": alert, "notes": notes}


def alert_latency(plan: Plan, cfg: Callable, work: Path, listener: Listener, notes: list[str],
                  natural: bool = True) -> dict[str, Any]:
    def collect(run: DaemonRun, station: str) -> list[dict]:
        emit = {}
        for t, ln in run.lines:
            if " ALERT " in ln:
                try:
                    emit[json.loads(ln.split(" ALERT ", 1)[1])["event_id"]] = t
                except (ValueError, KeyError):
                    pass
        stop_line = run.line_time(" stopping (")
        seen, out = set(), []
        for t, a in listener.of(station, "alert"):
            eid = a.get("event_id")
            if eid in seen or eid not in emit:
                continue
            seen.add(eid)
            if stop_line is not None and emit[eid] >= stop_line:
                continue  # flushed at shutdown: not a live alert
            ts = _iso_to_epoch(a["ts"])
            out.append({"total": (t - ts) * 1e3, "after_close": (t - emit[eid]) * 1e3,
                        "before_close": (emit[eid] - ts) * 1e3})
        return out

    got: list[dict] = []
    mode = ("natural: bundle thresholds, expected_length 2mm, min_frames 2 of window 3, "
            "video replayed at 30 fps")
    if natural:
        c, st = cfg("alert", realtime=True, loop=False, forced_every=None, heatmaps="litert")
        _say(f"daemon alert-latency run: the video at 30 fps ({plan.video_frames} frames, bundle decisions)")
        r = run_daemon(c, "alert", work, timeout=plan.video_frames / 30 + 60)
        got = collect(r, st)
        if len(got) < plan.min_alerts:
            notes.append(f"alert latency: the bundle raised {len(got)} live alert(s) on the video "
                         f"(< {plan.min_alerts}); measured on forced alerts instead (an event closes "
                         "every 10 frames)")
    else:
        notes.append("alert latency: the bundle is untrained, so its alerts mean nothing; measured on "
                     "forced alerts (an event closes every 10 frames)")
    if len(got) < plan.min_alerts:
        c, st = cfg("alertf", realtime=True, loop=True, forced_every=10, heatmaps="litert")
        _say("daemon alert-latency run, forced alerts (every 10 frames at 30 fps)")
        need = plan.min_alerts + 2
        r = run_daemon(c, "alertf", work, timeout=60,
                       stop_when=lambda: len(listener.of(st, "alert")) >= need)
        got = collect(r, st)
        mode = ("forced: every frame flags error, an event closes every 10 frames (max_event_frames 10), "
                "video replayed at 30 fps")
    if not got:
        return {"p50": None, "p99": None, "n": 0, "mode": mode}
    tot = [g["total"] for g in got]
    aft = [g["after_close"] for g in got]
    bef = [g["before_close"] for g in got]
    return {"p50": round(pct(tot, 50), 1), "p99": round(pct(tot, 99), 1), "n": len(got), "mode": mode,
            "after_close_p50": round(pct(aft, 50), 1), "after_close_p99": round(pct(aft, 99), 1),
            "before_close_p50": round(pct(bef, 50), 1),
            "how": "receive time at a loopback paho subscriber − the alert's ts (wall-clock capture "
                   "time of the event's best frame); includes the debounce's wait for the event to "
                   "close. after_close = receive − the daemon's ALERT log line (event closed → outbox "
                   "→ MQTT)."}


# ----------------------------------------------------------------------------- estimates, targets, table


def pi_estimates(res: dict) -> dict[str, Any]:
    """Pi 4 / Pi 5 latency estimates from XNNPACK's published MobileNet v2 figures (not measurements)."""
    out: dict[str, Any] = {"source": "XNNPACK README (Feb 2022): Raspberry Pi 4 (BCM2711, ARM64, 4 threads) "
                                     "MobileNet v2 1.0 224²: FP32 46 ms, INT8 17 ms; Pi 5 = Pi 4 / 2…3 "
                                     "(Raspberry Pi's stated CPU speed-up)",
                           "mobilenet_v2_macs": MOBILENET_V2_MACS, "models": {}}
    lat = res["latency_ms"]
    mn = lat.get("mobilenet_v2", {})
    for name, info in res["models"].items():
        if name == "mobilenet_v2" or not info.get("macs"):
            continue
        r = info["macs"] / MOBILENET_V2_MACS
        e: dict[str, Any] = {"macs": info["macs"], "mac_ratio": round(r, 4)}
        for kind in ("fp32", "int8"):
            pi4 = PI4_MNV2_MS[kind] * r
            e[f"pi4_{kind}_ms_flops"] = round(pi4, 2)
            e[f"pi5_{kind}_ms_flops"] = [round(pi4 / PI5_OVER_PI4[1], 2), round(pi4 / PI5_OVER_PI4[0], 2)]
        # measured-ratio estimate (fp32 only): our model / MobileNet v2, both LiteRT fp32 at the same
        # threads on THIS machine, times the Pi 4 figure. Not for int8 directly: our int8 is dynamic-range,
        # XNNPACK's published int8 is full-integer, and dynamic-range MobileNet v2 runs slower than its
        # fp32 here; the int8 figure is the fp32 one divided by our int8 speed-up measured here.
        ours, ref = lat.get(name, {}).get("litert-fp32", {}), mn.get("litert-fp32", {})
        t = max((k for k in ours if k in ref), key=int, default=None)
        if t is not None and ref[t]["p50"] > 0:
            q = ours[t]["p50"] / ref[t]["p50"]
            e["ratio_to_mobilenet_v2_here_fp32"] = round(q, 4)
            e["pi4_fp32_ms_measured_ratio"] = round(PI4_MNV2_MS["fp32"] * q, 2)
            i8 = lat.get(name, {}).get("litert-int8", {}).get(t)
            if i8 and i8["p50"] > 0:  # scale by the int8 speed-up measured here
                e["int8_speedup_here"] = round(ours[t]["p50"] / i8["p50"], 3)
                e["pi4_int8_ms_measured_ratio"] = round(
                    e["pi4_fp32_ms_measured_ratio"] / e["int8_speedup_here"], 2)
        out["models"][name] = e
    return out


def evaluate_targets(res: dict) -> list[dict[str, Any]]:
    e2e = res["e2e"].get("ratio_to_bound")
    vals = {
        "e2e_over_bound": e2e,
        "heatmap_throughput_loss": res["heatmaps_e2e"].get("loss"),
        "heatmap_ratio_litert": res["heatmap_ms"].get("ratio_litert"),
        "rss_litert_mb": res["rss_mb"].get("litert"),
        "startup_s": res["startup_s"],
    }
    out = []
    for name, (op, target, text) in TARGETS.items():
        v = vals.get(name)
        ok = None if v is None else (v >= target if op == ">=" else v <= target)
        out.append({"name": name, "what": text, "value": v, "target": f"{op} {target}",
                    "result": "n/a" if ok is None else ("PASS" if ok else "MISS")})
    return out


def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def render_table(res: dict) -> str:
    m = res["machine"]
    b = res["bundle"]
    L = [f"### seam-qc bench ({'quick' if res['quick'] else 'full'}) — {m['cpu']}, "
         f"{m['usable_cores']} cores, Python {m['python']}, TF {m['tensorflow']}, "
         f"LiteRT {m['ai_edge_litert']}",
         "",
         f"Bundle `{b['name']}` ({b['source']}): {b['arch']} {b['height']}×{b['width']}, "
         f"filters {b['filters']}, int8 = {b['int8_quantization']}. "
         f"Load average at start {m.get('loadavg_start')}, "
         f"at end {m.get('loadavg_end')}.",
         "",
         "| model | MMACs | runtime | threads | p50 ms | p99 ms | × faster than Keras |",
         "|---|---:|---|---:|---:|---:|---:|"]
    order = ["keras", "tf.function", "litert-fp32", "litert-int8"]
    for name, rts in res["latency_ms"].items():
        macs = (res["models"].get(name) or {}).get("macs")
        for rt in sorted(rts, key=lambda r: order.index(r) if r in order else 9):
            for t in sorted(rts[rt], key=int):
                s = rts[rt][t]
                ratio = (res["ratios"].get(name) or {}).get(f"{rt}@{t}")
                L.append(f"| {name} | {_f(macs / 1e6 if macs else None, 1)} | {rt} | {t} | {s['p50']:.2f} | "
                         f"{s['p99']:.2f} | {_f(ratio) if ratio else ('1.00' if rt == 'keras' else '–')} |")
    e, hm, hms = res["e2e"], res["heatmaps_e2e"], res["heatmap_ms"]
    rss, al = res["rss_mb"], res["alert_latency_ms"]
    loss = hm.get("loss")
    pl = res["pipeline_ms"]["ms_p50"]
    L += ["",
          "| measure | value |", "|---|---|",
          f"| bare interpreter bound (bundle int8, {res['settings']['daemon_threads']} threads, sampled "
          f"around the e2e runs) | {_f(res['bound_fps'], 1)} fps ({_f(e.get('bound_ms_p50'))} ms) |",
          f"| daemon end to end (file source, heatmaps off) | {_f(res['e2e_fps'], 1)} fps "
          f"({e.get('source')}) |",
          f"| e2e / bound | {_f(e.get('ratio_to_bound'), 3)} |",
          f"| per frame p50: capture thread decode+ROI / prepare, classifier thread invoke | "
          f"{pl['decode_roi']:.2f} / {pl['prepare']:.2f}, {pl['classify_prepared']:.2f} ms → bound with "
          f"the threads overlapped "
          f"{_f(res['pipeline_ms']['overlapped_bound_fps'], 1)} fps "
          f"(e2e = {_f(e.get('ratio_to_overlapped_bound'), 3)} of it) |",
          f"| heatmaps on {_f((hm.get('alert_fraction') or 0) * 100, 1)} % of frames | "
          f"{_f(hm.get('fps_on'), 1)} fps vs {_f(hm.get('fps_off'), 1)} fps → loss "
          f"{_f(loss * 100 if loss is not None else None, 1)} % |",
          f"| Grad-CAM, LiteRT path ({len(hms.get('labels', []))} labels) | {_f(hms.get('litert'))} ms = "
          f"{_f(hms.get('ratio_litert'))} × float forward ({_f(hms.get('forward_litert_fp32'))} ms) |",
          f"| Grad-CAM, full-TF path | {_f(hms.get('tf'))} ms = {_f(hms.get('ratio_tf'))} × Keras forward "
          f"({_f(hms.get('forward_keras'))} ms), {_f(hms.get('ratio_tf_vs_litert_forward'))} × LiteRT fp32 "
          f"forward |",
          f"| daemon RSS, LiteRT only (heatmaps on / off) | {_f(rss.get('litert'), 1)} MB / "
          f"{_f(rss.get('litert_no_heatmaps'), 1)} MB (TensorFlow mapped: "
          f"{rss.get('tensorflow_mapped_in_litert_daemon')}) |",
          f"| daemon RSS, heatmaps.method tf | {_f(rss.get('tf'), 1)} MB |",
          f"| start-up to first classified frame | {_f(res['startup_s'])} s "
          f"(runs {res['startup'].get('runs_s')}) |",
          f"| alert latency p50 / p99 (n={al.get('n')}) | {_f(al.get('p50'), 1)} / {_f(al.get('p99'), 1)} "
          f"ms; after the event closed {_f(al.get('after_close_p50'), 1)} / "
          f"{_f(al.get('after_close_p99'), 1)} ms |",
          "",
          "| target | value | goal | result |", "|---|---:|---|---|"]
    for t in res["targets"]:
        L.append(f"| {t['what']} | {_f(t['value'], 3)} | {t['target']} | {t['result']} |")
    pe = res.get("pi_estimates", {}).get("models", {})
    if pe:
        L += ["", "Raspberry Pi estimates (NOT measured: XNNPACK's MobileNet v2 figures scaled; see JSON "
              "pi_estimates):", "",
              "| model | MMACs | Pi 4 int8 ms (MAC-scaled) | Pi 4 fp32 ms (MAC-scaled) | Pi 4 fp32 ms (vs "
              "MobileNet v2 measured here) | Pi 4 dyn-int8 ms (same, × int8 speed-up here) | Pi 5 int8 ms "
              "(MAC-scaled) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        for name, e2 in pe.items():
            p5 = e2.get("pi5_int8_ms_flops") or [None, None]
            L.append(f"| {name} | {e2['macs'] / 1e6:.1f} | {_f(e2.get('pi4_int8_ms_flops'))} | "
                     f"{_f(e2.get('pi4_fp32_ms_flops'))} | {_f(e2.get('pi4_fp32_ms_measured_ratio'))} | "
                     f"{_f(e2.get('pi4_int8_ms_measured_ratio'))} | "
                     f"{_f(p5[0])}–{_f(p5[1])} |")
    if res.get("notes"):
        L += [""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(L)


# ----------------------------------------------------------------------------- CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: latency, e2e fps, heatmap cost, RSS, start-up, "
                       "alert latency", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations and model variants (< 1 min)")
    p.add_argument("--json", metavar="FILE",
                   help="write the results as JSON (make bench: bench-results.json)")
    p.add_argument("--bundle", metavar="DIR", help=f"model bundle (default {DEFAULT_BUNDLE}; an untrained "
                   "one is exported when it is not shipped yet)")
    p.add_argument("--work", metavar="DIR", default="build/bench", help="scratch dir (default build/bench)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = bench(args.bundle, args.quick, Path(args.work).resolve(), Path(args.json) if args.json else None)
    print(render_table(res))
    if args.json:
        print(f"\nwrote {args.json} ({res['wall_s']} s)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    print("usage: python -m convert bench …  (this entry point is the bench's TF worker)", file=sys.stderr)
    sys.exit(2)
