"""Train the project's own Cellpose segmentation model (offline, from random weights or fine-tuning).

The workflow must segment with no network, so it bundles a Cellpose 3 network that its own code trains
on DSB 2018 nuclei and synthetic HDSCA-like slides (:mod:`hemoprofile.segment.training.data`), prepared
by the pipeline's one input preparation (:func:`hemoprofile.segment.input.cellpose_input`); the
preparation used is recorded in the model's sidecar and metrics (``input_preparation``).

Object size: Cellpose rescales each training image so that its median object diameter becomes the
net's ``diam_mean``. At inference the diameter of each image must therefore be known; the factor of the
classical estimate (:func:`hemoprofile.segment.diameter.estimate_input_diameter`) is fitted on the
training images and goes into the sidecar.

Training (:func:`train_segmenter`) is either ``cellpose.train.train_seg`` itself (a step-bound run) or,
with a time budget, a loop built from train_seg's own batch, augmentation and loss functions whose
learning rate anneals by the clock, so a CPU run of fixed length ends with a finished model and
leaves checkpoints on the way. The last checkpoints are scored on the validation sets
(:mod:`hemoprofile.segment.training.evaluate`) and the best is saved as fp16 + sidecar
(:func:`hemoprofile.segment.cellpose_model.save_model_fp16`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from hemoprofile.config import section_defaults
from hemoprofile.models import is_bundled, resolve_model
from hemoprofile.segment.cellpose_model import (
    build_net,
    load_net,
    save_model_fp16,
    sidecar_path,
)
from hemoprofile.segment.diameter import fit_diameter_factor, label_diameter
from hemoprofile.segment.input import input_preparation
from hemoprofile.segment.training.data import prepare_training_data
from hemoprofile.segment.training.evaluate import (
    evaluate_segmenter,
    load_trained_segmenter,
)

log = logging.getLogger(__name__)

#: Version of the training procedure; the workflow rule passes it as a param so a change retrains.
#: 2: inputs prepared by hemoprofile.segment.input.cellpose_input (the pipeline's map, with the marker floor).
TRAINING_VERSION = 2


@dataclass
class TrainConfig:
    """Everything that shapes a training run (recorded in the sidecar and metrics).

    Build one with :meth:`from_settings`. The run stops at whichever comes first of ``steps``
    optimisation steps and ``time_budget_min`` minutes (measured from the start of
    :func:`train_segmenter`, data preparation included). Without a
    time budget the run is ``cellpose.train.train_seg`` itself (``ceil(steps * batch_size /
    images_per_epoch)`` epochs, its own learning-rate schedule); with one, a loop that reuses
    train_seg's batch, augmentation and loss functions but schedules the learning rate by progress
    (linear warm-up, constant, cosine decay over the last ``decay_fraction``) so that a run cut by
    the clock still ends annealed. Bit-identical reruns need a fixed ``steps`` and no time budget
    (a clock-bound run is reproducible up to where it stopped).
    """

    nbase: list
    diam_mean: float
    bsize: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    steps: int | None
    time_budget_min: float | None
    images_per_epoch: int
    warmup_steps: int
    decay_fraction: float
    checkpoint_minutes: float
    synthetic_weight: float
    scale_range: float
    seed: int
    threads: int
    init_model: str | None

    @classmethod
    def from_settings(cls, params: Mapping | None = None, **overrides) -> TrainConfig:
        """The run's fields from the ``train_segmenter`` config section: the schema's defaults, then
        ``params``, then ``overrides``. A None for a field that cannot be null keeps the default; keys
        that are not fields (``dsb_dir``, ...) are ignored.

        Example
        -------
        >>> cfg = TrainConfig.from_settings({"steps": 10, "dsb_dir": "x"}, time_budget_min=None)
        >>> cfg.steps, cfg.time_budget_min, cfg.nbase
        (10, None, [2, 16, 32, 64, 128])
        """
        values = {name: None for name in NULLABLE_FIELDS}  # the schema's null defaults are not filled in
        values.update(section_defaults("train_segmenter"))
        for source in (params or {}, overrides):
            values.update({k: v for k, v in source.items() if v is not None or k in NULLABLE_FIELDS})
        return cls(**{f.name: values[f.name] for f in fields(cls)})


#: TrainConfig fields for which null means something (no step bound, no time budget, from scratch).
NULLABLE_FIELDS = ("steps", "time_budget_min", "init_model")


def seconds_per_batch(cfg: TrainConfig, n_batches: int = 6) -> float:
    """Measure one optimisation step's seconds (forward, loss, backward, AdamW) at the config's sizes."""
    import torch
    from cellpose import train as cp_train

    net = build_net(cfg.nbase, cfg.diam_mean)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((cfg.batch_size, cfg.nbase[0], cfg.bsize, cfg.bsize), dtype=np.float32))
    lbl = np.zeros((cfg.batch_size, 3, cfg.bsize, cfg.bsize), np.float32)
    lbl[:, 0] = rng.random((cfg.batch_size, cfg.bsize, cfg.bsize)) > 0.5
    times = []
    net.train()
    for _ in range(n_batches):
        t0 = time.perf_counter()
        loss = cp_train._loss_fn_seg(lbl, net(x)[0], torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def _train_probs(n_dsb: int, n_syn: int, dsb_images: Sequence[np.ndarray], synthetic_weight: float) -> np.ndarray:
    """Sampling probability per training image: DSB by sqrt(area), the synthetic share fixed."""
    if n_syn == 0:
        synthetic_weight = 0.0
    if n_dsb == 0:
        synthetic_weight = 1.0
    area = np.array([im.shape[-1] * im.shape[-2] for im in dsb_images], float) ** 0.5
    dsb = (1 - synthetic_weight) * area / area.sum() if n_dsb else np.zeros(0)
    syn = np.full(n_syn, synthetic_weight / max(1, n_syn))
    return np.concatenate([dsb, syn])


def learning_rate_at(progress: float, step: int, cfg: TrainConfig) -> float:
    """Learning rate at a point of a clock- or step-bound run (progress in [0, 1])."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    start = 1.0 - cfg.decay_fraction
    if progress <= start or cfg.decay_fraction <= 0:
        return cfg.learning_rate * warm
    t = min(1.0, (progress - start) / cfg.decay_fraction)
    return cfg.learning_rate * warm * max(0.01, 0.5 * (1 + math.cos(math.pi * t)))


