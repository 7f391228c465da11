"""The daemon's log output: text lines for people, or one JSON object per line (``log_format: json``).

Why JSON: journald, Loki and the workstation's harness (``convert.harness``: the demo, the bench,
the tests) read events from the log; parsing prose (" ALERT ", "stopping (1 frames)") breaks each
time a message is reworded. A JSON line has ``ts`` (UTC, ms), ``level``, ``logger``, ``msg`` and,
for the daemon's events, ``event`` plus that event's fields at the top level::

    {"ts":"2024-05-01T10:00:00.123Z","level":"INFO","logger":"edge.daemon","msg":"stopping (end of file)",
     "event":"stopping","reason":"end of file","frames":900}

Events (ARCHITECTURE.md, "Log events"): ``start`` (model loaded), ``ready`` (frames flow),
``alert``, ``stats``, ``summary``, ``stopping``, ``stopped``, ``exit``. In JSON mode whatever native
libraries write straight to stderr (LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate")
is wrapped too, so every line parses. Text output is what it always was.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import sys
import threading
from typing import Any, TextIO

FORMATS = ("text", "json")
RESERVED = frozenset({"ts", "level", "logger", "msg", "event", "exc"})


def event(name: str, msg: str | None = None, **fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call that is also a machine-readable event.

    ``msg`` replaces the text message in JSON lines (e.g. an alert's short line, its payload being a
    field already); the text format ignores all of it, so text logs stay as they were.
    """
    clash = RESERVED & set(fields)
    if clash:
        raise ValueError(f"event fields {sorted(clash)} are reserved")
    return {"seamqc_event": name, "seamqc_fields": fields, "seamqc_msg": msg}


def _iso_ms(ts: float) -> str:
    d = _dt.datetime.fromtimestamp(ts, tz=_dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso_ms(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": getattr(record, "seamqc_msg", None) or record.getMessage(),
        }
        name = getattr(record, "seamqc_event", None)
        if name:
            out["event"] = name
            out.update(getattr(record, "seamqc_fields", None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=str)


def text_format() -> str:
    # under systemd the journal adds time stamps; elsewhere we add them
    if os.environ.get("INVOCATION_ID"):
        return "%(levelname)s %(name)s: %(message)s"
    return "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _NativeStderr:
    """In JSON mode: fd 2 becomes a pipe whose lines are logged as records of ``edge.native``.

    Why: C++ libraries (LiteRT) write to fd 2 directly, past Python's logging; a line that is not
    JSON would break every reader of the log. The log handler writes to a copy of the real fd 2.
    """

    def __init__(self) -> None:
        self.real_fd = os.dup(2)
        self.stream: TextIO = os.fdopen(self.real_fd, "w", buffering=1, encoding="utf-8", errors="replace")
        r, w = os.pipe()
        sys.stderr.flush()
        os.dup2(w, 2)
        os.close(w)
        self._r = r
        self._log = logging.getLogger("edge.native")
        self._thread = threading.Thread(target=self._pump, name="native-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with os.fdopen(self._r, "r", encoding="utf-8", errors="replace") as f:
            for line in f:
                text = line.rstrip("\n")
                if not text.strip():
                    continue
                word = text.split(":", 1)[0].strip().upper()
                level = {"WARNING": logging.WARNING, "ERROR": logging.ERROR, "FATAL": logging.CRITICAL}.get(
                    word, logging.INFO
                )
                self._log.log(level, "%s", text)

    def close(self) -> None:
        """Give fd 2 back and log what is still in the pipe (bounded: 1 s)."""
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            os.dup2(self.real_fd, 2)  # the pipe's last writer is gone: the pump reads EOF
        self._thread.join(timeout=1.0)


_native: _NativeStderr | None = None


def setup_logging(level: str, fmt: str = "text") -> None:
    """Configure the root logger once: ``fmt`` is ``text`` (people) or ``json`` (machines)."""
    global _native
    if fmt == "json":
        if _native is None:
            _native = _NativeStderr()
        handler = logging.StreamHandler(_native.stream)
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=getattr(logging, level), handlers=[handler], force=True)
    else:
        logging.basicConfig(level=getattr(logging, level), format=text_format(), stream=sys.stderr, force=True)


def json_mode() -> bool:
    """True once ``setup_logging(..., "json")`` ran: errors then go out as ``exit`` events."""
    return _native is not None


def close_logging() -> None:
    """End of the process: stop wrapping native stderr (everything written so far is logged)."""
    global _native
    if _native is not None:
        n, _native = _native, None
        n.close()
