"""Fine-tune a segmentation model on a lab's own annotated folders (``hemoprofile train-segmenter``, the
workflow's ``finetune_segmenter`` rule).

The folders are read by :mod:`~hemoprofile.segment.training.annotations`; a seeded share of their images
(``train_segmenter.finetune.validation_fraction``) is held out. The starting model (by default the
bundled one: :func:`bundled_segmentation_model`) is scored on the held-out images, trained from its
weights for ``finetune.steps`` steps by ``cellpose.train.train_seg`` (the routine behind the Cellpose GUI's
own training) through :func:`~hemoprofile.segment.training.train.train_segmenter`, and scored again. The
model file's sidecar records the data it saw (folders, file count, each file's SHA-256), the steps and
the held-out AP@0.5 / AP@0.75 before and after (``finetune``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from hemoprofile.config import section_defaults
from hemoprofile.models import is_bundled, resolve_model
from hemoprofile.segment.cellpose_model import (
    is_model_file,
    missing_model_message,
    read_sidecar,
    write_sidecar,
)
from hemoprofile.segment.training.annotations import (
    file_sha256,
    read_annotation_folders,
    split_annotations,
)
from hemoprofile.segment.training.evaluate import evaluate_segmenter
from hemoprofile.segment.training.train import TrainConfig, train_segmenter

log = logging.getLogger(__name__)


def bundled_segmentation_model() -> str:
    """The model fine-tuning starts from by default: the ``segment.model`` default of the config schema
    (``bundled:hemoprofile_cellpose``; :func:`hemoprofile.models.resolve_model` gives its file)."""
    return str(section_defaults("segment")["model"])


def finetune_settings(params: Mapping | None = None) -> dict:
    """The ``train_segmenter`` section over the schema's defaults, its ``finetune`` part merged key by key."""
    settings = section_defaults("train_segmenter")
    finetune = dict(settings.get("finetune") or {})
    for key, value in (params or {}).items():
        if key == "finetune":
            finetune.update(value or {})
        else:
            settings[key] = value
    settings["finetune"] = finetune
    return settings


def _ap(scores: Mapping | None) -> dict | None:
    if scores is None:
        return None
    return {k: scores[k] for k in ("ap@0.5", "ap@0.75", "n_images", "n_true") if k in scores}


def finetune_from_folders(folders: Sequence[str | os.PathLike], out_path: str | os.PathLike,
                          params: Mapping | None = None, segment_cfg: Mapping | None = None,
                          start_model: str | os.PathLike | None = None, metrics_path: str | os.PathLike | None = None,
                          work_dir: str | os.PathLike | None = None) -> dict:
    """Fine-tune a model on annotated folders; write it (fp16 + sidecar) and its metrics.

    Parameters
    ----------
    folders : annotated folders (see :mod:`hemoprofile.segment.training.annotations`).
    out_path : the model file to write (``.pt``; the sidecar ``.pt.json`` beside it).
    params : the ``train_segmenter`` section (``finetune``: steps, learning_rate, validation_fraction,
        start_model, time_budget_min; ``split_seed`` seeds the held-out split; batch_size, bsize, seed,
        threads as for any training). The net's widths and ``diam_mean`` are the starting model's.
    segment_cfg : the ``segment`` section (how raw multi-channel images become the network input).
    start_model : the model to start from (default ``finetune.start_model``, else the bundled model).
    metrics_path : JSON file of the training record (default: ``<out_path>`` with ``_metrics.json``).
    work_dir : where checkpoints go (default: a temporary folder, removed afterwards).

    Returns
    -------
    dict with ``model``, ``before`` and ``after`` (held-out scores, None without a held-out part),
    ``steps``, ``data`` (the data record) and ``record`` (the training record).

    Example
    -------
    >>> finetune_from_folders(["fix_me/cellpose"], "models/mine.pt", {"finetune": {"steps": 100}})  # doctest: +SKIP
    """
    settings = finetune_settings(params)
    ft = settings["finetune"]
    start = str(start_model or ft.get("start_model") or bundled_segmentation_model())
    if is_bundled(start):
        start = str(resolve_model(start, "start model"))
    if not is_model_file(start):
        raise ValueError(f"start model {start!r} is a Cellpose built-in name; fine-tuning starts from a model file "
                         "with its .pt.json sidecar (the bundled model by default)")
    if not Path(start).is_file():
        raise FileNotFoundError(missing_model_message(start))
    meta = read_sidecar(start)
    out_path = Path(out_path)
    metrics_path = Path(metrics_path) if metrics_path else out_path.with_name(out_path.stem + "_metrics.json")

    items, data = read_annotation_folders(folders, segment_cfg)
    names = [item.name for item in items]
    train_idx, val_idx = split_annotations(names, float(ft["validation_fraction"]), int(settings["split_seed"]))
    data["train"] = [names[i] for i in train_idx]
    data["validation"] = [names[i] for i in val_idx]
    train_images, train_labels = [items[i].image for i in train_idx], [items[i].labels for i in train_idx]
    val = ([items[i].image for i in val_idx], [items[i].labels for i in val_idx]) if val_idx else None
    log.info("fine-tuning %s on %d annotated images (%d objects) from %d folder(s); %d held out", start,
             len(train_idx), data["n_objects"], len(data["folders"]), len(val_idx))
    if val is None:
        log.warning("only one annotated image: nothing is held out, so no validation score before or after")

    before = evaluate_segmenter(start, *val) if val else None
    steps = int(ft["steps"])
    cfg = TrainConfig.from_settings(
        settings, nbase=list(meta["nbase"]), diam_mean=float(meta["diam_mean"]), steps=steps,
        time_budget_min=ft.get("time_budget_min"), learning_rate=float(ft["learning_rate"]), synthetic_weight=0.0,
        init_model=start, images_per_epoch=max(1, len(train_idx)),
        warmup_steps=min(int(settings["warmup_steps"]), max(1, steps // 10)))
    finetune_meta = {"start_model": start, "start_model_sha256": file_sha256(start), "steps": steps,
                     "learning_rate": cfg.learning_rate, "validation_fraction": float(ft["validation_fraction"]),
                     "split_seed": int(settings["split_seed"])}
    with tempfile.TemporaryDirectory(prefix="finetune_") as tmp:
        record = train_segmenter(train_images, train_labels, out_path, cfg, n_dsb=len(train_images),
                                 val_sets={"annotations": val} if val else None,
                                 work_dir=work_dir or tmp, metrics_path=None,
                                 extra_meta={"data": data, "finetune": finetune_meta}, segment_cfg=segment_cfg)
    after = record["validation"].get("annotations") if val else None
    validation = {"held_out_images": len(val_idx), "before": _ap(before), "after": _ap(after)}
    if before and after and after["ap@0.5"] < before["ap@0.5"]:
        log.warning("held-out AP@0.5 fell from %.3f to %.3f: keep the starting model, or add annotations / "
                    "change steps and learning rate", before["ap@0.5"], after["ap@0.5"])
    sidecar = read_sidecar(out_path)
    sidecar["finetune"] = {**finetune_meta, "steps_run": int(record["steps"]), "validation": validation}
    write_sidecar(out_path, sidecar)
    record["finetune"] = sidecar["finetune"]
    record["data"] = data
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_metrics = metrics_path.with_name(metrics_path.name + ".tmp")
    tmp_metrics.write_text(json.dumps({k: v for k, v in record.items() if k != "sidecar"}, indent=1, default=str))
    os.replace(tmp_metrics, metrics_path)
    return {"model": str(out_path), "before": validation["before"], "after": validation["after"],
            "steps": int(record["steps"]), "data": data, "record": record}
