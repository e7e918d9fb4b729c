"""The embedder model file: the VAE's weights, what it was trained on, the 2-D map and the latent
clusters, in one ``torch.save`` of plain types and tensors (loaded with ``weights_only=True``: a model
file cannot run code).

The map and clustering fits (:mod:`hemoprofile.embed.clustering`) are stored as their fitted parameters
(numpy arrays as tensors), not as pickled scikit-learn objects; loading turns them back into numpy
arrays and :func:`hemoprofile.embed.clustering.assign_latent_clusters` rebuilds the estimator. Files of
format version 1 (the numpy GMM, without ``precisions_cholesky``) still load: the factors are derived
from the covariances as scikit-learn does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

import hemoprofile
from hemoprofile.embed.sample import condition_matrix
from hemoprofile.embed.settings import STAGE_VERSION
from hemoprofile.io import atomic_output, model_id
from hemoprofile.nn.vae import ConvVAE, build_vae

MODEL_FORMAT = "hemoprofile-embedder"
#: 2: latent clusters fitted by scikit-learn (GMM with ``precisions_cholesky``); 1: numpy fits.
MODEL_FORMAT_VERSION = 2


def _tensor_tree(value):
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {str(k): _tensor_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tensor_tree(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _numpy_tree(value):
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _numpy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numpy_tree(v) for v in value]
    return value


@dataclass
class Embedder:
    """A loaded embedder: the VAE, what it was trained on, the 2-D map and the latent clusters."""

    model: ConvVAE
    condition_on: str
    categories: list[str]
    channels: list[str]
    patch_size: int
    pca: dict
    clustering: dict
    model_id: str
    path: str = ""
    orientation: str = "none"  # embed.orientation it was trained with; embedding and figures apply the same

    def conditions_for(self, values: Sequence) -> np.ndarray | None:
        """One-hot cVAE rows for these category values (``None`` for a plain VAE)."""
        return condition_matrix(list(values), self.categories) if self.condition_on != "none" else None


def save_embedder(path: str | os.PathLike, model: ConvVAE, condition_on: str, categories: Sequence[str],
                  channels: Sequence[str], patch_size: int, pca: Mapping, clustering: Mapping,
                  extra: Mapping | None = None) -> str:
    """Write a model file atomically (``torch.save`` of plain types and tensors); return its id."""
    cl = {k: v for k, v in clustering.items() if k not in ("labels",)}
    ckpt = {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "spec": model.spec.to_dict(),
        "state_dict": model.state_dict(), "condition_on": condition_on, "categories": [str(c) for c in categories],
        "channels": [str(c) for c in channels], "patch_size": int(patch_size),
        "pca": _tensor_tree(dict(pca)), "clustering": _tensor_tree({**cl, "bic": {str(k): v for k, v in cl["bic"].items()}}),
        "hemoprofile_version": hemoprofile.__version__, "stage": STAGE_VERSION, **_tensor_tree(dict(extra or {})),
    }
    with atomic_output(path) as tmp:
        torch.save(ckpt, tmp)
    return model_id(path)


def load_embedder(path: str | os.PathLike) -> Embedder:
    """Load a model file written by :func:`save_embedder`.

    Raises
    ------
    FileNotFoundError / ValueError naming the file when it is missing or not an embedder model.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"embedder model not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign or corrupt files
        raise ValueError(f"{path}: not a readable embedder model ({err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a hemoprofile embedder model (format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt)})")
    if int(ckpt.get("format_version", 1)) > MODEL_FORMAT_VERSION:
        raise ValueError(f"{path}: embedder format version {ckpt['format_version']} is newer than this code "
                         f"reads ({MODEL_FORMAT_VERSION}); update hemoprofile")
    model = build_vae(ckpt["spec"])
    model.load_state_dict(ckpt["state_dict"])
    clustering = _numpy_tree(ckpt["clustering"])
    return Embedder(model.eval(), ckpt["condition_on"], list(ckpt["categories"]), list(ckpt["channels"]),
                    int(ckpt["patch_size"]), _numpy_tree(ckpt["pca"]), clustering, model_id(path), str(path),
                    str(ckpt.get("orientation", "none")))
