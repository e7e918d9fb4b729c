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


def test_full_demo_config_is_the_quick_one_with_cellpose_longer_training_and_more_patients():
    quick = _load("config.yaml")
    full = _load("config.yaml")
    update_config(full, _load("full.yaml"))  # what `snakemake --configfile config/full.yaml` does
    quick, full = validate_config(quick), validate_config(full)
    assert quick["segment"]["backend"] == "classical"
    assert full["segment"]["backend"] == "cellpose"
    assert resolve_model(full["segment"]["model"]).is_file()
    flat_quick, flat_full = _flatten(quick), _flatten(full)
    changed = {key for key in flat_full if flat_full[key] != flat_quick.get(key)}
    assert changed == {"segment.backend", "classify.train.epochs", "embed.train.epochs",
                       *(f"synthetic.conditions.{c}.patients" for c in ("control", "disease_a", "disease_b"))}
    assert all(c["patients"] == 10 for c in full["synthetic"]["conditions"].values())
    assert all(c["patients"] == 7 for c in quick["synthetic"]["conditions"].values())
    assert full["classify"]["train"]["epochs"] > quick["classify"]["train"]["epochs"]
    assert full["embed"]["train"]["epochs"] > quick["embed"]["train"]["epochs"]


def test_demo_is_ctc_enriched_and_the_scale_preset_runs_at_real_rates():
    """The quick demo's slides are too small for real CTC rates, so it says it is enriched; the real-size
    preset (config/scale.yaml layered over the demo, key by key) is back at real rates and the default
    look-alike rates, which it must spell out since an empty mapping would keep the demo's."""
    from hemoprofile.simulate import plan_cohort
    from hemoprofile.simulate.lookalikes import LOOKALIKE_DEFAULTS

    quick = validate_config(_load("config.yaml"))
    scale = _load("config.yaml")
    update_config(scale, _load("scale.yaml"))
    scale = validate_config(scale)
    assert quick["synthetic"]["ctc_enrichment"] > 1
    assert set(plan_cohort(quick["synthetic"], "out")["ctc_arm"]) == {"enriched"}
    assert scale["synthetic"]["ctc_enrichment"] == 1
    assert set(plan_cohort(scale["synthetic"], "out")["ctc_arm"]) == {"real"}
    assert {k: float(v) for k, v in scale["synthetic"]["lookalikes"].items()} == LOOKALIKE_DEFAULTS
    rates = [c["ctc_per_million"] for c in scale["synthetic"]["conditions"].values()]
    assert min(rates) == 0 and 0 < max(rates) <= 20  # per million nucleated cells, as in patients
