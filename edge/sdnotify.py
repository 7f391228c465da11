"""sd_notify over ``$NOTIFY_SOCKET`` in a few lines (no libsystemd): READY, WATCHDOG, STOPPING, STATUS.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op. An abstract socket name starts
with ``@`` (sent as a leading NUL byte). Errors are swallowed: a notification must never take
the daemon down.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + addr[1:]) if addr.startswith("@") else addr
        self.sock: socket.socket | None = None
        if self.address:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            except OSError:
                self.sock = None

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, *lines: str) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def watchdog_interval_s() -> float | None:
    """Half of ``$WATCHDOG_USEC`` (if it is meant for this process), else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.1, int(usec) / 2e6)
    except ValueError:
        return None
