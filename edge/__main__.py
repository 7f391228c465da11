"""``python -m edge --config FILE [--check-config] [--max-frames N]``: the Pi daemon.

Exit codes: 0 clean stop; 78 bad config, model or camera settings (one line naming the file,
key and value — systemd's ``RestartPreventExitStatus=78`` stops restart loops on it); 74 outbox
I/O error; 1 anything unexpected (logged with its traceback: that is a bug).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


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
    return p


def setup_logging(level: str) -> None:
    # under systemd the journal adds time stamps; elsewhere we add them
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if os.environ.get("INVOCATION_ID")
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=getattr(logging, level), format=fmt, stream=sys.stderr, force=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        print("error: --max-frames: must be >= 1", file=sys.stderr)
        return 2
    from .errors import SeamQCError

    log = logging.getLogger("seamqc")
    try:
        from .config import load_config

        cfg = load_config(args.config)
        setup_logging(args.log_level or cfg.log_level)
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
        return daemon.run()
    except SeamQCError as e:
        print(f"error: {' '.join(str(e).splitlines())}", file=sys.stderr)  # one line, always
        return e.exit_code
    except KeyboardInterrupt:
        return 0
    except Exception:  # noqa: BLE001 - a bug: say so once, with the traceback in the log
        log.exception("unexpected error (a bug: please report it)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
