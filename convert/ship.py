"""``ship``: rebuild the shipped default bundle end to end, and print how good it is.

1. synthesise train (seed 1), valid (seed 2) and test (seed 3, ≥ 2000 images; that seed is
   never used for training or calibration) sets with ``convert.synth``;
2. train the stride-2-stem ResNet (``convert.train --arch resnet-s2 --filters 16``, batch 32,
   Adam 3e-3 cosine-decayed over 45 epochs, no early stop);
2b. then train on from that model, stage by stage (``--then EPOCHS:COUNT:LR[:ARCH][@LO:HI,…]``,
   repeatable), each stage on a *fresh* training set (``train2`` seed 4, ``train3`` seed 5, …: more
   seams, fabrics and cameras than another pass over an old set) with Adam cosine-decayed (``train
   --init``); a stage with an ARCH grows the model into it first (``resnet-s2-deep``: identity blocks
   added, ``convert.models.grow``); one with ``@LO:HI,…`` draws its set with ``synth --scale-range``
   (wider views, ``length`` unknown where the pixels cannot tell; ``recipe.json`` beside it;
   ``--scale-range`` does the same for the first stage's set). The
   shipped recipe (``SHIPPED_STAGES``), each stage on 12,000 fresh images: 20 epochs at 1e-3; 10 at
   5e-4; grown into ``resnet-s2-deep``, 15 at 1e-3; 8 at 5e-4; then wide: 8 at 2e-4 and 8 at 1e-4
   with a third of the stills at 2.3-9 px/mm, 8 at 1e-4 with a quarter, 8 at 1e-4 with a
   quarter and a quarter of the normal seams changing stitch length in view, and 8 at 1e-4 with
   half of them changing; then a warm restart on 8,000 images each, a third wide, half of the
   normal seams changing length, 30 % on random textures and half of the threads tone-on-tone: 10
   at 1e-3 and 14 at 5e-4; then the same with half of the stills wide, twice 10 at 3e-4. The
   first run was still improving at epoch 45 (``--then none`` skips the stages); the defaults of every
   flag are the shipped recipe, so ``convert ship`` alone rebuilds the shipped model (about 8 h on 2
   CPU cores); resumable: data sets and checkpoints in ``--work`` are reused. Every stage keeps
   its best epoch even where its starting model scored a lower validation loss (``train
   --no-keep-init``): the validation set is drawn at the default scales, and the last stages,
   which exist for the camera's scales, rose on the camera-scale proxy while their validation loss
   did not (stages 12 / 13 / 14: 0.1387 / 0.1395 / 0.1406, heldwide defect-vs-normal AUROC
   0.936 / 0.944 / 0.943);
3. export the bundle with calibration on the validation set (``convert.export``: parity
   check, thresholds calibrated on valid);
4. evaluate the int8 and fp32 classifiers of the bundle on the test set and print a markdown
   table (per-attribute accuracy, int8-vs-fp32 label agreement) and the exact commands that
   reproduce each step.

Targets for the shipped model: every attribute ≥ 98 % accuracy (int8) and int8-vs-fp32 label
agreement ≥ 99.5 %; ``ship`` exits non-zero (after writing everything) when they are missed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import DataError, ModelError

from .tflite import TTA_VIEWS, tta_views

TARGET_ACCURACY = 98.0
TARGET_AGREEMENT = 99.5
STAGE_FORM = "EPOCHS:COUNT:LR[:ARCH][@LO:HI,…][+length-changes=P][+random-textures=P][+tone-share=P]"


def _set_options(length_changes: float, random_textures: float, tone_share: float | None) -> dict[str, float]:
    """The ``synth`` share options a set is drawn with, by ``write_dataset``'s names, only those
    given (0, 0, None: synth's own draw): checked, passed, shown as flags (``_flag``) and recorded in
    ``recipe.json`` from this one dict, so recipes written before an option existed still match."""
    opts = {"length_changes": length_changes, "random_textures": random_textures, "tone_share": tone_share}
    return {k: float(v) for k, v in opts.items() if v is not None and (v or k == "tone_share")}


def _flag(option: str) -> str:
    """``write_dataset``'s name of a ``synth`` option → its flag: ``tone_share`` → ``tone-share``."""
    return option.replace("_", "-")


@dataclass(frozen=True)
class Stage:
    """One stage after the first: ``epochs`` on a fresh set of ``count`` images at ``lr``; ``arch``:
    grow the model into this architecture first (None: keep it); ``scale``: the set's
    ``synth --scale-range`` (None: the default range); ``length_changes``, ``random_textures`` and
    ``tone_share``: its ``synth --length-changes``, ``--random-textures`` (0: none) and
    ``--tone-share`` (None: synth's own share)."""

    epochs: int
    count: int
    lr: float
    arch: str | None = None
    scale: tuple[tuple[float, float], ...] | None = None
    length_changes: float = 0.0
    random_textures: float = 0.0
    tone_share: float | None = None

    def __post_init__(self) -> None:
        """The same checks for ``--then`` and for callers: a Stage that exists can be trained."""
        if self.epochs < 1 or self.count < 1 or not self.lr > 0:
            raise ModelError(f"--then {self.spec()!r}: epochs, count and lr must be positive")
        from .synth import check_share

        for name, share in self.options().items():
            try:
                check_share(_flag(name), share, ModelError)
            except ModelError as e:  # spec() only on failure: SHIPPED_STAGES are built at import
                raise ModelError(f"--then {self.spec()!r}: {e}") from None
        if self.arch is not None:
            from .models import GROWS_FROM

            if self.arch not in GROWS_FROM:
                raise ModelError(
                    f"--then {self.spec()!r}: cannot grow into {self.arch!r} (one of: {', '.join(GROWS_FROM)})"
                )

    def options(self) -> dict[str, float]:
        """Its set's ``synth`` share options (``_set_options``)."""
        return _set_options(self.length_changes, self.random_textures, self.tone_share)

    def spec(self) -> str:
        scale = _ranges_text(self.scale)
        return (
            f"{self.epochs}:{self.count}:{self.lr:g}"
            + (f":{self.arch}" if self.arch else "")
            + (f"@{scale}" if scale else "")
            + (f"+length-changes={self.length_changes:g}" if self.length_changes else "")
            + (f"+random-textures={self.random_textures:g}" if self.random_textures else "")
            + (f"+tone-share={self.tone_share:g}" if self.tone_share is not None else "")
        )


#: ``convert export --tta`` of the shipped bundle: the image and its mirror, averaged inside both
#: classifiers. On the 2026-12-05 model it added 0.5–0.7 points to every attribute of the seed-3 test
#: set and 0.010–0.014 to the AUROCs on the held-back fabrics at the camera's scale, at twice the
#: per-frame cost (the Pi budget: 2 × 1.38 ms ≤ 3 ms); ``flips`` (4 views) adds a little more at 4×.
SHIPPED_TTA = "lr"

THIRD_WIDE = ((2.3, 9.0), (9.0, 16.0), (9.0, 16.0))  # a third of the stills at 2-8 px/mm at 224 px
HALF_WIDE = ((2.3, 9.0), (9.0, 16.0))
QUARTER_WIDE = ((2.3, 9.0), (9.0, 16.0), (9.0, 16.0), (9.0, 16.0))


def _restart(epochs: int, lr: float, scale: tuple[tuple[float, float], ...]) -> Stage:
    """A stage of the warm restart: 8,000 fresh stills, half of the normal seams changing stitch
    length, 30 % on random textures, half of the threads tone-on-tone."""
    return Stage(epochs, 8000, lr, scale=scale, length_changes=0.5, random_textures=0.3, tone_share=0.5)


SHIPPED_STAGES = (
    Stage(20, 12000, 1e-3),
    Stage(10, 12000, 5e-4),
    Stage(15, 12000, 1e-3, "resnet-s2-deep"),
    Stage(8, 12000, 5e-4),
    Stage(8, 12000, 2e-4, scale=THIRD_WIDE),
    Stage(8, 12000, 1e-4, scale=THIRD_WIDE),
    Stage(8, 12000, 1e-4, scale=QUARTER_WIDE),
    Stage(8, 12000, 1e-4, scale=QUARTER_WIDE, length_changes=0.25),
    Stage(8, 12000, 1e-4, scale=QUARTER_WIDE, length_changes=0.5),
    # the warm restart of 2026-12-07: back up to 1e-3 on the wide world, then on down at 5e-4
    _restart(10, 1e-3, THIRD_WIDE),
    _restart(14, 5e-4, THIRD_WIDE),
    # then half of the stills wide, twice
    _restart(10, 3e-4, HALF_WIDE),
    _restart(10, 3e-4, HALF_WIDE),
)


def parse_stage(text: str) -> Stage:
    """``EPOCHS:COUNT:LR[:ARCH][@LO:HI,LO:HI…][+length-changes=P][+random-textures=P][+tone-share=P]`` → Stage (the
    ``--then`` flag; ``Stage`` checks the values; after ``@``: the set's ``synth --scale-range``,
    after each ``+``: that ``synth`` option of the set); one clear line when it is not."""
    rest, *opts = re.split(r"\+(?=[a-z])", text)
    head, _, scale_text = rest.partition("@")
    parts = head.split(":")
    try:
        if len(parts) not in (3, 4):
            raise ValueError
        epochs, count, lr = int(parts[0]), int(parts[1]), float(parts[2])
        extra = dict(o.split("=", 1) for o in opts)
        if len(extra) != len(opts) or not set(extra) <= {"length-changes", "random-textures", "tone-share"}:
            raise ValueError
        changes, textures = (float(extra.get(k, 0.0)) for k in ("length-changes", "random-textures"))
        tone = float(extra["tone-share"]) if "tone-share" in extra else None
        scale = _scale_ranges(scale_text) if scale_text else None
    except (ValueError, argparse.ArgumentTypeError):
        raise ModelError(
            f"--then {text!r}: expected {STAGE_FORM}, e.g. 20:12000:1e-3 or 8:12000:3e-4@2.3:9,9:16"
        ) from None
    return Stage(epochs, count, lr, parts[3] if len(parts) == 4 else None, scale, changes, textures, tone)


def _ranges_text(scale: tuple[tuple[float, float], ...] | None) -> str:
    """((2.3, 9.0), (9.0, 16.0)) → ``2.3:9,9:16``, as ``--scale-range`` and ``@LO:HI`` take it."""
    return ",".join(f"{lo:g}:{hi:g}" for lo, hi in scale or ())


def _cmd(*parts: object) -> str:
    return " ".join(str(p) for p in parts)


def ship(
    out: str | Path,
    work: str | Path,
    train_count: int = 8000,
    valid_count: int = 1000,
    test_count: int = 2000,
    epochs: int = 45,
    size: int = 128,
    filters: int = 16,
    batch: int = 32,
    lr: float = 3e-3,
    force: bool = True,
    min_test: int = 2000,
    arch: str = "resnet-s2",
    min_int8_agreement: float = 99.0,
    init: str | None = None,
    stages: tuple[Stage, ...] = SHIPPED_STAGES,
    scale: tuple[tuple[float, float], ...] | None = None,
    length_changes: float = 0.0,
    random_textures: float = 0.0,
    tta: str = SHIPPED_TTA,
    tone_share: float | None = None,
) -> dict:
    """Run the whole chain in ``work`` (resumable: data sets and checkpoints are reused) → summary.

    ``scale``, ``length_changes``, ``random_textures``, ``tone_share``: the first stage's set's ``synth
    --scale-range``, ``--length-changes``, ``--random-textures`` and ``--tone-share`` (None, 0, 0,
    None: synth's defaults);
    the validation and test sets keep synth's defaults, the shipped model's own world. ``tta``:
    ``convert export --tta`` (the shipped bundle's: ``SHIPPED_TTA``)."""
    from .data import load_dataset
    from .evaluate import predict_dataset
    from .export import export_bundle, parity
    from .loading import load_predictor
    from .metrics import multilabel_metrics
    from .synth import write_dataset
    from .train import train

    out, work = Path(out), Path(work)
    if test_count < min_test:
        raise ModelError(f"--test-count {test_count}: the shipped model is tested on at least {min_test} images")
    if scale is not None:
        from .synth import check_scale_ranges

        check_scale_ranges(scale)
    from .synth import check_share

    for name, share in _set_options(length_changes, random_textures, tone_share).items():
        check_share(f"--{_flag(name)}", share, ModelError)  # before hours of synth and training, not after
    tta_views(tta)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    sets: dict[str, tuple[int, int, tuple[tuple[float, float], ...] | None, dict[str, float]]] = {
        "train": (1, train_count, scale, _set_options(length_changes, random_textures, tone_share)),
        "valid": (2, valid_count, None, {}),
        "test": (3, test_count, None, {}),
    }
    for i, st in enumerate(stages, start=2):  # train2 (seed 4), train3 (seed 5), …
        sets[f"train{i}"] = (i + 2, st.count, st.scale, st.options())
    cmds = []
    for key, (seed, count, set_scale, opts) in sets.items():
        d = work / key
        scale_arg = ("--scale-range", _ranges_text(set_scale)) if set_scale else ()
        opt_args = [x for k, v in opts.items() for x in (f"--{_flag(k)}", f"{v:g}")]
        cmds.append(_cmd("python -m convert synth --out", d, "--count", count, "--seed", seed, *scale_arg, *opt_args))
        # a set is reused when it was drawn the same way (``recipe.json``; sets from before it: count only)
        drawn = json.loads((d / "recipe.json").read_text()) if (d / "recipe.json").is_file() else None
        want: dict[str, object] = {
            "seed": seed,
            "count": count,
            "scale_range": [list(r) for r in set_scale] if set_scale else None,
            **opts,
        }
        if (
            (d / "data.csv").is_file()
            and len(load_dataset(d / "data.csv", check_images=False)) == count
            and (drawn == want or (drawn is None and set_scale is None))
        ):
            print(f"ship: reusing {d} ({count} images)", file=sys.stderr)
            continue
        shutil.rmtree(d, ignore_errors=True)
        scales = f", scales {_ranges_text(set_scale)}" if set_scale else ""
        print(f"ship: synth {key}: {count} images (seed {seed}{scales})", file=sys.stderr)
        write_dataset(
            d,
            count,
            seed,
            workers=os.cpu_count() or 1,
            progress=sys.stderr.isatty(),
            scale_range=set_scale,
            length_changes=opts.get("length_changes", 0.0),
            random_textures=opts.get("random_textures", 0.0),
            tone_share=opts.get("tone_share"),
        )
        (d / "recipe.json").write_text(json.dumps(want) + "\n")
    t_synth = time.monotonic() - t0

    def stage(
        train_set: str, out: Path, n_epochs: int, stage_lr: float, start: str | None, to_arch: str = arch, **shape: int
    ):
        """One ``convert.train`` run (resumable; the cosine schedule runs its course, no early stop)
        and the command line that reproduces it."""
        flags = {"arch": to_arch, **({"init": start} if start else {}), "epochs": n_epochs, **shape}
        flags.update(batch=batch, lr=stage_lr, patience=n_epochs, seed=1)
        argv = [x for k, v in flags.items() for x in (f"--{k}", v)] + (["--no-keep-init"] if start else [])
        cmds.append(
            _cmd(
                "python -m convert train --train",
                work / train_set,
                "--valid",
                work / "valid/data.csv",
                "--out",
                out,
                *argv,
            )
        )
        return train(
            str(work / train_set),
            str(work / "valid/data.csv"),
            out,
            **flags,  # type: ignore[arg-type]
            resume=True,
            keep_init=False,  # a stage is judged on the proxy sets, not on the validation loss (module doc)
        )

    model = work / "model.keras"
    first_epochs = stage("train/data.csv", model, epochs, lr, init, size=size, filters=filters).epochs_run
    runs = []
    cur_arch = arch  # a stage that grows the model changes it for every later stage
    for i, st in enumerate(stages, start=2):  # 2b: on from the last model, on a fresh set (module doc)
        last, model, cur_arch = model, work / f"model{i}.keras", st.arch or cur_arch
        res = stage(f"train{i}/data.csv", model, st.epochs, st.lr, str(last), cur_arch)
        runs.append(res.epochs_run)
    t_train = time.monotonic() - t0 - t_synth
    cmds.append(
        _cmd(
            "python -m convert export --model",
            model,
            "--calibration",
            work / "valid/data.csv",
            "--valid",
            work / "valid/data.csv",
            "--out",
            out,
            "--name",
            "seam-default",
            "--max-images",
            "500",
            *(("--tta", tta) if tta != "none" else ()),
            "--force",
        )
    )
    exp = export_bundle(
        model,
        work / "valid/data.csv",
        out,
        valid=work / "valid/data.csv",
        force=force,
        name="seam-default",
        max_images=500,
        min_int8_agreement=min_int8_agreement,
        tta=tta,
    )
    test = load_dataset(work / "test/data.csv")
    p_int8 = predict_dataset(load_predictor(out, role="classifier_int8"), test, progress=sys.stderr.isatty())
    p_fp32 = predict_dataset(load_predictor(out, role="classifier_fp32"), test, progress=sys.stderr.isatty())
    labels = list(test.labels)
    thr = exp.manifest["thresholds"]
    m_int8 = multilabel_metrics(test.targets, p_int8, labels, thr)
    m_fp32 = multilabel_metrics(test.targets, p_fp32, labels, thr)
    agree = parity(p_fp32, p_int8, "multilabel", np.array([thr[lab] for lab in labels]))
    cmds.append(_cmd("python -m convert evaluate --model", out, "--data", work / "test/data.csv"))
    rows = ["| attribute | int8 accuracy | fp32 accuracy | int8 F1 | threshold |", "|---|---|---|---|---|"]
    for lab in labels:
        a, b = m_int8["labels"][lab], m_fp32["labels"][lab]
        rows.append(f"| {lab} | {a['accuracy']:.2f} | {b['accuracy']:.2f} | {100 * a['f1']:.2f} | {thr[lab]:.3f} |")
    rows.append(f"| int8-vs-fp32 label agreement | {agree['label_agreement']:.2f} | | | |")
    ok = (
        all(m_int8["labels"][lab]["accuracy"] >= TARGET_ACCURACY for lab in labels)
        and agree["label_agreement"] >= TARGET_AGREEMENT
    )
    summary = {
        "settings": {
            "train_count": train_count,
            "valid_count": valid_count,
            "test_count": test_count,
            "epochs": epochs,
            "epochs_run": first_epochs,
            "arch": arch,
            "size": size,
            "filters": filters,
            "batch": batch,
            "lr": lr,
            "init": init,
            "scale_range": [list(r) for r in scale] if scale else None,
            "length_changes": length_changes,
            "random_textures": random_textures,
            "tone_share": tone_share,
            "stages": [st.spec() for st in stages],
            "stages_epochs_run": runs,
            "tta": tta,
        },
        "test": {"int8": m_int8, "fp32": m_fp32, "agreement": agree},
        "parity": exp.manifest["parity"],
        "seconds": {"synth": round(t_synth), "train": round(t_train), "total": round(time.monotonic() - t0)},
        "targets_met": ok,
        "commands": cmds,
        "table": "\n".join(rows),
    }
    (work / "ship-report.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ship", help="synth + train + export + test the shipped default bundle", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", default="edge/models/default", metavar="BUNDLE")
    p.add_argument("--work", default="build/ship", metavar="DIR", help="data sets, model, checkpoints (resumable)")
    p.add_argument("--train-count", type=int, default=8000)
    p.add_argument("--valid-count", type=int, default=1000)
    p.add_argument("--test-count", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=45)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--filters", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--init",
        metavar="BUNDLE|FILE.keras",
        help="start from this model's weights (train --init) instead of from scratch",
    )
    p.add_argument(
        "--then",
        action="append",
        metavar=STAGE_FORM,
        help="a further stage on a fresh set, repeatable (default: the shipped recipe, "
        + ", ".join(st.spec() for st in SHIPPED_STAGES)
        + "; 'none': no further stage)",
    )
    p.add_argument(
        "--scale-range",
        type=_scale_ranges,
        default=None,
        metavar="LO:HI[,LO:HI…]",
        help="draw the first stage's set with synth --scale-range (default: synth's own range); "
        "a later stage takes its own with --then …@LO:HI,…",
    )
    p.add_argument(
        "--length-changes",
        type=float,
        default=0.0,
        metavar="P",
        help="draw the first stage's set with synth --length-changes P (default 0); a later stage: +length-changes=P",
    )
    p.add_argument(
        "--random-textures",
        type=float,
        default=0.0,
        metavar="P",
        help="draw the first stage's set with synth --random-textures P (default 0); a later stage: +random-textures=P",
    )
    p.add_argument(
        "--tone-share",
        type=float,
        default=None,
        metavar="P",
        help="draw the first stage's set with synth --tone-share P (default: synth's 0.35); a later stage: "
        "+tone-share=P",
    )
    p.add_argument(
        "--arch",
        default="resnet-s2",
        help="the first stage's architecture: resnet-s2 (default: the shipped model's, grown later), "
        "resnet-s2-deep (the shipped model's final one, from the first epoch), resnet-int8-gap or resnet-int8",
    )
    p.add_argument(
        "--tta",
        default=SHIPPED_TTA,
        choices=tuple(TTA_VIEWS),
        help=f"convert export --tta: test-time flips inside the classifiers (default {SHIPPED_TTA}, the shipped "
        "bundle's: the image and its mirror, averaged, at twice the cost; none halves it)",
    )
    p.set_defaults(func=run)


def _scale_ranges(text: str) -> tuple[tuple[float, float], ...]:
    """``--scale-range`` parsed and checked by synth's own code (argparse prints the one line)."""
    from .synth import check_scale_ranges, parse_scale_ranges

    ranges = parse_scale_ranges(text)
    try:
        check_scale_ranges(ranges)
    except DataError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--scale-range ")) from None
    return ranges


def stages_from_args(then: list[str] | None) -> tuple[Stage, ...]:
    if then is None:
        return SHIPPED_STAGES
    if then == ["none"]:
        return ()
    return tuple(parse_stage(t) for t in then)


def run(args: argparse.Namespace) -> int:
    s = ship(
        args.out,
        args.work,
        args.train_count,
        args.valid_count,
        args.test_count,
        args.epochs,
        args.size,
        args.filters,
        args.batch,
        args.lr,
        arch=args.arch,
        init=args.init,
        stages=stages_from_args(args.then),
        scale=args.scale_range,
        length_changes=args.length_changes,
        random_textures=args.random_textures,
        tta=args.tta,
        tone_share=args.tone_share,
    )
    print(f"## Shipped model ({args.out}): {s['settings']}\n")
    print(s["table"])
    print(
        f"\nparity on calibration: fp32 max|Δ| {s['parity']['fp32']['max_abs_diff']:.2e}, int8 "
        f"({s['parity']['int8']['quantization']}) agreement {s['parity']['int8']['label_agreement']:.2f} %"
    )
    print(f"time: {s['seconds']}\n\nReproduce:\n```\n" + "\n".join(s["commands"]) + "\n```")
    if not s["targets_met"]:
        print(
            f"error: targets missed (every attribute >= {TARGET_ACCURACY} % int8, agreement >= {TARGET_AGREEMENT} %)",
            file=sys.stderr,
        )
        return 1
    return 0
