"""Cell classifiers: tasks, training data from patches.zarr + labels, training, inference and metrics.

Tasks (:data:`TASKS`) map a cell type to the class a classifier predicts:

- ``lineage``: lymphoid vs myeloid (CD4_T, CD8_T, B, NK -> lymphoid; granulocyte, monocyte -> myeloid);
- ``immune5``: T (= CD4_T + CD8_T), B, NK, granulocyte, monocyte;
- ``immune6``: CD4_T, CD8_T, B, NK, granulocyte, monocyte;
- ``ctc``: CTC vs leukocyte (every leukocyte type);
- ``hierarchical``: a ``lineage`` model, then one sub-classifier per lineage over that lineage's
  ``immune6`` classes; the leaf probability is p(lineage) x p(type | lineage);
- ``collection``: the labels of a single-cell collection as they are (e.g. the 8 PBC classes).

Cells outside a task (CTCs for the leukocyte tasks, unlabelled cells) are left out of its training
and scored at inference like any other cell.

Labels come from one of (``label_source``):

- ``truth``: synthetic slides; a segmented cell takes the ground-truth cell under its centroid in
  ``truth_labels.zarr`` (:func:`match_truth`), and that cell's ``cell_type`` in ``truth_cells.parquet``;
- ``column``: a label column of cells.parquet (e.g. written by marker gating);
- ``table``: a CSV/parquet table with slide, cell_id and a label column;
- ``collection``: the ``label`` column of a collection ingested by :mod:`hemoprofile.collection`.

Splits are held out by patient (else by slide) so no cell, nor any augmented copy of it, is on both
sides; for a collection without slides the split is stratified by class and exact duplicate patches are
removed from the held-out side. Training is seeded, samples classes evenly, stops early on the
validation split's balanced accuracy, and evaluates an exponential moving average of the weights.

Model files are ``torch.save`` dicts (:func:`save_classifier`) with the architecture, the classes, the
channel names and the patch size, so :func:`load_classifier` rebuilds a model with no other input; a
model's id is the SHA-256 of its file (first 12 hex digits), written next to every prediction.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from hemoprofile.nn.augment import AugmentConfig, augment_batch, centre_crop, dihedral, to_unit_float
from hemoprofile.nn.cnn import CellNet, CellNetSpec, WeightEMA, build_model, count_parameters, fuse_batchnorm
from hemoprofile.nn.devices import DeviceChoice, pick_device
from hemoprofile.io import atomic_output, model_id
from hemoprofile.io.patches import check_patches_match_cells, check_slide_patches, open_patch_array, read_patch_rows  # noqa: F401
from hemoprofile.io.tables import read_cells, read_label_table  # noqa: F401
from hemoprofile.io.truth import match_truth, truth_cell_types  # noqa: F401
from hemoprofile.vocabulary import (  # noqa: F401  (re-exported: part of this module's API)
    COLLECTION,
    HIERARCHICAL,
    LEUKOCYTE_TYPES,
    LINEAGE_OF,
    SMEAR_ALIASES,
    TASK_NAMES,
    TASKS,
    map_labels,
    task_classes,
)

log = logging.getLogger(__name__)

MODEL_FORMAT = "hemoprofile-cell-classifier"
MODEL_FORMAT_VERSION = 1
LABEL_SOURCES = ("truth", "column", "table", "collection")


# ---------------------------------------------------------------------------------------------------
# Metrics


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix.

    Balanced accuracy is the mean recall over classes present in ``y_true``; macro F1 averages over the
    classes present in ``y_true`` or ``y_pred``. The confusion matrix has true classes in rows.

    Example
    -------
    >>> m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
    >>> m["accuracy"], m["confusion_matrix"]
    (0.75, [[1, 1], [0, 2]])
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = len(classes)
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k) if len(y_true) else np.zeros((k, k), int)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    in_f1 = present | (predicted > 0)
    n = int(cm.sum())
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1[in_f1].mean()) if in_f1.any() else float("nan"),
        "per_class": {
            str(c): {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                     "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "classes": [str(c) for c in classes],
        "confusion_matrix": cm.astype(int).tolist(),
    }


def format_confusion(metrics: dict) -> str:
    """The confusion matrix of :func:`classification_metrics` as aligned text (true classes in rows)."""
    classes = metrics["classes"]
    width = max(6, *(len(c) for c in classes))
    lines = ["true \\ pred".ljust(width) + " " + " ".join(c[:width].rjust(width) for c in classes)]
    for c, row in zip(classes, metrics["confusion_matrix"]):
        lines.append(c.ljust(width) + " " + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Splits


def stratified_split(labels: Sequence, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices into parts of the given fractions within each class (seeded).

    Parameters
    ----------
    labels : one label per item.
    fractions : fraction of each part after the first (e.g. ``[0.2]`` for 80/20, ``[0.15, 0.2]`` for
        train/validation/test); the first part takes the rest.

    Returns
    -------
    list of sorted index arrays, first the remainder part, then one per fraction.

    Example
    -------
    >>> [len(p) for p in stratified_split(["a"] * 10 + ["b"] * 10, [0.2], seed=0)]
    [16, 4]
    """
    labels = np.asarray(labels, dtype=object)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for value in sorted(set(labels.tolist()), key=str):
        idx = np.flatnonzero(labels == value)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for p, frac in enumerate(fractions, start=1):
            n = int(round(frac * len(idx)))
            parts[p].extend(idx[start:start + n])
            start += n
        parts[0].extend(idx[start:])
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def group_split(groups: Sequence, labels: Sequence, fractions: Sequence[float], seed: int,
                tries: int = 200) -> list[np.ndarray]:
    """Split indices by group (patient or slide) so every group lies on one side only.

    Groups are drawn in a seeded random order into parts of about ``fractions`` of the groups (the first
    part takes the rest, every part at least one group where there are enough); of ``tries`` draws the
    first where every class appears in every part is kept (else the draw covering most classes), so a
    rare class such as CTCs is not left out of the held-out part by chance.

    Example
    -------
    >>> groups = ["p1", "p1", "p2", "p2", "p3"]
    >>> train, test = group_split(groups, list("ababa"), [0.34], seed=0)
    >>> {groups[i] for i in train} & {groups[i] for i in test}
    set()
    """
    groups = np.asarray([str(g) for g in groups], dtype=object)
    labels = np.asarray(labels, dtype=object)
    names = np.array(sorted(set(groups.tolist())), dtype=object)
    n_parts = len(fractions) + 1
    if len(names) < n_parts:
        raise ValueError(f"{len(names)} group(s) cannot make {n_parts} held-out parts; need at least {n_parts}")
    counts = [max(1, int(round(f * len(names)))) for f in fractions]
    while sum(counts) > len(names) - 1:
        counts[int(np.argmax(counts))] -= 1
        if min(counts) < 1:
            raise ValueError(f"{len(names)} groups are too few for fractions {list(fractions)}")
    all_classes = set(labels.tolist())
    rng = np.random.default_rng(seed)
    best, best_cover = None, -1
    for _ in range(max(1, tries)):
        order = names[rng.permutation(len(names))]
        assign, start = {}, 0
        for p, n in enumerate(counts, start=1):
            for g in order[start:start + n]:
                assign[g] = p
            start += n
        part_of = np.array([assign.get(g, 0) for g in groups])
        cover = sum(len(set(labels[part_of == p].tolist()) & all_classes) for p in range(n_parts))
        if cover > best_cover:
            best, best_cover = part_of, cover
        if cover == n_parts * len(all_classes):
            break
    return [np.flatnonzero(best == p) for p in range(n_parts)]


