"""The quick demo (config/config.yaml) and the full demo (config/full.yaml layered over it) are valid
configs that differ only in the settings the README's table names."""

from pathlib import Path

import yaml
from snakemake.utils import update_config

from hemoprofile.config import validate_config
from hemoprofile.models import resolve_model

REPO = Path(__file__).resolve().parents[2]


def _load(name):
    return yaml.safe_load((REPO / "config" / name).read_text())


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_full_demo_config_is_the_quick_one_with_cellpose_and_longer_training():
    quick = _load("config.yaml")
    full = _load("config.yaml")
    update_config(full, _load("full.yaml"))  # what `snakemake --configfile config/full.yaml` does
    quick, full = validate_config(quick), validate_config(full)
    assert quick["segment"]["backend"] == "classical"
    assert full["segment"]["backend"] == "cellpose"
    assert resolve_model(full["segment"]["model"]).is_file()
    flat_quick, flat_full = _flatten(quick), _flatten(full)
    changed = {key for key in flat_full if flat_full[key] != flat_quick.get(key)}
    assert changed == {"segment.backend", "classify.train.epochs", "embed.train.epochs"}
    assert full["classify"]["train"]["epochs"] > quick["classify"]["train"]["epochs"]
    assert full["embed"]["train"]["epochs"] > quick["embed"]["train"]["epochs"]
