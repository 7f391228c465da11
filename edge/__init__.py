"""seam-qc edge runtime: camera → preprocess → classify → decide → publish, on a Raspberry Pi.

Nothing here imports TensorFlow or ``convert`` at module level; the Pi runs without them.
"""

__version__ = "0.1.0"