def patch_hashes(patches: np.ndarray) -> np.ndarray:
    """A content hash per patch (first axis), to find exact copies of one cell across splits."""
    flat = np.ascontiguousarray(patches).reshape(len(patches), -1)
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=12).hexdigest() for row in flat], dtype=object)


# ---------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainSettings:
    """How a classifier is trained (the ``classify.train`` config section).

    Attributes
    ----------
    epochs : maximum passes over the training split (one pass = as many samples as training cells).
    minutes : wall-clock training budget (``None``: none); the learning-rate schedule runs on the
        larger of step and time progress, so a budgeted run still anneals to the end.
    batch_size, lr, weight_decay : AdamW settings; ``lr`` is the peak of a one-cycle schedule
        (linear warm-up over ``warmup`` of the run, then cosine decay to ``lr / 100``).
    label_smoothing : cross-entropy label smoothing.
    ema_decay : decay of the weight average evaluated and saved (0: the raw weights).
    patience : evaluations without a better validation balanced accuracy before stopping (0: never
        stop early; the final weights are kept).
    eval_every : evaluate on the validation split every this many epochs (and after the last).
    balanced : draw classes evenly in each epoch (sampling with replacement, weights 1 / class size).
    tta : dihedral transforms averaged at evaluation and inference (1, 2, 4 or 8).
    seed : seeds the initial weights, the sampling and the augmentations.
    """

    epochs: int = 30
    minutes: float | None = None
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup: float = 0.05
    label_smoothing: float = 0.1
    ema_decay: float = 0.998
    patience: int = 5
    eval_every: int = 1
    balanced: bool = True
    tta: int = 1
    seed: int = 0

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "TrainSettings":
        """Build from a config mapping; unknown keys raise ``ValueError`` naming them."""
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training key(s) {sorted(unknown)}; allowed: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


@dataclass
class FitResult:
    """What :func:`fit_classifier` returns: the chosen model (eval mode, on the CPU) and its history."""

    model: CellNet
    history: list[dict]
    epochs: int
    seconds: float
    best_epoch: int
    stopped: str
    val_metrics: dict | None


def _to_unit_float(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Stored patches (uint8 / uint16 representing [0, 1], or float) as float32 in [0, 1]."""
    if isinstance(batch, np.ndarray) and batch.dtype == np.uint16:
        batch = batch.astype(np.int32)  # torch has limited uint16 support
    return to_unit_float(torch.as_tensor(batch))


def _lr_factor(progress: float, warmup: float) -> float:
    """One-cycle shape: linear warm-up to 1, then cosine decay to 0.01."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return 0.01 + 0.99 * progress / warmup
    t = (progress - warmup) / max(1e-9, 1 - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))


TTA_ORDER = (0, 4, 2, 6, 1, 5, 3, 7)  # identity, flip, 180, 180+flip, 90, ...


