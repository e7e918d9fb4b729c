"""Marker gating against hand-made tables: scales, order of gates, missing values, streaming on parquet."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hemoprofile.config import section_defaults
from hemoprofile.features.gating import (
    apply_gates,
    gate_parquet,
    gate_table,
    resolve_gating,
    rule_threshold,
    sample_parquet_columns,
)


def hand_made_slide(gain=1.0):
    """90 leukocytes (CD45 high, CK low), 8 CTCs (CK high, CD45 low, DAPI+, large), 2 CK+ DAPI- specks
    and 2 small CK+ DAPI+ debris objects (fail the CTC gate on area)."""
    rng = np.random.default_rng(0)
    n_wbc = 90
    intensities = pd.DataFrame({
        "mean_CD45": np.r_[rng.normal(2500, 300, n_wbc), rng.normal(450, 20, 12)],
        "mean_CK": np.r_[rng.normal(350, 15, n_wbc), rng.normal(3000, 500, 12)],
        "max_DAPI": np.r_[rng.normal(4000, 400, n_wbc), rng.normal(2500, 300, 8), [480, 510], [3000, 3200]],
    })
    area = np.r_[rng.normal(180, 30, n_wbc), rng.normal(700, 150, 8), [25, 30], [30, 40]]
    truth = ["leukocyte"] * n_wbc + ["CTC"] * 8 + ["other"] * 4
    return (intensities * gain).assign(area=area), np.array(truth)


@pytest.mark.parametrize("gain", [0.5, 1.0, 3.0])
def test_default_gates_find_ctcs_and_leukocytes_whatever_the_slide_gain(gain):
    df, truth = hand_made_slide(gain)
    labels, thresholds = gate_table(df)
    assert (labels == truth).all()
    assert [g["label"] for g in thresholds] == ["CTC", "leukocyte"]


def test_an_absolute_threshold_does_not_follow_the_slide_gain():
    gates = {"gates": [{"label": "pos", "rules": [{"feature": "v", "op": ">", "value": 5, "scale": "absolute"}]}]}
    df = pd.DataFrame({"v": [1.0, 4, 6, 8]})
    assert gate_table(df, gates)[0].tolist() == ["other", "other", "pos", "pos"]
    assert gate_table(df * 0.7, gates)[0].tolist() == ["other", "other", "other", "pos"]


def test_rule_thresholds_of_each_scale():
    v = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    assert rule_threshold(v, "absolute", 7) == 7
    assert rule_threshold(v, "slide_median", 2) == 6.0
    assert rule_threshold(v, "slide_quantile", 0.5) == 3.0
    assert rule_threshold(v, "slide_quantile", 1.0) == 100.0
    assert rule_threshold(v, "slide_robust_z", 1) == pytest.approx(3 + 1.4826 * 1)
    assert np.isnan(rule_threshold(np.array([np.nan]), "slide_median", 1))


def test_first_matching_gate_wins_and_missing_values_match_nothing():
    thresholds = [
        {"label": "A", "rules": [{"feature": "x", "op": ">=", "threshold": 2}]},
        {"label": "B", "rules": [{"feature": "x", "op": ">=", "threshold": 1},
                                 {"feature": "y", "op": "<", "threshold": 0}]},
    ]
    cols = {"x": np.array([3.0, 1.5, 1.5, np.nan, 0.0]), "y": np.array([0.0, -1, 1, -1, -1])}
    assert apply_gates(cols, thresholds, "none").tolist() == ["A", "B", "none", "none", "none"]


def test_config_is_checked_with_messages_naming_the_gate():
    assert resolve_gating(None) == section_defaults("gating")
    with pytest.raises(ValueError, match=r"gates\[0\].*op"):
        resolve_gating({"gates": [{"label": "X", "rules": [{"feature": "a", "op": "=>", "value": 1}]}]})
    with pytest.raises(ValueError, match="scale"):
        resolve_gating({"gates": [{"label": "X", "rules": [{"feature": "a", "op": ">", "value": 1, "scale": "z"}]}]})
    with pytest.raises(ValueError, match="quantile"):
        resolve_gating({"gates": [{"label": "X", "rules": [{"feature": "a", "op": ">", "value": 5,
                                                           "scale": "slide_quantile"}]}]})
    with pytest.raises(ValueError, match="unknown key"):
        resolve_gating({"colour": "red"})
    with pytest.raises(KeyError, match="mean_XX"):
        gate_table(pd.DataFrame({"a": [1.0]}),
                   {"gates": [{"label": "X", "rules": [{"feature": "mean_XX", "op": ">", "value": 1}]}]})


def test_parquet_sampling_and_regating_stream_row_groups(tmp_path):
    df, truth = hand_made_slide()
    path = tmp_path / "cells.parquet"
    pq.write_table(pa.Table.from_pandas(df.assign(cell_id=np.arange(len(df))), preserve_index=False), path,
                   row_group_size=7)
    sample = sample_parquet_columns(path, ["mean_CK"], max_rows=25)
    np.testing.assert_array_equal(sample["mean_CK"], df["mean_CK"].to_numpy()[::5])
    assert len(sample_parquet_columns(path, ["mean_CK"], max_rows=1000)["mean_CK"]) == len(df)
    with pytest.raises(KeyError, match="cells.parquet"):
        sample_parquet_columns(path, ["nope"], 10)
    gate_parquet(path, path)
    out = pd.read_parquet(path)
    assert (out["gate_label"].to_numpy() == truth).all() and out["cell_id"].tolist() == list(range(len(df)))
