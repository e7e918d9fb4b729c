"""The ``embed`` config section: defaults read from the config schema, overrides merged and checked."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import hemoprofile
from hemoprofile.config import section_defaults

#: Version of the embed stage's outputs; rules pass it as params, so a bump reruns training and embedding.
STAGE_VERSION = {"stage": "embed", "version": int(hemoprofile.STAGE_VERSIONS.get("embed", 1))}

CONDITION_CHOICES = ("none", "slide", "batch", "condition")
LATENT_CLUSTER_METHODS = ("gmm", "kmeans")


def embed_defaults(part: str | None = None) -> dict:
    """The ``embed`` section's defaults from the config schema (a fresh copy), or one sub-section of it.

    Example
    -------
    >>> embed_defaults("cluster")["method"], embed_defaults()["latent_dim"]
    ('gmm', 16)
    """
    defaults = section_defaults("embed")
    return defaults[part] if part else defaults


def _merge(base: dict, override: Mapping, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if key not in out:
            raise ValueError(f"{where}: unknown key {key!r}; allowed: {', '.join(sorted(out))}")
        out[key] = _merge(out[key], value, f"{where}.{key}") if isinstance(out[key], dict) else value
    return out


def resolve_embed(cfg: Mapping | None) -> dict:
    """Complete ``embed`` settings (the schema's defaults overridden by ``cfg``), checked.

    Raises
    ------
    ValueError for an unknown key or an out-of-range value.

    Example
    -------
    >>> resolve_embed({"train": {"epochs": 3}})["train"]["epochs"], resolve_embed(None)["cluster"]["k_max"]
    (3, 12)
    """
    out = _merge(embed_defaults(), cfg or {}, "embed")
    if out["condition_on"] not in CONDITION_CHOICES:
        raise ValueError(f"embed.condition_on must be one of {CONDITION_CHOICES}, got {out['condition_on']!r}")
    if out["orientation"] not in ("none", "major_axis"):
        raise ValueError(f"embed.orientation must be none or major_axis, got {out['orientation']!r}")
    if out["cluster"]["method"] not in LATENT_CLUSTER_METHODS:
        raise ValueError(f"embed.cluster.method must be one of {LATENT_CLUSTER_METHODS}, "
                         f"got {out['cluster']['method']!r}")
    if out["cluster"]["covariance"] not in ("full", "diag"):
        raise ValueError(f"embed.cluster.covariance must be full or diag, got {out['cluster']['covariance']!r}")
    c = out["cluster"]
    if int(c["k"]) < 0 or int(c["k_min"]) < 1 or int(c["k_max"]) < int(c["k_min"]):
        raise ValueError(f"embed.cluster: need k >= 0 and 1 <= k_min <= k_max, got {c}")
    if int(out["latent_dim"]) < 2:
        raise ValueError(f"embed.latent_dim must be >= 2 (the 2-D map needs two components), got {out['latent_dim']}")
    if float(out["beta"]) < 0 or int(out["cells_per_slide"]) < 1:
        raise ValueError("embed.beta must be >= 0 and embed.cells_per_slide >= 1")
    return out
