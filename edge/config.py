"""The daemon's configuration: pydantic v2 models (``extra="forbid"``) loaded from YAML.

A typo must fail loudly and point at the line: every error names the file, the line of the
offending key (from PyYAML's node marks), the dotted key path and the value, e.g.
``config/x.yaml:7: camera.fps: 'abc' is not a valid number``, and is raised as
:class:`edge.errors.ConfigError` (exit 78, so systemd does not restart-loop on it).

Relative paths (``model.bundle``, ``heatmaps.dir``, ``samples.dir``, ``outbox``, TLS files, ``password_file``)
resolve against the config file's directory first; when that does not exist they resolve
against the current working directory (so ``config/demo.yaml`` can name the repo-relative
``edge/models/default`` and be run from the repository root).
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError

_TOKEN_RE = re.compile(r"^[^/+#\s\x00]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
STATION_MAX = 64  # a host name's limit (HOST_NAME_MAX)
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KiB; a bigger file is the wrong file (or /dev/zero)
MAX_DEPTH = 16  # the schema nests 3 levels; PyYAML's composer recurses, so depth is capped first
# keys whose value may be a secret typed in the wrong place: errors never echo it
SECRET_KEYS = frozenset({("mqtt", "password_file")})
RECONNECT_MAX_S = 3600.0  # longer waits overflow threading timeouts (1e12) and help nobody


class _Model(BaseModel):
    # NaN/inf pass every range check (nan > 0 is False, but so is nan <= 0), so refuse them outright
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_control(cls, v: Any, info: ValidationInfo) -> Any:
        """A NUL makes ``os.stat`` raise deep inside the run; any control character is a typo."""
        if isinstance(v, str) and _CONTROL_RE.search(v):
            shown = "the value" if info.field_name == "password_file" else _show(v)
            raise ValueError(f"{shown} contains a control character")
        return v


def _safe_token(value: str, what: str) -> str:
    if not value or not _TOKEN_RE.match(value):
        raise ValueError(f"{value!r} is not a valid {what} (no '/', '+', '#' or whitespace)")
    return value


def _show(value: Any, limit: int = 60) -> str:
    """``repr`` cut to ``limit`` characters: a 4,000-digit number must not flood the error line."""
    r = repr(value)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(r)} characters)"


class TlsConfig(_Model):
    """TLS towards the broker; the files must exist when the config is loaded."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together")
        return self


