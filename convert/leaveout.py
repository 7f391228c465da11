"""``leave-out``: the honest generalisation benchmark: train without a fabric family, test on it.

Real photos of a new line show a fabric the model never saw. The closest proxy we can compute
without those photos: for every synthetic fabric family F (``convert.synth.FAMILIES``), train
on all the other families and test on F alone. A model that learnt *the seam* scores on F about
what it scores on the families it saw; one that learnt our fabrics' quirks does not.

1. three pools are synthesised once, every family mixed (``synth`` seeds 201 / 202 / 203 for
   train / valid / test; their ``meta.csv`` names each image's family);
2. per family F: ``train`` = train pool minus F, ``valid`` = valid pool minus F (early stopping
   and thresholds: nothing of F is seen), ``test`` = test pool, F only;
3. ``convert.train`` (resumable: checkpoints per epoch; a finished family is skipped), then the
   Keras model is scored on F: per-attribute accuracy at the thresholds calibrated on ``valid``,
   per-attribute AUROC, and the two figures the real-photo check uses: *defect vs normal* AUROC
   (score ``1 - p(good)``, defect = not good) and *broken vs normal* AUROC (score ``p(break)``,
   on the images that are good or have a break).

Prints a markdown table (one row per family, then the mean) and writes ``--json``.

``--finetune-families F --finetune-counts 50,200`` adds the "first day on a new line" curve:
the model that never saw F is fine-tuned (``train --init``) on N labelled images of F, and a model
of the same architecture is trained from scratch on the same N images; both are scored on other
images of F (seed 204 pool of F only; the first N are the labelled ones, the rest the test).
Both runs train as the README's first-day recipe tells a user to (``--finetune-recipe
first-day``, the default): the first fifth of the N validates (early stopping, the keep-init
check), the rest train, nothing frozen; a fine-tune keeps the thresholds of the model it
started from (``export --thresholds-from``), a model from scratch calibrates them on the
validation fifth. ``--finetune-recipe fixed`` reproduces the
runs before it: a fixed ``FT_STEPS`` steps on all N, which also calibrate the thresholds.

``--init MODEL`` starts every fold from that model instead of from scratch (a CPU budget cannot
train a good model from scratch per family); the figure is honest only for families MODEL never
saw (the pre-families shipped model saw none of ``fleece`` and ``felt``).

``--held-back`` measures a model trained on the default draw (``--init``, default the shipped
bundle) on the families ``synth`` never draws unless named (``HELD_BACK_FAMILIES``: corduroy,
herringbone, mélange): no fold to train, since the model never saw them. Per family: zero-shot
scores (thresholds calibrated on the default-draw validation pool) beside the same model on the
default-draw test pool, the fine-tuning curve above with that model as the start, and the model
fine-tuned on ``--others-count`` labelled images of the *other* held-back families (the real-photo
check's "~75 photos of other fabrics, tested on the held-out ones"). It scores every model the way
``--init``'s bundle classifies: the shipped bundle averages each image with its mirror
(``export --tta lr``), so by default the held-back table does too; ``--tta none|lr|flips`` chooses
(for the leave-out folds the default is ``none``). Each mode keeps its own cached results, so
rescoring reuses the trained models.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.errors import DataError

if TYPE_CHECKING:
    from .data import Dataset

POOL_SEEDS = {"train": 201, "valid": 202, "test": 203, "finetune": 204}
FT_TEST = 400  # images of F scored in the fine-tuning curve
FT_STEPS = 240  # optimiser steps of each fine-tuning / small from-scratch run (``--finetune-recipe fixed``)
#: How the fine-tuning runs train (``--finetune-recipe``). ``first-day``: the README's "First day
#: on a new line", as a user runs it: the first fifth of the labelled images validates (early
#: stopping, the keep-init check, the thresholds), the rest train, up to ``RECIPE_EPOCHS`` at
#: batch ``RECIPE_BATCH`` with ``train``'s patience, nothing frozen. ``fixed``: the runs before it
#: (measured until 2026-12-07): ``FT_STEPS`` steps on all the labelled images, which also validate,
#: the stem and first stage frozen for ``train --init``.
RECIPES = ("first-day", "fixed")
RECIPE_EPOCHS, RECIPE_BATCH, RECIPE_PATIENCE = 30, 16, 4


def read_meta_columns(folder: Path, *columns: str, optional: Sequence[str] = ()) -> dict[str, dict[str, str]]:
    """Column → {image path (absolute) → value}, from the ``meta.csv`` that ``synth`` writes beside
    ``data.csv`` (read once for all the columns asked for). ``optional`` columns are returned only
    when the file has them (sets drawn before synth wrote them lack them)."""
    from .data import csv_rows

    meta = folder / "meta.csv"
    if not meta.is_file():
        raise DataError(f"{meta}: not found (a synth data set names each image's family and defect kinds there)")
    rows = csv_rows(meta)
    head = rows[0] if rows else []
    for column in ("name", *columns):
        if column not in head:
            hint = (
                " (synth writes it since defect kinds are reported: make the data set again)"
                if "kind" in column
                else ""
            )
            raise DataError(f"{meta}: header must have 'name' and '{column}' columns{hint}")
    ni, base = head.index("name"), folder.resolve()
    out = {}
    for column in (*columns, *(c for c in optional if c in head)):
        fi = head.index(column)
        out[column] = {str(base / r[ni]): r[fi] for r in rows[1:] if len(r) > max(ni, fi)}
    return out


def read_families(folder: Path) -> dict[str, str]:
    """Image path (absolute) → family (``meta.csv``)."""
    return read_meta_columns(folder, "family")["family"]


def family_subset(ds: Dataset, families: dict[str, str], keep: Callable[[str], bool]) -> Dataset:
    """The images of ``ds`` whose family satisfies ``keep(family)``."""
    idx = [i for i, p in enumerate(ds.paths) if keep(families.get(str(Path(p).resolve()), ""))]
    if not idx:
        raise DataError(f"{ds.source}: no image left for this family selection")
    return ds.subset(idx)


def attribute_scores(y: np.ndarray, p: np.ndarray, labels: Sequence[str], thresholds: dict[str, float]) -> dict:
    """Accuracy and AUROC per attribute + defect-vs-normal and broken-vs-normal AUROC."""
    from .metrics import multilabel_metrics, seam_aurocs

    m = multilabel_metrics(y, p, labels, thresholds)
    return {
        "count": int(len(y)),
        "accuracy": {lab: m["labels"][lab]["accuracy"] for lab in labels},
        "auroc": {lab: m["labels"][lab]["auroc"] for lab in labels},
        **seam_aurocs(y, p, labels),
    }


def run_family(
    family: str,
    pools: dict,
    work: Path,
    *,
    epochs: int,
    size: int,
    filters: int,
    arch: str,
    batch: int,
    lr: float | None,
    seed: int = 0,
    init: str | None = None,
    tta: str = "none",
) -> dict:
    """Train without ``family``, test on it (resumable) → result dict (also cached: ``_result_path``)."""
    from .split import write_seed_csv
    from .train import train

    d = work / family
    res_path = _result_path(d, tta)
    if res_path.is_file():
        return json.loads(res_path.read_text())
    d.mkdir(parents=True, exist_ok=True)
    tr = family_subset(pools["train"][0], pools["train"][1], lambda f: f != family)
    va = family_subset(pools["valid"][0], pools["valid"][1], lambda f: f != family)
    te = family_subset(pools["test"][0], pools["test"][1], lambda f: f == family)
    for name, ds in (("train", tr), ("valid", va), ("test", te)):
        write_seed_csv(d / f"{name}.csv", ds)
    t0 = time.monotonic()
    model_path = d / "model.keras"
    trained: dict = {}
    if not model_path.is_file():  # else a run with another --tta trained it: rescore only
        hist = train(
            str(d / "train.csv"),
            str(d / "valid.csv"),
            model_path,
            arch=arch,
            epochs=epochs,
            size=size,
            filters=filters,
            batch=batch,
            lr=lr,
            resume=True,
            seed=seed,
            patience=epochs,  # the cosine schedule runs its course; the best epoch is restored
            verbose=2,
            init=init,
        )
        trained = {"epochs_run": hist.epochs_run, "seconds": round(time.monotonic() - t0)}
    result = {
        "family": family,
        "train_count": len(tr),
        "valid_count": len(va),
        **trained,
        "tta": tta,
        **_score_keras(model_path, va, te, size, tta),
    }
    # the same model on the test images of the families it saw: the gap to this is the price of novelty
    seen = family_subset(pools["test"][0], pools["test"][1], lambda f: f != family)
    result["seen"] = {k: v for k, v in _score_keras(model_path, va, seen, size, tta).items() if k != "thresholds"}
    res_path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _result_path(d: Path, tta: str) -> Path:
    """A run's cached result; one per ``--tta`` mode, so that rescoring with views reuses the trained model."""
    return d / ("result.json" if tta == "none" else f"result-tta-{tta}.json")


