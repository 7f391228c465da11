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


@pytest.mark.skipif(not (SHIPPED / "model.keras").exists(), reason="shipped bundle not built")
def test_shipped_model_went_through_the_second_stage_of_the_recipe():
    """``convert ship`` continues on a fresh set (``train2``) when ``--continue-epochs`` > 0; the
    shipped model's own record says which set it was trained on last."""
    from convert.models import read_meta

    meta = read_meta(SHIPPED / "model.keras")
    d = _ship_defaults()
    assert d.continue_epochs > 0 and d.continue_count == 12000
    assert Path(meta["trained_on"]).parent.name == "train2" and meta.get("init")


def test_ship_refuses_a_negative_continue_before_touching_anything(tmp_path):
    from convert.ship import ship
    from edge.errors import ModelError

    with pytest.raises(ModelError, match="--continue-epochs -1"):
        ship(tmp_path / "out", tmp_path / "work", continue_epochs=-1)
    assert not (tmp_path / "work").exists()
