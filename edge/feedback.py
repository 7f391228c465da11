"""Operator feedback in: ``<prefix>/<station>/feedback`` (QoS 1), parsed strictly, queued, never blocking.

Two messages (ARCHITECTURE.md §6), JSON of at most ``FEEDBACK_MAX`` bytes:

* a verdict on an alert: ``{"event_id": …, "verdict": "confirmed"|"false_alarm", "labels": […]?, "by": …?}``
  (``labels``: the corrected labels, e.g. ``[]`` or ``["good"]`` for a false alarm);
* a missed-defect report: ``{"missed": {"ts": ISO 8601, "labels": […]}, "by": …?}``.

Why strict: the topic is an attack surface (anyone the broker's ACL lets publish there). Unknown
keys, wrong types, labels the model does not have, oversize or non-UTF-8 payloads are refused by
pydantic (``extra="forbid"``, strict types); each refusal is counted and logged at most once per
``LOG_EVERY_S``, so 10,000 junk messages cost 10,000 counter increments, not 10,000 log lines.

Threads: :meth:`FeedbackInbox.on_message` runs in paho's network thread. It only validates and
``put_nowait``\\s into a bounded queue (full: counted as dropped); it never touches the capture
path, the outbox or the disk. The samples worker (``edge.samples``) is the only consumer. The
inbox's counters have one writer each: paho's thread.

Flood breaker: cheaper parsing cannot make a flood cheap (paho's packet handling and the PUBACK cost
several times our parse, in a thread that competes with the classifier for the GIL), so more than
``junk_limit`` refused payloads within ``junk_window_s`` make the inbox unsubscribe from the topic for
``pause_s`` (one log line) and the broker stops sending. ``tick``, called from the samples worker's
loop (it wakes at least every 0.2 s), subscribes again once the pause is over. Only refused payloads
count: well-formed feedback at any rate never trips it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .inbox import Inbox
from .logfmt import event

FEEDBACK_MAX = 4096  # bytes: the topic's contract
MAX_LABELS = 16
LOG_EVERY_S = 60.0  # at most one line about refused feedback per minute
QUEUE_SIZE = 256
JUNK_LIMIT = 200  # refused payloads within JUNK_WINDOW_S that pause the subscription (mqtt.feedback_junk_limit)
JUNK_WINDOW_S = 10.0
PAUSE_S = 60.0  # how long the topic stays unsubscribed (mqtt.feedback_pause_s)
_EVENT_ID_RE = re.compile(r"^[\x21-\x7e]{1,256}$")  # printable ASCII: what the decider's ids are made of
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SHOWN = 60  # bytes of a refused payload shown in the log


class FeedbackError(ValueError):
    """A payload that is not valid feedback; the message says why in a few words."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _check_labels(v: list[str] | None, info: ValidationInfo) -> list[str] | None:
    if v is None:
        return v
    allowed = (info.context or {}).get("labels") or ()
    bad = [x for x in v if x not in allowed]
    if bad:
        raise ValueError(f"{bad[0][:32]!r} is not a label of the model ({', '.join(allowed)})")
    return list(dict.fromkeys(v))  # order kept, duplicates gone


def _check_by(v: str | None) -> str | None:
    if v is not None and _CONTROL_RE.search(v):
        raise ValueError("by contains a control character")
    return v


class Verdict(_Strict):
    """An operator's verdict on an alert (``event_id`` as published on ``/alert``)."""

    event_id: str
    verdict: Literal["confirmed", "false_alarm"]
    labels: list[str] | None = Field(None, max_length=MAX_LABELS)
    by: str | None = Field(None, min_length=1, max_length=64)

    @field_validator("event_id")
    @classmethod
    def _event_id(cls, v: str) -> str:
        if not _EVENT_ID_RE.match(v):
            raise ValueError("event_id must be 1 to 256 printable ASCII characters")
        return v

    _labels = field_validator("labels")(_check_labels)
    _by = field_validator("by")(_check_by)


class MissedDefect(_Strict):
    """When (ISO 8601 with a zone) and what the model missed."""

    ts: str
    labels: list[str] = Field(min_length=1, max_length=MAX_LABELS)

    @field_validator("ts")
    @classmethod
    def _ts(cls, v: str) -> str:
        if len(v) > 40:
            raise ValueError("ts is not an ISO 8601 time")
        try:
            t = dt.datetime.fromisoformat(v)
        except ValueError:
            raise ValueError("ts is not an ISO 8601 time") from None
        if t.tzinfo is None:
            raise ValueError("ts needs a time zone (…Z or +01:00)")
        return v

    _labels = field_validator("labels")(_check_labels)

    @property
    def epoch(self) -> float:
        """``ts`` as seconds since the epoch (the ring buffer's clock)."""
        return dt.datetime.fromisoformat(self.ts).timestamp()


class Missed(_Strict):
    """A missed-defect report: the frames around ``missed.ts`` are kept as samples."""

    missed: MissedDefect
    by: str | None = Field(None, min_length=1, max_length=64)

    _by = field_validator("by")(_check_by)


Feedback = Verdict | Missed