@torch.no_grad()
def predict_proba(model: torch.nn.Module, patches, device: DeviceChoice, batch_size: int = 256,
                   tta: int = 1, input_size: int | None = None) -> torch.Tensor:
    """Softmax probabilities (float32, on the CPU) of ``model`` for ``patches`` (N, C, H, W) as stored.

    With ``tta`` > 1 the probabilities are averaged over the first ``tta`` dihedral transforms of
    :data:`TTA_ORDER`; ``input_size`` centre-crops larger patches.
    """
    if tta not in (1, 2, 4, 8):
        raise ValueError(f"tta must be 1, 2, 4 or 8, got {tta}")
    # on the device and in the inputs' memory layout (no per-batch conversions); a no-op when already so
    model.eval().to(device.device, memory_format=torch.channels_last)
    out = []
    for start in range(0, len(patches), batch_size):
        x = _to_unit_float(patches[start:start + batch_size])
        if input_size and x.shape[-1] != input_size:
            x = centre_crop(x, input_size)
        x = x.to(device.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        p = 0
        for k in TTA_ORDER[:tta]:
            with device.autocast():
                logits = model(dihedral(x, k) if k else x)
            p = p + torch.softmax(logits.float(), 1)
        out.append((p / tta).cpu())
    return torch.cat(out) if out else torch.zeros((0, model.spec.n_classes))


def fit_classifier(
    x_train,
    y_train: np.ndarray,
    x_val,
    y_val: np.ndarray | None,
    spec: CellNetSpec,
    augment: AugmentConfig,
    settings: TrainSettings,
    device: DeviceChoice | None = None,
    classes: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> FitResult:
    """Train a :class:`CellNet` from scratch on in-memory patches.

    Parameters
    ----------
    x_train, x_val : patches (N, C, H, W), uint8 (or uint16 / float) as stored; numpy or torch. When
        ``augment.crop`` is set, training takes random crops of that size and validation the centre crop.
    y_train, y_val : class indices (int); ``x_val``/``y_val`` may be ``None`` (no early stopping).
    spec : the architecture; ``spec.n_classes`` must cover the labels.
    augment, settings : see :class:`hemoprofile.nn.augment.AugmentConfig` and :class:`TrainSettings`.
    device : from :func:`hemoprofile.nn.devices.pick_device` (default: ``auto``).
    progress : called with one line per evaluation.

    Returns
    -------
    FitResult with the model to keep (the EMA weights at the best validation epoch, or at the end).
    """
    progress = progress or (lambda msg: log.info(msg))
    device = device or pick_device("auto")
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    x_train = torch.as_tensor(x_train)
    y_train_t = torch.as_tensor(np.asarray(y_train, dtype=np.int64))
    n = len(y_train_t)
    if n == 0:
        raise ValueError("no training cells")
    if int(y_train_t.max()) >= spec.n_classes:
        raise ValueError(f"label {int(y_train_t.max())} out of range for {spec.n_classes} classes")
    input_size = augment.crop or x_train.shape[-1]
    model = build_model(spec)
    # per-channel input statistics from (up to 4096 of) the training patches, saved with the weights
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(settings.seed))[:4096]
    stats = _to_unit_float(x_train[sample]).transpose(0, 1).reshape(x_train.shape[1], -1)
    model.set_input_statistics(stats.mean(1), stats.std(1))
    model = model.to(device.device).to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    scaler = device.grad_scaler()
    ema = WeightEMA(model, settings.ema_decay) if settings.ema_decay > 0 else None
    counts = torch.bincount(y_train_t, minlength=spec.n_classes).float()
    sample_weight = (1.0 / counts.clamp_min(1))[y_train_t]
    steps_per_epoch = max(1, math.ceil(n / settings.batch_size))
    total_steps = settings.epochs * steps_per_epoch
    budget = settings.minutes * 60 if settings.minutes else None
    start = time.perf_counter()
    step, history = 0, []
    best_score, best_state, best_epoch, since_best = -1.0, None, 0, 0
    stopped, val_metrics = "epochs", None
    classes = list(classes) if classes is not None else [str(i) for i in range(spec.n_classes)]
    epoch = 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        if settings.balanced:
            order = torch.multinomial(sample_weight, n, replacement=True, generator=gen)
        else:
            order = torch.randperm(n, generator=gen)
        loss_sum, seen, t_epoch = 0.0, 0, time.perf_counter()
        out_of_time = False
        for b in range(steps_per_epoch):
            idx = order[b * settings.batch_size:(b + 1) * settings.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            elapsed = time.perf_counter() - start
            frac = max(step / total_steps, elapsed / budget if budget else 0.0)
            if frac >= 1.0:
                out_of_time = True
                break
            for group in optimiser.param_groups:
                group["lr"] = settings.lr * _lr_factor(frac, settings.warmup)
            xb = augment_batch(x_train[idx], augment, gen)
            xb = xb.to(device.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yb = y_train_t[idx].to(device.device)
            with device.autocast():
                loss = F.cross_entropy(model(xb).float(), yb, label_smoothing=settings.label_smoothing)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            if ema is not None:
                ema.update(model)
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
        record = {"epoch": epoch, "loss": loss_sum / max(seen, 1), "seconds": time.perf_counter() - t_epoch,
                  "lr": optimiser.param_groups[0]["lr"]}
        last = out_of_time or epoch == settings.epochs
        if x_val is not None and y_val is not None and len(y_val) and (epoch % settings.eval_every == 0 or last):
            eval_model = ema.model if ema is not None else model
            probs = predict_proba(eval_model, x_val, device, tta=settings.tta, input_size=input_size)
            val_metrics = classification_metrics(y_val, probs.argmax(1).numpy(), classes)
            record.update(val_accuracy=val_metrics["accuracy"], val_balanced_accuracy=val_metrics["balanced_accuracy"],
                          val_macro_f1=val_metrics["macro_f1"])
            score = val_metrics["balanced_accuracy"]
            if settings.patience > 0:
                if score > best_score:
                    best_score, best_epoch, since_best = score, epoch, 0
                    best_state = copy.deepcopy(eval_model.state_dict())
                else:
                    since_best += 1
        history.append(record)
        progress(
            f"epoch {epoch}: loss {record['loss']:.4f}, {record['seconds']:.1f} s"
            + (f", val acc {record['val_accuracy']:.4f}, bal acc {record['val_balanced_accuracy']:.4f}"
               if "val_accuracy" in record else "")
        )
        if out_of_time:
            stopped = "time budget"
            break
        if settings.patience > 0 and since_best >= settings.patience:
            stopped = "early stopping"
            break
    final = copy.deepcopy(ema.model if ema is not None else model)
    if best_state is not None:
        final.load_state_dict(best_state)
    else:
        best_epoch = epoch
    final = final.to("cpu").to(memory_format=torch.contiguous_format).eval()
    return FitResult(final, history, epoch, time.perf_counter() - start, best_epoch, stopped, val_metrics)


# ---------------------------------------------------------------------------------------------------
# Model files


def _checkpoint(model: CellNet, task: str, classes: Sequence[str], channels: Sequence[str], patch_size: int,
                input_size: int | None, metadata: Mapping | None) -> dict:
    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "kind": "flat",
        "task": str(task),
        "classes": [str(c) for c in classes],
        "channels": [str(c) for c in channels],
        "patch_size": int(patch_size),
        "input_size": int(input_size or patch_size),
        "spec": model.spec.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "metadata": json.loads(json.dumps(dict(metadata or {}), default=str)),
    }


def save_classifier(path: str | os.PathLike, model: CellNet, task: str, classes: Sequence[str],
                    channels: Sequence[str], patch_size: int, input_size: int | None = None,
                    metadata: Mapping | None = None, children: Mapping[str, dict] | None = None,
                    half_weights: bool = False) -> str:
    """Write a classifier file atomically and return its model id (:func:`model_id`).

    Parameters
    ----------
    model : the trained network (its spec is stored with the weights).
    task, classes : the task name and the class names in logit order.
    channels : input channel names in order (matched by name at inference).
    patch_size : the stored patch edge the model was trained from; ``input_size`` the network input
        edge (a centre crop of the patch when smaller).
    metadata : JSON-able provenance (training settings, metrics).
    children : hierarchical models only: lineage -> checkpoint dict (from :func:`classifier_checkpoint`).
    half_weights : store convolution and linear weights as float16 (half the file, for bundled models);
        they are loaded back into float32, the rounding moves logits by about 1e-3. Biases and
        batch-norm statistics stay float32.
    """
    ckpt = _checkpoint(model, task, classes, channels, patch_size, input_size, metadata)
    if half_weights:
        ckpt["state_dict"] = {k: v.half() if v.is_floating_point() and v.ndim > 1 else v
                              for k, v in ckpt["state_dict"].items()}
        ckpt["metadata"]["weights_dtype"] = "float16 (convolution and linear weights; loaded into float32)"
    if children:
        ckpt["kind"] = HIERARCHICAL
        ckpt["children"] = dict(children)
    with atomic_output(path) as tmp:
        torch.save(ckpt, tmp)
    return model_id(path)


def classifier_checkpoint(model: CellNet, task: str, classes: Sequence[str], channels: Sequence[str],
                          patch_size: int, input_size: int | None = None, metadata: Mapping | None = None) -> dict:
    """The dict :func:`save_classifier` writes, for nesting a sub-classifier in a hierarchical model."""
    return _checkpoint(model, task, classes, channels, patch_size, input_size, metadata)


@dataclass
class LoadedClassifier:
    """A classifier ready for inference: network(s), classes, channels, sizes and id."""

    task: str
    classes: list[str]
    channels: list[str]
    patch_size: int
    input_size: int
    model: CellNet
    model_id: str
    path: str
    metadata: dict = field(default_factory=dict)
    children: dict[str, "LoadedClassifier"] = field(default_factory=dict)

    @property
    def output_classes(self) -> list[str]:
        """The classes of the probabilities :func:`classifier_probabilities` returns (hierarchical: the leaves)."""
        if not self.children:
            return list(self.classes)
        return [c for lineage in self.classes for c in self.children[lineage].classes]


def _from_checkpoint(ckpt: dict, path: str, mid: str) -> LoadedClassifier:
    if ckpt.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a hemoprofile cell classifier (format {ckpt.get('format')!r})")
    if int(ckpt.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise ValueError(f"{path}: classifier format version {ckpt['format_version']} is newer than this code "
                         f"({MODEL_FORMAT_VERSION}); update hemoprofile")
    model = build_model(ckpt["spec"])
    # files written before the input standardisation existed lack its buffers; their defaults
    # (mean 0.5, std 1) are exactly what those models were trained with
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if unexpected or set(missing) - {"input_mean", "input_std"}:
        raise ValueError(f"{path}: weights do not match the stored architecture (missing {missing}, "
                         f"unexpected {unexpected})")
    model = fuse_batchnorm(model.eval())  # inference only: batch norms folded into the convolutions
    children = {k: _from_checkpoint(v, path, mid) for k, v in (ckpt.get("children") or {}).items()}
    return LoadedClassifier(ckpt["task"], list(ckpt["classes"]), list(ckpt["channels"]), int(ckpt["patch_size"]),
                            int(ckpt["input_size"]), model, mid, str(path), dict(ckpt.get("metadata") or {}), children)


def load_classifier(path: str | os.PathLike) -> LoadedClassifier:
    """Load a classifier file written by :func:`save_classifier` (no code is unpickled: ``weights_only``).

    Raises
    ------
    FileNotFoundError / ValueError naming the file when it is missing or not a classifier.
    """
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"classifier model file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a corrupt or foreign file
        raise ValueError(f"{path}: not a readable classifier file ({err})") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a hemoprofile cell classifier")
    return _from_checkpoint(ckpt, path, model_id(path))


@dataclass
class SlideInput:
    """One slide's inputs to classifier training: cells.parquet, patches.zarr and where labels come from.

    ``group`` is what the split holds out (the patient, else the slide). ``truth_labels`` (truth source)
    is the slide's ``truth_labels.zarr``; the cohort's ``truth_cells.parquet`` is passed once to
    :func:`load_training_cells`.
    """

    slide: str
    cells: str
    patches: str
    group: str | None = None
    truth_labels: str | None = None


def slide_raw_labels(item: SlideInput, cells: pd.DataFrame, label_source: str, *, label_column: str = "gate_label",
                     truth_cells: pd.DataFrame | None = None, label_table: pd.DataFrame | None = None) -> np.ndarray:
    """The raw label (cell type, gate label or collection label) of each cell of one slide, or ``None``."""
    if label_source == "truth":
        if item.truth_labels is None or truth_cells is None:
            raise ValueError(f"slide {item.slide}: label_source 'truth' needs truth_labels.zarr and truth_cells.parquet")
        return truth_cell_types(cells, item.truth_labels, truth_cells, item.slide)
    if label_source in ("column", "collection"):
        column = "label" if label_source == "collection" else label_column
        if column not in cells.columns:
            raise ValueError(f"{item.cells}: no label column {column!r} (label_source {label_source!r}); "
                             f"columns: {list(cells.columns)}")
        return np.array([v if isinstance(v, str) and v else None for v in cells[column]], dtype=object)
    if label_source == "table":
        if label_table is None:
            raise ValueError("label_source 'table' needs a labels table (classify.labels_table)")
        sub = label_table[label_table["slide"].astype(str) == item.slide]
        lookup = dict(zip(sub["cell_id"].to_numpy(np.int64), sub[label_column].astype(str)))
        return np.array([lookup.get(int(i)) for i in cells["cell_id"].to_numpy(np.int64)], dtype=object)
    raise ValueError(f"unknown label_source {label_source!r}; allowed: {', '.join(LABEL_SOURCES)}")


@dataclass
class TrainingCells:
    """Labelled cells gathered from slides: patches in memory plus their labels, groups and keys."""

    patches: np.ndarray
    labels: np.ndarray  # raw labels (cell type / gate label / collection label), object
    groups: np.ndarray  # patient or slide, object
    slides: np.ndarray
    cell_ids: np.ndarray
    channels: list[str]
    patch_size: int


def load_training_cells(items: Sequence[SlideInput], label_source: str, *, label_column: str = "gate_label",
                        truth_cells: str | os.PathLike | pd.DataFrame | None = None,
                        labels_table: str | os.PathLike | None = None, max_cells_per_label: int | None = None,
                        seed: int = 0, progress: Callable[[str], None] | None = None) -> TrainingCells:
    """Gather labelled cells of many slides into memory (at most ``max_cells_per_label`` per label and slide).

    The cap keeps rare classes (CTCs) whole while bounding memory for the common ones; which cells are
    kept is seeded. Unlabelled cells are skipped. All slides must share channel names and patch size.
    """
    progress = progress or (lambda m: log.info(m))
    if isinstance(truth_cells, (str, os.PathLike)):
        truth_cells = read_cells(truth_cells, ["slide", "cell_id", "cell_type"])
    label_table = read_label_table(labels_table, label_column) if labels_table else None
    rng = np.random.default_rng(seed)
    parts, channels, size = [], None, None
    for item in items:
        array, names, attributes = open_patch_array(item.patches)
        # only the columns labels need: a real slide's table has millions of rows and dozens of columns
        import pyarrow.parquet as pq

        wanted = ["slide", "cell_id", "y", "x", "label", label_column, "patient", "group"]
        available = pq.read_schema(item.cells).names if os.path.exists(item.cells) else wanted
        cells = read_cells(item.cells, [c for c in dict.fromkeys(wanted) if c in available])
        channels, size = check_slide_patches(item, cells, array, attributes, names, channels, size)
        raw = slide_raw_labels(item, cells, label_source, label_column=label_column, truth_cells=truth_cells,
                               label_table=label_table)
        keep = []
        for value in sorted({v for v in raw if v is not None}):
            idx = np.flatnonzero(raw == value)
            if max_cells_per_label and len(idx) > max_cells_per_label:
                idx = np.sort(rng.choice(idx, max_cells_per_label, replace=False))
            keep.append(idx)
        rows = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
        # a collection's labels.csv may name the patient (or another group) of each cell: hold those out
        group_column = next((c for c in ("patient", "group") if c in cells.columns), None)
        groups = (cells[group_column].astype(str).to_numpy(object)[rows] if group_column
                  else np.full(len(rows), item.group or item.slide, object))
        parts.append((read_patch_rows(array, rows), raw[rows], groups,
                      np.full(len(rows), item.slide, object), cells["cell_id"].to_numpy(np.int64)[rows]))
        progress(f"{item.slide}: {len(rows)} labelled cells of {len(cells)}")
    if not parts:
        raise ValueError("no slides given for training")
    cat = [np.concatenate([p[i] for p in parts]) for i in range(5)]
    return TrainingCells(cat[0], cat[1], cat[2], cat[3], cat[4], list(channels), int(size))


# ---------------------------------------------------------------------------------------------------
# Settings of the ``classify`` config section

#: Defaults of the ``classify`` config section (the schema in config/schemas carries the same).
DEFAULT_CLASSIFY: dict = {
    "tasks": ["lineage", "immune5", "ctc"],
    "label_source": "truth",
    "label_column": "gate_label",
    "labels_table": "",
    "models": {},
    "max_cells_per_label": 3000,
    "device": "auto",
    "mixed_precision": True,
    "batch_size": 1024,
    "tta": 1,
    "model": {"widths": [16, 32, 64, 128], "blocks": [1, 1, 1, 1], "dropout": 0.1, "stem_stride": None},
    "train": {"epochs": 40, "minutes": 3.0, "batch_size": 64, "lr": 3e-3, "weight_decay": 5e-4, "warmup": 0.05,
              "label_smoothing": 0.05, "ema_decay": 0.99, "patience": 8, "eval_every": 1, "balanced": True},
    "augment": {"dihedral": True, "crop": None, "gain": 0.1, "offset": 0.03, "gamma": 0.0, "blur_sigma": 0.7,
                "blur_p": 0.3, "channel_dropout": 0.1},
    "split": {"val_fraction": 0.15, "test_fraction": 0.25},
}


def resolve_classify(cfg: Mapping | None) -> dict:
    """Complete ``classify`` settings: :data:`DEFAULT_CLASSIFY` overridden (one level deep) by ``cfg``.

    Raises
    ------
    ValueError naming an unknown key, task or label source.
    """
    out = copy.deepcopy(DEFAULT_CLASSIFY)
    for key, value in (cfg or {}).items():
        if key not in out:
            raise ValueError(f"classify: unknown key {key!r}; allowed: {', '.join(sorted(out))}")
        if isinstance(out[key], dict) and key != "models" and isinstance(value, Mapping):
            unknown = set(value) - set(out[key])
            if unknown:
                raise ValueError(f"classify.{key}: unknown key(s) {sorted(unknown)}; allowed: {sorted(out[key])}")
            out[key].update(value)
        else:
            out[key] = copy.deepcopy(value)
    for task in out["tasks"]:
        if task not in TASK_NAMES:
            raise ValueError(f"classify.tasks: unknown task {task!r}; known: {', '.join(TASK_NAMES)}")
    if out["label_source"] not in LABEL_SOURCES:
        raise ValueError(f"classify.label_source {out['label_source']!r} not one of {LABEL_SOURCES}")
    return out


# ---------------------------------------------------------------------------------------------------
# Training a task end to end


def make_split(labels: np.ndarray, groups: np.ndarray | None, val_fraction: float, test_fraction: float,
               seed: int, patches: np.ndarray | None = None) -> tuple[list[np.ndarray], dict]:
    """Train / validation / test indices, held out by group where there are at least 3 groups.

    With 3+ groups every part is whole groups (:func:`group_split`); with 2 the test part is one group
    and validation is stratified within the other; with 1 (a collection) all parts are stratified by
    class and cells whose patch is an exact copy of a training patch are dropped from validation and
    test (:func:`patch_hashes`). Returns ``(parts, description)``.
    """
    n_groups = len(set(groups.tolist())) if groups is not None else 0
    info: dict = {}
    if n_groups >= 3:
        parts = group_split(groups, labels, [val_fraction, test_fraction], seed)
        info["held_out_by"] = "group"
    elif n_groups == 2:
        rest, test = group_split(groups, labels, [0.5], seed)
        tr, va = stratified_split(labels[rest], [val_fraction / (1 - test_fraction)], seed)
        parts = [rest[tr], rest[va], test]
        info["held_out_by"] = "group (test); cells (validation)"
    else:
        parts = stratified_split(labels, [val_fraction, test_fraction], seed)
        info["held_out_by"] = "cells (stratified; no slide/patient to hold out)"
        if patches is not None:
            train_hashes = set(patch_hashes(patches[parts[0]]).tolist())
            for p in (1, 2):
                dup = np.array([h in train_hashes for h in patch_hashes(patches[parts[p]])], bool)
                info[f"duplicates_dropped_{'validation' if p == 1 else 'test'}"] = int(dup.sum())
                parts[p] = parts[p][~dup]
    if groups is not None:
        for name, idx in zip(("train", "validation", "test"), parts):
            info[f"{name}_groups"] = sorted(set(groups[idx].tolist()))
    for name, idx in zip(("train", "validation", "test"), parts):
        info[f"n_{name}"] = int(len(idx))
    return parts, info


def _spec_for(cfg: dict, n_channels: int, n_classes: int, input_size: int) -> CellNetSpec:
    m = cfg["model"]
    return CellNetSpec(in_channels=n_channels, n_classes=n_classes, patch_size=input_size,
                       widths=tuple(m["widths"]), blocks=tuple(m["blocks"]), dropout=float(m["dropout"]),
                       stem_stride=m.get("stem_stride"))


def _fit_flat(patches, labels, classes, parts, cfg, seed, device, progress, name) -> tuple[FitResult, dict]:
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index.get(v, -1) for v in labels], np.int64)  # -1: outside these classes, in no part
    train, val, test = parts
    augment = AugmentConfig.from_dict(cfg["augment"])
    input_size = augment.crop or patches.shape[-1]
    settings = TrainSettings.from_dict({**cfg["train"], "tta": int(cfg["tta"]), "seed": int(seed)})
    spec = _spec_for(cfg, patches.shape[1], len(classes), input_size)
    counts = np.bincount(y[train], minlength=len(classes))
    if (counts == 0).any():
        progress(f"{name}: WARNING no training cells of class(es) "
                 f"{[c for c, k in zip(classes, counts) if k == 0]}")
    progress(f"{name}: training {count_parameters(build_model(spec)) / 1e6:.2f} M parameters on {len(train)} cells "
             f"({dict(zip(classes, counts.tolist()))}), validation {len(val)}, test {len(test)}; {device.description}")
    result = fit_classifier(patches[train], y[train], patches[val] if len(val) else None, y[val] if len(val) else None,
                            spec, augment, settings, device, classes, lambda m: progress(f"{name}: {m}"))
    return result, {"train_counts": dict(zip(classes, counts.tolist()))}


def train_task(data: TrainingCells, task: str, cfg: Mapping, seed: int = 0, device: DeviceChoice | None = None,
               progress: Callable[[str], None] | None = None) -> tuple[dict, dict]:
    """Train a classifier for ``task`` on gathered cells; return ``(checkpoint, metrics)``.

    The checkpoint is the dict :func:`save_classifier` writes; metrics hold the held-out test split's
    accuracy, balanced accuracy, macro F1, per-class precision/recall and confusion matrix, the
    validation split's too, the split and the training history.
    """
    progress = progress or (lambda m: log.info(m))
    cfg = resolve_classify(cfg)
    device = device or pick_device(cfg["device"], bool(cfg["mixed_precision"]))
    mapped = map_labels(data.labels, task)
    keep = np.flatnonzero(mapped != None)  # noqa: E711  (object array: elementwise None test)
    if len(keep) == 0:
        raise ValueError(f"task {task}: none of the labels {sorted(set(map(str, data.labels)))[:10]} belongs to it")
    labels, patches, groups = mapped[keep], data.patches[keep], data.groups[keep]
    classes = task_classes(task, labels) if task == COLLECTION else task_classes(task)
    parts, split_info = make_split(labels, groups, cfg["split"]["val_fraction"], cfg["split"]["test_fraction"],
                                   seed, patches)
    progress(f"{task}: split {split_info}")
    augment = AugmentConfig.from_dict(cfg["augment"])
    input_size = augment.crop or data.patch_size
    meta = {"task": task, "label_source": cfg["label_source"], "settings": cfg, "seed": seed, "split": split_info,
            "device": device.description, "package": _package_version()}
    tta = int(cfg["tta"])
    start = time.perf_counter()
    if task != HIERARCHICAL:
        result, extra = _fit_flat(patches, labels, classes, parts, cfg, seed, device, progress, task)
        probs = {p: predict_proba(result.model, patches[idx], device, 512, tta, input_size).numpy()
                 for p, idx in (("validation", parts[1]), ("test", parts[2]))}
        ckpt = classifier_checkpoint(result.model, task, classes, data.channels, data.patch_size, input_size, meta)
        training = {"epochs": result.epochs, "best_epoch": result.best_epoch, "stopped": result.stopped,
                    "seconds": result.seconds, "history": result.history, **extra}
    else:
        lineage_of = np.array([LINEAGE_OF[v] for v in labels], dtype=object)
        lineages = task_classes("lineage")
        parent, extra = _fit_flat(patches, lineage_of, lineages, parts, cfg, seed, device, progress, "hierarchical/lineage")
        children, training = {}, {"lineage": {"epochs": parent.epochs, "stopped": parent.stopped,
                                              "seconds": parent.seconds, **extra}}
        for k, lineage in enumerate(lineages):
            sub_classes = [c for c in LEUKOCYTE_TYPES if LINEAGE_OF[c] == lineage]
            sub_parts = [idx[lineage_of[idx] == lineage] for idx in parts]
            child, extra = _fit_flat(patches, labels, sub_classes, sub_parts, cfg, seed + 1 + k, device, progress,
                                     f"hierarchical/{lineage}")
            children[lineage] = classifier_checkpoint(child.model, "immune6", sub_classes, data.channels,
                                                      data.patch_size, input_size, meta)
            training[lineage] = {"epochs": child.epochs, "stopped": child.stopped, "seconds": child.seconds, **extra}
        ckpt = classifier_checkpoint(parent.model, "lineage", lineages, data.channels, data.patch_size, input_size, meta)
        ckpt["kind"], ckpt["task"], ckpt["children"] = HIERARCHICAL, HIERARCHICAL, children
        loaded = _from_checkpoint(ckpt, "<in memory>", "")
        probs = {p: classifier_probabilities(loaded, patches[idx], device, 512, tta) for p, idx in
                 (("validation", parts[1]), ("test", parts[2]))}
    metrics = {"task": task, "classes": classes, "split": split_info, "training": training,
               "seconds": time.perf_counter() - start}
    index = {c: i for i, c in enumerate(classes)}
    for part, idx in (("validation", parts[1]), ("test", parts[2])):
        y_true = np.array([index[v] for v in labels[idx]], np.int64)
        metrics[part] = classification_metrics(y_true, probs[part].argmax(1) if len(idx) else y_true, classes)
    if task == HIERARCHICAL:  # also score the first level on its own
        lin_index = {c: i for i, c in enumerate(task_classes("lineage"))}
        y_true = np.array([lin_index[LINEAGE_OF[v]] for v in labels[parts[2]]], np.int64)
        y_pred = np.array([lin_index[LINEAGE_OF[classes[i]]] for i in probs["test"].argmax(1)], np.int64)
        metrics["test_lineage"] = classification_metrics(y_true, y_pred, task_classes("lineage"))
    test = metrics["test"]
    progress(f"{task}: test accuracy {test['accuracy']:.4f}, balanced {test['balanced_accuracy']:.4f}, "
             f"macro F1 {test['macro_f1']:.4f} on {test['n']} held-out cells")
    return ckpt, metrics


def _package_version() -> str:
    import hemoprofile

    return hemoprofile.__version__


def write_classifier(ckpt: dict, metrics: dict, out_model: str | os.PathLike, out_metrics: str | os.PathLike) -> str:
    """Write a checkpoint and its metrics JSON atomically; the metrics get the model id. Returns the id."""
    with atomic_output(out_model) as tmp:
        torch.save(ckpt, tmp)
    mid = model_id(out_model)
    metrics = {**metrics, "model_id": mid, "model_file": os.path.basename(str(out_model))}
    with atomic_output(out_metrics) as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=2, default=_json_default))
    return mid


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def train_classifier(items: Sequence[SlideInput], task: str, out_model: str | os.PathLike,
                     out_metrics: str | os.PathLike, classify_cfg: Mapping | None = None, seed: int = 0,
                     truth_cells: str | os.PathLike | None = None, threads: int | None = None,
                     progress: Callable[[str], None] | None = None) -> dict:
    """The ``train_classifier`` stage: gather labelled cells of all slides, train ``task``, write model + metrics.

    Parameters
    ----------
    items : one :class:`SlideInput` per slide (cells.parquet, patches.zarr, group, truth labels).
    task : a name of :data:`TASK_NAMES`.
    out_model, out_metrics : ``results/models/classifier_<task>.pt`` and ``.metrics.json``.
    classify_cfg : the ``classify`` config section.
    seed : the workflow seed (initial weights, sampling, augmentation and the split).
    truth_cells : the cohort's truth_cells.parquet (``label_source: truth``).
    threads : CPU threads for torch.

    Returns
    -------
    The metrics dict written to ``out_metrics`` (with ``model_id``).

    Example
    -------
    >>> train_classifier([SlideInput("S1", "results/S1/cells.parquet", "results/S1/patches.zarr")],
    ...                  "lineage", "m.pt", "m.metrics.json", {"label_source": "column"})  # doctest: +SKIP
    """
    progress = progress or (lambda m: log.info(m))
    cfg = resolve_classify(classify_cfg)
    device = pick_device(cfg["device"], bool(cfg["mixed_precision"]), threads=threads)
    progress(f"device: {device.description}")
    data = load_training_cells(items, cfg["label_source"], label_column=cfg["label_column"], truth_cells=truth_cells,
                               labels_table=cfg["labels_table"] or None,
                               max_cells_per_label=cfg["max_cells_per_label"], seed=seed, progress=progress)
    ckpt, metrics = train_task(data, task, cfg, seed, device, progress)
    mid = write_classifier(ckpt, metrics, out_model, out_metrics)
    progress(f"wrote {out_model} (model id {mid}) and {out_metrics}")
    return {**metrics, "model_id": mid}


