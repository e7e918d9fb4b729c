"""Regressors of a window's contact count, evaluated on held-out patients.

* :func:`latent_regressor_oof`: ridge regression (scikit-learn, penalty chosen by inner
  cross-validation) on latent features: the VAE latent of the whole window block-averaged to the VAE's
  patch size (the seed's "autoencoder latent of the image") next to the mean latent of the segmented
  cells in the window. Neither one alone holds the count well: the window latent of a 4x-reduced
  window is outside what the VAE was trained on (single cells), the mean cell latent says what the
  cells look like but not how many there are; together they are the project's latent view of a window.
* :func:`cnn_regressor_oof`: :class:`WindowCNN`, a small CNN on the window's pixels (block-averaged to
  ``input_size``), trained with MSE on the standardised count, flips and 90° rotations as augmentation
  (a count does not change under them).
* Both are fitted in patient-grouped folds (:func:`patient_folds`): every window gets an out-of-fold
  prediction from a model that saw none of its patient's windows. :func:`rmse_summary` gives the RMSE
  with a patient-bootstrap 95% interval next to the target's SD and the RMSE of predicting the training
  folds' mean.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from hemoprofile.vocabulary import to_unit

#: Ridge penalties tried by the inner cross-validation.
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def patient_folds(groups, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold (0..k-1) of each row, whole patients per fold, patients shuffled (seeded) then dealt
    round-robin; ``k`` is at most the number of patients.

    Example
    -------
    >>> f = patient_folds(["a", "a", "b", "c", "c", "d"], 2)
    >>> bool(f[0] == f[1]) and bool(f[3] == f[4]), sorted(set(f.tolist()))
    (True, [0, 1])
    """
    groups = np.asarray(groups).astype(str)
    patients = np.unique(groups)
    k = int(min(n_folds, len(patients)))
    if k < 2:
        raise ValueError(f"patient-grouped folds need at least 2 patients, got {len(patients)}")
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of = {patients[p]: i % k for i, p in enumerate(order)}
    return np.array([fold_of[g] for g in groups], np.int64)


def mean_baseline_oof(y, folds) -> np.ndarray:
    """Out-of-fold predictions of the training folds' mean (the baseline every regressor must beat)."""
    y, folds = np.asarray(y, np.float64), np.asarray(folds)
    out = np.empty_like(y)
    for f in np.unique(folds):
        out[folds == f] = y[folds != f].mean()
    return out


def latent_regressor_oof(features, y, folds) -> np.ndarray:
    """Out-of-fold predictions of a standardised ridge regression on ``features`` (n, d).

    Example
    -------
    >>> rng = np.random.default_rng(0); X = rng.normal(size=(60, 3)); y = 2 * X[:, 0] + 5
    >>> p = latent_regressor_oof(X, y, np.arange(60) % 3)
    >>> float(np.sqrt(np.mean((p - y) ** 2))) < 0.1
    True
    """
    X, y, folds = np.asarray(features, np.float64), np.asarray(y, np.float64), np.asarray(folds)
    out = np.empty_like(y)
    for f in np.unique(folds):
        train = folds != f
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
        model.fit(X[train], y[train])
        out[~train] = model.predict(X[~train])
    return out


class WindowCNN(nn.Module):
    """Three conv blocks (3x3 conv, batch norm, ReLU, 2x2 max pool) of ``width``, 2 ``width``, 4 ``width``
    channels, a global *sum* pool (a count grows with the area that holds cells, so the head sees a sum,
    not a mean) and a linear output."""

    def __init__(self, in_channels: int, width: int = 8) -> None:
        super().__init__()
        layers, ch = [], in_channels
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(ch, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            ch = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.head(h.sum(dim=(2, 3)) / 16.0).squeeze(1)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if bool(torch.randint(0, 2, (1,), generator=gen)) else x


def fit_window_cnn(pixels, y, *, epochs: int = 25, batch_size: int = 64, lr: float = 3e-3, width: int = 8,
                   seed: int = 0) -> tuple[WindowCNN, float, float]:
    """Train a :class:`WindowCNN` on stored windows (n, C, S, S; integers = [0, 1] scaled) and counts.

    Returns
    -------
    (model in eval mode, target mean, target SD): the model predicts the standardised count.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(to_unit(np.asarray(pixels))))
    y = np.asarray(y, np.float64)
    mean, sd = float(y.mean()), float(y.std()) or 1.0
    t = torch.from_numpy(((y - mean) / sd).astype(np.float32))
    model = WindowCNN(x.shape[1], width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * -(-len(x) // batch_size)))
    model.train()
    for _ in range(int(epochs)):
        order = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), batch_size):
            idx = order[s:s + batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            loss = nn.functional.mse_loss(model(_augment(x[idx], gen)), t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval(), mean, sd


@torch.no_grad()
def predict_window_cnn(model: WindowCNN, mean: float, sd: float, pixels, batch_size: int = 256) -> np.ndarray:
    """Predicted counts of stored windows (the mean of the 8 flips/rotations of each)."""
    x = torch.from_numpy(np.ascontiguousarray(to_unit(np.asarray(pixels))))
    out = np.zeros(len(x), np.float64)
    for s in range(0, len(x), batch_size):
        b = x[s:s + batch_size]
        views = [torch.rot90(b, k, dims=(2, 3)) for k in range(4)]
        views += [torch.flip(v, dims=(3,)) for v in views]
        out[s:s + len(b)] = torch.stack([model(v) for v in views]).mean(0).numpy()
    return out * sd + mean


def cnn_regressor_oof(pixels, y, folds, *, epochs: int = 25, width: int = 8, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions of :class:`WindowCNN` models, one per fold (seeded per fold)."""
    y, folds = np.asarray(y, np.float64), np.asarray(folds)
    out = np.empty_like(y)
    for f in np.unique(folds):
        train = folds != f
        model, mean, sd = fit_window_cnn(pixels[train], y[train], epochs=epochs, width=width, seed=seed + int(f))
        out[~train] = predict_window_cnn(model, mean, sd, pixels[~train])
    return out


def rmse(y, pred) -> float:
    """Root mean squared error."""
    return float(np.sqrt(np.mean((np.asarray(y, np.float64) - np.asarray(pred, np.float64)) ** 2)))


def rmse_summary(y, preds: dict, groups, n_boot: int = 1000, seed: int = 0) -> dict:
    """RMSE of each prediction with a 95% interval from a patient bootstrap (patients resampled with
    replacement, all their windows with them, the same resamples for every prediction), and the target's SD.

    Example
    -------
    >>> s = rmse_summary([0, 2, 4, 6], {"exact": [0, 2, 4, 6]}, ["a", "a", "b", "b"], n_boot=10)
    >>> s["exact"]["rmse"], s["target_sd"]
    (0.0, 2.23606797749979)
    """
    y = np.asarray(y, np.float64)
    groups = np.asarray(groups).astype(str)
    patients, inverse = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(patients), (int(n_boot), len(patients)))
    # per-patient sums of squared errors and window counts: a resample's RMSE from its patients' sums
    count = np.bincount(inverse, minlength=len(patients)).astype(np.float64)
    out = {"n_windows": int(len(y)), "n_patients": int(len(patients)), "target_mean": float(y.mean()),
           "target_sd": float(y.std()), "bootstrap": int(n_boot)}
    for name, pred in preds.items():
        sq = np.bincount(inverse, weights=(y - np.asarray(pred, np.float64)) ** 2, minlength=len(patients))
        boot = np.sqrt(sq[draws].sum(1) / count[draws].sum(1))
        out[name] = {"rmse": rmse(y, pred), "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]}
    return out
