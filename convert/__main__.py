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
    "collect",
    "demo",
    "bench",
    "ship",
    "leaveout",
    "dashboard",
    "keygen",
    "sign",
    "deploy",
)


def _unavailable(sub: argparse._SubParsersAction, name: str, error: BaseException) -> None:
    """Register ``name`` as a command that only reports why its module did not import.

    Why: skipping it made the command vanish from ``--help`` and turned its use into argparse's
    "invalid choice", which hides the broken install; the other commands keep working.
    """
    detail = (str(error).strip().splitlines() or [""])[0][:200]
    why = f"convert.{name} failed to import ({type(error).__name__}: {detail})"
    # no option prefix: whatever follows the command (its flags included) is taken, not refused
    p = sub.add_parser(name, help=f"UNAVAILABLE ({why})", add_help=False, prefix_chars="\0")
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)

    def run(args: argparse.Namespace) -> int:
        print(f"error: command {name!r} is unavailable: {why}", file=sys.stderr)
        return 1

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"convert.{name}")
        except Exception as e:  # noqa: BLE001 - any import failure: say so when the command is used
            _unavailable(sub, name, e)
            continue
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
