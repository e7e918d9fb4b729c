"""hemoprofile.interaction.regression: on a small synthetic set whose count is known from the image,
both regressors beat predicting the mean on held-out groups; folds keep groups whole; the bootstrap
interval holds the point estimate."""

import numpy as np
import pytest
import torch

from hemoprofile.interaction.regression import (cnn_regressor_oof, latent_regressor_oof, mean_baseline_oof,
                                                patient_folds, rmse, rmse_summary)

torch.set_num_threads(1)


def _blob_windows(n=160, size=16, seed=0):
    """Windows with 0..6 bright 2 x 2 'cells' on noise; the target is the number of cells."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n, 1, size, size)) * 40).astype(np.uint8)
    y = rng.integers(0, 7, n)
    for i in range(n):
        for _ in range(y[i]):
            r, c = rng.integers(0, size - 2, 2)
            x[i, 0, r:r + 2, c:c + 2] = 230
    return x, y.astype(float)


def test_patient_folds_keep_patients_whole_and_need_two():
    groups = np.repeat(["a", "b", "c", "d", "e"], 3)
    folds = patient_folds(groups, 3, seed=1)
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1
    assert set(folds.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="at least 2 patients"):
        patient_folds(["a", "a"], 3)


def test_latent_ridge_beats_the_mean_on_held_out_groups():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(120, 6))
    y = 3 + 2 * z[:, 0] - z[:, 1] + rng.normal(scale=0.3, size=120)
    folds = patient_folds(np.arange(120) // 10, 3)
    assert rmse(y, latent_regressor_oof(z, y, folds)) < 0.5 * rmse(y, mean_baseline_oof(y, folds))


def test_cnn_beats_the_mean_on_held_out_groups():
    x, y = _blob_windows()
    groups = np.arange(len(y)) // 10
    folds = patient_folds(groups, 2)
    pred = cnn_regressor_oof(x, y, folds, epochs=25, width=8, seed=0)
    base = mean_baseline_oof(y, folds)
    assert rmse(y, pred) < 0.75 * rmse(y, base), (rmse(y, pred), rmse(y, base))


def test_mean_baseline_uses_only_the_training_folds():
    y = np.array([0.0, 0.0, 10.0, 10.0])
    assert mean_baseline_oof(y, np.array([0, 0, 1, 1])).tolist() == [10.0, 10.0, 0.0, 0.0]


def test_rmse_summary_interval_holds_the_estimate_and_sd_is_the_targets():
    rng = np.random.default_rng(2)
    y = rng.normal(5, 2, 200)
    pred = y + rng.normal(0, 1, 200)
    s = rmse_summary(y, {"m": pred, "mean": np.full(200, y.mean())}, np.arange(200) // 20, n_boot=300)
    lo, hi = s["m"]["ci95"]
    assert lo <= s["m"]["rmse"] <= hi and hi - lo > 0
    assert s["target_sd"] == pytest.approx(np.std(y)) and s["mean"]["rmse"] == pytest.approx(np.std(y))
    assert s["n_windows"] == 200 and s["n_patients"] == 10