# ---------------------------------------------------------------------------------------------------
# Inference


def _prepare_input(x: torch.Tensor, index: list[int | None], input_size: int) -> torch.Tensor:
    """Reorder channels to the model's (a missing channel becomes zeros, as in channel dropout) and
    centre-crop or zero-pad to the model's input size."""
    if index != list(range(x.shape[1])):
        out = torch.zeros((x.shape[0], len(index), *x.shape[2:]), dtype=x.dtype)
        for i, j in enumerate(index):
            if j is not None:
                out[:, i] = x[:, j]
        x = out
    size = x.shape[-1]
    if size > input_size:
        x = centre_crop(x, input_size)
    elif size < input_size:
        lo = (input_size - size) // 2
        x = F.pad(x, (lo, input_size - size - lo, lo, input_size - size - lo))
    return x


def channel_index(model_channels: Sequence[str], patch_channels: Sequence[str], where: str = "") -> list[int | None]:
    """Position in ``patch_channels`` of each model channel (``None``: absent, fed as zeros).

    When no name matches but the counts agree (e.g. an RGB collection named differently), channels are
    taken by position, with a warning; when nothing matches otherwise, a ValueError names both lists.
    """
    names = list(patch_channels)
    index = [names.index(c) if c in names else None for c in model_channels]
    if all(i is None for i in index):
        if len(model_channels) == len(names):
            log.warning("%s: no channel names match the model's %s; using channels %s by position",
                        where, list(model_channels), names)
            return list(range(len(names)))
        raise ValueError(f"{where}: none of the model's channels {list(model_channels)} is among {names}")
    missing = [c for c, i in zip(model_channels, index) if i is None]
    if missing:
        log.warning("%s: channel(s) %s absent; the model sees them as zeros", where, missing)
    return index


