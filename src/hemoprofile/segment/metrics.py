"""Instance segmentation scores: IoU between objects, one-to-one matching, precision, recall and AP.

AP here is the quantity the Cellpose and StarDist papers (and the DSB 2018 challenge) call *average
precision* at an IoU threshold t: ``AP(t) = TP / (TP + FP + FN)``, where a true object and a predicted
object match when their IoU is at least t and each object matches at most one other.

IoUs come from the sparse contingency table of the two label images (one pass over the pixels with
``np.unique`` over the pairs of ids that overlap), never from dense per-object pixel loops, so a slide-
sized image with millions of objects is fine.

Ratios with a zero denominator (e.g. precision of an image without predictions) are 1.0 when there is
nothing to get wrong and 0.0 otherwise; see :func:`_ratio`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment


def _ratio(numerator: float, denominator: float) -> float:
    # 0/0 means nothing to find and nothing found: perfect, not undefined.
    return float(numerator) / float(denominator) if denominator > 0 else 1.0


def iou_pairs(true_labels: np.ndarray, pred_labels: np.ndarray) -> dict:
    """Sparse IoU table of all overlapping (true, predicted) object pairs.

    Parameters
    ----------
    true_labels, pred_labels : integer label images of the same shape, 0 = background.

    Returns
    -------
    dict with ``true_ids``, ``pred_ids`` (the object ids present in each image), and for every
    overlapping pair ``true``, ``pred`` (ids), ``intersection`` and ``iou`` arrays.

    Example
    -------
    >>> a = np.array([[1, 1, 0, 0]]); b = np.array([[0, 2, 2, 0]])
    >>> iou_pairs(a, b)["iou"].round(3).tolist()
    [0.333]
    """
    true_labels = np.asarray(true_labels)
    pred_labels = np.asarray(pred_labels)
    if true_labels.shape != pred_labels.shape:
        raise ValueError(f"label images differ in shape: {true_labels.shape} vs {pred_labels.shape}")
    t = true_labels.ravel().astype(np.int64)
    p = pred_labels.ravel().astype(np.int64)
    true_ids, true_area = np.unique(t[t > 0], return_counts=True)
    pred_ids, pred_area = np.unique(p[p > 0], return_counts=True)
    both = (t > 0) & (p > 0)
    if both.any():
        pairs, inter = np.unique(np.stack([t[both], p[both]]), axis=1, return_counts=True)
        pt, pp = pairs
    else:
        pt = pp = np.zeros(0, np.int64)
        inter = np.zeros(0, np.int64)
    area_t = true_area[np.searchsorted(true_ids, pt)] if pt.size else np.zeros(0, np.int64)
    area_p = pred_area[np.searchsorted(pred_ids, pp)] if pp.size else np.zeros(0, np.int64)
    iou = inter / (area_t + area_p - inter) if inter.size else np.zeros(0)
    return {"true_ids": true_ids, "pred_ids": pred_ids, "true": pt, "pred": pp, "intersection": inter,
            "iou": iou.astype(np.float64)}


def iou_matrix(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """Dense IoU matrix (n_true x n_pred), rows and columns in increasing id order (small images only)."""
    table = iou_pairs(true_labels, pred_labels)
    matrix = np.zeros((table["true_ids"].size, table["pred_ids"].size))
    matrix[np.searchsorted(table["true_ids"], table["true"]), np.searchsorted(table["pred_ids"], table["pred"])] = table["iou"]
    return matrix


def _match(table: dict, iou_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches (true id, pred id, IoU) with IoU >= threshold."""
    ok = table["iou"] >= iou_threshold
    t, p, iou = table["true"][ok], table["pred"][ok], table["iou"][ok]
    if iou_threshold > 0.5 or t.size == 0:
        # Above 0.5 an object can have IoU > 0.5 with at most one other (their intersections would
        # exceed its area), so every candidate pair is a match.
        return t, p, iou
    # At or below 0.5 candidates can conflict: maximise the number of matches, then their total IoU
    # (as StarDist does), over the objects that have a candidate at all.
    ut, it = np.unique(t, return_inverse=True)
    up, ip = np.unique(p, return_inverse=True)
    pair_iou = np.zeros((ut.size, up.size))
    pair_iou[it, ip] = iou
    score = np.where(pair_iou > 0, 1.0 + pair_iou / (2.0 * max(1, min(ut.size, up.size))), 0.0)
    rows, cols = linear_sum_assignment(score, maximize=True)
    valid = score[rows, cols] > 0
    rows, cols = rows[valid], cols[valid]
    return ut[rows], up[cols], pair_iou[rows, cols]


