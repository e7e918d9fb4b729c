"""Rare events in the simulator: CTCs per million with Poisson variation per slide, CTC enrichment,
look-alikes and CTC subtypes in the truth, and the config errors for bad rates."""

import numpy as np
import pandas as pd
import pytest

from hemoprofile.config import ConfigError, validate_config, validate_sample_sheet
from hemoprofile.simulate import plan_cohort, simulate_slide
from hemoprofile.simulate.cohort import composition_of
from hemoprofile.simulate.lookalikes import (
    LOOKALIKE_DEFAULTS,
    LOOKALIKE_KINDS,
    read_lookalike_rates,
    slide_event_counts,
)
from hemoprofile.simulate.optics import slide_optics
from hemoprofile.simulate.settings import read_settings
from hemoprofile.vocabulary import ARTEFACT_TYPES, LEUKOCYTE_TYPES, LINEAGE, TASKS, map_labels, task_classes

COMPOSITION = {"CD4_T": 0.2, "CD8_T": 0.15, "B": 0.1, "NK": 0.1, "granulocyte": 0.3, "monocyte": 0.15}


def synthetic(**keys):
    """A validated ``synthetic`` section of small slides (defaults from the schema around ``keys``)."""
    section = {
        "enabled": True, "seed": 13, "frame": {"height": 128, "width": 128}, "grid": {"rows": 2, "cols": 3},
        "cells_per_frame": 25,
        "conditions": {
            "control": {"patients": 1, "ctc_per_million": 0.0, "composition": COMPOSITION},
            "disease": {"patients": 1, "ctc_per_million": 20000.0, "composition": COMPOSITION},
        },
        **keys,
    }
    return validate_config({"synthetic": section})["synthetic"]


def run(cfg, out_dir, condition):
    plan = plan_cohort(cfg, out_dir)
    sample = plan[plan["condition"] == condition].iloc[0]
    summary = simulate_slide(cfg, sample, out_dir)
    truth = pd.read_parquet(out_dir / sample["slide"] / "truth_cells.parquet")
    return sample, summary, truth


# --- the per-slide Poisson draw ---------------------------------------------------------------------


def test_slide_counts_are_poisson_with_the_rate_per_million():
    """Over many slides the CTC count has the Poisson mean and variance rate x cells / 1e6, and the
    events fall on frames uniformly."""
    n_cells, n_frames, rate = 2.5e6, 8, 1.2  # 3 CTCs per slide on average
    totals, per_frame = [], np.zeros(n_frames)
    for slide in range(4000):
        counts = slide_event_counts(np.random.default_rng([99, 2, slide]), n_cells, n_frames, rate, {})
        totals.append(counts["CTC"].sum())
        per_frame += counts["CTC"]
    totals = np.array(totals)
    expected = rate * n_cells / 1e6
    standard_error = np.sqrt(expected / len(totals))
    assert abs(totals.mean() - expected) < 4 * standard_error
    assert totals.var() == pytest.approx(expected, rel=0.1)  # Poisson: variance = mean
    assert (totals == 0).mean() == pytest.approx(np.exp(-expected), abs=0.01)
    share = per_frame / per_frame.sum()
    assert np.abs(share - 1 / n_frames).max() < 0.02


def test_slide_counts_are_deterministic_by_seed_and_ctcs_come_first():
    rates = dict(LOOKALIKE_DEFAULTS)
    a = slide_event_counts(np.random.default_rng([7, 2, 0]), 3e6, 40, 5.0, rates)
    b = slide_event_counts(np.random.default_rng([7, 2, 0]), 3e6, 40, 5.0, rates)
    c = slide_event_counts(np.random.default_rng([7, 2, 1]), 3e6, 40, 5.0, rates)
    assert list(a) == ["CTC", *LOOKALIKE_KINDS]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    # the CTC draw does not depend on the look-alike rates (drawn first from the same generator)
    d = slide_event_counts(np.random.default_rng([7, 2, 0]), 3e6, 40, 5.0, {})
    assert np.array_equal(a["CTC"], d["CTC"])


def test_simulate_slide_uses_the_slide_generators_draw_and_the_enrichment(tmp_path):
    """The slide's CTC count is the documented draw from default_rng([seed, 2, slide]) at the
    condition's rate times ctc_enrichment; the truth holds those CTCs."""
    cfg = synthetic(ctc_enrichment=3)
    sample, summary, truth = run(cfg, tmp_path, "disease")
    s = read_settings(cfg)
    index = int(np.flatnonzero(plan_cohort(cfg, tmp_path)["slide"] == sample["slide"])[0])
    rng = np.random.default_rng([s.seed, 2, index])
    slide_optics(rng, s)
    expected = slide_event_counts(rng, s.cells_per_frame * s.n_frames, s.n_frames, 60000.0, s.lookalikes)
    assert summary["ctc_per_million"] == 60000.0
    assert summary["n_ctc_drawn"] == int(expected["CTC"].sum()) > 0
    assert (truth["cell_type"] == "CTC").sum() == summary["n_ctc_drawn"]  # small slides: every CTC fits
    per_frame = truth[truth["cell_type"] == "CTC"].groupby("frame").size()
    assert per_frame.to_dict() == {f: int(n) for f, n in enumerate(expected["CTC"]) if n}
    assert sample["ctc_arm"] == "enriched" and sample["ctc_enrichment"] == 3.0