@torch.no_grad()
def classifier_probabilities(clf: LoadedClassifier, patches, device: DeviceChoice, batch_size: int = 1024,
                             tta: int = 1, patch_channels: Sequence[str] | None = None,
                             index: list[int | None] | None = None) -> np.ndarray:
    """Class probabilities (N, len(clf.output_classes)) for patches (N, C, P, P) as stored.

    Channels are matched by name when ``patch_channels`` is given (or by a precomputed ``index`` from
    :func:`channel_index`), else taken in order. Hierarchical models give p(lineage) x p(type | lineage)
    for each leaf class.
    """
    if index is None:
        index = channel_index(clf.channels, patch_channels, clf.path) if patch_channels is not None else \
            list(range(len(clf.channels)))
    model = clf.model.to(device.device)
    children = {k: c.model.to(device.device) for k, c in clf.children.items()}
    out = []
    for start in range(0, len(patches), batch_size):
        x = _prepare_input(_to_unit_float(np.asarray(patches[start:start + batch_size])), index, clf.input_size)
        p = predict_proba(model, x, device, len(x) or 1, tta)
        if children:
            leaves = [p[:, k:k + 1] * predict_proba(children[lin], x, device, len(x) or 1, tta)
                      for k, lin in enumerate(clf.classes)]
            p = torch.cat(leaves, 1)
        out.append(p.numpy().astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, len(clf.output_classes)), np.float32)


