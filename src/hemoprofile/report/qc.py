"""Intensity QC: robust z-scores of each slide's per-channel median cell intensity against the cohort's,
and which slides are flagged (shown in the report's QC section and its notes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

QC_Z_THRESHOLD = 3.0         # robust z beyond which a slide's channel median is flagged
QC_MIN_SLIDES = 3            # fewer slides: no cohort to compare with


def robust_z(values: Sequence[float]) -> np.ndarray:
    """Robust z-scores: ``(v - median) / (1.4826 * MAD)``, NaNs ignored and kept.

    The MAD is floored at 1 % of the median's magnitude, so a cohort of near-identical slides does not
    flag a slide for a difference nobody would see.

    Example
    -------
    >>> robust_z([10.0, 10.4, 9.6, 10.2, 30.0]).round(1).tolist()
    [-0.7, 0.7, -2.0, 0.0, 66.8]
    """
    v = np.asarray(values, np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return np.full(v.shape, np.nan)
    med = float(np.median(finite))
    mad = max(float(np.median(np.abs(finite - med))), 0.01 * abs(med))
    if mad == 0:
        return np.where(np.isfinite(v), np.where(v == med, 0.0, np.inf * np.sign(v - med)), np.nan)
    return (v - med) / (1.4826 * mad)


def intensity_qc(medians: pd.DataFrame, threshold: float = QC_Z_THRESHOLD,
                 min_slides: int = QC_MIN_SLIDES) -> pd.DataFrame:
    """Flag slides whose per-channel median cell intensity is far from the cohort's.

    Parameters
    ----------
    medians : one row per slide (index: slide), one column per channel: the median over the slide's
        cells of their mean raw intensity (cells.parquet ``mean_<channel>``); NaN for a slide without cells.
    threshold : a slide is flagged when ``|robust z|`` of any channel exceeds it.
    min_slides : fewer slides with cells than this: nothing is flagged (z is not computed).

    Returns
    -------
    ``medians`` with ``z_<channel>`` columns, ``flagged`` (bool) and ``reason`` (the channels and their z).

    Example
    -------
    >>> m = pd.DataFrame({"CK": [100.0, 104.0, 98.0, 400.0]}, index=["a", "b", "c", "d"])
    >>> intensity_qc(m)["flagged"].tolist()
    [False, False, False, True]
    """
    out = medians.copy()
    n = int(medians.notna().all(axis=1).sum())
    reasons = [[] for _ in range(len(out))]
    for channel in medians.columns:
        z = robust_z(medians[channel].to_numpy()) if n >= min_slides else np.full(len(out), np.nan)
        out[f"z_{channel}"] = z
        for i, value in enumerate(z):
            if abs(value) > threshold:  # NaN compares False: slides without cells are not flagged
                reasons[i].append(f"{channel} z = {value:+.1f}")
    out["flagged"] = [bool(r) for r in reasons]
    out["reason"] = ["; ".join(r) for r in reasons]
    return out
