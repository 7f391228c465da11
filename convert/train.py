"""``train``: fit the seed ResNet (or its int8-friendly variant, or the seed CNN) on a data set.

Loss follows the task found in the data: binary cross-entropy for the seed's multi-label CSVs,
categorical cross-entropy for class-per-folder sets. Optimiser: Adam 3e-3, batch 16, cosine
decay to 1 % over the run. The seed's Adam 1e-5 barely moves in a CPU budget. Measured on the
synthetic seams (``convert synth``; int8 ResNet; 2 shared CPU cores):

* 64×64, filters 8, 500 images, 8 epochs, batch 16: Adam 1e-5 → val_loss 0.856 → 0.787, val
  binary accuracy 0.51 (chance); Adam 1e-3 → val_loss 0.684, val accuracy 0.59.
* 128×128, filters 8, 2000 images, 6 epochs: Adam 1e-3 / batch 32 → val_loss 0.543, val accuracy
  0.711; Adam 3e-3 / batch 16 → val_loss 0.382, val accuracy 0.792 (good 95.6 %, error 80.0 %,
  break 82.2 %, length 62.4 % per attribute, thresholds calibrated on that validation set).

Checkpoints are named with their metrics as in the seed
(``ckpt-e03-val_loss0.123-val_acc0.987.keras``) in ``<out stem>_checkpoints/`` beside ``--out``;
``--resume`` continues from the newest one (weights, optimiser state, epoch number). Early
stopping restores the best weights. ``<out stem>_history.json`` and ``<out stem>_curves.png``
are written beside ``--out``.

``--init BUNDLE|FILE.keras|default`` fine-tunes from an existing model instead of starting from
random weights (``default`` = the shipped bundle's ``model.keras``): the input size comes from that
model, its head is kept when the labels match and replaced (a fresh ``logits`` layer) when they do
not, and the learning rate defaults to 1e-3 instead of 3e-3. The architecture is the ``--init``
model's, except that ``--arch resnet-s2-deep`` on a ``resnet-s2`` model grows it (identity blocks
added, ``convert.models.grow``) and trains the deeper network on from there. ``--freeze N`` keeps the first N
resolution stages (every layer whose output is at one of the N highest spatial resolutions where
convolutions run: the stem and the first residual stage for N=1) at their initial weights, with
their batch-norm statistics frozen too: the early filters see edges and yarn, which a new fabric needs least to
change, and a small labelled set cannot move many weights without over-fitting.

A fine-tune (``--init``) scores the ``--init`` model on the validation set before the first epoch,
as epoch 0, and keeps it (``init.keras`` beside the checkpoints, its loss in ``<out stem>_run.json``,
so ``--resume`` keeps the comparison): when no epoch's validation loss beats it, the saved model is
the ``--init`` model unchanged (``"kept_init"`` in its metadata, one line on stderr). On 50
labelled frames of a fabric the model already ranks well, the best epoch still lost 0.010 of
defect-vs-normal AUROC on average, and this kept all of it (README "First day on a new line").
``--no-keep-init`` saves the best epoch anyway: ``convert ship``'s stages use it, because their
validation set is not the view they are trained for.

``--oversample LABEL=N`` (repeatable) puts every training image with LABEL in each epoch N times
(an image with two such labels: the larger N); validation is untouched. The data a line sends back
(``convert collect``) is mostly good frames, and the defects the model missed are its rarest rows:
in the data-loop test, ``--oversample error=3`` took one round from 6-8 errors to 3-4 on the check
video, and ``error=5`` with 20 epochs to 2 (README "The data loop").

``--preprocess seam|vgg16|mobilenet_v2|resnet50|none`` (``edge.preprocess``; default ``seam``, or
the ``--init`` model's own) is applied to every training and validation image after augmentation
and recorded in the saved model's metadata, so that ``export`` writes it into the bundle's manifest
and ``evaluate`` / ``heatmaps`` feed the model what it was trained on without being told again. It is
also kept beside ``--out`` (``<out stem>_run.json``): ``--resume`` continues with the same mode, and a
different ``--preprocess`` for a resumed run is refused (its weights learnt the other input).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import DataError, ModelError

from .data import check_roi, load_dataset, make_sequence, parse_oversample
from .data import oversample as oversample_dataset
from .loading import add_preprocess_args
from .models import ARCHS, GROWS_FROM, build_model, check_arch, grow, resize_input, save_model
from .roi import add_roi_args, roi_from_args

CKPT_RE = re.compile(r"^ckpt-e(\d+)-.*\.keras$")
INIT_CKPT = "init.keras"  # the --init model as it started, beside the checkpoints (``keep_init``)
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "edge" / "models" / "default"
LR_SCRATCH, LR_FINETUNE = 3e-3, 1e-3
XLA_ENV = "SEAMQC_TRAIN_XLA"
#: XLA-compiled training steps. "auto" (the default): on with a GPU, and on a CPU without AVX-512;
#: off on a CPU with AVX-512, where TensorFlow's oneDNN kernels beat it. ``SEAMQC_TRAIN_XLA`` 1 / 0
#: forces it. Measured: on AMD EPYC VMs with AVX-512 the bench's ``train_step_ms`` gave XLA 0.58-0.79x
#: the speed (7 runs) and a ``train --init default`` epoch of 2,000 stills took 75 / 83 s with it, 48 /
#: 46 s without; on an AMD EPYC VM without AVX-512 (2026-12-07 evening) the bench gave XLA 1.49x and an
#: epoch of 1,000 stills at batch 16 took 25-26 s with it, 35-40 s without (as on the first VM, 894
#: against 1,470 ms a step). ``make bench`` prints the ratio for the machine at hand.
XLA_SETTINGS = ("0", "1", "auto")


def _env_setting(name: str, choices: tuple[str, ...], default: str) -> str:
    """The environment variable ``name``, stripped and lower-cased (unset or blank: ``default``); a
    value not in ``choices`` is one line naming the variable and the choices."""
    value = os.environ.get(name, "").strip().lower() or default
    if value not in choices:
        raise DataError(f"{name}={os.environ[name]!r}: choose from {', '.join(choices)} (or leave it unset)")
    return value


def use_xla() -> bool:
    """Whether ``train`` compiles its steps with XLA (``XLA_ENV``; imports TensorFlow for "auto")."""
    value = _env_setting(XLA_ENV, XLA_SETTINGS, "auto")
    if value != "auto":
        return value == "1"
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU")) or not cpu_has_avx512()


def cpu_has_avx512(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has AVX-512 (``avx512f`` among /proc/cpuinfo's flags; False where unreadable).

    It decides ``use_xla``'s "auto" on a CPU: TensorFlow's own oneDNN kernels on AVX-512 beat XLA,
    without AVX-512 XLA wins (README, "Training on a CPU")."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    return any(
        "avx512f" in line.split(":", 1)[1].split()
        for line in cpuinfo.splitlines()
        if line.startswith("flags") and ":" in line
    )


MALLOC_ENV = "SEAMQC_TRAIN_MALLOC"
#: glibc's ``mallopt`` settings ``train`` applies (``keep_freed_memory``): mmap threshold 32 MiB (its
#: maximum; fixed, not the dynamic one), trim threshold 1 GiB, top pad 64 MiB.
MALLOC_OPTIONS = ((-3, 32 << 20), (-1, 1 << 30), (-2, 64 << 20))  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_TOP_PAD


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory TensorFlow frees instead of handing it back to the kernel.

    A CPU training step allocates and frees the same multi-megabyte activations every step; by
    default glibc unmaps or trims them each time, so every step page-faults them in again, and a
    third of the process's CPU time went to the kernel. Kept, a ``resnet-s2`` epoch at 128 px ran
    1.5x faster (README, "Training on a CPU"), with the same weights. ``SEAMQC_TRAIN_MALLOC=0``
    leaves malloc alone; True when the settings took (glibc), False elsewhere."""
    if _env_setting(MALLOC_ENV, ("0", "1"), "1") == "0":
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(option, size) == 1 for option, size in MALLOC_OPTIONS])