def match_instances(true_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """Match predicted objects to true ones one to one at an IoU threshold and score the result.

    Parameters
    ----------
    true_labels, pred_labels : integer label images of the same shape, 0 = background.
    iou_threshold : a pair matches when its IoU is at least this (0 < t <= 1).

    Returns
    -------
    dict with ``tp``, ``fp``, ``fn``, ``precision`` = TP/(TP+FP), ``recall`` = TP/(TP+FN),
    ``ap`` = TP/(TP+FP+FN), ``f1`` = 2TP/(2TP+FP+FN), ``mean_matched_iou`` (0 without matches),
    ``n_true``, ``n_pred``, ``iou_threshold``.

    Example
    -------
    >>> t = np.zeros((4, 8), int); t[:, :3] = 1; t[:, 5:] = 2
    >>> p = np.zeros((4, 8), int); p[:, :3] = 7
    >>> r = match_instances(t, p, 0.5); (r["tp"], r["fp"], r["fn"], r["ap"])
    (1, 0, 1, 0.5)
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    table = iou_pairs(true_labels, pred_labels)
    _, _, ious = _match(table, iou_threshold)
    return _scores(int(ious.size), int(table["true_ids"].size), int(table["pred_ids"].size), float(ious.sum()),
                   iou_threshold)


def _scores(tp: int, n_true: int, n_pred: int, iou_sum: float, threshold: float) -> dict:
    fp, fn = n_pred - tp, n_true - tp
    return {
        "iou_threshold": float(threshold),
        "n_true": n_true,
        "n_pred": n_pred,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "ap": _ratio(tp, tp + fp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "mean_matched_iou": iou_sum / tp if tp else 0.0,
    }


def average_precision(
    true_list: Iterable[np.ndarray], pred_list: Iterable[np.ndarray], thresholds: Sequence[float] = (0.5, 0.75)
) -> dict:
    """Score a set of images at several IoU thresholds.

    Two aggregates per threshold, because papers use both:

    - pooled (keys as :func:`match_instances`: ``ap``, ``precision``, ...): TP, FP and FN summed over all
      images, then the ratios (StarDist's ``matching_dataset(by_image=False)``); robust to images with
      few objects.
    - ``ap_image_mean``: the mean over images of each image's AP (how the Cellpose paper and the DSB 2018
      challenge average).

    Returns
    -------
    dict ``{threshold: scores}`` with the pooled scores, ``ap_image_mean`` and ``n_images``.

    Example
    -------
    >>> t = np.zeros((4, 4), int); t[:2, :2] = 1
    >>> average_precision([t, t], [t, np.zeros_like(t)], (0.5,))[0.5]["ap"]
    0.5
    """
    tables = [iou_pairs(t, p) for t, p in zip(true_list, pred_list, strict=True)]
    result = {}
    for threshold in thresholds:
        tp = n_true = n_pred = 0
        iou_sum = 0.0
        per_image = []
        for table in tables:
            _, _, ious = _match(table, threshold)
            k, nt, npred = int(ious.size), int(table["true_ids"].size), int(table["pred_ids"].size)
            tp, n_true, n_pred, iou_sum = tp + k, n_true + nt, n_pred + npred, iou_sum + float(ious.sum())
            per_image.append(_ratio(k, nt + npred - k))
        scores = _scores(tp, n_true, n_pred, iou_sum, threshold)
        scores["ap_image_mean"] = float(np.mean(per_image)) if per_image else 1.0
        scores["n_images"] = len(tables)
        result[float(threshold)] = scores
    return result


def instance_scores(true_labels: Sequence[np.ndarray], pred_labels: Sequence[np.ndarray],
                    thresholds: Sequence[float] = (0.5, 0.75)) -> dict:
    """The pooled scores of :func:`average_precision` as one flat dict: ``ap@0.5``, ``precision@0.5``,
    ``recall@0.5``, ``ap_mean_image@0.5`` (mean of per-image AP), the same at each threshold, and
    ``n_images``, ``n_true``.

    Example
    -------
    >>> t = np.zeros((4, 4), int); t[:2, :2] = 1
    >>> s = instance_scores([t], [t], (0.5,)); (s["ap@0.5"], s["n_true"])
    (1.0, 1)
    """
    scores = average_precision([np.asarray(t) for t in true_labels], [np.asarray(p) for p in pred_labels],
                               tuple(float(t) for t in thresholds))
    out = {}
    for t in thresholds:
        r, key = scores[float(t)], f"{t:g}"
        out[f"ap@{key}"] = r["ap"]
        out[f"precision@{key}"] = r["precision"]
        out[f"recall@{key}"] = r["recall"]
        out[f"ap_mean_image@{key}"] = r["ap_image_mean"]
    out["n_images"] = len(true_labels)
    out["n_true"] = int(scores[float(thresholds[0])]["n_true"])
    return out
