"""Threshold for a target false-candidate rate and calibrated probabilities
(hemoprofile.classify.calibration) on generated score sets of known distribution."""

import json

import numpy as np
import pandas as pd
import pytest

from hemoprofile.classify.calibration import (
    apply_calibration,
    calibrate_and_choose,
    choose_threshold,
    fit_calibration,
    held_out_patients,
    reliability_curve,
)


def _scores(rng, n_neg, n_pos):
    """Leukocyte scores Beta(1, 30) (a long right tail) and CTC scores Beta(8, 2)."""
    neg = rng.beta(1, 30, n_neg).astype(np.float32)
    pos = rng.beta(8, 2, n_pos).astype(np.float32)
    return np.concatenate([neg, pos]), np.concatenate([np.zeros(n_neg, bool), np.ones(n_pos, bool)])


def test_threshold_hits_the_target_rate_on_fresh_cells():
    rng = np.random.default_rng(1)
    scores, y = _scores(rng, 2_000_000, 500)
    chosen = choose_threshold(scores, y, 10.0)
    assert chosen["allowed_false"] == 20 and chosen["false"] <= 20
    assert chosen["false_per_million"] <= 10.0
    # an independent draw from the same distributions: the rate is 10 per million within Poisson noise
    fresh, y_fresh = _scores(np.random.default_rng(2), 2_000_000, 500)
    false = int(((fresh >= chosen["threshold"]) & ~y_fresh).sum())
    assert 5 <= false <= 40  # expected 20; P(outside) < 0.5 % for Poisson(20)
    # a looser target lets more through, a stricter one fewer
    assert choose_threshold(scores, y, 100.0)["threshold"] < chosen["threshold"] < choose_threshold(scores, y, 1.0)["threshold"]


def test_target_below_resolution_admits_no_held_out_false_candidate():
    rng = np.random.default_rng(3)
    scores, y = _scores(rng, 2000, 20)
    chosen = choose_threshold(scores, y, 10.0)
    assert chosen["allowed_false"] == 0 and chosen["false"] == 0
    assert chosen["threshold"] > scores[~y].max()
    assert chosen["resolution_per_million"] == pytest.approx(500.0)
    assert chosen["false_per_million_ci95"][1] == pytest.approx(3.689 / 2000 * 1e6, rel=1e-3)


def test_isotonic_calibration_is_calibrated_on_fresh_cells():
    rng = np.random.default_rng(4)
    raw = rng.uniform(0, 1, 40000)
    truth = rng.random(40000) < raw ** 3  # the raw score overstates the probability
    calibration = fit_calibration(raw, truth, "isotonic")
    fresh = rng.uniform(0, 1, 40000)
    fresh_truth = rng.random(40000) < fresh ** 3
    curve = reliability_curve(apply_calibration(calibration, fresh), fresh_truth, bins=10)
    busy = curve[curve["n"] > 500]
    assert np.abs(busy["mean_predicted"] - busy["observed"]).max() < 0.05
    raw_curve = reliability_curve(fresh, fresh_truth, bins=10)
    assert np.abs(raw_curve["mean_predicted"] - raw_curve["observed"]).max() > 0.2
    platt = fit_calibration(raw, truth, "platt")
    assert np.all(np.diff(apply_calibration(platt, np.linspace(0.01, 0.99, 20))) > 0)
    with pytest.raises(ValueError, match="both classes"):
        fit_calibration(raw, np.zeros(len(raw), bool))


def test_calibrate_and_choose_scores_the_test_cells(tmp_path):
    rng = np.random.default_rng(5)
    s, y = _scores(rng, 50_000, 300)
    t, ty = _scores(rng, 50_000, 300)
    result, curve = calibrate_and_choose(pd.DataFrame({"score": s, "is_ctc": y}),
                                         pd.DataFrame({"score": t, "is_ctc": ty}), 100.0)
    assert result["validation"]["false"] <= 5 and result["test"]["n_negatives"] == 50_000
    assert 0.5 < result["test"]["recall"] <= 1 and result["target_resolvable"]
    assert set(curve["probability"]) == {"raw", "calibrated"} and curve["n"].sum() == 2 * 50_300
    json.dumps(result)  # JSON-able


def test_held_out_patients_come_from_the_classifier_split(tmp_path):
    good = tmp_path / "m.json"
    good.write_text(json.dumps({"split": {"held_out_by": "group", "validation_groups": ["P3"],
                                          "test_groups": ["P5", "P7"]}}))
    assert held_out_patients(good) == (["P3"], ["P5", "P7"])
    cells = tmp_path / "c.json"
    cells.write_text(json.dumps({"split": {"held_out_by": "cells (stratified)"}}))
    with pytest.raises(ValueError, match="c.json: the ctc classifier was not held out by patient"):
        held_out_patients(cells)


def test_calibrate_ctc_stage_uses_the_classifier_held_out_patients(tmp_path):
    from helpers.review_slides import write_review_slide

    from hemoprofile.classify.calibration import calibrate_ctc, read_calibration

    slides = []
    for slide, patient, seed in (("V1", "PV", 0), ("T1", "PT", 1), ("X1", "PX", 2)):
        paths = write_review_slide(tmp_path, slide=slide, n=500, n_ctc=8, seed=seed, patches=False)
        slides.append({"slide": slide, "patient": patient, "cells": paths["cells"], "predictions": paths["predictions"]})
    metrics = tmp_path / "ctc.metrics.json"
    metrics.write_text(json.dumps({"split": {"held_out_by": "group", "validation_groups": ["PV"],
                                             "test_groups": ["PT"], "train_groups": ["PX"]}}))
    out, curve = tmp_path / "cal.json", tmp_path / "curve.tsv"
    result = calibrate_ctc(slides, metrics, out, curve, max_false_per_million=10, label_source="column",
                           label_column="gate_label")
    assert read_calibration(out)["threshold"] == result["threshold"]
    # leukocyte scores are below 0.3 and CTC scores 0.9+: the threshold sits just above the validation
    # slide's highest leukocyte score
    scores = pd.read_parquet(slides[0]["predictions"])["p_ctc_CTC"]
    assert result["threshold"] == pytest.approx(float(scores[scores < 0.5].max()), abs=1e-6)
    assert result["validation"]["n_negatives"] == 492 and result["test"]["n_negatives"] == 492
    test_scores = pd.read_parquet(slides[1]["predictions"])["p_ctc_CTC"]
    expected_false = int(((test_scores >= result["threshold"]) & (test_scores < 0.5)).sum())
    assert result["test"]["recall"] == 1.0 and result["test"]["false"] == expected_false
    assert not result["target_resolvable"] and "below the held-out set's resolution" in result["note"]
    assert pd.read_csv(curve, sep="\t")["n"].sum() == 2 * 500
    with pytest.raises(ValueError, match="none of the validation patients"):
        calibrate_ctc(slides[1:], metrics, out, curve, label_source="column")
