"""A small exception tree: user errors carry one clear line and an exit code, never a traceback."""

from __future__ import annotations

EX_CONFIG = 78  # sysexits EX_CONFIG: systemd's RestartPreventExitStatus stops restart loops on it


class SeamQCError(Exception):
    """Base of every error that is the user's to fix; ``str(err)`` is the one line shown."""

    exit_code = 1


class ConfigError(SeamQCError):
    """Bad configuration: the file, key and value are named in the message."""

    exit_code = EX_CONFIG


class ModelError(SeamQCError):
    """Missing, corrupt or mismatched model bundle."""

    exit_code = EX_CONFIG


class CameraError(SeamQCError):
    """Camera settings that can never work (unknown source, bad ROI)."""

    exit_code = EX_CONFIG


class DataError(SeamQCError):
    """Bad data set input on the workstation (CSV, images, folders)."""

    exit_code = 2