@dataclass(frozen=True)
class TrainResult:
    out: Path
    ckpt_dir: Path
    history: dict
    epochs_run: int
    labels: tuple[str, ...]
    task: str
    preprocess: str = "seam"
    kept_init: bool = False  # no epoch beat the --init model on the validation set: its weights were kept


def side_paths(out: Path) -> tuple[Path, Path, Path]:
    """Checkpoint dir, history JSON and curve PNG beside ``out``."""
    stem = out.name[: -len(".keras")] if out.name.endswith(".keras") else out.stem
    return out.parent / f"{stem}_checkpoints", out.parent / f"{stem}_history.json", out.parent / f"{stem}_curves.png"


def last_checkpoint(ckpt_dir: Path) -> tuple[Path, int] | None:
    best = None
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            m = CKPT_RE.match(p.name)
            if m and (best is None or int(m.group(1)) > best[1]):
                best = (p, int(m.group(1)))
    return best


def resumed_size(ckpt_dir: Path) -> int:
    """The input side of the newest checkpoint (its ``config.json``'s input layer), so a resumed
    ``--init`` run without ``--size`` keeps the size it started with; 128 when it cannot be read."""
    import zipfile

    last = last_checkpoint(ckpt_dir)
    if last is None:
        return DEFAULT_SIZE
    try:
        with zipfile.ZipFile(last[0]) as z:
            layers = json.loads(z.read("config.json"))["config"]["layers"]
        return int(next(lay["config"]["batch_shape"][1] for lay in layers if lay["class_name"] == "InputLayer"))
    except (OSError, KeyError, ValueError, TypeError, StopIteration, zipfile.BadZipFile):
        return DEFAULT_SIZE


