"""convert leave-out: each family is held out of training and validation, and is all of its test set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convert.data import load_dataset
from convert.evaluate import evaluate
from convert.leaveout import attribute_scores, read_families
from convert.split import write_seed_csv
from edge.errors import DataError

ROOT = Path(__file__).resolve().parent.parent


def test_attribute_scores_defect_and_break_auroc():
    labels = ("good", "error", "break", "length")
    y = np.array([[1, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 1, 1, 1]], np.float32)
    p = np.array(
        [[0.9, 0.1, 0.1, 0.8], [0.6, 0.2, 0.3, 0.3], [0.4, 0.7, 0.2, 0.9], [0.7, 0.1, 0.8, 0.2], [0.1, 0.9, 0.6, 0.7]]
    )
    s = attribute_scores(y, p, labels, {lab: 0.5 for lab in labels})
    # defect = not good, score 1 - p(good): defects .6 .3 .9 vs normals .1 .4 → 5 of 6 pairs ranked right
    assert abs(s["defect_auroc"] - 5 / 6) < 1e-12
    # broken vs normal: rows 0, 1 (normal) and 3, 4 (break); p(break) .1 .3 vs .8 .6 → perfect
    assert s["break_auroc"] == 1.0
    assert s["accuracy"]["good"] == 80.0 and s["count"] == 5


@pytest.mark.slow  # trains two models (convert leave-out)
def test_leave_out_cli_holds_each_family_out(tmp_path):
    work = tmp_path / "lo"
    cmd = [
        sys.executable,
        "-m",
        "convert",
        "leave-out",
        "--work",
        str(work),
        "--families",
        "knit,felt",
        "--train-count",
        "48",
        "--valid-count",
        "24",
        "--test-count",
        "40",
        "--epochs",
        "1",
        "--size",
        "32",
        "--filters",
        "2",
        "--batch",
        "16",
        "--json",
        str(tmp_path / "lo.json"),
    ]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp_path / "lo.json").read_text())
    fams = {key: read_families(work / f"pool-{key}") for key in ("train", "valid", "test")}
    for r in summary["results"]:
        fam = r["family"]
        d = work / fam
        train_fams = {fams["train"][path] for path in load_dataset(d / "train.csv").paths}
        valid_fams = {fams["valid"][path] for path in load_dataset(d / "valid.csv").paths}
        test_fams = {fams["test"][path] for path in load_dataset(d / "test.csv").paths}
        assert fam not in train_fams | valid_fams and test_fams == {fam}
        assert r["train_count"] == sum(f != fam for f in fams["train"].values())
        assert r["count"] == sum(f == fam for f in fams["test"].values())
        assert set(r["accuracy"]) == {"good", "error", "break", "length"}
    assert [r["family"] for r in summary["results"]] == ["knit", "felt"]
    assert "| knit |" in p.stdout and "| **mean** |" in p.stdout
    # resumable: a second run reuses every finished family (no new training)
    stamp = (work / "knit" / "result.json").stat().st_mtime_ns
    p2 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0 and (work / "knit" / "result.json").stat().st_mtime_ns == stamp
    assert "Epoch" not in p2.stderr + p2.stdout


def _record_train(monkeypatch) -> list[dict]:
    """The keyword arguments of every ``convert.train.train`` call from here on (it still trains)."""
    import convert.train

    calls: list[dict] = []
    real_train = convert.train.train

    def recording_train(*a, **kw):
        calls.append(kw)
        return real_train(*a, **kw)

    monkeypatch.setattr(convert.train, "train", recording_train)
    return calls


@pytest.mark.slow  # six short fine-tunes of the session's tiny model
def test_held_back_scores_a_model_on_families_it_never_saw(tmp_path, tiny_keras, monkeypatch):
    """``leave-out --held-back``: the tiny model (felt only) on corduroy and mélange, zero-shot,
    fine-tuned on N of the family's images, and fine-tuned on the *other* family's images only."""
    import convert.leaveout as lo

    monkeypatch.setattr(lo, "FT_STEPS", 2)
    calls = _record_train(monkeypatch)
    work = tmp_path / "hb"
    kw: dict[str, Any] = dict(
        valid_count=16,
        test_count=16,
        finetune_counts=(8,),
        others_count=6,
        ft_test=12,
        filters=4,
        batch=8,
        finetune_lr=5e-4,
        recipe="fixed",
    )
    s = lo.held_back(work, str(tiny_keras), ["corduroy", "melange"], **kw)
    assert [r["family"] for r in s["results"]] == ["corduroy", "melange"]
    for r in s["results"]:
        fam = r["family"]
        assert (
            r["count"] == 12 and r["seen"]["count"] == 16 and set(r["accuracy"]) == {"good", "error", "break", "length"}
        )
        assert set(read_families(work / f"pool-finetune-{fam}").values()) == {fam}
        # the zero-shot row is the model on the images the fine-tuned ones are scored on
        ft = next(c for c in s["finetune"] if c["family"] == fam)
        assert ft["labelled"] == 8 and ft["test_count"] == 12 and ft["lr"] == 5e-4
        assert ft["zero_shot"]["defect_auroc"] == pytest.approx(r["defect_auroc"])
        other = next(o for o in s["others"] if o["family"] == fam)
        names = load_dataset(work / fam / "others-6" / "labelled.csv").paths
        assert len(names) == 6 and other["labelled_families"] == ["melange" if fam == "corduroy" else "corduroy"]
        assert all(f"pool-finetune-{other['labelled_families'][0]}" in n for n in names)  # nothing of fam itself
        assert other["init"]["count"] == 12 and other["lr"] == 5e-4
    # per family: init and scratch of the curve, then the others' fine-tune; --finetune-lr reaches every init run
    assert [("init" in c, c.get("lr")) for c in calls] == [(True, 5e-4), (False, None), (True, 5e-4)] * 2
    assert "| corduroy |" in s["table"] and "| melange | 6 (corduroy) |" in s["others_table"]
    # resumable: nothing is trained again
    stamp = (work / "melange" / "others-6" / "result.json").stat().st_mtime_ns
    again = lo.held_back(work, str(tiny_keras), ["corduroy", "melange"], **kw)
    assert (work / "melange" / "others-6" / "result.json").stat().st_mtime_ns == stamp
    assert again["others"] == s["others"]
    assert s["settings"]["tta"] == "none"  # a .keras averages nothing: scored as one view, as it was trained
    # --tta lr: the same models scored with their mirror image (nothing trained again), cached beside
    n_calls = len(calls)
    lr = lo.held_back(work, str(tiny_keras), ["corduroy", "melange"], tta="lr", **kw)
    assert len(calls) == n_calls and lr["settings"]["tta"] == "lr" and {r["tta"] for r in lr["results"]} == {"lr"}
    assert (work / "melange" / "others-6" / "result.json").stat().st_mtime_ns == stamp
    assert json.loads((work / "melange" / "others-6" / "result-tta-lr.json").read_text())["tta"] == "lr"
    assert lr["results"][0]["defect_auroc"] != s["results"][0]["defect_auroc"]
    # the zero-shot row is what evaluate --tta lr (the Predictor's path) gives on the same images
    write_seed_csv(tmp_path / "corduroy-test.csv", load_dataset(work / "pool-finetune-corduroy").subset(range(8, 20)))
    ev = evaluate(tiny_keras, tmp_path / "corduroy-test.csv", calibrate=work / "pool-valid", tta="lr", size=None)
    assert ev.thresholds == pytest.approx(lr["results"][0]["thresholds"], abs=1e-6)
    for lab in ("good", "error", "break", "length"):
        assert ev.metrics["labels"][lab]["accuracy"] == pytest.approx(lr["results"][0]["accuracy"][lab], abs=1e-6)


@pytest.mark.slow  # four short fine-tunes of the session's tiny model
def test_held_back_fine_tunes_as_the_first_day_recipe_does(tmp_path, tiny_keras, monkeypatch):
    """``--finetune-recipe first-day`` (the default): every fine-tune runs as the README's first-day
    recipe tells a user to: the first fifth of the labelled images validates (early stopping, the
    keep-init check, the thresholds), nothing frozen, batch 16, patience 4; a model that no epoch
    beat is reported as kept."""
    import convert.leaveout as lo

    monkeypatch.setattr(lo, "RECIPE_EPOCHS", 2)
    calls = _record_train(monkeypatch)
    work = tmp_path / "hb"
    # lr 5 wrecks every epoch of a fine-tune: the check keeps the --init model each time
    kw: dict[str, Any] = dict(valid_count=16, test_count=16, finetune_counts=(10,), others_count=10, ft_test=12)
    s = lo.held_back(work, str(tiny_keras), ["corduroy", "melange"], filters=4, finetune_lr=5.0, **kw)
    assert s["settings"]["finetune_recipe"] == "first-day"
    d = work / "corduroy" / "finetune-10-first-day"
    names = load_dataset(d / "labelled.csv").paths
    assert load_dataset(d / "valid.csv").paths == names[:2] and load_dataset(d / "train.csv").paths == names[2:]
    others = work / "melange" / "others-10-first-day"
    assert len(load_dataset(others / "valid.csv")) == 2 and len(load_dataset(others / "train.csv")) == 8
    # per family: the curve's init and scratch runs, then the others' init run; each on the split
    assert len(calls) == 6
    for k, mode in zip(calls, ["init", "scratch", "init"] * 2):
        assert Path(k["train_spec"]).name == "train.csv" and Path(k["valid_spec"]).name == "valid.csv"
        assert (k["epochs"], k["batch"], k["patience"], k["seed"]) == (2, 16, 4, 1)
        assert ("init" in k) == (mode == "init") and k.get("freeze", 0) == 0
    ft = next(c for c in s["finetune"] if c["family"] == "corduroy")
    assert ft["recipe"] == "first-day" and ft["init"]["kept_init"] and not ft["scratch"]["kept_init"]
    assert all(o["init"]["kept_init"] for o in s["others"])
    assert "| corduroy | 10 | train --init (fine-tuned) (no epoch beat it: kept unchanged) |" in s["finetune_table"]
    # the fine-tune keeps the thresholds of the model it started from (export --thresholds-from, as
    # the recipe exports): the ones calibrated on the default draw's validation pool; a model from
    # scratch has none, and calibrates on the validation split (export --valid)
    write_seed_csv(tmp_path / "t.csv", load_dataset(work / "pool-finetune-corduroy").subset(range(10, 22)))
    ev = evaluate(tiny_keras, tmp_path / "t.csv", calibrate=work / "pool-valid", size=None)
    assert ev.thresholds == pytest.approx(ft["init"]["thresholds"], abs=1e-6)
    assert ft["zero_shot"]["thresholds"] == ft["init"]["thresholds"] == s["results"][0]["thresholds"]
    ev = evaluate(d / "scratch.keras", tmp_path / "t.csv", calibrate=d / "valid.csv", size=None)
    assert ev.thresholds == pytest.approx(ft["scratch"]["thresholds"], abs=1e-6)
    # the runs of the other recipe have their own folders: nothing is mixed up or trained over
    assert not (work / "corduroy" / "finetune-10").exists()
    with pytest.raises(DataError, match="--finetune-recipe daily: choose from first-day, fixed"):
        lo.held_back(work, str(tiny_keras), ["corduroy"], recipe="daily", **kw)


def test_held_back_refuses_a_family_the_model_saw(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "convert", "leave-out", "--work", str(tmp_path), "--held-back", "--families", "plain"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "plain is not held back" in p.stderr and "Traceback" not in p.stderr


def test_leave_out_unknown_family_is_one_line(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "convert", "leave-out", "--work", str(tmp_path), "--families", "tweed"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "unknown tweed" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow  # uses the session's trained tiny bundle
def test_evaluate_by_family_splits_the_same_predictions(tmp_path, tiny_bundle):
    """``evaluate --by-family``: one row per family in meta.csv; the per-family numbers are the
    overall predictions sliced by family (recomputed here), at the same thresholds."""
    from convert.evaluate import evaluate
    from convert.synth import write_dataset

    write_dataset(tmp_path / "d", 30, 7, size=64, families=["knit", "felt"])
    ev = evaluate(tiny_bundle, tmp_path / "d", by_family=True)
    fams = read_families(tmp_path / "d")
    ds = load_dataset(tmp_path / "d" / "data.csv")
    assert set(ev.metrics["families"]) == {"knit", "felt"}
    assert sum(s["count"] for s in ev.metrics["families"].values()) == 30
    for fam, s in ev.metrics["families"].items():
        sel = np.array([fams[p] == fam for p in ds.paths])
        assert s["count"] == int(sel.sum())
        for i, lab in enumerate(ds.labels):
            pred = ev.probabilities[sel, i] >= ev.thresholds[lab]
            assert s["accuracy"][lab] == pytest.approx(100.0 * np.mean(pred == (ds.targets[sel, i] > 0.5)))
    assert "| knit |" in ev.report and "| felt |" in ev.report and "| **mean** |" in ev.report
    # a data set without meta.csv is one DataError line
    (tmp_path / "d" / "meta.csv").unlink()
    from edge.errors import DataError

    with pytest.raises(DataError, match="meta.csv: not found"):
        evaluate(tiny_bundle, tmp_path / "d", by_family=True)


def test_evaluate_by_look_splits_by_contrast_thread_width_and_scale(tmp_path, tiny_bundle):
    """``evaluate --by-look``: every still of a split falls in one bin, and a bin's numbers are the
    overall predictions sliced by meta.csv's value (recomputed here with pandas), at the same thresholds."""
    import pandas as pd

    from convert.evaluate import LOOK_SPLITS
    from convert.synth import write_dataset

    write_dataset(tmp_path / "d", 40, 11, scale_range=((2.3, 9.0), (9.0, 16.0)))  # 256 px: 2.3-16 px/mm
    ev = evaluate(tiny_bundle, tmp_path / "d", by_look=True)
    meta = pd.read_csv(tmp_path / "d" / "meta.csv").set_index("name")
    ds = load_dataset(tmp_path / "d" / "data.csv")
    names = [Path(p).name for p in ds.paths]
    assert set(ev.metrics["looks"]) == {"contrast", "thread_px", "px_per_mm"}
    for col, bins in ev.metrics["looks"].items():
        (lo, hi), heading = LOOK_SPLITS[col]
        v = meta.loc[names, col].to_numpy(float)
        assert sum(s["count"] for s in bins.values()) == 40, (col, bins.keys())
        for key, s in bins.items():
            sel = {f"<{lo:g}": v < lo, f"{lo:g}-{hi:g}": (v >= lo) & (v < hi), f">={hi:g}": v >= hi}[key]
            want = attribute_scores(ds.targets[sel], ev.probabilities[sel], ds.labels, ev.thresholds)
            assert s["count"] == int(sel.sum()) and s["accuracy"] == want["accuracy"], (col, key)
            assert f"| {heading} | {key} | {s['count']} |" in ev.report
    # the wide scales reach both ends of the scale split
    assert {"<4", ">=8"} <= set(ev.metrics["looks"]["px_per_mm"])
    # over all stills: the real-photo check's two AUROCs, counted pair by pair here
    good, brk = (ds.labels.index(lab) for lab in ("good", "break"))

    def pairwise(pos: np.ndarray, neg: np.ndarray) -> float:
        d = pos[:, None] - neg[None, :]
        return float(np.mean((d > 0) + 0.5 * (d == 0)))

    p, y = ev.probabilities, ds.targets
    normal = y[:, good] == 1
    defect_auroc = pairwise(1 - p[~normal, good], 1 - p[normal, good])
    break_auroc = pairwise(p[y[:, brk] == 1, brk], p[normal, brk])
    assert ev.metrics["defect_auroc"] == pytest.approx(defect_auroc, abs=1e-12)
    assert ev.metrics["break_auroc"] == pytest.approx(break_auroc, abs=1e-12)
    assert f"Defect-vs-normal AUROC: {defect_auroc:.4f}" in ev.report.splitlines()
    assert f"Broken-vs-normal AUROC: {break_auroc:.4f}" in ev.report.splitlines()
    (tmp_path / "d" / "meta.csv").unlink()
    from edge.errors import DataError

    with pytest.raises(DataError, match="meta.csv: not found"):
        evaluate(tiny_bundle, tmp_path / "d", by_look=True)


