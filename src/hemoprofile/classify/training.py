"""Training: a :class:`~hemoprofile.nn.cnn.CellNet` fitted on in-memory patches (:func:`fit_classifier`),
a task trained end to end on gathered cells (:func:`train_task`; ``hierarchical``: a lineage model, then
one sub-classifier per lineage), and the ``train_classifier`` stage (:func:`train_classifier`).

Training is seeded, samples classes evenly, stops early on the validation split's balanced accuracy,
and evaluates an exponential moving average of the weights. Cells outside a task (CTCs for the
leukocyte tasks, unlabelled cells) are left out of its training.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

import hemoprofile
from hemoprofile.classify.checkpoints import classifier_checkpoint, from_checkpoint, write_classifier
from hemoprofile.classify.inference import classifier_probabilities, predict_proba
from hemoprofile.classify.labels import SlideInput, TrainingCells, load_training_cells
from hemoprofile.classify.metrics import classification_metrics
from hemoprofile.classify.settings import resolve_classify
from hemoprofile.classify.splits import make_split
from hemoprofile.nn.augment import AugmentConfig, augment_batch, to_unit_float
from hemoprofile.nn.cnn import CellNet, CellNetSpec, WeightEMA, build_model, count_parameters
from hemoprofile.nn.devices import DeviceChoice, pick_device
from hemoprofile.nn.settings import settings_from_mapping
from hemoprofile.vocabulary import COLLECTION, HIERARCHICAL, LEUKOCYTE_TYPES, LINEAGE_OF, map_labels, task_classes

log = logging.getLogger(__name__)


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
        return settings_from_mapping(cls, d, "training")


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


def _lr_factor(progress: float, warmup: float) -> float:
    """One-cycle shape: linear warm-up to 1, then cosine decay to 0.01."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return 0.01 + 0.99 * progress / warmup
    t = (progress - warmup) / max(1e-9, 1 - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))


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
    stats = to_unit_float(x_train[sample]).transpose(0, 1).reshape(x_train.shape[1], -1)
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


def spec_from_config(cfg: dict, n_channels: int, n_classes: int, input_size: int) -> CellNetSpec:
    """The CellNet a classifier of the ``classify`` section ``cfg`` is trained as (``cfg["model"]``)."""
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
    spec = spec_from_config(cfg, patches.shape[1], len(classes), input_size)
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

    The checkpoint is the dict :func:`~hemoprofile.classify.checkpoints.save_classifier` writes;
    metrics hold the held-out test split's accuracy, balanced accuracy, macro F1, per-class
    precision/recall and confusion matrix, the validation split's too, the split and the training
    history.
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
            "device": device.description, "package": hemoprofile.__version__}
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
        loaded = from_checkpoint(ckpt, "<in memory>", "")
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


def train_classifier(items: Sequence[SlideInput], task: str, out_model: str | os.PathLike,
                     out_metrics: str | os.PathLike, classify_cfg: Mapping | None = None, seed: int = 0,
                     truth_cells: str | os.PathLike | None = None, threads: int | None = None,
                     progress: Callable[[str], None] | None = None) -> dict:
    """The ``train_classifier`` stage: gather labelled cells of all slides, train ``task``, write model + metrics.

    Parameters
    ----------
    items : one :class:`~hemoprofile.classify.labels.SlideInput` per slide (cells.parquet, patches.zarr,
        group, truth labels).
    task : a name of :data:`~hemoprofile.vocabulary.TASK_NAMES`.
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