def draw_curves(history: dict, path: Path, size: tuple[int, int] = (900, 360)) -> None:
    """Loss and accuracy per epoch (train and validation), drawn with OpenCV (no matplotlib)."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    panels = [("loss", ["loss", "val_loss"]), ("accuracy", ["acc", "val_acc"])]
    colors = {"loss": (200, 80, 0), "val_loss": (0, 80, 220), "acc": (200, 80, 0), "val_acc": (0, 80, 220)}
    pw = w // 2
    for k, (title, keys) in enumerate(panels):
        x0, y0, x1, y1 = k * pw + 50, 30, (k + 1) * pw - 15, h - 40
        cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
        series = [(key, np.asarray(history.get(key, []), float)) for key in keys if history.get(key)]
        cv2.putText(img, title, (x0, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        if not series:
            continue
        vals = np.concatenate([s for _, s in series])
        vals = vals[np.isfinite(vals)]  # a diverged epoch (NaN or inf loss) is left out of the plot
        if not vals.size:
            continue
        lo, hi = float(vals.min()), float(vals.max())
        if hi - lo < 1e-9:
            hi = lo + 1.0
        n = max(len(s) for _, s in series)
        for key, s in series:
            pts = [
                (int(x0 + (x1 - x0) * (i / max(1, n - 1))), int(y1 - (y1 - y0) * (v - lo) / (hi - lo)))
                if np.isfinite(v)
                else None
                for i, v in enumerate(s)
            ]
            for a, b in zip(pts, pts[1:]):
                if a is not None and b is not None:
                    cv2.line(img, a, b, colors[key], 2, cv2.LINE_AA)
            for p in pts:
                if p is not None:
                    cv2.circle(img, p, 3, colors[key], -1)
        cv2.putText(img, f"{hi:.3f}", (x0 - 48, y0 + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
        cv2.putText(img, f"{lo:.3f}", (x0 - 48, y1), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
        cv2.putText(
            img,
            f"epochs 1..{n}   blue: train  red: valid",
            (x0, h - 15),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    cv2.imwrite(str(path), img)


DEFAULT_SIZE = 128  # the model input side when neither --size nor an --init model says


def run_path(out: Path) -> Path:
    """``<out stem>_run.json`` beside ``out``: what a resumed run must keep (the preprocessing)."""
    ckpt_dir = side_paths(out)[0]
    return out.parent / (ckpt_dir.name.removesuffix("_checkpoints") + "_run.json")


def read_run(out: Path) -> dict:
    """``run_path``'s record, {} when there is none or it cannot be read."""
    try:
        run = json.loads(run_path(out).read_text())
    except (OSError, ValueError):
        return {}
    return run if isinstance(run, dict) else {}


