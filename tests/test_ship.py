"""convert.ship end to end at toy scale: synth → train → export → test table (the real chain)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_ship_chain_toy(tmp_path):
    from convert.ship import ship
    from edge.bundle import load_bundle

    s = ship(tmp_path / "bundle", tmp_path / "work", train_count=48, valid_count=24, test_count=32, epochs=1,
             size=32, filters=4, batch=16, min_test=0)
    b = load_bundle(tmp_path / "bundle")
    assert b.name == "seam-default" and b.has("classifier_int8") and b.has("explainer")
    assert s["test"]["int8"]["count"] == 32
    lines = s["table"].splitlines()
    assert lines[0].startswith("| attribute | int8 accuracy | fp32 accuracy")
    assert [ln.split("|")[1].strip() for ln in lines[2:6]] == ["good", "error", "break", "length"]
    assert "int8-vs-fp32 label agreement" in lines[6]
    assert any(c.startswith("python -m convert synth") and "--seed 3" in c for c in s["commands"])
    assert isinstance(s["targets_met"], bool)  # a 1-epoch toy is not expected to meet them
    report = json.loads((tmp_path / "work" / "ship-report.json").read_text())
    assert report["settings"]["epochs"] == 1 and report["parity"]["fp32"]["max_abs_diff"] <= 1e-3