# --- look-alikes and CTC subtypes in the truth ------------------------------------------------------


@pytest.fixture(scope="module")
def lookalike_slides(tmp_path_factory):
    out = tmp_path_factory.mktemp("rare")
    cfg = synthetic(lookalikes=dict.fromkeys(LOOKALIKE_KINDS, 25000.0), grid={"rows": 3, "cols": 3})
    return {condition: run(cfg, out, condition) for condition in ("control", "disease")}


def test_every_slide_has_lookalikes_with_their_types(lookalike_slides):
    for condition, (_, summary, truth) in lookalike_slides.items():
        kinds = truth.loc[truth["lookalike"] != "", "lookalike"]
        assert set(kinds) == set(LOOKALIKE_KINDS), condition
        assert summary["lookalikes"] == kinds.value_counts().reindex(list(LOOKALIKE_KINDS), fill_value=0).to_dict()
        of = truth.groupby("lookalike")["cell_type"].agg(set)
        assert of["CK_debris"] == {"CK_debris"} and of["apoptotic"] == {"apoptotic"}
        assert of["large_leukocyte"] == {"monocyte"}
        assert of["dim_CD45"] <= set(LEUKOCYTE_TYPES) and of["CK_CD45_overlap"] <= set(LEUKOCYTE_TYPES)
        assert (truth["lineage"] == truth["cell_type"].map(LINEAGE)).all()
        assert set(truth.loc[truth["cell_type"].isin(ARTEFACT_TYPES), "lineage"]) == {"artefact"}
    control = lookalike_slides["control"][2]
    assert not (control["cell_type"] == "CTC").any() and set(control["ctc_subtype"]) == {""}


def test_lookalikes_look_like_what_they_claim(lookalike_slides):
    truth = pd.concat([t for _, _, t in lookalike_slides.values()])
    plain = truth[(truth["lookalike"] == "") & truth["cell_type"].isin(LEUKOCYTE_TYPES)]
    kind = {k: truth[truth["lookalike"] == k] for k in LOOKALIKE_KINDS}
    leukocyte_ck = plain["true_CK"].median()
    # CK-bright without CD45: debris with no or a tiny nucleus, apoptotic cells with small fragments
    for name in ("CK_debris", "apoptotic"):
        assert kind[name]["true_CK"].median() > 10 * leukocyte_ck
        assert kind[name]["true_CD45"].median() < 0.1 * plain["true_CD45"].median()
    assert (kind["CK_debris"]["nucleus_area_px"] < 0.3 * kind["CK_debris"]["area_px"]).all()
    assert (kind["CK_debris"]["nucleus_area_px"] == 0).any()
    assert kind["apoptotic"]["nucleus_area_px"].median() < 0.5 * plain["nucleus_area_px"].median()
    # CK+ CD45+: a leukocyte's CD45 with a CK fragment over it
    assert kind["CK_CD45_overlap"]["true_CK"].median() > 5 * leukocyte_ck
    assert kind["CK_CD45_overlap"]["true_CD45"].median() > 0.5 * plain["true_CD45"].median()
    # dim CD45: well below its own type's level
    dim = kind["dim_CD45"]
    typical = plain.groupby("cell_type")["true_CD45"].median()
    assert (dim["true_CD45"].to_numpy() < 0.5 * typical[dim["cell_type"]].to_numpy()).all()
    # large leukocytes: bigger than ordinary monocytes, as big as the smaller CTCs
    monocytes = plain[plain["cell_type"] == "monocyte"]
    assert kind["large_leukocyte"]["area_px"].median() > 1.3 * monocytes["area_px"].median()


def test_ctc_subtypes_follow_their_fractions_and_models(tmp_path):
    cfg = synthetic(conditions={
        "control": {"patients": 1, "composition": COMPOSITION},
        "disease": {"patients": 1, "ctc_per_million": 150000.0, "emt_fraction": 0.4, "small_fraction": 0.3,
                    "cluster_rate": 0.0, "composition": COMPOSITION},
    }, grid={"rows": 4, "cols": 4})
    _, _, truth = run(cfg, tmp_path, "disease")
    ctcs = truth[truth["cell_type"] == "CTC"]
    assert len(ctcs) > 30
    shares = ctcs["ctc_subtype"].value_counts(normalize=True)
    assert set(shares.index) == {"CK_high", "EMT", "small"}
    assert shares["EMT"] == pytest.approx(0.4, abs=0.2) and shares["small"] == pytest.approx(0.3, abs=0.2)
    by = ctcs.groupby("ctc_subtype")
    assert by["true_CK"].median()["EMT"] < 0.5 * by["true_CK"].median()["CK_high"]
    assert by["true_VIM"].median()["EMT"] > 4 * by["true_VIM"].median()["CK_high"]
    assert by["radius_px"].max()["small"] <= 10 < by["radius_px"].min()["CK_high"]
    assert set(truth.loc[truth["cell_type"] != "CTC", "ctc_subtype"]) == {""}