def resume_preprocess(out: Path, given: str | None) -> str | None:
    """The mode a resumed run must keep (``run_path``; runs from before it: ``given``); a
    different ``given`` is one ModelError line, since the checkpoints learnt the recorded input."""
    saved = read_run(out).get("preprocess")
    if given is not None and saved and given != saved:
        raise ModelError(
            f"--preprocess {given}: the checkpoints of {out} were trained with --preprocess {saved} "
            f"({run_path(out)}); resume with it, or train into a new --out"
        )
    return given or saved


def init_model_path(spec: str | Path) -> Path:
    """``default`` → the shipped bundle; a bundle folder → its ``.keras`` file; a ``.keras`` file as is."""
    p = DEFAULT_BUNDLE if str(spec) == "default" else Path(spec)
    if p.is_dir():
        manifest = p / "manifest.json"
        try:
            entry = json.loads(manifest.read_text())["files"]["keras"]["path"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ModelError(f"--init {spec}: {manifest} names no Keras model (files.keras.path)") from None
        p = p / str(entry)
    if p.suffix != ".keras" or not p.is_file():
        raise ModelError(f"--init {spec}: {p} is not a .keras file (give a bundle folder, a .keras file or 'default')")
    return p


def init_model(spec: str | Path, labels: tuple[str, ...], task: str):
    """Load ``spec`` for fine-tuning → ``(model, meta)``; a new head when the labels differ."""
    import keras

    from .models import load_keras

    path = init_model_path(spec)
    model, meta = load_keras(path)
    if tuple(meta["labels"]) == tuple(labels) and meta["task"] == task:
        return model, meta
    try:
        features = model.get_layer("logits").input
    except ValueError:
        raise ModelError(f"--init {spec}: {path} has no 'logits' layer to replace for labels {list(labels)}") from None
    logits = keras.layers.Dense(len(labels), name="logits")(features)
    act = keras.layers.Activation("sigmoid" if task == "multilabel" else "softmax", name="predictions")(logits)
    print(
        f"--init {spec}: labels {meta['labels']} ({meta['task']}) → {list(labels)} ({task}): new head", file=sys.stderr
    )
    return keras.Model(model.inputs, act, name=model.name), dict(meta, labels=list(labels), task=task)


def freeze_stages(model, n: int) -> int:
    """Freeze the first ``n`` resolution stages (the layers whose outputs are at the ``n`` highest
    resolutions where convolutions run) → count frozen. Stages are counted where convolutions
    are: a stride-2 stem leaves only the input normalisation at the input's own size, and counting
    that as a stage froze that one layer for ``--freeze 1``."""
    if n <= 0:
        return 0

    def side(layer) -> int | None:
        shape = getattr(layer.output, "shape", None)
        return int(shape[1]) if shape is not None and len(shape) == 4 and shape[1] is not None else None

    convs = {side(layer) for layer in model.layers if any(len(w.shape) == 4 for w in layer.weights)}
    keep = sorted((s for s in convs if s is not None), reverse=True)[:n]
    if not keep:
        return 0
    frozen = 0
    for layer in model.layers:
        s = side(layer)
        if s is None:
            break  # past the feature extractor (pooling, dense head)
        if s >= min(keep) and layer.weights:
            layer.trainable = False
            frozen += 1
    return frozen


@functools.cache
def masked_objects():
    """(loss, accuracy metric) for multi-label targets with unknown cells (NaN: an empty cell of a
    seed CSV): binary cross-entropy and accuracy over the known labels of each image only.

    Why: a label nobody can know must not be taught as False, e.g. ``length`` (a stitch length in
    millimetres) on a still whose scale is outside the shipped range, where 2 mm and 4 mm stitches
    overlap in pixels (``synth --scale-range``). Registered so a checkpoint resumes with them.
    """
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="seamqc")
    def masked_bce(y_true, y_pred):
        known = ops.logical_not(ops.isnan(y_true))
        y = ops.where(known, y_true, 0.0)
        p = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
        k = ops.cast(known, p.dtype)
        bce = -(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))
        return ops.sum(bce * k, axis=-1) / ops.maximum(ops.sum(k, axis=-1), 1.0)

    @keras.saving.register_keras_serializable(package="seamqc")
    def masked_accuracy(y_true, y_pred):
        known = ops.logical_not(ops.isnan(y_true))
        k = ops.cast(known, y_pred.dtype)
        hit = ops.cast(ops.equal(ops.where(known, y_true, 0.0) > 0.5, y_pred > 0.5), y_pred.dtype)
        return ops.sum(hit * k, axis=-1) / ops.maximum(ops.sum(k, axis=-1), 1.0)

    return masked_bce, keras.metrics.MeanMetricWrapper(masked_accuracy, name="acc")


