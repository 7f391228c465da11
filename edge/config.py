"""The daemon's configuration: pydantic v2 models (``extra="forbid"``) loaded from YAML.

A typo must fail loudly and point at the line: every error names the file, the line of the
offending key (from PyYAML's node marks), the dotted key path and the value, e.g.
``config/x.yaml:7: camera.fps: 'abc' is not a valid number``, and is raised as
:class:`edge.errors.ConfigError` (exit 78, so systemd does not restart-loop on it).

Relative paths (``model.bundle``, ``heatmaps.dir``, ``outbox``, TLS files, ``password_file``)
resolve against the config file's directory first; when that does not exist they resolve
against the current working directory (so ``config/demo.yaml`` can name the repo-relative
``edge/models/default`` and be run from the repository root).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import ConfigError

LABELS_DEFAULT = ("good", "error", "break", "length")
_TOKEN_RE = re.compile(r"^[^/+#\s\x00]+$")
STATION_MAX = 64  # a host name's limit (HOST_NAME_MAX)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _safe_token(value: str, what: str) -> str:
    if not value or not _TOKEN_RE.match(value):
        raise ValueError(f"{value!r} is not a valid {what} (no '/', '+', '#' or whitespace)")
    return value


class TlsConfig(_Model):
    """TLS towards the broker; the files must exist when the config is loaded."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False

    @model_validator(mode="after")
    def _cert_and_key(self) -> "TlsConfig":
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
    max_inflight: int = Field(20, ge=1)
    max_queued: int = Field(1000, ge=1)
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, v: Any) -> Any:
        # YAML reads `protocol: 5` as a number and `protocol: 3.1.1` as a string
        return "5" if v in (5, 5.0) and not isinstance(v, bool) else v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        # the prefix may have levels ("factory/seamqc") but no wildcards
        for part in v.split("/"):
            _safe_token(part, "topic level")
        return v

    @model_validator(mode="after")
    def _backoff(self) -> "MqttConfig":
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


class CameraConfig(_Model):
    """Where frames come from. ``device``: index or path for usb, path for file, URL for rtsp."""

    source: Literal["usb", "picamera", "file", "rtsp"] = "usb"
    device: Union[int, str] = 0
    width: int = Field(640, ge=16, le=8192)
    height: int = Field(480, ge=16, le=8192)
    fps: float = Field(30.0, gt=0, le=1000)
    roi: tuple[int, int, int, int] | None = None
    loop: bool = False
    realtime: bool = True
    queue_size: int = Field(4, ge=1, le=1000)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)
    lores: bool = True
    # FFmpeg decoder threads for file and rtsp sources; 0 = FFmpeg's choice (one per core). One
    # thread leaves the other cores to the interpreter, which is what limits the frame rate.
    decode_threads: int = Field(1, ge=0, le=64)

    @model_validator(mode="after")
    def _check(self) -> "CameraConfig":
        if self.roi is not None:
            x, y, w, h = self.roi
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > self.width or y + h > self.height:
                raise ValueError(
                    f"roi {list(self.roi)} must lie inside the {self.width}x{self.height} frame")
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


class DecisionConfig(_Model):
    """How per-frame scores become alerts (see edge.decide)."""

    expected_length: Literal["2mm", "4mm", "any"] = "any"
    thresholds: dict[str, float] = Field(default_factory=dict)
    min_frames: int = Field(2, ge=1)
    window: int = Field(3, ge=1)
    max_event_frames: int = Field(300, ge=1)
    cooldown_frames: int = Field(0, ge=0)

    @field_validator("thresholds")
    @classmethod
    def _thr(cls, v: dict[str, float]) -> dict[str, float]:
        for k, t in v.items():
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"thresholds.{k}: {t!r} must be between 0 and 1")
        return v

    @model_validator(mode="after")
    def _kn(self) -> "DecisionConfig":
        if self.min_frames > self.window:
            raise ValueError(f"min_frames ({self.min_frames}) must be <= window ({self.window})")
        return self


class HeatmapConfig(_Model):
    enabled: bool = True
    dir: Path = Path("/var/lib/seam-qc/heatmaps")
    method: Literal["litert", "tf"] = "litert"
    max_mb: float = Field(2048.0, gt=0)
    queue_size: int = Field(8, ge=1, le=1000)
    labels_only_flagged: bool = True
    threads: int = Field(2, ge=1, le=64)