def _train_loop(net, images, flows, probs, diams, cfg: TrainConfig, t_start: float, ckpt_dir: Path) -> dict:
    """Clock-bound training loop (train_seg's batch, augmentation and loss; progress-based schedule)."""
    import torch
    from cellpose import train as cp_train
    from cellpose import transforms

    device = torch.device("cpu")
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    np.random.seed(cfg.seed)  # transforms.random_rotate_and_resize draws from numpy's global generator
    budget_s = None if cfg.time_budget_min is None else cfg.time_budget_min * 60.0
    max_steps = cfg.steps if cfg.steps is not None else 10**9
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last_ckpt, t_loop, step, losses, loss_trace = time.time(), time.time(), 0, [], []
    net.train()
    while True:
        elapsed = time.time() - t_start
        progress = max(step / max_steps, elapsed / budget_s if budget_s else 0.0)
        if progress >= 1.0:
            break
        lr = learning_rate_at(progress, step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inds = rng.choice(len(images), size=cfg.batch_size, p=probs)
        imgs, lbls = cp_train._get_batch(inds, data=images, labels=flows)
        rsc = diams[inds] / net.diam_mean.item()
        imgi, lbl = transforms.random_rotate_and_resize(imgs, Y=lbls, rescale=rsc, scale_range=cfg.scale_range,
                                                        xy=(cfg.bsize, cfg.bsize))[:2]
        y = net(torch.from_numpy(imgi).to(device))[0]
        loss = cp_train._loss_fn_seg(lbl, y, device)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            loss_trace.append((step, float(np.mean(losses[-50:]))))
            log.info("step %d  loss %.4f  lr %.5f  %.2f s/step  progress %.2f", step, loss_trace[-1][1], lr,
                     (time.time() - t_loop) / step, progress)
        if time.time() - last_ckpt >= cfg.checkpoint_minutes * 60:
            torch.save(net.state_dict(), ckpt_dir / f"step_{step:06d}.pt")
            last_ckpt = time.time()
    torch.save(net.state_dict(), ckpt_dir / f"step_{step:06d}.pt")
    return {"steps": step, "train_seconds": time.time() - t_loop, "loss_trace": loss_trace,
            "final_train_loss": float(np.mean(losses[-50:])) if losses else float("nan")}


def _train_with_train_seg(net, images, flows, probs, cfg: TrainConfig, work_dir: Path, ckpt_dir: Path) -> dict:
    """Step-bound training by ``cellpose.train.train_seg`` itself (its schedule)."""
    import shutil

    from cellpose import train as cp_train

    batches_per_epoch = math.ceil(cfg.images_per_epoch / cfg.batch_size)
    n_epochs = max(1, math.ceil((cfg.steps or 100) / batches_per_epoch))
    t0 = time.time()
    final, train_losses, _ = cp_train.train_seg(
        net, train_data=list(images), train_labels=list(flows), train_probs=probs, batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, n_epochs=n_epochs, channel_axis=0,
        normalize=False, save_path=str(work_dir), save_every=max(1, n_epochs), nimg_per_epoch=cfg.images_per_epoch,
        rescale=True, scale_range=cfg.scale_range, bsize=cfg.bsize, min_train_masks=1, model_name="train_seg_final")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    steps = n_epochs * batches_per_epoch
    shutil.move(str(final), ckpt_dir / f"step_{steps:06d}.pt")
    return {"steps": steps, "n_epochs": n_epochs, "train_seconds": time.time() - t0,
            "final_train_loss": float(np.mean(train_losses[-10:]))}


def _init_from(net, cfg: TrainConfig) -> None:
    """Load ``cfg.init_model``'s weights into ``net`` (fine-tuning); its widths and diam_mean must match."""
    # a bundled model (bundled:hemoprofile_cellpose) is found in the installed package
    path = resolve_model(cfg.init_model, "train_segmenter.init_model") if is_bundled(cfg.init_model) else Path(cfg.init_model)
    if not path.exists() or not sidecar_path(path).exists():
        raise FileNotFoundError(f"train_segmenter.init_model: {path} or its sidecar {sidecar_path(path).name} "
                                f"does not exist")
    start, meta = load_net(path)
    if list(meta["nbase"]) != list(cfg.nbase) or float(meta["diam_mean"]) != float(cfg.diam_mean):
        raise ValueError(f"train_segmenter.init_model {path} has nbase {meta['nbase']} and diam_mean "
                         f"{meta['diam_mean']}; set train_segmenter.nbase and diam_mean to those to fine-tune it")
    net.load_state_dict(start.state_dict())
    log.info("starting from the weights of %s (fine-tuning)", path)


def train_segmenter(train_images: Sequence[np.ndarray], train_labels: Sequence[np.ndarray], out_path: str | os.PathLike,
                    cfg: TrainConfig, n_dsb: int | None = None, val_sets: Mapping[str, tuple] | None = None,
                    work_dir: str | os.PathLike | None = None, metrics_path: str | os.PathLike | None = None,
                    extra_meta: Mapping | None = None, segment_cfg: Mapping | None = None) -> dict:
    """Train a Cellpose ``CPnet`` from random weights (or from ``cfg.init_model``'s: fine-tuning); save it
    as fp16 + sidecar, and its metrics.

    Parameters
    ----------
    train_images, train_labels : (2, row, column) float32 inputs and int label images. The first
        ``n_dsb`` are DSB images (sampled by sqrt(area)); the rest synthetic frames, drawn with total
        probability ``cfg.synthetic_weight``. Each image is rescaled in training so that its median
        object diameter becomes ``cfg.diam_mean`` (Cellpose's ``rescale=True``), then randomly
        rotated, flipped, scaled by ``1 +- scale_range/2`` and cropped to ``bsize``.
    out_path : model file to write (``.pt``; sidecar ``.pt.json`` beside it).
    cfg : :class:`TrainConfig` (steps and/or a time budget; see there for which engine runs).
    val_sets : name -> (images, labels) on which the final checkpoint is scored
        (:func:`finalise_segmenter` can compare several checkpoints and keep the best).
    work_dir : where fp32 checkpoints go (default: ``<out_path stem>_work`` beside ``out_path``).
    metrics_path : JSON file receiving the training record and validation scores.
    segment_cfg : the ``segment`` section the inputs were prepared with
        (:func:`hemoprofile.segment.input.cellpose_input`); recorded as ``input_preparation``.

    Returns
    -------
    dict: the training record (config, steps, seconds per step, validation scores, sidecar).
    """
    import torch
    from cellpose import dynamics

    t_start = time.time()
    torch.set_num_threads(int(cfg.threads))
    out_path = Path(out_path)
    work_dir = Path(work_dir) if work_dir is not None else out_path.parent / (out_path.stem + "_work")
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = work_dir / "checkpoints"
    if ckpt_dir.exists():
        for old in ckpt_dir.glob("step_*.pt"):
            old.unlink()
    n_dsb = len(train_images) if n_dsb is None else int(n_dsb)
    images = [np.ascontiguousarray(im, dtype=np.float32) for im in train_images]

    factor = fit_diameter_factor(images, train_labels)
    log.info("diameter estimator factor %.3f (true / classical) fitted on %d training images", factor, len(images))
    t0 = time.time()
    flows = dynamics.labels_to_flows([np.asarray(l) for l in train_labels], device=torch.device("cpu"))
    log.info("flows of %d training images in %.0f s", len(flows), time.time() - t0)
    diams = np.maximum(np.array([label_diameter(l) for l in train_labels]), 5.0)
    probs = _train_probs(n_dsb, len(images) - n_dsb, images[:n_dsb], cfg.synthetic_weight)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    net = build_net(cfg.nbase, cfg.diam_mean)
    if cfg.init_model:
        _init_from(net, cfg)
    net.diam_labels.data = torch.Tensor([float(diams.mean())])
    if cfg.time_budget_min is None:
        record = _train_with_train_seg(net, images, flows, probs, cfg, work_dir, ckpt_dir)
        record["engine"] = "cellpose.train.train_seg"
    else:
        record = _train_loop(net, images, flows, probs, diams, cfg, t_start, ckpt_dir)
        record["engine"] = "clock-bound loop (train_seg batch/augmentation/loss)"
    record["seconds_per_step"] = record["train_seconds"] / max(1, record["steps"])
    log.info("training done: %d steps in %.0f s (%.3f s per step)", record["steps"], record["train_seconds"],
             record["seconds_per_step"])
    preparation = input_preparation(segment_cfg)
    record.update({"n_train_images": len(images), "n_dsb": n_dsb, "n_synthetic": len(images) - n_dsb,
                   "diameter_factor": factor, "input_preparation": preparation, "train_config": dict(cfg.__dict__)})
    meta = {
        "trained_by": "hemoprofile.segment.training.train.train_segmenter",
        "input_preparation": preparation,
        "diameter_estimator": {"method": "otsu_inscribed_radius", "factor": factor},
        "train_config": dict(cfg.__dict__),
        **dict(extra_meta or {}),
    }
    return finalise_segmenter(ckpt_dir, out_path, meta, record, val_sets, metrics_path)


def finalise_segmenter(ckpt_dir: str | os.PathLike, out_path: str | os.PathLike, meta: Mapping, record: dict,
                       val_sets: Mapping[str, tuple] | None = None, metrics_path: str | os.PathLike | None = None,
                       n_candidates: int = 1) -> dict:
    """Score the last checkpoints on the validation sets, save the best as fp16 + sidecar, write metrics."""
    import torch

    ckpt_dir, out_path = Path(ckpt_dir), Path(out_path)
    candidates = sorted(ckpt_dir.glob("step_*.pt"))[-n_candidates:] if val_sets else sorted(ckpt_dir.glob("step_*.pt"))[-1:]
    if not candidates:
        raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
    net = build_net(meta.get("nbase") or record["train_config"]["nbase"],
                    meta.get("diam_mean") or record["train_config"]["diam_mean"])
    best, best_score, scores_by = None, -1.0, {}
    for cand in candidates:
        net.load_state_dict(torch.load(cand, map_location="cpu", weights_only=True))
        tmp_path = ckpt_dir / (cand.stem + ".fp16.pt")
        save_model_fp16(net, tmp_path, meta)
        scores = {}
        if val_sets:
            seg = load_trained_segmenter(tmp_path)
            for vname, (vimgs, vlabs) in val_sets.items():
                scores[vname] = evaluate_segmenter(tmp_path, vimgs, vlabs, segmenter=seg)
                log.info("%s on %s validation: AP@0.5 %.3f  AP@0.75 %.3f", cand.name, vname,
                         scores[vname]["ap@0.5"], scores[vname]["ap@0.75"])
        scores_by[cand.name] = scores
        score = float(np.mean([s["ap@0.5"] for s in scores.values()])) if scores else 0.0
        if score >= best_score:
            best, best_score = cand, score
        for p in (tmp_path, sidecar_path(tmp_path)):
            p.unlink(missing_ok=True)
    record = dict(record)
    record["checkpoint_scores"] = scores_by
    record["chosen_checkpoint"] = best.name
    record["validation"] = scores_by[best.name]
    net.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
    summary = {k: v for k, v in record.items() if k not in ("checkpoint_scores", "loss_trace", "train_config")}
    record["sidecar"] = save_model_fp16(net, out_path, {**dict(meta), "training": summary})
    if metrics_path is not None:
        metrics_path = Path(metrics_path)
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = metrics_path.with_name(metrics_path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str))
        os.replace(tmp, metrics_path)
    return record


