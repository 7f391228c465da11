"""``python -m edge --config FILE [--check-config] [--max-frames N] [--log-format json]``: the Pi daemon.

Exit codes: 0 clean stop; 78 bad config, model or camera settings (one line naming the file,
key and value — systemd's ``RestartPreventExitStatus=78`` stops restart loops on it); 74 outbox
I/O error; 1 anything unexpected (logged with its traceback: that is a bug).
"""

from __future__ import annotations

import argparse
import logging
import sys

from .logfmt import FORMATS, close_logging, event, json_mode, setup_logging

# run as ``python -m edge`` this module's __name__ is "__main__": log as "edge.__main__"
log = logging.getLogger(__spec__.name if __spec__ is not None else __name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edge",
        description="seam-qc edge daemon: camera → classify → alerts over MQTT, Grad-CAM heatmaps",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="YAML config (see config/seam-qc.yaml)")
    p.add_argument(
        "--check-config", action="store_true", help="validate the config, load and verify the model bundle, then exit"
    )
    p.add_argument("--max-frames", type=int, metavar="N", help="stop cleanly after N classified frames")
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="override log_level")
    p.add_argument(
        "--log-format", choices=FORMATS, help="override log_format (json: one JSON object per line, with events)"
    )
    return p


def _exit(code: int, error: str | None = None) -> int:
    """The last word: an ``exit`` event in JSON mode, else (on error) one plain ``error:`` line."""
    if json_mode():
        if error is None:
            log.info("exit %d", code, extra=event("exit", exit_code=code))
        else:
            log.error("error: %s", error, extra=event("exit", exit_code=code, error=error))
    elif error is not None:
        print(f"error: {error}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        print("error: --max-frames: must be >= 1", file=sys.stderr)
        return 2
    try:
        return _main(args)
    finally:
        close_logging()


def _main(args: argparse.Namespace) -> int:
    from .errors import SeamQCError

    if args.log_format == "json":  # before the config: its errors are JSON lines too
        setup_logging(args.log_level or "INFO", "json")
    try:
        from .config import load_config

        cfg = load_config(args.config)
        setup_logging(args.log_level or cfg.log_level, args.log_format or cfg.log_format)
        from .daemon import Daemon

        daemon = Daemon(cfg, max_frames=args.max_frames)
        # one validation path: --check-config is the start-up's own checks with nothing built
        daemon.setup(dry_run=args.check_config)
        if args.check_config:
            print(
                f"{args.config}: OK (station {cfg.station}, model {daemon.bundle.name} {cfg.model.bundle}, "
                f"runtime {daemon.runtime}, camera {cfg.camera.source} {cfg.camera.device})"
            )
            return 0
        return _exit(daemon.run())
    except SeamQCError as e:
        return _exit(e.exit_code, " ".join(str(e).splitlines()))  # one line, always
    except KeyboardInterrupt:
        return _exit(0)
    except Exception:  # noqa: BLE001 - a bug: say so once, with the traceback in the log
        log.exception("unexpected error (a bug: please report it)")
        return _exit(1, "unexpected error (a bug: please report it)") if json_mode() else 1


if __name__ == "__main__":
    sys.exit(main())
