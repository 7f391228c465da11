"""Export: the bundle from the real path, parity numbers, LiteRT inference, legacy inputs, failures."""

from __future__ import annotations

import json

import numpy as np

from edge.bundle import load_bundle


def test_bundle_roles_and_parity(tiny_bundle):
    b = load_bundle(tiny_bundle)
    for role in ("classifier_int8", "classifier_fp32", "explainer", "head", "keras"):
        assert b.has(role), role
    par = b.manifest["parity"]
    assert par["fp32"]["max_abs_diff"] <= 1e-3
    assert par["int8"]["label_agreement"] >= 99.0
    assert par["int8"]["quantization"] in ("full", "dynamic")
    assert b.manifest["gradcam"]["layer"] == "gradcam_features"
    assert set(b.thresholds) == {"good", "error", "break", "length"}
