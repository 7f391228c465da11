"""``python -m convert <command>``: one sub-command per module, TensorFlow imported only when used.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func=run``; ``run(args) -> int`` does the work. User errors (``edge.errors.SeamQCError``)
print one line and exit non-zero; there is no traceback for them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = (
    "synth",
    "split",
    "train",
    "evaluate",
    "export",
    "heatmaps",
    "localize",
    "label",
    "demo",
    "bench",
    "ship",
    "leaveout",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"convert.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"convert.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edge.errors import SeamQCError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SeamQCError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