def bundle_tta(spec: str | Path | None) -> str:
    """The ``--tta`` mode a bundle's classifiers were exported with (``default``: the shipped bundle);
    ``none`` for a ``.keras`` file or no model."""
    from .train import DEFAULT_BUNDLE

    if spec is None:
        return "none"
    p = DEFAULT_BUNDLE if str(spec) == "default" else Path(spec)
    try:
        return str((json.loads((p / "manifest.json").read_text()).get("tta") or {}).get("mode", "none"))
    except (OSError, ValueError, AttributeError):
        return "none"


def _score_keras(
    model_path: Path, labelled, test, size: int, tta: str = "none", thresholds: dict | None = None
) -> dict:
    """Thresholds calibrated on ``labelled`` (validation images), or ``thresholds`` as given (``export
    --thresholds-from``), scores on ``test``; ``tta``: the model averaged over flipped views
    (``export --tta``), as a bundle exported with it classifies."""
    from .data import ImageCache, batches
    from .metrics import calibrate_thresholds
    from .models import load_keras
    from .tflite import tta_predict

    model, meta = load_keras(model_path)
    labels = tuple(meta["labels"])

    def forward(x: np.ndarray) -> np.ndarray:
        return np.asarray(model(x, training=False))

    def predict(ds) -> np.ndarray:
        cache = ImageCache(ds, size, size)
        return np.concatenate([tta_predict(forward, x, tta) for x, _ in batches(ds, size, size, 64, cache)])

    thr = dict(thresholds) if thresholds else calibrate_thresholds(labelled.targets, predict(labelled), labels)
    return {"thresholds": thr, **attribute_scores(test.targets, predict(test), labels, thr)}


