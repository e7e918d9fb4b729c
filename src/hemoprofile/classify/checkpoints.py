"""Classifier model files: ``torch.save`` dicts with the architecture, the classes, the channel names
and the patch size, so :func:`load_classifier` rebuilds a model with no other input. A model's id is the
SHA-256 of its file (first 12 hex digits, :func:`hemoprofile.io.digests.model_id`), written next to
every prediction. A hierarchical model nests one sub-classifier per lineage under ``children``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hemoprofile.io import atomic_output, model_id
from hemoprofile.models import is_bundled, resolve_model
from hemoprofile.nn.cnn import CellNet, build_model, fuse_batchnorm
from hemoprofile.vocabulary import HIERARCHICAL

MODEL_FORMAT = "hemoprofile-cell-classifier"
MODEL_FORMAT_VERSION = 1


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
    """Write a classifier file atomically and return its model id (:func:`~hemoprofile.io.digests.model_id`).

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
        """The classes of the probabilities
        :func:`~hemoprofile.classify.inference.classifier_probabilities` returns (hierarchical: the leaves)."""
        if not self.children:
            return list(self.classes)
        return [c for lineage in self.classes for c in self.children[lineage].classes]


def from_checkpoint(ckpt: dict, path: str, mid: str) -> LoadedClassifier:
    """Rebuild a :class:`LoadedClassifier` from a checkpoint dict (``path``, ``mid``: its file and model id)."""
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
    children = {k: from_checkpoint(v, path, mid) for k, v in (ckpt.get("children") or {}).items()}
    return LoadedClassifier(ckpt["task"], list(ckpt["classes"]), list(ckpt["channels"]), int(ckpt["patch_size"]),
                            int(ckpt["input_size"]), model, mid, str(path), dict(ckpt.get("metadata") or {}), children)


def load_classifier(path: str | os.PathLike) -> LoadedClassifier:
    """Load a classifier file written by :func:`save_classifier` (no code is unpickled: ``weights_only``).

    ``path`` may name a bundled model (``bundled:pbc8_cellnet96``, :mod:`hemoprofile.models`).

    Raises
    ------
    FileNotFoundError / ValueError naming the file when it is missing or not a classifier.
    """
    path = str(resolve_model(path, "classifier model") if is_bundled(path) else path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"classifier model file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a corrupt or foreign file
        raise ValueError(f"{path}: not a readable classifier file ({err})") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a hemoprofile cell classifier")
    return from_checkpoint(ckpt, path, model_id(path))


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
