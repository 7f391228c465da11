"""``convert ship`` with no flags rebuilds the shipped bundle: its defaults are that bundle's recipe."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from edge.errors import DataError
from tests.support.cli import run_convert

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "edge" / "models" / "default"


def _ship_defaults() -> argparse.Namespace:
    from convert import ship

    parser = argparse.ArgumentParser()
    ship.register(parser.add_subparsers())
    return parser.parse_args(["ship"])


def _final_arch(d: argparse.Namespace) -> str:
    """The architecture ``convert ship`` ends with: the last stage that grows the model names it."""
    from convert.ship import stages_from_args

    return next((st.arch for st in reversed(stages_from_args(d.then)) if st.arch), d.arch)


@pytest.mark.skipif(not (SHIPPED / "model.keras").exists(), reason="shipped bundle not built")
def test_ship_defaults_are_the_shipped_recipe():
    from convert.models import read_meta

    meta = read_meta(SHIPPED / "model.keras")
    d = _ship_defaults()
    assert (_final_arch(d), d.filters, d.size) == (meta["arch"], meta["filters"], meta["height"])
    assert Path(d.out).resolve() == SHIPPED
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert manifest.get("tta", {}).get("mode", "none") == d.tta == "lr"


def test_make_shipped_model_adds_no_flags():
    """The Makefile's recipe is ``convert ship`` on its defaults, so the two cannot drift apart."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^shipped-model:.*\n\t(.+)$", text, re.M)
    assert recipe is not None
    assert recipe.group(1).split() == ["$(PY)", "-m", "convert", "ship", "--out", "edge/models/default"]


@pytest.mark.skipif(not (SHIPPED / "model.keras").exists(), reason="shipped bundle not built")
def test_shipped_model_went_through_every_stage_of_the_recipe():
    """``convert ship`` trains on, stage by stage, each on a fresh set (``train2``, ``train3``, …);
    the shipped model's own record says which set it was trained on last and what it grew into.

    A last stage run by hand (``convert train --init`` on its own set, as the 2026-12-07 warm
    restart was) records another path: then docs/model-history.md must give that path with the
    command that trained on it, so that the bundle's provenance is never a mystery."""
    from convert.models import read_meta
    from convert.ship import SHIPPED_STAGES, stages_from_args

    meta = read_meta(SHIPPED / "model.keras")
    d = _ship_defaults()
    stages = stages_from_args(d.then)
    assert stages == SHIPPED_STAGES and meta.get("init")
    assert meta["arch"] == _final_arch(d)
    trained_on = meta["trained_on"]
    if Path(trained_on).parent.name != f"train{len(stages) + 1}":
        history = (ROOT / "docs" / "model-history.md").read_text()
        assert f"--train {trained_on} " in history and f"--init {meta['init']} " in history, trained_on


