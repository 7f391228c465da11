"""Facts about the seam that both sides share, defined once (``convert`` imports them from here).

Why in ``edge``: the Pi must not import ``convert``, so the single source of anything both the
station and the Pi rely on lives on the Pi's side.
"""

from __future__ import annotations

# The seed's four attributes, in the seed CSV's column order (and the shipped model's outputs).
SEAM_LABELS: tuple[str, ...] = ("good", "error", "break", "length")

# x, y, w, h: the 256×256 centre of a 640×480 frame, the view the shipped model was trained on
# (what ``synth --video``, ``demo`` and ``bench`` crop, and ``config/*.yaml``'s ``camera.roi``).
DEFAULT_ROI: tuple[int, int, int, int] = (192, 112, 256, 256)
