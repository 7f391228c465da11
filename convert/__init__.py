"""seam-qc workstation toolchain: ``python -m convert <command>`` (synth, split, train, evaluate,
export, heatmaps, label, demo, bench). May import ``edge``; ``edge`` never imports this package."""