def test_then_flag_parses_and_refuses_in_one_line(tmp_path):
    from convert.ship import Stage, parse_stage, ship, stages_from_args
    from edge.errors import ModelError

    assert stages_from_args(["none"]) == ()
    assert stages_from_args(["5:100:1e-3", "2:50:5e-4:resnet-s2-deep"]) == (
        Stage(5, 100, 1e-3),
        Stage(2, 50, 5e-4, "resnet-s2-deep"),
    )
    wide = parse_stage("8:12000:3e-4@2.3:9,9:16")
    assert wide == Stage(8, 12000, 3e-4, scale=((2.3, 9.0), (9.0, 16.0))) and wide.spec() == "8:12000:0.0003@2.3:9,9:16"
    assert parse_stage(wide.spec()) == wide
    changes = parse_stage("8:12000:1e-4@2.3:9,9:16,9:16,9:16+length-changes=0.25")
    assert changes.length_changes == 0.25 and changes.scale == ((2.3, 9.0), (9.0, 16.0), (9.0, 16.0), (9.0, 16.0))
    assert changes.spec() == "8:12000:0.0001@2.3:9,9:16,9:16,9:16+length-changes=0.25"
    assert parse_stage(changes.spec()) == changes and parse_stage("8:10:1e-4+length-changes=0.1").scale is None
    both = parse_stage("8:10:1e-4@2.3:9,9:16+random-textures=0.3+length-changes=0.5")
    assert (both.length_changes, both.random_textures) == (0.5, 0.3) and both.scale == ((2.3, 9.0), (9.0, 16.0))
    assert both.spec() == "8:10:0.0001@2.3:9,9:16+length-changes=0.5+random-textures=0.3"
    assert parse_stage(both.spec()) == both and parse_stage("8:10:1e-4+random-textures=1").random_textures == 1.0
    tone = parse_stage("8:10:1e-4@2.3:9+tone-share=0.7")
    assert tone.tone_share == 0.7 and both.tone_share is None and tone.spec() == "8:10:0.0001@2.3:9+tone-share=0.7"
    assert parse_stage(tone.spec()) == tone and parse_stage("8:10:1e-4+tone-share=0").tone_share == 0.0
    for bad, why in (
        ("5:100", "expected EPOCHS:COUNT:LR"),
        ("0:100:1e-3", "must be positive"),
        ("5:100:1e-3:vgg16", "cannot grow into 'vgg16'"),
        ("8:100:3e-4@9:3", "expected EPOCHS:COUNT:LR"),
        ("8:100:3e-4@2.3", "expected EPOCHS:COUNT:LR"),
        ("8:100:3e-4+length-changes=x", "expected EPOCHS:COUNT:LR"),
        ("8:100:3e-4+length-changes=1.5", "length-changes must be in 0..1"),
        ("8:100:3e-4+random-textures=-0.1", "random-textures must be in 0..1"),
        ("8:100:3e-4+random-textures", "expected EPOCHS:COUNT:LR"),
        ("8:100:3e-4+tone-share=1.2", "tone-share must be in 0..1"),
        ("8:100:3e-4+textures=0.1", "expected EPOCHS:COUNT:LR"),
        ("8:100:3e-4+length-changes=0.1+length-changes=0.2", "expected EPOCHS:COUNT:LR"),
    ):
        with pytest.raises(ModelError, match=why):
            parse_stage(bad)
    with pytest.raises(ModelError, match="must be positive"):
        ship(tmp_path / "out", tmp_path / "work", stages=(Stage(-1, 10, 1e-3),))
    assert not (tmp_path / "work").exists()


def test_first_stage_scale_range_is_synths_and_refuses_in_one_line(tmp_path):
    from convert.ship import ship

    for bad, why in (("9:3", "argument --scale-range: 9:3: need 0.5 <= LO < HI"), ("x", "expected LO:HI")):
        p = run_convert("ship", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "b"), "--scale-range", bad)
        assert p.returncode == 2 and why in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "w").exists()
    with pytest.raises(DataError, match="--scale-range 0.1:9: need 0.5"):
        ship(tmp_path / "out", tmp_path / "w", scale=((0.1, 9.0),))
    assert not (tmp_path / "w").exists()


def test_first_stage_shares_refuse_in_one_line(tmp_path):
    for flag in ("--length-changes", "--random-textures", "--tone-share"):
        p = run_convert("ship", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "b"), flag, "1.5")
        assert p.returncode == 78 and p.stderr.strip().endswith(f"{flag} must be in 0..1, got 1.5"), p.stderr
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "w").exists()


def test_an_unknown_tta_is_refused_before_any_synth(tmp_path):
    """``ship(tta=…)`` is checked up front, not at the export after hours of training; the CLI's
    ``--tta`` offers export's modes."""
    from convert.ship import ship
    from edge.errors import ModelError

    with pytest.raises(ModelError, match=r"^--tta 'ud': choose none, lr, flips$"):
        ship(tmp_path / "b", tmp_path / "w", tta="ud")
    assert not (tmp_path / "w").exists()
    p = run_convert("ship", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "b"), "--tta", "ud")
    assert p.returncode == 2 and "argument --tta: invalid choice: 'ud'" in p.stderr, p.stderr
    assert not (tmp_path / "w").exists()
