"""The broker credentials the workstation commands share (``collect``, ``dashboard``, ``deploy``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.errors import ConfigError


def read_password(args: argparse.Namespace) -> str | None:
    """``--password-file``'s first line (trailing newline dropped); one-line errors, exit 78."""
    if args.password_file is None:
        return None
    if not args.username:
        raise ConfigError("--password-file needs --username")
    try:
        pw = Path(args.password_file).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--password-file {args.password_file}: {getattr(e, 'strerror', None) or e}") from None
    if not pw:
        raise ConfigError(f"--password-file {args.password_file}: empty")
    return pw