def parse_feedback(payload: bytes, labels: Sequence[str]) -> Feedback:
    """One feedback message, validated against the model's ``labels``; ``FeedbackError`` otherwise."""
    if len(payload) > FEEDBACK_MAX:
        raise FeedbackError(f"over {FEEDBACK_MAX} bytes ({len(payload)})")
    try:
        text = payload.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError:
        raise FeedbackError("not UTF-8") from None
    except (ValueError, RecursionError):
        raise FeedbackError("not JSON") from None
    if not isinstance(data, dict):
        raise FeedbackError("not a JSON object")
    model: type[Verdict] | type[Missed] = Missed if "missed" in data else Verdict
    try:
        return model.model_validate(data, context={"labels": tuple(labels)})
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "(message)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise FeedbackError(f"{where}: {msg}"[:160]) from None


class FeedbackInbox(Inbox[Feedback]):
    """Subscribes to the station's feedback topic; paho's callback validates and enqueues, nothing more.

    ``get`` is for the one consumer (the samples worker). Counters (``edge.inbox.Inbox``):
    ``received``, ``junk``, ``dropped``; and ``pauses`` (flood breaker trips); ``paused`` is true
    while the topic is unsubscribed.

    ``listening(False)`` unsubscribes and ``listening(True)`` subscribes again (``Publisher.set_listening``);
    None: the breaker only counts (tests).
    """

    worker = "samples worker"

    def __init__(
        self,
        topic: str,
        labels: Sequence[str],
        *,
        queue_size: int = QUEUE_SIZE,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        log_every_s: float = LOG_EVERY_S,
        junk_limit: int = JUNK_LIMIT,
        junk_window_s: float = JUNK_WINDOW_S,
        pause_s: float = PAUSE_S,
        listening: Callable[[bool], object] | None = None,
    ) -> None:
        self.labels = tuple(labels)
        super().__init__(
            topic,
            lambda payload: parse_feedback(payload, self.labels),
            FeedbackError,
            queue_size=queue_size,
            log_every_s=log_every_s,
            log=log or logging.getLogger(__name__),
            clock=clock,
        )
        self.junk_limit = junk_limit
        self.junk_window_s = junk_window_s
        self.pause_s = pause_s
        self._listening = listening
        # when the last junk_limit + 1 refusals arrived: the window holds too many when the oldest is recent
        self._junk_times: deque[float] = deque(maxlen=junk_limit + 1)
        self.paused = False
        self.pauses = 0
        self._resume_at = 0.0
        # the base's lock also guards the breaker: paho's thread trips it, the samples worker resumes it

    def on_connect(self, client: Any) -> None:
        """Subscribe (QoS 1) on each connect: every session starts clean."""
        client.subscribe(self.topic, qos=1)

    def tick(self) -> None:
        """Subscribe again once a pause is over; the samples worker calls it on every loop (≤ 0.2 s apart)."""
        if not self.paused:  # one attribute read: the common case takes no lock
            return
        with self._lock:
            if not self.paused or self._clock() < self._resume_at:
                return
            if self._listening is not None:
                self._listening(True)  # before the flag: stats saying "not paused" follow the SUBSCRIBE
            self.paused = False
            self._junk_times.clear()

    def _on_junk(self, now: float) -> None:
        if self._trip(now):
            self.log.warning(
                "feedback on %s: %d refused messages within %g s, a flood: unsubscribed for %g s "
                "(feedback sent meanwhile is lost; stats: feedback_paused, feedback_pauses); the broker's "
                "ACL should keep this publisher off the topic (README: Who may publish feedback)",
                self.topic,
                self.junk_limit + 1,
                self.junk_window_s,
                self.pause_s,
                extra=event(
                    "feedback",
                    kind="paused",
                    junk=self.junk,
                    limit=self.junk_limit,
                    window_s=self.junk_window_s,
                    pause_s=self.pause_s,
                ),
            )

    def _trip(self, now: float) -> bool:
        """The breaker, under ``_lock``: True when this refusal paused the subscription."""
        if self.paused:
            return False  # messages the broker sent before it read the UNSUBSCRIBE: counted, not timed
        times = self._junk_times
        times.append(now)
        if len(times) <= self.junk_limit or now - times[0] > self.junk_window_s:
            return False
        if self._listening is not None:
            # before the flag: the UNSUBSCRIBE is queued ahead of any stats that say "paused", so a
            # client that saw feedback_paused: 1 knows the broker no longer routes feedback here
            self._listening(False)
        self.paused = True
        self.pauses += 1
        self._resume_at = now + self.pause_s
        times.clear()
        return True

    def _ignored(self, why: str, payload: bytes, more: int) -> None:
        shown = payload[:_SHOWN]
        cut = f"… ({len(payload)} bytes)" if len(payload) > _SHOWN else ""
        self.log.warning(
            "feedback on %s ignored: %s: %r%s%s (counted in stats as feedback_junk / feedback_dropped; "
            "at most one such line per %g s)",
            self.topic,
            why,
            shown,
            cut,
            f" (+{more} more since the last such line)" if more else "",
            self._log_every_s,
        )