def train(
    train_spec: str,
    valid_spec: str,
    out: str | Path,
    arch: str = "resnet-int8",
    epochs: int = 10,
    size: int | None = None,
    filters: int = 64,
    batch: int = 16,
    lr: float | None = None,
    resume: bool = False,
    seed: int = 0,
    patience: int = 4,
    verbose: int | str = "auto",
    init: str | Path | None = None,
    freeze: int = 0,
    roi: tuple[int, int, int, int] | None = None,
    preprocess: str | None = None,
    oversample: Sequence[str] | None = None,
    keep_init: bool = True,
) -> TrainResult:
    """Train and save ``out`` (the best weights); returns what happened.

    ``roi``: the data are full camera frames; each is cropped to this ROI (the daemon's crop) first.
    ``preprocess``: the input mode (module doc); None: the resumed run's, the ``--init`` model's, seam.
    ``keep_init``: with ``init``, save the ``--init`` weights unchanged when no epoch's validation
    loss beats theirs (module doc, ``--no-keep-init``).
    """
    from edge.preprocess import check_mode

    check_arch(arch)
    if preprocess is not None:
        try:
            check_mode(preprocess)
        except ValueError as e:
            raise ModelError(str(e)) from None
    out = Path(out)
    if out.suffix != ".keras":
        raise ModelError(f"--out {out}: must end in .keras")
    if lr is None:
        lr = LR_FINETUNE if init else LR_SCRATCH
    if freeze < 0 or (freeze and not init):
        raise ModelError(f"--freeze {freeze}: needs --init and must be >= 0")
    if init:
        init_model_path(init)  # a bad --init is one line, before TensorFlow loads
    jit = use_xla()
    keep_freed_memory()
    if size is None and not init:
        size = DEFAULT_SIZE
    if epochs < 1 or (size is not None and size < 16) or batch < 1 or filters < 1 or not lr > 0:
        raise ModelError(
            f"epochs {epochs}, size {size}, batch {batch}, filters {filters}, lr {lr}: must be positive (size >= 16)"
        )
    tr = load_dataset(train_spec)
    va = load_dataset(valid_spec)
    if tr.labels != va.labels or tr.task != va.task:
        raise DataError(
            f"{valid_spec}: labels {list(va.labels)} ({va.task}) differ from {train_spec}'s "
            f"{list(tr.labels)} ({tr.task})"
        )
    check_roi(tr, roi)
    check_roi(va, roi)
    factors = parse_oversample(oversample, tr.labels)
    if factors:
        n0 = len(tr)
        tr = oversample_dataset(tr, factors)
        print(
            "oversampling "
            + ", ".join(f"{k} x{v}" for k, v in factors.items())
            + f": {n0} -> {len(tr)} training images",
            file=sys.stderr,
        )

    import keras

    keras.utils.set_random_seed(seed)
    ckpt_dir, hist_path, curve_path = side_paths(out)
    mode = resume_preprocess(out, preprocess) if resume and last_checkpoint(ckpt_dir) else preprocess
    base = None
    if init and not (resume and last_checkpoint(ckpt_dir)):
        base, base_meta = init_model(init, tr.labels, tr.task)
        mode = mode or str(base_meta.get("preprocess") or "seam")
        if base_meta["height"] != base_meta["width"]:
            raise ModelError(f"--init {init}: input {base_meta['height']}x{base_meta['width']} is not square")
        base_size = int(base_meta["height"])
        size = base_size if size is None else size
        base_arch = str(base_meta.get("arch", arch))
        filters = int(base_meta.get("filters", filters))
        if GROWS_FROM.get(arch) == base_arch:  # e.g. resnet-s2 → resnet-s2-deep: identity blocks added
            base = grow(base, arch, len(tr.labels), size, filters, tr.task)
            print(f"--init {init}: {base_arch} grown into {arch} (new blocks start as the identity)", file=sys.stderr)
        else:
            arch = base_arch
            if size != base_size:  # the same weights at another input size (models.resize_input)
                base = resize_input(base, arch, len(tr.labels), size, filters, tr.task)
                print(f"--init {init}: input {base_size}x{base_size} → {size}x{size}", file=sys.stderr)
    if size is None:  # resumed with --init and no --size: the checkpoint's own input size
        size = resumed_size(ckpt_dir)
    mode = mode or "seam"
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(exist_ok=True)
    # a resumed fine-tune keeps the --init model's validation loss (``keep_init``) recorded at its start
    run = {**(read_run(out) if resume else {}), "preprocess": mode}
    run_path(out).write_text(json.dumps(run, indent=1))
    train_seq = make_sequence(tr, size, size, batch, augment_images=True, shuffle=True, seed=seed, roi=roi, mode=mode)
    valid_seq = make_sequence(va, size, size, batch, roi=roi, mode=mode)
    steps = len(train_seq)
    initial_epoch = 0
    history: dict[str, list[float]] = {}
    resumed_from = None
    if resume and (last := last_checkpoint(ckpt_dir)):
        resumed_from, initial_epoch = last
        masked_objects()  # registered: a checkpoint compiled with them loads
        try:
            model = keras.models.load_model(str(resumed_from))
            model.jit_compile = jit  # the checkpoint's compile config is of its own run
        except Exception as e:  # noqa: BLE001
            raise ModelError(
                f"{resumed_from}: cannot resume from this checkpoint ({str(e).splitlines()[0][:200]})"
            ) from None
        if int(model.outputs[0].shape[-1]) != len(tr.labels) or tuple(model.inputs[0].shape[1:3]) != (size, size):
            raise ModelError(
                f"{resumed_from}: checkpoint shape {model.inputs[0].shape}→{model.outputs[0].shape} "
                f"does not match --size {size} and {len(tr.labels)} labels"
            )
        if hist_path.is_file():
            history = {k: v[:initial_epoch] for k, v in json.loads(hist_path.read_text()).items()}
        print(f"resuming from {resumed_from.name} (epoch {initial_epoch})", file=sys.stderr)
        if initial_epoch >= epochs:
            print(
                f"checkpoint already at epoch {initial_epoch} >= --epochs {epochs}; nothing to train", file=sys.stderr
            )
    else:
        if base is not None:
            model = base
            n_frozen = freeze_stages(model, freeze)
            print(
                f"fine-tuning from {init} ({size}x{size}, lr {lr}"
                + (f", {n_frozen} layers frozen in the first {freeze} stage(s))" if freeze else ")"),
                file=sys.stderr,
            )
        else:
            model = build_model(arch, len(tr.labels), size, size, filters, tr.task)
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * steps), alpha=0.01)
        if tr.task == "multilabel" and (np.isnan(tr.targets).any() or np.isnan(va.targets).any()):
            loss, acc = masked_objects()  # unknown cells are left out, not taught as False
            print("some labels are unknown (empty cells): they are left out of the loss", file=sys.stderr)
        elif tr.task == "multilabel":
            loss, acc = keras.losses.BinaryCrossentropy(), keras.metrics.BinaryAccuracy(name="acc")
        else:
            loss, acc = keras.losses.CategoricalCrossentropy(), keras.metrics.CategoricalAccuracy(name="acc")
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=[acc], jit_compile=jit)

    meta = {
        "labels": list(tr.labels),
        "task": tr.task,
        "arch": arch,
        "height": size,
        "width": size,
        "filters": filters,
        "preprocess": mode,
        "trained_on": str(train_spec),
    }
    if init:
        meta["init"] = str(init)
    if factors:
        meta["oversample"] = factors
    if roi is not None:
        meta["roi"] = [int(v) for v in roi]

    class HistoryWriter(keras.callbacks.Callback):
        """Appends each epoch's logs to history.json (so a resumed run keeps the earlier epochs)."""

        def on_epoch_end(self, epoch, logs=None):
            for k, v in (logs or {}).items():
                if k == "learning_rate":
                    continue
                history.setdefault(k, []).append(float(v))
            hist_path.write_text(json.dumps(history, indent=1))
            draw_curves(history, curve_path)

    callbacks = [
        keras.callbacks.ModelCheckpoint(
            str(ckpt_dir / "ckpt-e{epoch:02d}-val_loss{val_loss:.3f}-val_acc{val_acc:.3f}.keras"), save_best_only=False
        ),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True),
        HistoryWriter(),
    ]
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    start = ckpt_dir / INIT_CKPT
    if base is not None and keep_init:
        # the --init model is epoch 0: scored like every epoch, kept beside the checkpoints so a
        # resumed run can still fall back on it
        run["init_val_loss"] = float(model.evaluate(valid_seq, verbose=0, return_dict=True)["loss"])
        model.save(str(start))
        run_path(out).write_text(json.dumps(run, indent=1))
    if initial_epoch < epochs:
        model.fit(
            train_seq,
            validation_data=valid_seq,
            epochs=epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=verbose,
        )
    kept_init = False
    if init and keep_init and history.get("val_loss") and start.is_file():
        recorded = run.get("init_val_loss")
        best = min((v for v in history["val_loss"] if np.isfinite(v)), default=float("inf"))
        if recorded is not None and not best < (start_loss := float(recorded)):
            masked_objects()
            model.set_weights(keras.models.load_model(str(start), compile=False).get_weights())
            kept_init = True
            meta["kept_init"] = True
            print(
                f"no epoch beat the --init model on {valid_spec} (best val_loss {best:.4f}, --init's "
                f"{start_loss:.4f}): saved the --init weights unchanged (--no-keep-init: the best epoch)",
                file=sys.stderr,
            )
    save_model(model, out, meta)
    if history:
        draw_curves(history, curve_path)
    return TrainResult(out, ckpt_dir, history, len(history.get("loss", [])), tr.labels, tr.task, mode, kept_init)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the seam model (seed ResNet, int8-friendly ResNet or CNN)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--train", required=True, metavar="CSV|DIR", help="training CSV or data folder")
    p.add_argument("--valid", required=True, metavar="CSV|DIR", help="validation CSV or data folder")
    p.add_argument("--out", required=True, metavar="FILE.keras")
    p.add_argument("--arch", default="resnet-int8", help=f"one of {', '.join(ARCHS)} (default resnet-int8)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help=f"square model input (default {DEFAULT_SIZE}, or the --init model's; with --init, another size "
        "fine-tunes the same weights at that input: finer detail, (size/old)² the cost)",
    )
    p.add_argument("--filters", type=int, default=64, help="filters of the first stage (seed: 64)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--lr", type=float, default=None, help="Adam learning rate, cosine-decayed (default 3e-3; 1e-3 with --init)"
    )
    p.add_argument("--patience", type=int, default=4, help="early-stopping patience in epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint beside --out")
    p.add_argument(
        "--init",
        metavar="BUNDLE|FILE.keras|default",
        help="fine-tune from this model's weights ('default': the shipped bundle); input size from it",
    )
    p.add_argument(
        "--freeze",
        type=int,
        default=0,
        metavar="N",
        help="with --init: keep the first N resolution stages fixed (1: stem + first stage)",
    )
    p.add_argument(
        "--no-keep-init",
        dest="keep_init",
        action="store_false",
        help="with --init: save the best epoch even when the --init model itself scores a lower validation loss",
    )
    p.add_argument(
        "--oversample",
        action="append",
        metavar="LABEL=N",
        help="repeat every training image with LABEL N times per epoch (repeatable; e.g. error=3)",
    )
    add_roi_args(p, "cropped from every image first; images saved as crops take none")
    add_preprocess_args(p, weights=False, default="seam, or the --init model's; recorded in the .keras")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    roi = roi_from_args(args)
    res = train(
        args.train,
        args.valid,
        args.out,
        arch=args.arch,
        epochs=args.epochs,
        size=args.size,
        filters=args.filters,
        batch=args.batch,
        lr=args.lr,
        resume=args.resume,
        seed=args.seed,
        patience=args.patience,
        init=args.init,
        freeze=args.freeze,
        roi=roi.roi,
        preprocess=args.preprocess,
        oversample=args.oversample,
        keep_init=args.keep_init,
    )
    h = res.history
    last = {k: v[-1] for k, v in h.items() if v}
    print(
        f"saved {res.out} ({res.task}, labels {', '.join(res.labels)}; preprocess {res.preprocess}; "
        f"{res.epochs_run} epochs; " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()) + ")"
    )
    return 0
