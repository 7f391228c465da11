"""``bench``: latency, throughput, heatmap cost, memory, start-up and alert latency in one run.

``python -m convert bench [--quick] [--json FILE] [--bundle DIR]`` (``make bench``) prints a
markdown table with the targets (PASS/MISS) and writes the JSON of ARCHITECTURE.md §4. Everything is
measured side by side in ONE run and reported as ratios too, because a shared machine is noisy:
absolute numbers drift between runs, ratios measured minutes apart drift much less.

What runs where (so that one runtime's thread pools never disturb another's numbers):

* TensorFlow (Keras eager ``model(x)``, ``tf.function``, the full-TF Grad-CAM, the export of the
  model variants) runs in worker subprocesses, one per thread count (TF's intra-op pool size is
  fixed once TF starts); this process never imports TensorFlow (``tfworker``).
* LiteRT latencies run in this process, interleaved in rounds so drift hits all variants alike
  (``litert``).
* The daemon runs as ``python -m edge`` subprocesses on generated configs against a private
  Mosquitto on a free loopback port; its frame rate comes from its own retained ``stats``
  messages (Δframes / Δuptime between stats, so start-up is excluded), RSS from psutil (``daemon``).
* ``suite`` runs it all in order and builds the result; ``report`` adds the targets, the Pi
  estimates and the table; ``common`` holds the plan and the timing helpers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import DEFAULT_BUNDLE
from .report import render_table
from .suite import bench

__all__ = ["bench", "register", "render_table", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` to ``python -m convert``."""
    p = sub.add_parser(
        "bench",
        help="benchmarks: latency, e2e fps, heatmap cost, RSS, start-up, alert latency",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--quick", action="store_true", help="fewer iterations and model variants (< 1 min)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON (make bench: bench-results.json)")
    p.add_argument(
        "--bundle",
        metavar="DIR",
        help=f"model bundle (default {DEFAULT_BUNDLE}; an untrained one is exported when it is not shipped yet)",
    )
    p.add_argument("--work", metavar="DIR", default="build/bench", help="scratch dir (default build/bench)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the bench, print the table, write the JSON when asked."""
    res = bench(args.bundle, args.quick, Path(args.work).resolve(), Path(args.json) if args.json else None)
    print(render_table(res))
    if args.json:
        print(f"\nwrote {args.json} ({res['wall_s']} s)")
    return 0
