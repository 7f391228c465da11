"""``wait_until``: the one polling wait of the test suite (for states that have no event to wait on)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition", every: float = 0.01) -> bool:
    """Poll ``cond`` every ``every`` s until it is true (returns True); an AssertionError naming
    ``what`` after ``timeout`` s, so a test cannot pass on a condition that never held."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)
    return True
