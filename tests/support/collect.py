"""Sample-collection fixtures (owned by the data loop: ``convert collect``, ``convert label --images``).

Stations publish samples here the way the daemon does (``edge.daemon.Daemon._setup_samples``):
a ``Sampler`` hands frames to a ``SampleWorker`` that writes PNG + sidecar and publishes them one
at a time through ``edge.publish.Publisher.sample`` on a real broker; verdicts reach the worker
through its ``FeedbackInbox``. Nothing here builds a sample payload by hand.

Fixtures
--------
``sample_station``   ``factory(broker, name, images=None)`` → started ``SampleStation``; stopped at teardown.
``collect_cli``      ``factory(broker, out, *extra)`` → a running ``python -m convert collect`` (``CollectProcess``).
``collected_folder`` ``factory(broker, out)`` → ``out``, a collect folder: 3 flagged (error) and 3 uncertain
                     (good) samples of station st1, collected in-process; the second alert got a
                     false_alarm verdict with ``break`` (``st1-b00t-00000003-flagged``).
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from convert.harness import Broker
from edge.feedback import FeedbackInbox
from edge.samples import Sampler, SampleWorker
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
LABELS = ("good", "error", "break", "length")
THRESHOLDS = {"good": 0.5, "error": 0.5, "break": 0.5, "length": 0.5}


def noise_image(i: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)


class SampleStation:
    """One station's sample path: ``Sampler`` → ``SampleWorker`` → ``Publisher.sample`` (real MQTT 5)."""

    def __init__(
        self, publisher, name: str, root: Path, images: Callable[[int], np.ndarray] | None = None, version: str = "v1"
    ):
        self.name = name
        self.publisher = publisher
        self.stop_event = threading.Event()
        self.inbox = FeedbackInbox(f"seamqc/{name}/feedback", LABELS)
        self.worker = SampleWorker(
            root,
            self.stop_event,
            station=name,
            model={"name": "tiny", "sha256": "ab" * 32, "version": version},
            queue_size=256,
            inbox=self.inbox,
            publish=publisher.sample,
        )
        self.worker.prepare_dir()
        self.worker.start()
        self.sampler = Sampler(
            self.worker,
            station=name,
            boot="b00t",
            thresholds=THRESHOLDS,
            expected_length="2mm",
            uncertain_margin=0.1,
            uncertain_per_h=3_600_000,
            random_good_per_h=0,
            ring=None,
            rng=random.Random(0),
        )
        self.images = images or noise_image
        self.frame = 0
        self.kept: list[str] = []  # alert event ids / frames handed over, in order

    def alert(self, labels: tuple[str, ...] = ("error",), scores: dict | None = None) -> str:
        """A flagged sample (an alert's best frame); returns its event id (known to the worker for verdicts)."""
        self.frame += 1
        event_id = f"{self.name}-b00t-{self.frame}"
        scores = scores or {"good": 0.1, "error": 0.93, "break": 0.2, "length": 0.9}
        self.worker.note_alert(event_id)
        self.sampler.alert(event_id, self.frame, 1.767e9 + self.frame, labels, scores, self.images(self.frame))
        self.kept.append(event_id)
        return event_id

    def uncertain(self) -> None:
        """An uncertain frame (error 0.45, within the margin of its 0.5 threshold)."""
        self.frame += 1
        scores = {"good": 0.6, "error": 0.45, "break": 0.05, "length": 0.2}
        self.sampler.observe(self.frame, self.frame / 30, 1.767e9 + self.frame, self.images(self.frame), scores, True)
        self.kept.append(f"frame-{self.frame}")

    def verdict(self, event_id: str, verdict: str, labels: list[str] | None = None, by: str = "anna") -> None:
        body: dict = {"event_id": event_id, "verdict": verdict, "by": by}
        if labels is not None:
            body["labels"] = labels
        self.inbox.handle(json.dumps(body).encode())

    def wait_published(self, n: int, timeout: float = 60) -> None:
        wait_until(lambda: self.worker.published >= n, timeout, f"{self.name}: {n} samples acknowledged")

    def close(self) -> None:
        self.stop_event.set()
        self.worker.close(2.0)
        self.worker.join(10)


@pytest.fixture
def sample_station(mqtt_publisher, tmp_path_factory):
    made: list[SampleStation] = []

    def make(broker: Broker, name: str, images: Callable[[int], np.ndarray] | None = None) -> SampleStation:
        pub = mqtt_publisher(broker, station=name)
        wait_until(lambda: pub.connected, 20, f"{name} connected")
        st = SampleStation(pub, name, tmp_path_factory.mktemp(f"samples-{name}"), images)
        made.append(st)
        return st

    yield make
    for st in made:
        st.close()


class CollectProcess:
    """``python -m convert collect`` as a subprocess; ``ready()`` waits for its 'collecting' line."""

    def __init__(self, broker: Broker, out: Path, *extra: str):
        self.out = Path(out)
        self.cmd = [
            sys.executable,
            "-m",
            "convert",
            "collect",
            "--broker",
            broker.host,
            "--port",
            str(broker.port),
            "--out",
            str(out),
            *extra,
        ]
        self.proc = subprocess.Popen(
            self.cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self.lines: list[str] = []

    def ready(self, timeout: float = 60) -> CollectProcess:
        assert self.proc.stdout is not None
        box: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.startswith("collecting "):
                    box.append(line)
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        assert box, f"collect did not start: {''.join(self.lines)} {err}"
        return self

    def communicate(self, timeout: float = 60) -> tuple[str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return "".join(self.lines) + out, err

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def collect_cli():
    made: list[CollectProcess] = []

    def make(broker: Broker, out: Path, *extra: str) -> CollectProcess:
        p = CollectProcess(broker, out, *extra)
        made.append(p)
        return p

    yield make
    for p in made:
        if p.proc.poll() is None:
            p.kill()


@pytest.fixture
def collected_folder(sample_station):
    from convert.collect import Collector, CollectStore

    def make(broker: Broker, out: Path) -> Path:
        c = Collector(CollectStore(out), broker.host, broker.port)
        c.connect()
        try:
            st = sample_station(broker, "st1")
            events = []
            for k in range(6):
                if k % 2:
                    st.uncertain()
                else:
                    events.append(st.alert())
            st.wait_published(6)
            wait_until(lambda: c.counts["new"] == 6, 20, "6 samples collected")
            st.verdict(events[1], "false_alarm", ["break"])
            st.wait_published(7)
            wait_until(lambda: c.counts["updated"] == 1, 20, "the verdict collected")
        finally:
            c.stop.set()
            c.close()
            c.store.close()
        return out

    return make