@pytest.mark.slow  # uses the session's trained tiny bundle
def test_evaluate_by_kind_splits_the_predictions_by_defect_kind(tmp_path, tiny_bundle):
    """``evaluate --by-kind``: one row per defect kind drawn (meta.csv), plus the normal images; each
    row's found / flagged shares are the overall predictions sliced by kind (recomputed here)."""
    from convert.evaluate import evaluate
    from convert.leaveout import read_meta_columns
    from convert.synth import write_dataset
    from edge.errors import DataError

    write_dataset(tmp_path / "d", 60, 8, size=64)
    ev = evaluate(tiny_bundle, tmp_path / "d", by_kind=True)
    ds = load_dataset(tmp_path / "d" / "data.csv")
    li = {lab: i for i, lab in enumerate(ds.labels)}
    kinds = ev.metrics["kinds"]
    visibility = read_meta_columns(tmp_path / "d", "visibility")["visibility"]
    for lab in ("error", "break"):
        col = read_meta_columns(tmp_path / "d", f"{lab}_kind")[f"{lab}_kind"]
        kind = np.array([col[p] for p in ds.paths])
        assert sum(s["count"] for s in kinds.values() if s["label"] == lab) == int(ds.targets[:, li[lab]].sum())
        for k in set(kind[kind != ""]):
            sel = kind == k
            s = kinds[k]
            assert s["label"] == lab and s["count"] == int(sel.sum())
            found = ev.probabilities[sel, li[lab]] >= ev.thresholds[lab]
            assert s["found"] == pytest.approx(100.0 * found.mean(), abs=0.01)
            flagged = ev.probabilities[sel, li["good"]] < ev.thresholds["good"]
            assert s["flagged"] == pytest.approx(100.0 * flagged.mean(), abs=0.01)
            # found split by the defect's visibility (meta.csv), the same predictions sliced again
            vis = np.array([float(visibility[p]) for p in np.array(ds.paths)[sel]])
            split = s["by_visibility"]
            assert sum(c["count"] for c in split.values()) == s["count"]
            for name, lo, hi in (("<20", 0, 20), ("20-50", 20, 50), (">=50", 50, np.inf)):
                in_bin = (vis >= lo) & (vis < hi)
                assert split[name]["count"] == int(in_bin.sum())
                want = None if not in_bin.any() else pytest.approx(100.0 * found[in_bin].mean(), abs=0.01)
                assert split[name]["found"] == want
    normal = (ds.targets[:, li["error"]] < 0.5) & (ds.targets[:, li["break"]] < 0.5)
    assert kinds["none"]["count"] == int(normal.sum()) > 0
    assert "| none | good |" in ev.report and "| defect kind |" in ev.report
    assert "found, visibility < 20 | found, visibility 20–50 | found, visibility ≥ 50 |" in ev.report
    assert "by_visibility" not in kinds["none"]
    # a meta.csv from before the visibility column: the kinds without the split
    meta = tmp_path / "d" / "meta.csv"
    meta.write_text("\n".join(",".join(r.split(",")[:7]) for r in meta.read_text().splitlines()) + "\n")
    ev = evaluate(tiny_bundle, tmp_path / "d", by_kind=True)
    assert ev.metrics["kinds"].keys() == kinds.keys()
    assert all("by_visibility" not in s for s in ev.metrics["kinds"].values()) and "visibility" not in ev.report
    # a meta.csv from before the kind columns: one DataError line naming the column
    meta.write_text("\n".join(",".join(r.split(",")[:5]) for r in meta.read_text().splitlines()) + "\n")
    with pytest.raises(DataError, match="'error_kind'"):
        evaluate(tiny_bundle, tmp_path / "d", by_kind=True)