def _pool(folder: Path, count: int, seed: int, families: Sequence[str] | None = None):
    """The synthetic pool in ``folder`` (drawn once: reused when its ``data.csv`` has ``count`` rows)."""
    from .data import load_dataset
    from .synth import write_dataset

    if not (
        (folder / "data.csv").is_file()
        and (folder / "meta.csv").is_file()
        and len(load_dataset(folder / "data.csv", check_images=False)) == count
    ):
        print(f"leave-out: synth {folder.name}: {count} images (seed {seed})", file=sys.stderr)
        write_dataset(folder, count, seed, families=families, workers=os.cpu_count() or 1, progress=sys.stderr.isatty())
    return load_dataset(folder / "data.csv")


def _ft_epochs(n: int, batch: int) -> int:
    """Epochs that make ``FT_STEPS`` optimiser steps on ``n`` images."""
    import math

    return max(1, math.ceil(FT_STEPS / math.ceil(n / batch)))


def _recipe_epochs(recipe: str, n: int, batch: int) -> int:
    """The epochs a recipe's run trains at most on ``n`` labelled images."""
    return _ft_epochs(n, batch) if recipe == "fixed" else RECIPE_EPOCHS


def _recipe_dir(d: Path, recipe: str) -> Path:
    """A run's folder: ``fixed`` keeps the name of the runs before ``--finetune-recipe`` (their
    cached models and results stay valid), ``first-day`` has its own beside it."""
    return d if recipe == "fixed" else d.with_name(f"{d.name}-{recipe}")


