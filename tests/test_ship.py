"""``convert ship`` with no flags rebuilds the shipped bundle: its defaults are that bundle's recipe."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "edge" / "models" / "default"


def _ship_defaults() -> argparse.Namespace:
    from convert import ship

    parser = argparse.ArgumentParser()
    ship.register(parser.add_subparsers())
    return parser.parse_args(["ship"])


@pytest.mark.skipif(not (SHIPPED / "model.keras").exists(), reason="shipped bundle not built")
def test_ship_defaults_are_the_shipped_recipe():
    from convert.models import read_meta

    meta = read_meta(SHIPPED / "model.keras")
    d = _ship_defaults()
    assert (d.arch, d.filters, d.size) == (meta["arch"], meta["filters"], meta["height"])
    assert Path(d.out).resolve() == SHIPPED


def test_make_shipped_model_adds_no_flags():
    """The Makefile's recipe is ``convert ship`` on its defaults, so the two cannot drift apart."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^shipped-model:.*\n\t(.+)$", text, re.M)
    assert recipe is not None
    assert recipe.group(1).split() == ["$(PY)", "-m", "convert", "ship", "--out", "edge/models/default"]