def test_make_proxy_draws_each_documented_set_and_scores_the_bundle():
    """``make proxy`` (README, "The proxy sets") draws each real-photo proxy set once into
    build/proxy and scores ``BUNDLE`` on it by look. Its lines must be valid ``convert synth`` and
    ``convert evaluate`` command lines, and the sets must be the draws the README's tables give:
    held-back families at the camera's scale (seed 205), tone-on-tone at 2.3-5 px/mm (208), 4 px/mm
    (41), held-back families at the default scale (204) and the seed-3 test set."""
    import argparse
    import shlex

    from convert import evaluate as evaluate_cli
    from convert import synth

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    synth.register(sub)
    evaluate_cli.register(sub)
    venv = Path(sys.executable).parent.parent
    p = subprocess.run(
        ["make", "-n", "proxy", f"VENV={venv}", "BUNDLE=some/bundle"], cwd=ROOT, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    drawn, scored = {}, []
    for line in p.stdout.splitlines():
        if " -m convert " not in line:
            continue  # setup's own lines
        words = shlex.split(line.split("||")[-1].replace(">/dev/null", ""))
        if words[1:4] == ["-m", "convert", "synth"]:
            args = parser.parse_args(words[3:])
            drawn[Path(args.out).name] = args
        elif words[1:4] == ["-m", "convert", "evaluate"]:
            scored.append(parser.parse_args(words[3:]))
    assert {k: (v.seed, v.count) for k, v in drawn.items()} == {
        "heldwide": (205, 1200),
        "tone": (208, 1200),
        "px4": (41, 1000),
        "held204": (204, 1200),
        "seed3": (3, 2000),
    }
    held = {"corduroy,herringbone,melange"}
    assert {drawn[k].families for k in ("heldwide", "tone", "held204")} == held
    assert (drawn["tone"].tone_share, drawn["px4"].px_per_mm, drawn["seed3"].families) == (0.9, 4.0, None)
    assert [Path(a.data).parent.name for a in scored] == list(drawn)
    assert all(
        a.model == "some/bundle" and a.by_look and Path(a.data).parent.parent == Path("build/proxy") for a in scored
    )
    assert "make proxy" in (ROOT / "README.md").read_text()