def _recipe_split(labelled):
    """``first-day``: (train, valid), the first fifth of the labelled images validating (at least one)."""
    k = max(1, len(labelled) // 5)
    return labelled.subset(range(k, len(labelled))), labelled.subset(range(k))


def _fit_and_score(
    d: Path,
    mode: str,
    labelled,
    test,
    *,
    size: int,
    batch: int,
    tta: str = "none",
    recipe: str = "first-day",
    thresholds: dict | None = None,
    **train_kw,
) -> dict:
    """Train ``d/<mode>.keras`` on the labelled images in ``d`` as ``recipe`` says (``RECIPES``),
    then score it on ``test``. ``fixed``: ``FT_STEPS`` steps on ``d/labelled.csv``, its own
    validation set, thresholds calibrated on it. ``first-day``: ``d/train.csv`` and ``d/valid.csv``
    (``_recipe_split``), early stopping on the latter, thresholds calibrated on it as ``export
    --valid`` would, or ``thresholds`` as given (``export --thresholds-from``: the ``--init``
    model's); ``kept_init`` says whether the ``--init`` model was kept."""
    from .models import read_meta
    from .train import train

    t0 = time.monotonic()
    out = d / f"{mode}.keras"
    if recipe == "fixed":
        calib = labelled
        csv = str(d / "labelled.csv")
        epochs = _recipe_epochs(recipe, len(labelled), batch)
        run: dict[str, Any] = dict(train_spec=csv, valid_spec=csv, epochs=epochs, batch=batch, patience=epochs)
    else:
        calib = _recipe_split(labelled)[1]
        run = dict(
            train_spec=str(d / "train.csv"),
            valid_spec=str(d / "valid.csv"),
            epochs=_recipe_epochs(recipe, len(labelled), batch),
            batch=RECIPE_BATCH,
            patience=RECIPE_PATIENCE,
            seed=1,
        )
    trained = not out.is_file()  # else a run with another --tta trained it: rescore only
    if trained:
        train(out=out, size=size, resume=True, verbose=0, **run, **train_kw)
    res = {
        **_score_keras(out, calib, test, size, tta, thresholds),
        "kept_init": bool(read_meta(out).get("kept_init", False)),
    }
    return {**res, "seconds": round(time.monotonic() - t0)} if trained else res


def _write_labelled(d: Path, labelled, recipe: str) -> None:
    """The labelled images of a run in ``d``: ``labelled.csv``, and for ``first-day`` its split too."""
    from .split import write_seed_csv

    d.mkdir(parents=True, exist_ok=True)
    write_seed_csv(d / "labelled.csv", labelled)
    if recipe != "fixed":
        tr, va = _recipe_split(labelled)
        write_seed_csv(d / "train.csv", tr)
        write_seed_csv(d / "valid.csv", va)


def finetune_curve(
    family: str,
    work: Path,
    counts: Sequence[int],
    *,
    size: int,
    filters: int,
    arch: str,
    batch: int,
    freeze: int | None = None,
    base: Path | None = None,
    ft_test: int = FT_TEST,
    lr: float | None = None,
    tta: str = "none",
    recipe: str = "first-day",
    base_thresholds: dict | None = None,
) -> list[dict]:
    """Fine-tune the model that never saw ``family`` (``base``, default the fold's) on N of its
    images vs from scratch on the same N, both as ``recipe`` says (``RECIPES``); ``freeze`` None:
    the recipe's (``fixed``: 1, ``first-day``: 0). ``base_thresholds`` (``first-day``): ``base``'s
    own, with which the fine-tune and ``base`` itself are scored, as the first-day recipe exports
    (``--thresholds-from``); else they are calibrated on the labelled images."""
    freeze = _recipe_freeze(recipe, freeze)
    base = base or work / family / "model.keras"
    if not base.is_file():
        raise DataError(f"{base}: run the leave-out of {family} first")
    need = max(counts) + ft_test
    ds = _pool(work / f"pool-finetune-{family}", need, POOL_SEEDS["finetune"], [family])
    test = ds.subset(range(max(counts), need))
    out = []
    for n in counts:
        labelled = ds.subset(range(n))
        d = _recipe_dir(work / family / f"finetune-{n}", recipe)
        res_path = _result_path(d, tta)
        if res_path.is_file():
            out.append(json.loads(res_path.read_text()))
            continue
        _write_labelled(d, labelled, recipe)
        fit: dict[str, Any] = dict(size=size, batch=batch, tta=tta, recipe=recipe)
        keep = base_thresholds if recipe != "fixed" else None
        row: dict = {
            "family": family,
            "labelled": n,
            "recipe": recipe,
            "epochs": _recipe_epochs(recipe, n, batch),
            "lr": lr,
            "test_count": len(test),
            "tta": tta,
            "init": _fit_and_score(
                d, "init", labelled, test, **fit, thresholds=keep, init=str(base), freeze=freeze, lr=lr
            ),
            "scratch": _fit_and_score(d, "scratch", labelled, test, **fit, arch=arch, filters=filters),
        }
        row["zero_shot"] = _score_keras(base, labelled, test, size, tta, keep)
        res_path.write_text(json.dumps(row, indent=1) + "\n")
        out.append(row)
    return out


def _recipe_freeze(recipe: str, freeze: int | None) -> int:
    """``--freeze`` of a recipe's ``train --init`` runs: the one given, else the recipe's own."""
    if recipe not in RECIPES:
        raise DataError(f"--finetune-recipe {recipe}: choose from {', '.join(RECIPES)}")
    return (1 if recipe == "fixed" else 0) if freeze is None else int(freeze)


def _runs_table(rows: list[dict], labels: Sequence[str], modes, labelled_heading: str, labelled) -> str:
    """Markdown: one line per (row, model run): accuracy per attribute and the two AUROCs."""
    lines = [
        f"| family | {labelled_heading} | model | "
        + " | ".join(f"{lab} acc" for lab in labels)
        + " | defect-vs-normal AUROC | broken-vs-normal AUROC |",
        "|" + "---|" * (5 + len(labels)),
    ]
    for r in rows:
        for mode, name in modes:
            m = r[mode]
            if m.get("kept_init"):
                name += " (no epoch beat it: kept unchanged)"
            lines.append(
                f"| {r['family']} | {labelled(r)} | {name} | "
                + " | ".join("–" if m["accuracy"][lab] is None else f"{m['accuracy'][lab]:.1f}" for lab in labels)
                + f" | {m['defect_auroc']:.3f} | {m['break_auroc']:.3f} |"
            )
    return "\n".join(lines)


def finetune_table(rows: list[dict], labels: Sequence[str]) -> str:
    """Markdown: per labelled count, zero-shot / fine-tuned / from scratch (mean accuracy, AUROCs)."""
    modes = (
        ("zero_shot", "never saw it (no training)"),
        ("init", "train --init (fine-tuned)"),
        ("scratch", "from scratch"),
    )
    return _runs_table(rows, labels, modes, "labelled", lambda r: str(r["labelled"]))


def table(results: list[dict], labels: Sequence[str]) -> str:
    """Markdown: one row per held-out family (accuracy % per attribute, AUROCs), then the mean."""
    head = (
        "| held-out family | n | "
        + " | ".join(f"{lab} acc" for lab in labels)
        + " | "
        + " | ".join(f"{lab} AUROC" for lab in labels)
        + " | defect-vs-normal AUROC | broken-vs-normal AUROC |"
    )
    seen = any("seen" in r for r in results)
    if seen:  # the fold's model on the families it trained on: the in-distribution reference
        head += " seen families: defect / broken AUROC |"
    rows = [head, "|" + "---|" * (4 + 2 * len(labels) + seen)]

    def fmt(v, pct=False):
        return "–" if v is None else (f"{v:.1f}" if pct else f"{v:.3f}")

    for r in results:
        rows.append(
            f"| {r['family']} | {r['count']} | "
            + " | ".join(fmt(r["accuracy"][lab], True) for lab in labels)
            + " | "
            + " | ".join(fmt(r["auroc"][lab]) for lab in labels)
            + f" | {fmt(r.get('defect_auroc'))} | {fmt(r.get('break_auroc'))} |"
            + (
                f" {fmt(r['seen'].get('defect_auroc'))} / {fmt(r['seen'].get('break_auroc'))} |"
                if "seen" in r
                else (" – |" if seen else "")
            )
        )

    def mean(vals):
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    rows.append(
        "| **mean** | "
        + str(sum(r["count"] for r in results))
        + " | "
        + " | ".join(fmt(mean([r["accuracy"][lab] for r in results]), True) for lab in labels)
        + " | "
        + " | ".join(fmt(mean([r["auroc"][lab] for r in results])) for lab in labels)
        + f" | {fmt(mean([r.get('defect_auroc') for r in results]))}"
        + f" | {fmt(mean([r.get('break_auroc') for r in results]))} |"
        + (
            f" {fmt(mean([r.get('seen', {}).get('defect_auroc') for r in results]))}"
            f" / {fmt(mean([r.get('seen', {}).get('break_auroc') for r in results]))} |"
            if seen
            else ""
        )
    )
    return "\n".join(rows)


def leave_out(
    work: str | Path,
    families: Sequence[str] | None = None,
    train_count: int = 3000,
    valid_count: int = 600,
    test_count: int = 1400,
    epochs: int = 8,
    size: int = 128,
    filters: int = 16,
    arch: str = "resnet-s2",
    batch: int = 32,
    lr: float | None = None,
    finetune_families: Sequence[str] = (),
    finetune_counts: Sequence[int] = (50, 200),
    init: str | None = None,
    ft_test: int = FT_TEST,
    finetune_lr: float | None = None,
    tta: str = "none",
    recipe: str = "first-day",
) -> dict:
    """Build the pools (once), run every family (resumable) → ``{"results": [...], "table": str}``;
    ``tta``: every model scored averaged over flipped views (``export --tta``); ``recipe``: how the
    fine-tuning curve trains (``RECIPES``)."""
    from .synth_fabric import FAMILIES
    from .tflite import tta_views

    tta_views(tta)
    work = Path(work)
    chosen = list(families or FAMILIES)
    unknown = [f for f in [*chosen, *finetune_families] if f not in FAMILIES]
    if unknown:
        raise DataError(f"--families: unknown {', '.join(unknown)} (choose from {', '.join(FAMILIES)})")
    pools = {}
    for key, count in (("train", train_count), ("valid", valid_count), ("test", test_count)):
        folder = work / f"pool-{key}"
        pools[key] = (_pool(folder, count, POOL_SEEDS[key]), read_families(folder))
    results = []
    for fam in chosen:
        print(f"leave-out: {fam} (train on the others, test on {fam})", file=sys.stderr)
        results.append(
            run_family(
                fam,
                pools,
                work,
                epochs=epochs,
                size=size,
                filters=filters,
                arch=arch,
                batch=batch,
                lr=lr,
                init=init,
                tta=tta,
            )
        )
    labels = tuple(results[0]["accuracy"]) if results else ()
    summary = {
        "settings": {
            "train_count": train_count,
            "valid_count": valid_count,
            "test_count": test_count,
            "epochs": epochs,
            "size": size,
            "filters": filters,
            "arch": arch,
            "batch": batch,
            "init": init,
            "finetune_lr": finetune_lr,
            "finetune_recipe": recipe,
            "tta": tta,
        },
        "results": results,
        "table": table(results, labels),
    }
    curve: list[dict] = []
    for fam in finetune_families:
        if fam not in chosen:
            raise DataError(f"--finetune-families: {fam} is not among --families")
        print(
            f"leave-out: fine-tuning curve on {fam} ({', '.join(map(str, finetune_counts))} labelled)", file=sys.stderr
        )
        curve += finetune_curve(
            fam,
            work,
            finetune_counts,
            size=size,
            filters=filters,
            arch=arch,
            batch=batch,
            ft_test=ft_test,
            lr=finetune_lr,
            tta=tta,
            recipe=recipe,
            base_thresholds=next(r["thresholds"] for r in results if r["family"] == fam),
        )
    if curve:
        summary["finetune"] = curve
        summary["finetune_table"] = finetune_table(curve, labels)
    (work / "leave-out.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def others_finetune(
    family: str,
    work: Path,
    base: Path,
    pools: dict,
    count: int,
    labelled_max: int,
    *,
    size: int,
    batch: int,
    freeze: int | None = None,
    ft_test: int = FT_TEST,
    lr: float | None = None,
    tta: str = "none",
    recipe: str = "first-day",
    base_thresholds: dict | None = None,
) -> dict:
    """``base`` fine-tuned on ``count`` labelled images of the *other* held-back families, scored
    on ``family``: a line that brings a fabric none of its labelled frames showed (``recipe``,
    ``freeze``, ``base_thresholds``: see ``finetune_curve``)."""
    from .data import merge

    freeze = _recipe_freeze(recipe, freeze)
    d = _recipe_dir(work / family / f"others-{count}", recipe)
    res_path = _result_path(d, tta)
    if res_path.is_file():
        return json.loads(res_path.read_text())
    others = [f for f in pools if f != family]
    if not others:
        raise DataError(f"--others-count: no other held-back family to label beside {family}")
    share = [count // len(others) + (i < count % len(others)) for i in range(len(others))]
    labelled = merge(
        [pools[f].subset(range(min(n, labelled_max))) for f, n in zip(others, share)], f"others of {family}"
    )
    test = pools[family].subset(range(labelled_max, labelled_max + ft_test))
    _write_labelled(d, labelled, recipe)
    keep = base_thresholds if recipe != "fixed" else None
    row = {
        "family": family,
        "labelled": len(labelled),
        "labelled_families": others,
        "recipe": recipe,
        "epochs": _recipe_epochs(recipe, len(labelled), batch),
        "lr": lr,
        "test_count": len(test),
        "tta": tta,
        "init": _fit_and_score(
            d,
            "init",
            labelled,
            test,
            size=size,
            batch=batch,
            tta=tta,
            recipe=recipe,
            thresholds=keep,
            init=str(base),
            freeze=freeze,
            lr=lr,
        ),
        "zero_shot": _score_keras(base, labelled, test, size, tta, keep),
    }
    res_path.write_text(json.dumps(row, indent=1) + "\n")
    return row


def held_back(
    work: str | Path,
    init: str = "default",
    families: Sequence[str] | None = None,
    valid_count: int = 600,
    test_count: int = 1400,
    finetune_counts: Sequence[int] = (50, 200),
    others_count: int = 75,
    ft_test: int = FT_TEST,
    filters: int = 16,
    arch: str = "resnet-s2",
    batch: int = 32,
    finetune_lr: float | None = None,
    tta: str | None = None,
    recipe: str = "first-day",
) -> dict:
    """The held-back families (``synth.HELD_BACK_FAMILIES``) against a model trained on the default
    draw, which never saw them: no fold to train, so this measures the shipped model itself.

    Per family F: the model zero-shot on F (thresholds calibrated on the default-draw validation
    pool, as its bundle's were), beside the same model on the default-draw test pool; the "first day"
    curve (``finetune_curve``: ``train --init`` on N labelled images of F vs from scratch); and
    ``others_count`` labelled images of the other held-back families, fine-tuned on and scored on F.
    ``tta`` None: the views ``init``'s bundle averages (the shipped one: ``lr``), so that the table
    measures the classifier as the Pi runs it; every model of the run is scored the same way.
    ``recipe``: how every fine-tuning run trains (``RECIPES``).
    """
    from .models import load_keras
    from .synth_fabric import HELD_BACK_FAMILIES
    from .tflite import tta_views
    from .train import init_model_path

    tta = bundle_tta(init) if tta is None else tta
    tta_views(tta)
    _recipe_freeze(recipe, None)
    work = Path(work)
    chosen = list(families or HELD_BACK_FAMILIES)
    unknown = [f for f in chosen if f not in HELD_BACK_FAMILIES]
    if unknown:
        raise DataError(
            f"--families: {', '.join(unknown)} is not held back (with --held-back: {', '.join(HELD_BACK_FAMILIES)})"
        )
    base = init_model_path(init)
    size = int(load_keras(base)[1]["height"])
    counts = list(finetune_counts) or [0]
    labelled_max = max(max(counts), others_count)
    valid = _pool(work / "pool-valid", valid_count, POOL_SEEDS["valid"])
    seen_test = _pool(work / "pool-test", test_count, POOL_SEEDS["test"])
    pools = {f: _pool(work / f"pool-finetune-{f}", labelled_max + ft_test, POOL_SEEDS["finetune"], [f]) for f in chosen}
    seen = _score_keras(base, valid, seen_test, size, tta)
    base_thr = seen.pop("thresholds")  # calibrated on the default draw, as the bundle's were
    results, curve, others = [], [], []
    for fam in chosen:
        print(f"leave-out: {fam} (held back: {base} never saw it)", file=sys.stderr)
        test = pools[fam].subset(range(labelled_max, labelled_max + ft_test))
        results.append(
            {
                "family": fam,
                "model": str(base),
                "tta": tta,
                **_score_keras(base, None, test, size, tta, base_thr),
                "seen": seen,
            }
        )
        if finetune_counts:
            curve += finetune_curve(
                fam,
                work,
                finetune_counts,
                size=size,
                filters=filters,
                arch=arch,
                batch=batch,
                base=base,
                ft_test=labelled_max + ft_test - max(finetune_counts),
                lr=finetune_lr,
                tta=tta,
                recipe=recipe,
                base_thresholds=base_thr,
            )
        if others_count and len(chosen) > 1:
            others.append(
                others_finetune(
                    fam,
                    work,
                    base,
                    pools,
                    others_count,
                    labelled_max,
                    size=size,
                    batch=batch,
                    ft_test=ft_test,
                    lr=finetune_lr,
                    tta=tta,
                    recipe=recipe,
                    base_thresholds=base_thr,
                )
            )
    labels = tuple(results[0]["accuracy"])
    summary: dict = {
        "settings": {
            "held_back": True,
            "init": str(base),
            "valid_count": valid_count,
            "test_count": test_count,
            "finetune_counts": list(finetune_counts),
            "others_count": others_count,
            "ft_test": ft_test,
            "finetune_lr": finetune_lr,
            "finetune_recipe": recipe,
            "tta": tta,
        },
        "results": results,
        "table": table(results, labels),
    }
    if curve:
        summary["finetune"] = curve
        summary["finetune_table"] = finetune_table(curve, labels)
    if others:
        summary["others"] = others
        summary["others_table"] = others_table(others, labels)
    (work / "leave-out.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def others_table(rows: list[dict], labels: Sequence[str]) -> str:
    """Markdown: per held-back family, zero-shot vs fine-tuned on the other new families' images."""
    modes = (("zero_shot", "never saw it (no training)"), ("init", "train --init on the others"))
    return _runs_table(
        rows, labels, modes, "labelled (of)", lambda r: f"{r['labelled']} ({', '.join(r['labelled_families'])})"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leave-out",
        help="train without each fabric family, test on it (generalisation benchmark)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--work", default="build/leave-out", metavar="DIR", help="pools, models, results (resumable)")
    p.add_argument("--families", help="comma-separated families to hold out in turn (default: all)")
    p.add_argument("--train-count", type=int, default=3000)
    p.add_argument("--valid-count", type=int, default=600)
    p.add_argument("--test-count", type=int, default=1400)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--filters", type=int, default=16)
    p.add_argument("--arch", default="resnet-s2")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument(
        "--finetune-families",
        default="",
        metavar="F[,F]",
        help="also measure fine-tuning on these held-out families (see --finetune-counts)",
    )
    p.add_argument("--finetune-counts", default="50,200", metavar="N[,N]", help="labelled images (default 50,200)")
    p.add_argument(
        "--init",
        metavar="BUNDLE|FILE.keras",
        help="start every fold from this model (train --init); honest only for families it never saw",
    )
    p.add_argument(
        "--held-back",
        action="store_true",
        help="score --init (default: the shipped bundle) on the held-back families it never saw "
        "(synth's corduroy, herringbone, melange): zero-shot, the fine-tuning curve, and fine-tuned on the other "
        "held-back families' images; nothing to hold out, no fold to train",
    )
    p.add_argument(
        "--others-count",
        type=int,
        default=75,
        help="with --held-back: labelled images of the other held-back families to fine-tune on (default 75; 0: none)",
    )
    p.add_argument(
        "--finetune-test",
        type=int,
        default=FT_TEST,
        help=f"images of the family scored after fine-tuning (default {FT_TEST})",
    )
    p.add_argument(
        "--finetune-lr",
        type=float,
        default=None,
        help="learning rate of the train --init runs (default: train's own for --init)",
    )
    p.add_argument(
        "--finetune-recipe",
        choices=RECIPES,
        default="first-day",
        help="how the fine-tuning runs train: first-day (default), the README's first-day recipe: the first fifth "
        f"of the labelled images validates, up to {RECIPE_EPOCHS} epochs at batch {RECIPE_BATCH} with early stopping, "
        "the --init model kept when no epoch beats it; fixed: the runs before it, "
        f"{FT_STEPS} steps on the labelled images alone, the first stage frozen",
    )
    p.add_argument(
        "--tta",
        choices=("none", "lr", "flips"),
        default=None,
        help="score every model averaged over flipped views, as a bundle exported with export --tta classifies "
        "(default: with --held-back the views --init's bundle averages, the shipped one's lr; else none)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the summary here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fams = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
    try:
        counts = [int(c) for c in args.finetune_counts.split(",") if c.strip()]
    except ValueError:
        raise DataError(f"--finetune-counts {args.finetune_counts!r}: expected numbers like 50,200") from None
    if any(c < 2 for c in counts):
        raise DataError(f"--finetune-counts {args.finetune_counts!r}: each count must be at least 2")
    if args.others_count < 0 or args.finetune_test < 2:
        raise DataError(
            f"--others-count {args.others_count} / --finetune-test {args.finetune_test}: need ≥ 0 and ≥ 2 images"
        )
    ft = [f.strip() for f in args.finetune_families.split(",") if f.strip()]
    if args.held_back:
        if ft:
            raise DataError("--finetune-families: with --held-back every family gets the fine-tuning curve")
        s = held_back(
            args.work,
            args.init or "default",
            fams,
            args.valid_count,
            args.test_count,
            counts,
            args.others_count,
            args.finetune_test,
            args.filters,
            args.arch,
            args.batch,
            args.finetune_lr,
            args.tta,
            args.finetune_recipe,
        )
        if args.json:
            Path(args.json).write_text(json.dumps(s, indent=1) + "\n")
        views = "" if s["settings"]["tta"] == "none" else f" (scored with --tta {s['settings']['tta']})"
        print(f"## Held-back families, never seen by {s['settings']['init']}{views}\n\n{s['table']}")
        if "finetune_table" in s:
            print(f"\n## Fine-tuning on N labelled images of the family\n\n{s['finetune_table']}")
        if "others_table" in s:
            print(f"\n## Fine-tuning on the other new families' images\n\n{s['others_table']}")
        return 0
    s = leave_out(
        args.work,
        fams,
        args.train_count,
        args.valid_count,
        args.test_count,
        args.epochs,
        args.size,
        args.filters,
        args.arch,
        args.batch,
        args.lr,
        finetune_families=ft,
        finetune_counts=counts,
        init=args.init,
        ft_test=args.finetune_test,
        finetune_lr=args.finetune_lr,
        tta=args.tta or "none",
        recipe=args.finetune_recipe,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=1) + "\n")
    print(f"## Leave-one-family-out ({s['settings']})\n\n{s['table']}")
    if "finetune_table" in s:
        print(f"\n## Fine-tuning on a family the model never saw\n\n{s['finetune_table']}")
    return 0
