"""Calibrated CTC probabilities and the candidate threshold, chosen on held-out slides for a target
false-candidate rate per million leukocytes (``ctc.max_false_per_million``).

Which cells are held out comes from the ctc classifier's own split (its ``metrics.json``:
``split.validation_groups`` and ``split.test_groups``, the patients :func:`hemoprofile.classify.splits.make_split`
kept out of training). All segmented cells of those patients' slides are used, not the per-label sample
the trainer drew, so the leukocytes are as many as the slides have:

* the **validation** patients fit the calibration (isotonic regression of the truth on ``p_ctc_CTC``, or
  Platt's logistic) and choose the threshold;
* the **test** patients, untouched by both, give the honest figures at that threshold: false candidates
  per million leukocytes (Garwood 95 % interval), CTC recall (Clopper-Pearson), and the reliability
  diagram of the calibrated probabilities.

The threshold is the lowest score at which at most ``floor(max_false_per_million x n / 1e6)`` of the
``n`` validation non-CTC cells pass. Its resolution is one cell in ``n``: a demo cohort's few thousand
held-out leukocytes cannot show 10 per million, so the threshold then admits no held-out false
candidate and the JSON says what that guarantees (the Garwood upper bound of 0 in ``n``). Calibrated
probabilities carry the held-out cohort's CTC prevalence: on a CTC-enriched training cohort they
overstate the probability a candidate is a CTC at real frequencies (the ranking, and so the threshold,
does not depend on it).

"Leukocytes" here are all held-out cells that are not true CTCs (debris and look-alikes included: they
cost the reviewer the same). With ``label_source: truth`` a segmented object that lies on no true cell
(CK+ debris, a fragment) is such a non-CTC; with a label column or table, unlabelled cells are left out.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from hemoprofile.io import atomic_output
from hemoprofile.rates import proportion_interval, rate_per_million

METHODS = ("isotonic", "platt")


def fit_calibration(scores: np.ndarray, is_ctc: np.ndarray, method: str = "isotonic") -> dict:
    """Fit a map from raw score to calibrated probability; return it as a JSON-able dict.

    ``isotonic``: scikit-learn's :class:`~sklearn.isotonic.IsotonicRegression` (clipped to [0, 1]),
    stored as its breakpoints and applied by linear interpolation. ``platt``: a logistic regression on
    the score's logit.

    Example
    -------
    >>> cal = fit_calibration(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    >>> apply_calibration(cal, np.array([0.15, 0.85])).tolist()
    [0.0, 1.0]
    """
    scores = np.asarray(scores, float)
    y = np.asarray(is_ctc, bool)
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
    if len(scores) == 0 or y.all() or not y.any():
        raise ValueError(f"calibration needs held-out cells of both classes; got {int(y.sum())} CTC(s) and "
                         f"{int((~y).sum())} other cell(s)")
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, y.astype(float))
        return {"method": method, "x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e6).fit(_logit(scores)[:, None], y)
    return {"method": method, "a": float(model.coef_[0, 0]), "b": float(model.intercept_[0])}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, float), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def apply_calibration(calibration: Mapping, scores: np.ndarray) -> np.ndarray:
    """Calibrated probabilities of raw ``scores`` under a :func:`fit_calibration` result."""
    scores = np.asarray(scores, float)
    if calibration["method"] == "isotonic":
        return np.interp(scores, calibration["x"], calibration["y"])
    return 1.0 / (1.0 + np.exp(-(calibration["a"] * _logit(scores) + calibration["b"])))


def choose_threshold(scores: np.ndarray, is_ctc: np.ndarray, max_false_per_million: float) -> dict:
    """The lowest score threshold at which held-out non-CTC cells pass at no more than the target rate.

    Parameters
    ----------
    scores : raw CTC scores (``p_ctc_CTC``) of held-out cells.
    is_ctc : their truth.
    max_false_per_million : the target, false candidates per million non-CTC cells.

    Returns
    -------
    dict with ``threshold`` (candidates: ``score >= threshold``), ``n_negatives``, ``allowed_false``,
    ``false`` and ``false_per_million`` (with its Garwood 95 % interval) at the threshold, ``recall``
    of the held-out CTCs (with its interval) and ``resolution_per_million`` (one cell in ``n``).

    Example
    -------
    >>> r = choose_threshold(np.array([0.1, 0.2, 0.3, 0.9, 0.95]), np.array([0, 0, 0, 1, 1]), 0.0)
    >>> 0.3 < r["threshold"] <= 0.9, r["false"], r["recall"]
    (True, 0, 1.0)
    """
    scores = np.asarray(scores, np.float32)
    y = np.asarray(is_ctc, bool)
    negatives = np.sort(scores[~y])[::-1]
    n = len(negatives)
    if n == 0:
        raise ValueError("no held-out non-CTC cells to choose a candidate threshold on")
    allowed = int(math.floor(max_false_per_million * n / 1e6 + 1e-9))
    if allowed >= n:
        threshold = float(scores.min())
    else:  # just above the (allowed + 1)-th highest non-CTC score, in the scores' own precision
        threshold = float(np.nextafter(negatives[allowed], np.float32(np.inf)))
    return {"threshold": threshold, **threshold_figures(scores, y, threshold), "allowed_false": allowed,
            "resolution_per_million": 1e6 / n}


def threshold_figures(scores: np.ndarray, is_ctc: np.ndarray, threshold: float) -> dict:
    """False candidates per million non-CTC cells and CTC recall at ``threshold``, with 95 % intervals."""
    scores = np.asarray(scores, np.float32)
    y = np.asarray(is_ctc, bool)
    passed = scores >= threshold
    n_neg, n_pos = int((~y).sum()), int(y.sum())
    false = int((passed & ~y).sum())
    rate, low, high = (float(v) for v in rate_per_million(false, n_neg))
    recall, r_low, r_high = proportion_interval(int((passed & y).sum()), n_pos)
    return {"n_negatives": n_neg, "n_ctc": n_pos, "candidates": int(passed.sum()), "false": false,
            "false_per_million": rate, "false_per_million_ci95": [low, high],
            "recall": recall, "recall_ci95": [r_low, r_high]}


def reliability_curve(probabilities: np.ndarray, is_ctc: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Reliability-diagram data: per equal-width probability bin, the cells in it, their mean predicted
    probability and the observed CTC fraction (NaN for an empty bin).

    Example
    -------
    >>> reliability_curve(np.array([0.05, 0.95, 0.95]), np.array([0, 1, 0]), bins=2)["observed"].tolist()
    [0.0, 0.5]
    """
    p = np.clip(np.asarray(probabilities, float), 0, 1)
    y = np.asarray(is_ctc, bool)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    n = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=p, minlength=bins)
    sum_y = np.bincount(index, weights=y.astype(float), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({"bin_low": np.arange(bins) / bins, "bin_high": np.arange(1, bins + 1) / bins,
                             "n": n, "mean_predicted": np.where(n > 0, sum_p / np.maximum(n, 1), np.nan),
                             "observed": np.where(n > 0, sum_y / np.maximum(n, 1), np.nan)})


def held_out_patients(metrics_path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """The ctc classifier's validation and test patients (groups) from its metrics.json."""
    try:
        with open(metrics_path) as f:
            split = json.load(f)["split"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{metrics_path}: no readable 'split' of a trained classifier ({err})") from err
    validation, test = split.get("validation_groups"), split.get("test_groups")
    if not validation or not test or not str(split.get("held_out_by", "")).startswith("group"):
        raise ValueError(f"{metrics_path}: the ctc classifier was not held out by patient (split "
                         f"{split.get('held_out_by')!r}); ctc.candidate_threshold 'auto' needs held-out patients, "
                         "so give a number instead")
    return [str(g) for g in validation], [str(g) for g in test]


def held_out_cells(slides: Sequence[Mapping], truth: Callable[[Mapping, pd.DataFrame], np.ndarray],
                   progress: Callable[[str], object] | None = None, label_columns: Sequence[str] = ("gate_label",)
                   ) -> pd.DataFrame:
    """Score and truth of every cell of the given slides.

    Parameters
    ----------
    slides : one mapping per slide with ``slide``, ``cells`` and ``predictions`` paths (plus whatever
        ``truth`` needs).
    truth : (slide mapping, cells with slide/cell_id/y/x) -> raw label per cell (a cell type or gate
        label, None for none); ``CTC`` marks a CTC.
    label_columns : cells.parquet columns ``truth`` may read besides slide, cell_id, y, x (where present).

    Returns
    -------
    table with ``slide``, ``score`` (float32) and ``is_ctc`` (bool); cells without a label are dropped.
    """
    import pyarrow.parquet as pq

    from hemoprofile.io.tables import read_cells
    from hemoprofile.vocabulary import CTC

    parts = []
    for item in slides:
        names = pq.read_schema(item["cells"]).names
        wanted = dict.fromkeys(("slide", "cell_id", "y", "x", *label_columns))
        cells = read_cells(item["cells"], [c for c in wanted if c in names])
        scores = pq.read_table(item["predictions"], columns=["cell_id", "p_ctc_CTC"]).to_pandas()
        if not np.array_equal(scores["cell_id"].to_numpy(), cells["cell_id"].to_numpy()):
            raise ValueError(f"{item['predictions']}: rows do not match {item['cells']} (rerun classify)")
        raw = truth(item, cells)
        labelled = np.array([v is not None for v in raw], bool)
        parts.append(pd.DataFrame({"slide": item["slide"],
                                   "score": scores["p_ctc_CTC"].to_numpy(np.float32)[labelled],
                                   "is_ctc": np.array([v == CTC for v in raw], bool)[labelled]}))
        if progress:
            progress(f"{item['slide']}: {int(labelled.sum())} labelled cells, {int(parts[-1]['is_ctc'].sum())} CTC")
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["slide", "score", "is_ctc"])


def calibrate_and_choose(validation: pd.DataFrame, test: pd.DataFrame, max_false_per_million: float,
                         method: str = "isotonic", bins: int = 10) -> tuple[dict, pd.DataFrame]:
    """Fit the calibration and threshold on ``validation`` cells and score both on ``test`` cells
    (tables of :func:`held_out_cells`). Returns ``(result, curve)``: the JSON-able result and the
    reliability diagram of the test cells (raw and calibrated, column ``probability``)."""
    calibration = fit_calibration(validation["score"], validation["is_ctc"], method)
    chosen = choose_threshold(validation["score"], validation["is_ctc"], max_false_per_million)
    threshold = chosen["threshold"]
    result = {
        "threshold": threshold,
        "threshold_calibrated": float(apply_calibration(calibration, np.array([threshold]))[0]),
        "max_false_per_million": float(max_false_per_million),
        "calibration": calibration,
        "validation": {k: v for k, v in chosen.items() if k != "threshold"},
        "test": threshold_figures(test["score"], test["is_ctc"], threshold) if len(test) else None,
        "target_resolvable": chosen["resolution_per_million"] <= max_false_per_million,
        "note": _resolution_note(chosen, max_false_per_million),
    }
    curves = []
    for kind, p in (("raw", test["score"].to_numpy(float)),
                    ("calibrated", apply_calibration(calibration, test["score"].to_numpy(float)))):
        curve = reliability_curve(p, test["is_ctc"].to_numpy(bool), bins)
        curve.insert(0, "probability", kind)
        curves.append(curve)
    return result, pd.concat(curves, ignore_index=True)


def _resolution_note(chosen: Mapping, target: float) -> str:
    n = chosen["n_negatives"]
    if chosen["resolution_per_million"] <= target:
        return f"chosen on {n:,} held-out non-CTC cells (one cell = {chosen['resolution_per_million']:.3g} per million)"
    return (f"the target ({target:g} per million) is below the held-out set's resolution (one cell in {n:,} = "
            f"{chosen['resolution_per_million']:.3g} per million): the threshold admits no held-out false candidate, "
            f"which bounds the rate only below {chosen['false_per_million_ci95'][1]:.3g} per million (95 %)")


def write_calibration(result: Mapping, curve: pd.DataFrame, json_path: str | os.PathLike,
                      curve_path: str | os.PathLike) -> None:
    """Write the calibration/threshold JSON and the reliability-diagram table (TSV) atomically."""
    with atomic_output(json_path) as tmp:
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
    with atomic_output(curve_path) as tmp:
        curve.to_csv(tmp, sep="\t", index=False)


def read_calibration(path: str | os.PathLike) -> dict:
    """Read a calibration JSON (:func:`write_calibration`) with an error naming the file."""
    try:
        with open(path) as f:
            result = json.load(f)
        float(result["threshold"])
        result["calibration"]["method"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable CTC calibration ({err})") from err
    return result


def calibrate_ctc(slides: Sequence[Mapping], metrics_path: str | os.PathLike, out_json: str | os.PathLike,
                  out_curve: str | os.PathLike, *, max_false_per_million: float = 10.0, method: str = "isotonic",
                  bins: int = 10, label_source: str = "truth", label_column: str = "gate_label",
                  truth_cells: str | os.PathLike | None = None, labels_table: str | os.PathLike | None = None,
                  progress: Callable[[str], object] | None = None) -> dict:
    """The ``calibrate_ctc`` stage: calibration and candidate threshold from the ctc classifier's held-out
    patients (module docstring), written to ``out_json`` and the reliability diagram to ``out_curve``.

    Parameters
    ----------
    slides : one mapping per slide: ``slide``, ``patient``, ``cells``, ``predictions`` and, for
        ``label_source`` truth, ``truth_labels`` (the slide's truth_labels.zarr).
    metrics_path : the ctc classifier's metrics.json (its split names the held-out patients).
    max_false_per_million, method, bins : the target rate, the calibration method, the diagram's bins.
    label_source, label_column, truth_cells, labels_table : where the held-out cells' truth comes from,
        as for classifier training (:func:`hemoprofile.classify.labels.slide_raw_labels`).

    Returns
    -------
    The result written to ``out_json`` (threshold, calibration, validation and test figures).
    """
    from hemoprofile.classify.labels import SlideInput, slide_raw_labels
    from hemoprofile.io.tables import read_cells, read_label_table
    from hemoprofile.vocabulary import map_labels

    validation_patients, test_patients = held_out_patients(metrics_path)
    truth_table = read_cells(truth_cells, ["slide", "cell_id", "cell_type"]) if truth_cells else None
    label_table = read_label_table(labels_table, label_column) if labels_table else None

    def truth(item: Mapping, cells: pd.DataFrame) -> np.ndarray:
        raw = slide_raw_labels(SlideInput(item["slide"], item["cells"], "", truth_labels=item.get("truth_labels")),
                               cells, label_source, label_column=label_column, truth_cells=truth_table,
                               label_table=label_table)
        # with label_source truth, an object on no true cell (debris, a fragment) is labelled NOT_A_CELL: a
        # negative, so flagging it is a false candidate
        return map_labels(raw, "ctc")

    parts = {}
    for name, patients in (("validation", validation_patients), ("test", test_patients)):
        chosen = [s for s in slides if str(s["patient"]) in set(patients)]
        if not chosen:
            raise ValueError(f"{metrics_path}: none of the {name} patients {patients} has a slide in this cohort")
        parts[name] = held_out_cells(chosen, truth, progress, label_columns=(label_column,))
    result, curve = calibrate_and_choose(parts["validation"], parts["test"], max_false_per_million, method, bins)
    result["validation_patients"], result["test_patients"] = validation_patients, test_patients
    write_calibration(result, curve, out_json, out_curve)
    if progress:
        progress(f"threshold {result['threshold']:.6g} (calibrated {result['threshold_calibrated']:.4g}); "
                 f"validation {result['validation']['false']} false of {result['validation']['n_negatives']:,}; "
                 f"test {result['test']['false']} false of {result['test']['n_negatives']:,}, recall "
                 f"{result['test']['recall']:.3f}; {result['note']}")
    return result
