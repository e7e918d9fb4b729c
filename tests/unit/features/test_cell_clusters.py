"""Touching-cell clusters from label adjacency: pairs, distances, tiling and union-find against hand-made labels."""

import numpy as np
import pytest

from hemoprofile.features.cell_clusters import (
    ClusterAccumulator,
    ClusterGeometry,
    adjacent_pairs,
    cluster_table,
    clusters_from_labels,
    lookup_cluster_ids,
    members_by_cluster,
)
from hemoprofile.io import halo_window, iter_tiles


def test_touching_includes_diagonal_contact_and_ignores_background():
    lab = np.zeros((6, 6), np.uint32)
    lab[0:2, 0:2] = 1
    lab[2:4, 2:4] = 2  # diagonal contact with 1
    lab[0:1, 4:6] = 3  # background between it and 1 and 2: touches nothing
    assert adjacent_pairs(lab).tolist() == [[1, 2]]


def test_distance_joins_cells_up_to_the_gap():
    lab = np.zeros((5, 20), np.uint32)
    lab[1:4, 0:3] = 1
    lab[1:4, 5:8] = 2  # gap of 2 px from 1
    lab[1:4, 14:17] = 3  # gap of 6 px from 2
    assert adjacent_pairs(lab, distance_px=0).tolist() == []
    assert adjacent_pairs(lab, distance_px=2).tolist() == [[1, 2]]
    assert adjacent_pairs(lab, distance_px=6).tolist() == [[1, 2], [2, 3]]


def test_core_anchoring_finds_every_pair_exactly_once_across_tiles():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 6, (70, 70)).astype(np.uint32)  # dense: many pairs on every seam
    whole = adjacent_pairs(lab)
    found = []
    for tile in iter_tiles(lab.shape, 16):
        y0, y1, x0, x1 = halo_window(tile, 1, lab.shape)
        core = (slice(tile.y0 - y0, tile.y1 - y0), slice(tile.x0 - x0, tile.x1 - x0))
        found.append(adjacent_pairs(lab[y0:y1, x0:x1], core=core))
    np.testing.assert_array_equal(np.unique(np.concatenate(found), axis=0), whole)


def test_union_find_numbers_clusters_by_their_smallest_member():
    acc = ClusterAccumulator()
    acc.add(np.array([[10, 11], [3, 20]]))
    acc.add(np.array([[11, 12], [20, 21], [10, 11]]))
    ids, clusters = acc.resolve()
    assert ids.tolist() == [3, 10, 11, 12, 20, 21]
    assert clusters.tolist() == [0, 1, 1, 1, 0, 0]
    assert members_by_cluster(ids, clusters) == [[3, 20, 21], [10, 11, 12]]
    assert lookup_cluster_ids(np.array([1, 12, 21, 99]), ids, clusters).tolist() == [-1, 1, 0, -1]
    assert ClusterAccumulator().resolve()[0].size == 0


def test_cluster_table_has_members_size_and_box():
    ids, clusters = clusters_from_labels(np.array([[1, 2, 0, 3, 4, 0, 5]]))
    geometry = ClusterGeometry(2)
    geometry.add(lookup_cluster_ids(np.array([1, 2, 3, 4, 5]), ids, clusters),
                 bbox_y0=np.zeros(5), bbox_x0=np.arange(5), bbox_y1=np.ones(5), bbox_x1=np.arange(1, 6),
                 area=np.ones(5), y=np.zeros(5), x=np.arange(5.0))
    table = cluster_table("S", ids, clusters, geometry, pixel_size_um=0.5).to_pandas()
    assert table["cell_ids"].map(list).tolist() == [[1, 2], [3, 4]]
    assert table["size"].tolist() == [2, 2]
    assert table[["bbox_x0", "bbox_x1"]].values.tolist() == [[0, 2], [2, 4]]
    assert table["x"].tolist() == [0.5, 2.5] and table["x_um"].tolist() == [0.25, 1.25]
    assert cluster_table("S", ids, clusters).to_pandas()["y"].isna().all()


def test_bad_input_raises():
    with pytest.raises(ValueError, match="2-D"):
        adjacent_pairs(np.zeros((2, 2, 2), np.uint32))