def prediction_columns(clf: LoadedClassifier) -> list[str]:
    """Column names ``p_<task>_<class>`` of a classifier's probabilities."""
    return [f"p_{clf.task}_{c}" for c in clf.output_classes]


def classify_slide(patches_path: str | os.PathLike, cells_path: str | os.PathLike, model_paths: Sequence[str],
                   out_path: str | os.PathLike, device: str = "auto", mixed_precision: bool = True,
                   batch_size: int = 1024, tta: int = 1, threads: int | None = None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """The ``classify`` stage: predict every cell of a slide with each model; write predictions.parquet.

    Reads patches.zarr block by block (``batch_size`` cells), so memory is bounded whatever the slide
    size, and streams row groups to parquet. Columns: slide, cell_id, then per model ``p_<task>_<class>``
    (float32), ``pred_<task>`` (string, the most probable class) and ``model_<task>`` (model id).

    Returns
    -------
    dict with slide, n_cells, seconds, cells_per_second, device, model ids.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    progress = progress or (lambda m: log.info(m))
    dev = pick_device(device, mixed_precision, threads=threads)
    array, channels, attributes = open_patch_array(patches_path)
    cells = read_cells(cells_path, ["slide", "cell_id"])
    check_patches_match_cells(cells_path, cells, patches_path, array, attributes)
    models = [load_classifier(p) for p in model_paths]
    tasks = [m.task for m in models]
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"two models for the same task among {list(model_paths)}: {tasks}")
    # matched once per model (fails early on disjoint channels, warns once about absent ones)
    indices = [channel_index(m.channels, channels, f"{m.path} on {patches_path}") for m in models]
    fields = [pa.field("slide", pa.string()), pa.field("cell_id", pa.int64())]
    for m in models:
        fields += [pa.field(c, pa.float32()) for c in prediction_columns(m)]
        fields += [pa.field(f"pred_{m.task}", pa.string()), pa.field(f"model_{m.task}", pa.string())]
    schema = pa.schema(fields, metadata={"hemoprofile": json.dumps(
        {"models": {m.task: {"id": m.model_id, "file": m.path, "classes": m.output_classes} for m in models},
         "device": dev.description, "tta": tta, "patches": str(patches_path)})})
    n = len(cells)
    start, done, last_report = time.perf_counter(), 0, 0.0
    progress(f"{n} cells, {len(models)} model(s) {tasks}, {dev.description}")
    from concurrent.futures import ThreadPoolExecutor

    def read(lo):
        return np.asarray(array[lo:min(lo + batch_size, n)])

    # the next block is read and decompressed (Blosc releases the GIL) while this one is classified
    with atomic_output(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(read, 0) if n else None
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            block = pending.result()
            if hi < n:
                pending = pool.submit(read, hi)
            cols = {"slide": pa.array(cells["slide"].iloc[lo:hi].astype(str).tolist(), pa.string()),
                    "cell_id": pa.array(cells["cell_id"].iloc[lo:hi].to_numpy(np.int64))}
            for m, index in zip(models, indices):
                p = classifier_probabilities(m, block, dev, batch_size, tta, index=index)
                for j, name in enumerate(prediction_columns(m)):
                    cols[name] = pa.array(p[:, j])
                classes = np.array(m.output_classes, dtype=object)
                cols[f"pred_{m.task}"] = pa.array(classes[p.argmax(1)].tolist() if len(p) else [], pa.string())
                cols[f"model_{m.task}"] = pa.array([m.model_id] * (hi - lo), pa.string())
            writer.write_table(pa.table([cols[f.name] for f in schema], schema=schema))
            done = hi
            elapsed = time.perf_counter() - start
            if elapsed - last_report >= 10 or done == n:
                last_report = elapsed
                progress(f"{done}/{n} cells, {done / max(elapsed, 1e-9):.0f} cells/s")
        if n == 0:
            writer.write_table(schema.empty_table())
    seconds = time.perf_counter() - start
    rate = n / seconds if seconds > 0 else float("inf")
    progress(f"wrote {out_path}: {n} cells in {seconds:.1f} s ({rate:.0f} cells/s)")
    return {"slide": str(cells["slide"].iloc[0]) if n else None, "n_cells": n, "seconds": seconds,
            "cells_per_second": rate, "device": dev.description, "models": {m.task: m.model_id for m in models}}


# ---------------------------------------------------------------------------------------------------
# Command line: single-cell collections (a folder in the PBC layout)

#: Defaults of ``hemoprofile train-classifier`` on a collection of RGB crops (bench/pbc.py measures them).