class MqttConfig(_Model):
    """Broker connection (the contract the publisher is written against)."""

    enabled: bool = True
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    # MQTT 5 makes a publish the broker refuses (ACL, quota) visible in its PUBACK, so the alert
    # stays in the outbox; MQTT 3.1.1 brokers acknowledge such a publish and drop it silently.
    protocol: Literal["5", "3.1.1"] = "5"
    prefix: str = "seamqc"
    client_id: str | None = None
    keepalive: int = Field(30, ge=5, le=3600)
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: Path | None = None
    max_inflight: int = Field(20, ge=1, le=65535)  # MQTT packet ids are 16 bits
    max_queued: int = Field(1000, ge=1, le=1_000_000)
    reconnect_min_s: float = Field(1.0, gt=0, le=RECONNECT_MAX_S)
    reconnect_max_s: float = Field(30.0, gt=0, le=RECONNECT_MAX_S)
    # Home Assistant MQTT discovery (edge.homeassistant): opt-in, it writes retained configs that
    # create a device and its entities in every Home Assistant listening on the broker
    homeassistant: bool = False
    homeassistant_prefix: str = "homeassistant"  # HA's discovery prefix (its `discovery_prefix`)
    # operator feedback (edge.feedback): subscribe to <prefix>/<station>/feedback, QoS 1
    feedback: bool = True
    # flood breaker: more than feedback_junk_limit refused payloads within feedback_junk_window_s
    # unsubscribe the topic for feedback_pause_s (paho's receiving, not our parsing, costs the fps)
    feedback_junk_limit: int = Field(200, ge=1, le=1_000_000)
    feedback_junk_window_s: float = Field(10.0, gt=0, le=86400)
    feedback_pause_s: float = Field(60.0, gt=0, le=86400)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        # '' or a space passes YAML but makes paho raise at connect, a traceback instead of exit 78
        if not v or len(v) > 253 or any(c.isspace() for c in v):
            raise ValueError(f"{_show(v)} is not a host name or address")
        return v

    @field_validator("client_id", "username")
    @classmethod
    def _nonempty(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not 1 <= len(v) <= 256:
            raise ValueError(f"{_show(v)}: {info.field_name} must have 1 to 256 characters")
        return v

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, v: Any) -> Any:
        # YAML reads `protocol: 5` as a number and `protocol: 3.1.1` as a string
        return "5" if v in (5, 5.0) and not isinstance(v, bool) else v

    @field_validator("prefix", "homeassistant_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        # the prefix may have levels ("factory/seamqc") but no wildcards
        for part in v.split("/"):
            _safe_token(part, "topic level")
        return v

    @model_validator(mode="after")
    def _backoff(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        if self.password_file is not None and not self.username:
            raise ValueError("password_file is set but username is not (MQTT sends a password only with a user name)")
        return self


class CameraConfig(_Model):
    """Where frames come from. ``device``: index or path for usb, path for file, URL for rtsp."""

    source: Literal["usb", "picamera", "file", "rtsp"] = "usb"
    device: int | str = 0
    width: int = Field(640, ge=16, le=8192)
    height: int = Field(480, ge=16, le=8192)
    fps: float = Field(30.0, gt=0, le=1000)
    roi: tuple[int, int, int, int] | None = None
    loop: bool = False
    realtime: bool = True
    queue_size: int = Field(4, ge=1, le=1000)
    reconnect_min_s: float = Field(0.5, gt=0, le=RECONNECT_MAX_S)
    reconnect_max_s: float = Field(10.0, gt=0, le=RECONNECT_MAX_S)
    lores: bool = True
    # FFmpeg decoder threads for file and rtsp sources; 0 = FFmpeg's choice (one per core). One
    # thread leaves the other cores to the interpreter, which is what limits the frame rate.
    decode_threads: int = Field(1, ge=0, le=64)

    @field_validator("device")
    @classmethod
    def _device(cls, v: int | str) -> int | str:
        # OpenCV takes a C int index: 10**30 would raise inside the capture thread
        if isinstance(v, int) and not 0 <= v <= 1023:
            raise ValueError(f"{_show(v)} is not a camera index (0 to 1023)")
        if isinstance(v, str) and not v:
            raise ValueError("'' is not a device, file or URL")
        return v

    @model_validator(mode="after")
    def _check(self) -> CameraConfig:
        if self.roi is not None:
            x, y, w, h = self.roi
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > self.width or y + h > self.height:
                raise ValueError(f"roi {list(self.roi)} must lie inside the {self.width}x{self.height} frame")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        if self.source == "file" and not isinstance(self.device, str):
            raise ValueError("camera.device must be a video file path for source: file")
        if self.source == "rtsp" and not isinstance(self.device, str):
            raise ValueError("camera.device must be an rtsp:// URL for source: rtsp")
        return self


class ModelConfig(_Model):
    bundle: Path
    threads: int = Field(4, ge=1, le=64)
    role: str | None = None  # None: the bundle's default classifier (classifier_int8)
    # hot reload (edge.modelswap): stat the bundle path this often for an atomic replacement; 0: only SIGHUP
    watch_s: float = Field(1.0, ge=0, le=3600)
    # Ed25519 public keys (PEM, convert keygen); when set, only bundles signed by one of them load
    trusted_keys: list[Path] = Field(default_factory=list, max_length=64)
    # signed rollout over MQTT (edge.rollout, convert deploy): needs trusted_keys and bundle as a symlink
    rollout: bool = False
    max_bundle_mb: float = Field(64.0, gt=0, le=4096)  # cap on a received bundle (tar and unpacked content)


class DecisionConfig(_Model):
    """How per-frame scores become alerts (see edge.decide)."""

    expected_length: Literal["2mm", "4mm", "any"] = "any"
    thresholds: dict[str, float] = Field(default_factory=dict)
    min_frames: int = Field(3, ge=1, le=10_000)
    window: int = Field(5, ge=1, le=10_000)
    max_event_frames: int = Field(300, ge=1, le=10_000_000)
    cooldown_frames: int = Field(0, ge=0, le=10_000_000)

    @field_validator("thresholds")
    @classmethod
    def _thr(cls, v: dict[str, float]) -> dict[str, float]:
        for k, t in v.items():
            if _CONTROL_RE.search(k):
                raise ValueError(f"thresholds: {_show(k)} contains a control character")
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"thresholds.{k}: {t!r} must be between 0 and 1")
        return v

    @model_validator(mode="after")
    def _kn(self) -> DecisionConfig:
        if self.min_frames > self.window:
            raise ValueError(f"min_frames ({self.min_frames}) must be <= window ({self.window})")
        return self


class HeatmapConfig(_Model):
    enabled: bool = True
    dir: Path = Path("/var/lib/seam-qc/heatmaps")
    method: Literal["litert", "tf"] = "litert"
    max_mb: float = Field(2048.0, gt=0, le=1e9)  # 1 PB: more is a typo (and overflows as bytes)
    queue_size: int = Field(8, ge=1, le=1000)
    labels_only_flagged: bool = True
    threads: int = Field(2, ge=1, le=64)
    # publish each overlay (a JPEG ≤ 60 KB, retained) on <prefix>/<station>/heatmap
    mqtt: bool = True


class HealthConfig(_Model):
    """Camera and line health (edge.health): which frames are measured and when a condition holds."""

    enabled: bool = True
    every_n_frames: int = Field(10, ge=1, le=10_000)
    baseline_frames: int = Field(150, ge=1, le=10_000_000)  # sharpness and mean learned over these
    hold_frames: int = Field(15, ge=1, le=10_000_000)  # blurred/dark/bright/covered must hold this long
    blur_ratio: float = Field(0.4, gt=0, lt=1)  # blurred: sharpness < this x baseline
    dark_ratio: float = Field(0.5, gt=0, lt=1)  # dark: mean < this x baseline
    bright_ratio: float = Field(1.6, gt=1, le=100)  # bright: mean > this x baseline
    clipped_share: float = Field(0.25, gt=0, le=1)  # dark/bright: more pixels than this clipped
    covered_std: float = Field(1.5, ge=0, le=255)  # covered: grey std below this (featureless)
    frozen_diff: float = Field(0.05, ge=0, le=255)  # frozen: mean |frame - previous frame| below this
    frozen_frames: int = Field(60, ge=1, le=10_000_000)
    idle_motion: float = Field(0.5, ge=0, le=10_000)  # idle: the view moves less, in ROI px per frame
    idle_frames: int = Field(90, ge=1, le=10_000_000)


class SamplesConfig(_Model):
    """Training samples kept on the station (edge.samples): which frames, how often, how much disk."""

    enabled: bool = False  # opt-in: frames of the line are written to disk and (mqtt) published
    dir: Path | None = None  # None: a ``samples`` folder beside the outbox (the state directory)
    max_mb: float = Field(512.0, gt=0, le=1e9)  # oldest samples deleted beyond this
    uncertain_margin: float = Field(0.1, ge=0, le=0.5)  # |score - threshold| <= this: uncertain
    uncertain_per_h: float = Field(60.0, ge=0, le=36_000)  # rate cap (0: none kept)
    random_good_per_h: float = Field(30.0, ge=0, le=36_000)  # random good frames (0: none kept)
    ring_mb: float = Field(16.0, ge=0, le=20)  # recent ROI crops for missed-defect reports; 16 + queue ≤ 20 MB RSS
    ring_every_n: int = Field(2, ge=1, le=1000)  # every n-th frame goes into the ring
    missed_window_s: float = Field(2.0, gt=0, le=60)  # frames within this of a missed report's ts
    missed_max_frames: int = Field(20, ge=1, le=1000)  # at most this many frames per report
    queue_size: int = Field(16, ge=1, le=1000)  # samples waiting for the writer; beyond: dropped
    mqtt: bool = True  # publish each sample on <prefix>/<station>/sample (MQTT 5), after the alerts
    mqtt_backlog: int = Field(1000, ge=0, le=1_000_000)  # unpublished samples kept queued; beyond: dropped


class Config(_Model):
    station: str = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "station")
    camera: CameraConfig = Field(default_factory=CameraConfig)
    model: ModelConfig
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    heatmaps: HeatmapConfig = Field(default_factory=HeatmapConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    outbox: Path = Path("/var/lib/seam-qc/outbox.sqlite")
    # cap on the outbox file in MiB (a long broker outage must not fill the SD card); None: the disk
    outbox_max_mb: float | None = Field(None, gt=0, le=1e9)
    stats_interval: float = Field(10.0, gt=0, le=86400)
    watchdog_stall_s: float = Field(10.0, gt=0, le=86400)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # json: one JSON object per line with machine-readable events (edge.logfmt), for journald/Loki
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("station")
    @classmethod
    def _station(cls, v: str) -> str:
        # it prefixes every event id (→ heatmap file names, bounded to 96 chars) and every topic
        if len(v) > STATION_MAX:
            raise ValueError(
                f"{v[:16]!r}... ({len(v)} characters) is too long for a station id (at most {STATION_MAX})"
            )
        return _safe_token(v, "station id")

    # where the config came from (not a YAML key): set by load_config
    _source: Path | None = PrivateAttr(default=None)

    @property
    def source_path(self) -> Path | None:
        return self._source

    @property
    def outbox_max_bytes(self) -> int | None:
        """``outbox_max_mb`` in bytes, as ``edge.outbox.Outbox`` takes it."""
        return None if self.outbox_max_mb is None else int(self.outbox_max_mb * 1024 * 1024)


# ----------------------------------------------------------------------------- YAML → lines

#: where a value is in the config: keys and list indexes from the top (pydantic's ``loc``)
Loc = tuple[int | str, ...]


def _line_index(node: yaml.Node | None, path: Loc = (), out: dict[Loc, int] | None = None) -> dict[Loc, int]:
    """Map every key path (tuple of keys / list indices) to the 1-based line of its key."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            out.setdefault(("__value__",) + path + (key,), v.start_mark.line + 1)
            _line_index(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[path + (i,)] = v.start_mark.line + 1
            _line_index(v, path + (i,), out)
    return out


def _line_for(lines: dict[Loc, int], loc: Loc) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


_TYPE_WORDS = {
    "int_parsing": "is not a valid integer",
    "int_type": "is not a valid integer",
    "int_from_float": "is not a whole number",
    "float_parsing": "is not a valid number",
    "float_type": "is not a valid number",
    "bool_parsing": "is not a valid boolean (true/false)",
    "bool_type": "is not a valid boolean (true/false)",
    "string_type": "is not a string",
    "path_type": "is not a path",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "finite_number": "is not a finite number",
    "int_parsing_size": "is far too large",
}


def _describe(err: Mapping[str, Any]) -> str:
    """One human phrase for one pydantic error (value included)."""
    typ = err["type"]
    val = err.get("input")
    shown = "the value" if err.get("secret") else _show(val)
    ctx = err.get("ctx") or {}
    if typ == "extra_forbidden":
        return "unknown key (check the spelling)"
    if typ == "missing":
        return "required key is missing"
    if typ in _TYPE_WORDS:
        return f"{shown} {_TYPE_WORDS[typ]}"
    if typ == "literal_error":
        return f"{shown} must be one of {ctx.get('expected', '')}"
    if typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[typ]
        limit = next(iter(ctx.values())) if ctx else ""
        return f"{shown} must be {bound} {limit}"
    if typ in ("too_short", "too_long"):
        return (
            f"{shown} must have exactly 4 values [x, y, w, h]"
            if isinstance(val, (list, tuple))
            else f"{shown} has the wrong length"
        )
    if typ == "value_error":
        msg = str(ctx.get("error", err.get("msg", "")))
        return msg
    return f"{shown}: {err.get('msg', typ)}"


def _fmt_loc(loc: Loc) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def _clean_loc(loc: Loc) -> Loc:
    # pydantic adds union-member tags (e.g. 'int', 'str', 'function-after[...]') into loc
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("int", "str"))))


def data_at(data: Any, loc: Loc) -> Any:
    """The raw YAML value at ``loc`` (for messages), or None."""
    for p in loc:
        try:
            data = data[p]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _resolve(base: Path, p: Path) -> Path:
    """Relative to the config file's dir; if nothing is there, relative to the working dir."""
    p = Path(os.path.expanduser(str(p)))
    if p.is_absolute():
        return p
    cand = base / p
    if _exists(cand):
        return cand
    cwd = Path.cwd() / p
    if _exists(cwd):
        return cwd
    return cand


def _exists(p: Path) -> bool:
    """``p.exists()`` that says no for a path the OS cannot even look up (a name over 255 bytes)."""
    try:
        return p.exists()
    except OSError:
        return False


def _resolve_paths(cfg: Config, base: Path) -> dict[str, Any]:
    """Return the updates that make every path in ``cfg`` absolute."""
    upd: dict[str, Any] = {}
    upd["model"] = cfg.model.model_copy(
        update={
            "bundle": _resolve(base, cfg.model.bundle),
            "trusted_keys": [_resolve(base, k) for k in cfg.model.trusted_keys],
        }
    )
    upd["heatmaps"] = cfg.heatmaps.model_copy(update={"dir": _resolve(base, cfg.heatmaps.dir)})
    upd["outbox"] = _resolve(base, cfg.outbox)
    sdir = cfg.samples.dir if cfg.samples.dir is not None else Path(upd["outbox"]).parent / "samples"
    upd["samples"] = cfg.samples.model_copy(update={"dir": _resolve(base, sdir)})
    m = cfg.mqtt
    mupd: dict[str, Any] = {}
    if m.password_file is not None:
        mupd["password_file"] = _resolve(base, m.password_file)
    if m.tls is not None:
        tupd = {"ca": _resolve(base, m.tls.ca)}
        if m.tls.cert is not None:
            tupd["cert"] = _resolve(base, m.tls.cert)
        if m.tls.key is not None:
            tupd["key"] = _resolve(base, m.tls.key)
        mupd["tls"] = m.tls.model_copy(update=tupd)
    upd["mqtt"] = m.model_copy(update=mupd)
    cam = cfg.camera
    if cam.source == "file" and isinstance(cam.device, str) and "://" not in cam.device:
        upd["camera"] = cam.model_copy(update={"device": str(_resolve(base, Path(cam.device)))})
    return upd


def _read_text(path: Path, where: str) -> str:
    """The file as text: UTF-8 (a BOM is fine), at most MAX_CONFIG_BYTES, no NUL.

    Any other encoding is one line naming the first bad byte's line, never a UnicodeDecodeError.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{where}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read config file ({e.strerror or e})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_CONFIG_BYTES >> 20} MiB: not a seam-qc config")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or raw[:1] == b"\x00" or raw[1:2] == b"\x00":
        raise ConfigError(f"{where}:1: the file is UTF-16 or binary, not UTF-8 text: save it as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(
            f"{where}:{line}: byte 0x{raw[e.start]:02x} at column {col} is not UTF-8: save "
            "the file as UTF-8 (an editor wrote Latin-1 or Windows-1252?)"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        raise ConfigError(f"{where}:{text.count(chr(10), 0, nul) + 1}: a NUL byte: a binary file, not YAML")
    return text.removeprefix("\ufeff")


def _check_events(text: str, where: str) -> None:
    """Refuse anchors/aliases and deep nesting while streaming, before anything builds or walks a tree.

    An alias bomb (nine lines of nested ``&a [*b, *b, ...]``) is small as text and exponential as a
    tree: the line index and the validation would walk it forever.
    """
    depth = 0
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        line = ev.start_mark.line + 1 if ev.start_mark is not None else 1  # the parser always sets it
        if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None) is not None:
            raise ConfigError(
                f"{where}:{line}: YAML anchors and aliases (&name, *name) "
                "are not allowed in the config: write the values out"
            )
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"{where}:{line}: nested deeper than {MAX_DEPTH} levels: not a seam-qc config")
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_duplicates(node: yaml.Node | None, where: str, path: Loc = ()) -> None:
    """A key given twice is an error naming both lines (YAML would silently keep the second)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for k, v in node.value:
            line = k.start_mark.line + 1
            if not isinstance(k, yaml.ScalarNode):
                raise ConfigError(f"{where}:{line}: {_fmt_loc(path) or '(top level)'}: a key must be a plain name")
            if (k.tag, k.value) in seen:
                raise ConfigError(
                    f"{where}:{line}: {_fmt_loc(path + (k.value,))}: duplicate key (first at "
                    f"line {seen[k.tag, k.value]}; YAML would silently keep only this one)"
                )
            seen[k.tag, k.value] = line
            _check_duplicates(v, where, path + (k.value,))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _check_duplicates(v, where, path + (i,))


def _parse(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    """(node tree, data) of a YAML text, every failure a one-line ConfigError with its line."""
    try:
        _check_events(text, where)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_duplicates(node, where)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        why = " ".join(": ".join(str(x) for x in (e.context, e.problem) if x).split()) or "syntax error"
        raise ConfigError(f"{where}{line}: not valid YAML ({why})") from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (control characters)
        lineno = text.count("\n", 0, e.position) + 1
        raise ConfigError(f"{where}:{lineno}: not valid YAML (character #x{e.character:04x} is not allowed)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(e).split())})") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise ConfigError(f"{where}: not a usable value ({' '.join(str(e).split())[:120]})") from None
    return node, data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read, validate and resolve ``path``; any problem → :class:`ConfigError` with file:line."""
    path = Path(path)
    where = str(path)
    node, data = _parse(_read_text(path, where), where)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}:1: the top level must be a mapping of keys (station, camera, model, ...)")
    for k, v in (overrides or {}).items():
        data[k] = v
    lines = _line_index(node)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        # an unknown key first: a misspelt key is usually also why a required one is "missing"
        errs = sorted(e.errors(include_url=False), key=lambda x: x["type"] != "extra_forbidden")
        err: dict[str, Any] = dict(errs[0])  # a plain dict: the steps below add and replace keys
        loc = _clean_loc(tuple(err["loc"]))
        if any(loc[: len(k)] == k for k in SECRET_KEYS):
            err = {**err, "secret": True}
        if err["type"] == "missing" and loc and isinstance(loc[-1], int):
            loc = loc[:-1]  # a too-short list (roi) rather than a missing key
            err = {"type": "too_short", "input": data_at(data, loc)}
        line = _line_for(lines, loc)
        if line is None and err["type"] == "missing":
            line = _line_for(lines, loc[:-1]) if len(loc) > 1 else None
        ln = f":{line}" if line else ""
        key = _fmt_loc(loc) or "(top level)"
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{where}{ln}: {key}: {_describe(err)}{more}") from None
    base = path.resolve().parent
    cfg = cfg.model_copy(update=_resolve_paths(cfg, base))
    cfg._source = path
    _check_files(cfg, where, lines)
    return cfg


def _check_files(cfg: Config, where: str, lines: dict[Loc, int]) -> None:
    """Files that must exist and be usable now (TLS, password): name the key, its line and the path.

    The TLS files are loaded the way the MQTT client loads them, and the password file is read,
    so ``--check-config`` and the start-up refuse the same garbage. A missing password file is not
    echoed: people write the password itself there.
    """

    def prefix(loc: Loc) -> str:
        line = _line_for(lines, loc)
        return f"{where}{f':{line}' if line else ''}: {_fmt_loc(loc)}"

    def need(loc: Loc, p: Path | None, what: str) -> None:
        if p is None:
            return
        if not p.is_file():
            shown = "the file named here" if loc in SECRET_KEYS else repr(str(p))
            raise ConfigError(f"{prefix(loc)}: {shown}: {what} not found")

    m = cfg.mqtt
    if m.tls is not None:
        need(("mqtt", "tls", "ca"), m.tls.ca, "CA certificate file")
        need(("mqtt", "tls", "cert"), m.tls.cert, "client certificate file")
        need(("mqtt", "tls", "key"), m.tls.key, "client key file")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.load_verify_locations(cafile=str(m.tls.ca))
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"{prefix(('mqtt', 'tls', 'ca'))}: {str(m.tls.ca)!r}: not a usable CA "
                f"certificate file ({getattr(e, 'reason', None) or e})"
            ) from None
        if m.tls.cert is not None:
            try:  # an encrypted key gets an empty passphrase: fail here rather than prompt on a tty
                ctx.load_cert_chain(str(m.tls.cert), str(m.tls.key), password=lambda: b"")
            except (OSError, ValueError) as e:
                why = getattr(e, "reason", None) or e
                raise ConfigError(
                    f"{prefix(('mqtt', 'tls', 'cert'))}: {str(m.tls.cert)!r} / "
                    f"{str(m.tls.key)!r}: not a usable certificate and key ({why})"
                ) from None
    if m.password_file is not None:
        loc = ("mqtt", "password_file")
        need(loc, m.password_file, "password file")
        try:
            pw = m.password_file.read_bytes()[:65536].decode("utf-8").rstrip("\r\n")
        except OSError as e:
            raise ConfigError(
                f"{prefix(loc)}: {str(m.password_file)!r}: cannot read the password file ({e.strerror or e})"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"{prefix(loc)}: {str(m.password_file)!r}: the password file is not UTF-8 text") from None
        if not pw:
            raise ConfigError(f"{prefix(loc)}: {str(m.password_file)!r}: the password file is empty")


def config_line(cfg: Config, *loc: Any) -> str:
    """``file:line: key`` prefix for errors found later (model, camera) about a config key."""
    where = str(cfg.source_path) if cfg.source_path else "config"
    line = None
    if cfg.source_path is not None:
        try:  # the file was validated by load_config (no aliases); it may have changed since
            text = _read_text(Path(cfg.source_path), str(cfg.source_path))
            _check_events(text, "")
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            line = _line_for(_line_index(node), tuple(loc))
        except (ConfigError, yaml.YAMLError, ValueError):
            line = None
    ln = f":{line}" if line else ""
    return f"{where}{ln}: {_fmt_loc(tuple(loc))}"