def train_from_config(params: Mapping, model_path: str | os.PathLike, metrics_path: str | os.PathLike,
                      split_path: str | os.PathLike, work_dir: str | os.PathLike,
                      cohort_path: str | os.PathLike | None = None, segment_cfg: Mapping | None = None) -> dict:
    """Run a whole training from the ``train_segmenter`` config section (what the workflow rule calls).

    Parameters
    ----------
    params : the ``train_segmenter`` section (missing keys take the schema's defaults): ``dsb_dir``
        (required), split_seed, synthetic_seed, synthetic_validation_slides, max_dsb_images (null = all)
        and the :class:`TrainConfig` fields.
    model_path, metrics_path, split_path : the files to write (model + sidecar, metrics, DSB split).
    work_dir : where fp32 checkpoints go.
    cohort_path : the synthetic training cohort's sheet (written by the workflow's
        ``simulate_segmenter_training`` rule); None, or ``synthetic_weight`` 0: DSB only.
    segment_cfg : the ``segment`` config section: the input preparation (channels, ``marker_min_span``).
    """
    settings = section_defaults("train_segmenter")
    settings.update(params)
    if not settings.get("dsb_dir"):
        raise ValueError("train_segmenter.dsb_dir is not set: name the DSB 2018 fluorescence folder (images/<id>.png, "
                         "masks/<id>.png, index.csv) in the config to train the segmentation model")
    cfg = TrainConfig.from_settings(settings)
    cohort = cohort_path if cohort_path is not None and cfg.synthetic_weight > 0 else None
    data = prepare_training_data(
        settings["dsb_dir"], split_path, int(settings["split_seed"]), cohort,
        int(settings["synthetic_validation_slides"]), settings.get("max_dsb_images"), segment_cfg)
    images, labels = data["train"]
    log.info("training on %d images (%d DSB, %d synthetic frames); validation %s", len(images), data["n_dsb"],
             len(images) - data["n_dsb"], {k: len(v[0]) for k, v in data["val"].items()})
    extra = {"data": {"dsb_dir": str(settings["dsb_dir"]), "split_file": str(split_path),
                      "split_seed": int(settings["split_seed"]), "n_dsb_train": data["n_dsb"],
                      "n_synthetic_train_frames": len(images) - data["n_dsb"],
                      "synthetic_cohort": str(cohort) if cohort else None,
                      "synthetic_seed": int(settings["synthetic_seed"]) if cohort else None}}
    return train_segmenter(images, labels, model_path, cfg, n_dsb=data["n_dsb"], val_sets=data["val"],
                           work_dir=work_dir, metrics_path=metrics_path, extra_meta=extra, segment_cfg=segment_cfg)
