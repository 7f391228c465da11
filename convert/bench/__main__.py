"""``python -m convert.bench --worker SPEC.json``: the bench's TF worker process (``tfworker``).

The bench itself is ``python -m convert bench``.
"""

from __future__ import annotations

import sys

from .tfworker import worker_main

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2]))
    print("usage: python -m convert bench …  (this entry point is the bench's TF worker)", file=sys.stderr)
    sys.exit(2)
