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
    """Camera settings that can never work (unknown source, bad ROI).

    ``key``: the config key at fault, e.g. ``("camera", "roi")``, so that the daemon can prefix the
    file and line; ``detail``: the message without the key (the capture state's reason)."""

    exit_code = EX_CONFIG

    def __init__(self, message: str, key: tuple[str, ...] | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.detail = message if detail is None else detail


class DataError(SeamQCError):
    """Bad data set input on the workstation (CSV, images, folders)."""

    exit_code = 2
