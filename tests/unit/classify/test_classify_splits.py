"""Held-out splits: stratified and seeded, whole groups on one side, rare classes in every part, exact copies
kept off the held-out side."""

import numpy as np

from hemoprofile.classify.splits import group_split, make_split, stratified_split


def test_stratified_split_keeps_proportions_and_is_seeded():
    labels = np.array(["a"] * 50 + ["b"] * 10)
    parts = stratified_split(labels, [0.2], seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(60))
    assert (labels[parts[1]] == "b").sum() == 2 and (labels[parts[1]] == "a").sum() == 10
    assert all(np.array_equal(p, q) for p, q in zip(parts, stratified_split(labels, [0.2], seed=1)))


def test_group_split_holds_out_whole_groups_and_covers_rare_classes():
    groups = np.repeat([f"P{i}" for i in range(8)], 10)
    labels = np.array(["leukocyte"] * 80, dtype=object)
    labels[[5, 35, 75]] = "CTC"  # only patients 0, 3 and 7 have CTCs
    parts = group_split(groups, labels, [0.25, 0.25], seed=0)
    sets = [set(groups[p]) for p in parts]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert all("CTC" in set(labels[p]) for p in parts)


def test_make_split_drops_exact_copies_from_held_out_parts():
    patches = np.zeros((40, 1, 4, 4), np.uint8)
    patches[:, 0, 0, 0] = np.arange(40)
    patches[30:] = patches[:10]  # 10 copies of other cells
    labels = np.array(["a", "b"] * 20, dtype=object)
    parts, info = make_split(labels, None, 0.25, 0.25, seed=0, patches=patches)
    train_keys = {p.tobytes() for p in patches[parts[0]]}
    for idx in parts[1:]:
        assert not any(p.tobytes() in train_keys for p in patches[idx])
    assert "cells" in info["held_out_by"]
