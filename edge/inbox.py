"""The receiving end of a command topic (``feedback``, ``model/set``), shared by both inboxes.

paho's network thread calls ``on_message``: it parses the payload, puts the result on a bounded
queue for the one worker that consumes it, or counts the refusal; it never raises and never
blocks, so a flood of junk cannot stall paho (and with it the alerts). A refusal is logged at most
once per ``log_every_s`` with the count of the ones not logged, so 10,000 junk messages cost
10,000 counter increments, not 10,000 log lines.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """``parse`` turns a payload into a ``T`` or raises ``refuse``; counters (paho's thread writes,
    others read): ``received``, ``junk`` (refused as invalid), ``dropped`` (valid, queue full).

    Subclasses say how a refusal reads (``_ignored``) and may act on junk (``_on_junk``, called under
    the lock)."""

    worker = "worker"  # who empties the queue, for the queue-full line

    def __init__(
        self,
        topic: str,
        parse: Callable[[bytes], T],
        refuse: type[Exception],
        *,
        queue_size: int,
        log_every_s: float,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = topic
        self._parse, self._refuse = parse, refuse
        self.q: queue.Queue[T] = queue.Queue(maxsize=queue_size)
        self.log = log
        self._clock = clock
        self._log_every_s = log_every_s
        self.received = 0
        self.junk = 0
        self.dropped = 0
        self._said_at: float | None = None  # when the last line about a refusal was logged
        self._unsaid = 0  # refusals since that line
        self._lock = threading.Lock()

    def on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        """paho's callback: parse, enqueue or count; never raises, never blocks."""
        self.received += 1
        payload = bytes(msg.payload)
        try:
            item = self._parse(payload)
        except self._refuse as e:
            self.junk += 1
            self._refused(str(e), payload, junk=True)
            return
        try:
            self.q.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            self._refused(f"queue of {self.q.maxsize} full (the {self.worker} is behind)", payload)

    def handle(self, payload: bytes) -> None:
        """``on_message`` for a bare payload (tests, benchmarks)."""

        class _M:
            pass

        m = _M()
        m.payload = payload  # type: ignore[attr-defined]
        self.on_message(None, None, m)

    def get(self, timeout: float | None = None) -> T | None:
        """The next item, or None after ``timeout`` (0 or None: do not wait)."""
        try:
            return self.q.get(timeout=timeout) if timeout else self.q.get_nowait()
        except queue.Empty:
            return None

    def _on_junk(self, now: float) -> None:
        """A payload was refused as invalid (under the lock)."""

    def _refused(self, why: str, payload: bytes, junk: bool = False) -> None:
        with self._lock:
            now = self._clock()
            if junk:
                self._on_junk(now)
            self._unsaid += 1
            if self._said_at is not None and now - self._said_at < self._log_every_s:
                return
            more, self._said_at, self._unsaid = self._unsaid - 1, now, 0
        self._ignored(why, payload, more)

    def _ignored(self, why: str, payload: bytes, more: int) -> None:
        """Log one refusal; ``more``: the refusals since the last such line that were not logged."""
        raise NotImplementedError
