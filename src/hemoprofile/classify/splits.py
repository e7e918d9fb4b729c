"""Held-out splits: stratified by class, by group (patient or slide), and the train / validation / test
split a task trains on (:func:`make_split`), with exact duplicate patches kept off the held-out side."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def stratified_split(labels: Sequence, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices into parts of the given fractions within each class (seeded).

    Parameters
    ----------
    labels : one label per item.
    fractions : fraction of each part after the first (e.g. ``[0.2]`` for 80/20, ``[0.15, 0.2]`` for
        train/validation/test); the first part takes the rest.

    Returns
    -------
    list of sorted index arrays, first the remainder part, then one per fraction.

    Example
    -------
    >>> [len(p) for p in stratified_split(["a"] * 10 + ["b"] * 10, [0.2], seed=0)]
    [16, 4]
    """
    labels = np.asarray(labels, dtype=object)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for value in sorted(set(labels.tolist()), key=str):
        idx = np.flatnonzero(labels == value)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for p, frac in enumerate(fractions, start=1):
            n = int(round(frac * len(idx)))
            parts[p].extend(idx[start:start + n])
            start += n
        parts[0].extend(idx[start:])
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def group_split(groups: Sequence, labels: Sequence, fractions: Sequence[float], seed: int,
                tries: int = 200) -> list[np.ndarray]:
    """Split indices by group (patient or slide) so every group lies on one side only.

    Groups are drawn in a seeded random order into parts of about ``fractions`` of the groups (the first
    part takes the rest, every part at least one group where there are enough); of ``tries`` draws the
    first where every class appears in every part is kept (else the draw covering most classes), so a
    rare class such as CTCs is not left out of the held-out part by chance.

    Example
    -------
    >>> groups = ["p1", "p1", "p2", "p2", "p3"]
    >>> train, test = group_split(groups, list("ababa"), [0.34], seed=0)
    >>> {groups[i] for i in train} & {groups[i] for i in test}
    set()
    """
    groups = np.asarray([str(g) for g in groups], dtype=object)
    labels = np.asarray(labels, dtype=object)
    names = np.array(sorted(set(groups.tolist())), dtype=object)
    n_parts = len(fractions) + 1
    if len(names) < n_parts:
        raise ValueError(f"{len(names)} group(s) cannot make {n_parts} held-out parts; need at least {n_parts}")
    counts = [max(1, int(round(f * len(names)))) for f in fractions]
    while sum(counts) > len(names) - 1:
        counts[int(np.argmax(counts))] -= 1
        if min(counts) < 1:
            raise ValueError(f"{len(names)} groups are too few for fractions {list(fractions)}")
    all_classes = set(labels.tolist())
    rng = np.random.default_rng(seed)
    best, best_cover = None, -1
    for _ in range(max(1, tries)):
        order = names[rng.permutation(len(names))]
        assign, start = {}, 0
        for p, n in enumerate(counts, start=1):
            for g in order[start:start + n]:
                assign[g] = p
            start += n
        part_of = np.array([assign.get(g, 0) for g in groups])
        cover = sum(len(set(labels[part_of == p].tolist()) & all_classes) for p in range(n_parts))
        if cover > best_cover:
            best, best_cover = part_of, cover
        if cover == n_parts * len(all_classes):
            break
    return [np.flatnonzero(best == p) for p in range(n_parts)]


def patch_hashes(patches: np.ndarray) -> np.ndarray:
    """A content hash per patch (first axis), to find exact copies of one cell across splits."""
    flat = np.ascontiguousarray(patches).reshape(len(patches), -1)
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=12).hexdigest() for row in flat], dtype=object)


def make_split(labels: np.ndarray, groups: np.ndarray | None, val_fraction: float, test_fraction: float,
               seed: int, patches: np.ndarray | None = None) -> tuple[list[np.ndarray], dict]:
    """Train / validation / test indices, held out by group where there are at least 3 groups.

    With 3+ groups every part is whole groups (:func:`group_split`); with 2 the test part is one group
    and validation is stratified within the other; with 1 (a collection) all parts are stratified by
    class and cells whose patch is an exact copy of a training patch are dropped from validation and
    test (:func:`patch_hashes`). Returns ``(parts, description)``.
    """
    n_groups = len(set(groups.tolist())) if groups is not None else 0
    info: dict = {}
    if n_groups >= 3:
        parts = group_split(groups, labels, [val_fraction, test_fraction], seed)
        info["held_out_by"] = "group"
    elif n_groups == 2:
        rest, test = group_split(groups, labels, [0.5], seed)
        tr, va = stratified_split(labels[rest], [val_fraction / (1 - test_fraction)], seed)
        parts = [rest[tr], rest[va], test]
        info["held_out_by"] = "group (test); cells (validation)"
    else:
        parts = stratified_split(labels, [val_fraction, test_fraction], seed)
        info["held_out_by"] = "cells (stratified; no slide/patient to hold out)"
        if patches is not None:
            train_hashes = set(patch_hashes(patches[parts[0]]).tolist())
            for p in (1, 2):
                dup = np.array([h in train_hashes for h in patch_hashes(patches[parts[p]])], bool)
                info[f"duplicates_dropped_{'validation' if p == 1 else 'test'}"] = int(dup.sum())
                parts[p] = parts[p][~dup]
    if groups is not None:
        for name, idx in zip(("train", "validation", "test"), parts):
            info[f"{name}_groups"] = sorted(set(groups[idx].tolist()))
    for name, idx in zip(("train", "validation", "test"), parts):
        info[f"n_{name}"] = int(len(idx))
    return parts, info