# --- classification labels of the new truth types ----------------------------------------------------


def test_artefacts_are_ctc_negatives_and_outside_immune_tasks():
    assert list(map_labels(["CK_debris", "apoptotic", "CTC", "B"], "ctc")) == ["leukocyte", "leukocyte", "CTC",
                                                                              "leukocyte"]
    for task in ("lineage", "immune5", "immune6", "hierarchical"):
        assert list(map_labels(list(ARTEFACT_TYPES), task)) == [None, None]
    assert task_classes("ctc") == ["leukocyte", "CTC"]  # no new class
    assert set(TASKS["ctc"]) >= set(ARTEFACT_TYPES)


# --- config and sample sheet ------------------------------------------------------------------------


def test_old_ctc_per_1000_is_refused_with_the_converted_value():
    section = {"enabled": True, "conditions": {"d": {"patients": 1, "ctc_per_1000": 4.0, "composition": COMPOSITION}}}
    with pytest.raises(ConfigError, match=r"synthetic\.conditions\.d\.ctc_per_1000 .*ctc_per_million: 4000"):
        validate_config({"synthetic": section})
    with pytest.raises(ValueError, match="ctc_per_million: 4000"):
        read_settings({**synthetic(), "conditions": section["conditions"]})


@pytest.mark.parametrize("keys, message", [
    ({"ctc_enrichment": 0.5}, "synthetic.ctc_enrichment"),
    ({"lookalikes": {"CK_debris": -1}}, "synthetic.lookalikes.CK_debris"),
    ({"lookalikes": {"glitter": 5}}, "glitter"),
    ({"conditions": {"d": {"patients": 1, "ctc_per_million": -2, "composition": COMPOSITION}}},
     "ctc_per_million"),
    ({"conditions": {"d": {"patients": 1, "emt_fraction": 0.7, "small_fraction": 0.5, "composition": COMPOSITION}}},
     "small_fraction"),
])
def test_bad_rates_are_refused_naming_the_key(keys, message):
    with pytest.raises(ConfigError, match=message):
        synthetic(**keys)


@pytest.mark.parametrize("keys, message", [
    ({"ctc_enrichment": 0.5}, "ctc_enrichment"),
    ({"lookalikes": {"CK_debris": -1}}, "CK_debris"),
    ({"lookalikes": {"glitter": 5}}, "glitter"),
    ({"conditions": {"d": {"ctc_per_million": float("nan"), "composition": COMPOSITION}}}, "ctc_per_million"),
    ({"conditions": {"d": {"emt_fraction": 0.7, "small_fraction": 0.5, "composition": COMPOSITION}}}, "small_fraction"),
])
def test_read_settings_refuses_bad_rates_without_the_schema(keys, message):
    with pytest.raises(ValueError, match=message):
        read_settings({**synthetic(), **keys})


def test_lookalike_rates_default_to_the_schema_defaults():
    assert read_lookalike_rates(None) == LOOKALIKE_DEFAULTS == synthetic()["lookalikes"]
    assert read_settings(synthetic()).lookalikes == LOOKALIKE_DEFAULTS
    assert synthetic()["ctc_enrichment"] == 1


def test_plan_with_enrichment_is_a_valid_sample_sheet(tmp_path):
    for enrichment, arm in ((1, "real"), (1000, "enriched")):
        plan = plan_cohort(synthetic(ctc_enrichment=enrichment), tmp_path)
        assert set(plan["ctc_arm"]) == {arm} and set(plan["ctc_enrichment"]) == {float(enrichment)}
        sheet = tmp_path / f"samples_{arm}.tsv"
        plan.to_csv(sheet, sep="\t", index=False)
        checked = validate_sample_sheet(pd.read_csv(sheet, sep="\t"), check_paths=False)
        assert set(checked["ctc_arm"]) == {arm}
    bad = plan.assign(ctc_arm="spiked")
    with pytest.raises(ConfigError, match="ctc_arm"):
        validate_sample_sheet(bad, check_paths=False)


def test_composition_is_unchanged_by_rare_event_keys():
    """Patients' compositions come from their own generator: rare-event settings do not move them."""
    a, b = read_settings(synthetic()), read_settings(synthetic(ctc_enrichment=50, lookalikes={"dim_CD45": 9000}))
    assert np.array_equal(composition_of(a, "disease", 2), composition_of(b, "disease", 2))