class Config(_Model):
    station: str = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "station")
    camera: CameraConfig = Field(default_factory=CameraConfig)
    model: ModelConfig
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    heatmaps: HeatmapConfig = Field(default_factory=HeatmapConfig)
    outbox: Path = Path("/var/lib/seam-qc/outbox.sqlite")
    stats_interval: float = Field(10.0, gt=0)
    watchdog_stall_s: float = Field(10.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("station")
    @classmethod
    def _station(cls, v: str) -> str:
        # it prefixes every event id (→ heatmap file names, bounded to 96 chars) and every topic
        if len(v) > STATION_MAX:
            raise ValueError(f"{v[:16]!r}... ({len(v)} characters) is too long for a station id "
                             f"(at most {STATION_MAX})")
        return _safe_token(v, "station id")

    # where the config came from (not a YAML key): set by load_config
    _source: Path | None = PrivateAttr(default=None)

    @property
    def source_path(self) -> Path | None:
        return self._source


# ----------------------------------------------------------------------------- YAML → lines


def _line_index(node: yaml.Node | None, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
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


def _line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
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
}


def _describe(err: dict) -> str:
    """One human phrase for one pydantic error (value included)."""
    typ = err["type"]
    val = err.get("input")
    ctx = err.get("ctx") or {}
    if typ == "extra_forbidden":
        return "unknown key (check the spelling)"
    if typ == "missing":
        return "required key is missing"
    if typ in _TYPE_WORDS:
        return f"{val!r} {_TYPE_WORDS[typ]}"
    if typ == "literal_error":
        return f"{val!r} must be one of {ctx.get('expected', '')}"
    if typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
                 "less_than_equal": "<="}[typ]
        limit = next(iter(ctx.values())) if ctx else ""
        return f"{val!r} must be {bound} {limit}"
    if typ in ("too_short", "too_long"):
        return f"{val!r} must have exactly 4 values [x, y, w, h]" if isinstance(val, (list, tuple)) \
            else f"{val!r} has the wrong length"
    if typ == "value_error":
        msg = str(ctx.get("error", err.get("msg", "")))
        return msg
    return f"{val!r}: {err.get('msg', typ)}"


def _fmt_loc(loc: tuple) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def _clean_loc(loc: tuple) -> tuple:
    # pydantic adds union-member tags (e.g. 'int', 'str', 'function-after[...]') into loc
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("int", "str"))))


def data_at(data: Any, loc: tuple) -> Any:
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
    if cand.exists():
        return cand
    cwd = Path.cwd() / p
    if cwd.exists():
        return cwd
    return cand


def _resolve_paths(cfg: Config, base: Path) -> dict[str, Any]:
    """Return the updates that make every path in ``cfg`` absolute."""
    upd: dict[str, Any] = {}
    upd["model"] = cfg.model.model_copy(update={"bundle": _resolve(base, cfg.model.bundle)})
    upd["heatmaps"] = cfg.heatmaps.model_copy(update={"dir": _resolve(base, cfg.heatmaps.dir)})
    upd["outbox"] = _resolve(base, cfg.outbox)
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


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read, validate and resolve ``path``; any problem → :class:`ConfigError` with file:line."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{where}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read config file ({e.strerror})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{line}: not valid YAML ({e.problem})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML ({e})") from None
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
        err = errs[0]
        loc = _clean_loc(tuple(err["loc"]))
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


def _check_files(cfg: Config, where: str, lines: dict[tuple, int]) -> None:
    """Files that must exist now (TLS, password): name the key, its line and the path."""

    def need(loc: tuple, p: Path | None, what: str) -> None:
        if p is None:
            return
        if not p.is_file():
            line = _line_for(lines, loc)
            ln = f":{line}" if line else ""
            raise ConfigError(f"{where}{ln}: {_fmt_loc(loc)}: {str(p)!r}: {what} not found")

    m = cfg.mqtt
    if m.tls is not None:
        need(("mqtt", "tls", "ca"), m.tls.ca, "CA certificate file")
        need(("mqtt", "tls", "cert"), m.tls.cert, "client certificate file")
        need(("mqtt", "tls", "key"), m.tls.key, "client key file")
    if m.password_file is not None:
        need(("mqtt", "password_file"), m.password_file, "password file")


def config_line(cfg: Config, *loc: Any) -> str:
    """``file:line: key`` prefix for errors found later (model, camera) about a config key."""
    where = str(cfg.source_path) if cfg.source_path else "config"
    line = None
    if cfg.source_path is not None:
        try:
            node = yaml.compose(Path(cfg.source_path).read_text(), Loader=yaml.SafeLoader)
            line = _line_for(_line_index(node), tuple(loc))
        except (OSError, yaml.YAMLError):
            line = None
    ln = f":{line}" if line else ""
    return f"{where}{ln}: {_fmt_loc(tuple(loc))}"
