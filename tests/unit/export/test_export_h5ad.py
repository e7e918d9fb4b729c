"""The AnnData export: what anndata reads back matches the parquet tables it came from (shapes, names,
values), a cohort file stacks slides with unique names, chunked writing equals writing at once, and bad
inputs stop with the file named."""

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers.cell_tables import EMBEDDER_ID, MODEL_IDS, write_cell_tables

import hemoprofile
from hemoprofile.export import SlideInputs, config_digest, write_cells_h5ad

FEATURES = [
    "area", "area_um2", "perimeter", "eccentricity", "solidity", "nucleus_area", "nucleus_ratio", "orientation_deg",
    *[f"{k}_{c}" for c in ("DAPI", "CK", "VIM", "CD45") for k in ("mean", "max", "integrated")],
    *[f"texture_{c}" for c in ("DAPI", "CK", "VIM", "CD45")],
]


def slide_inputs(tmp_path, slide, n, **kwargs):
    paths = write_cell_tables(tmp_path / slide, slide, n, chunk_rows=50, **kwargs)
    return SlideInputs(slide, paths["cells"], paths.get("predictions"), paths.get("embedding"),
                       {"patient": f"pat_{slide}", "condition": "control" if slide.endswith("1") else "disease_a"})


def test_slide_file_reads_back_with_the_tables_values_and_names(tmp_path):
    inputs = slide_inputs(tmp_path, "S1", 230, latent_dim=6)
    summary = write_cells_h5ad([inputs], tmp_path / "S1.h5ad", chunk_rows=64,
                               provenance={"config_sha256": config_digest({"seed": 0})})
    adata = ad.read_h5ad(tmp_path / "S1.h5ad")
    cells = pd.read_parquet(inputs.cells)
    pred = pd.read_parquet(inputs.predictions)
    emb = pd.read_parquet(inputs.embedding)

    assert summary["n_obs"] == 230 and adata.shape == (len(cells), len(FEATURES))
    assert list(adata.var_names) == FEATURES
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X, cells[FEATURES].to_numpy(np.float32))
    assert adata.var.loc["mean_CK", "feature_type"] == "intensity" and adata.var.loc["mean_CK", "channel"] == "CK"
    assert adata.var.loc["texture_VIM", "feature_type"] == "texture"
    assert adata.var.loc["solidity", "feature_type"] == "morphology"

    assert list(adata.obs_names[:2]) == ["S1:1", "S1:2"] and adata.obs_names.is_unique
    expected_obs = {"slide", "patient", "condition", "cell_id", "tile", "at_border", "cell_cluster_id", "gate_label",
                    "p_lineage_lymphoid", "p_lineage_myeloid", "p_ctc_leukocyte", "p_ctc_CTC", "pred_lineage",
                    "pred_ctc", "latent_cluster"}
    assert set(adata.obs.columns) == expected_obs
    np.testing.assert_array_equal(adata.obs["cell_id"], cells["cell_id"])
    np.testing.assert_array_equal(adata.obs["cell_cluster_id"], cells["cluster_id"])
    np.testing.assert_array_equal(adata.obs["at_border"], cells["at_border"])
    assert (adata.obs["slide"] == "S1").all() and (adata.obs["patient"] == "pat_S1").all()
    for column in ("gate_label", "pred_lineage", "pred_ctc", "slide", "latent_cluster"):
        assert isinstance(adata.obs[column].dtype, pd.CategoricalDtype), column
    assert list(adata.obs["pred_lineage"].cat.categories) == ["lymphoid", "myeloid"]  # the classifier's order
    assert (adata.obs["gate_label"].astype(str).to_numpy() == cells["gate_label"].to_numpy()).all()
    assert (adata.obs["pred_ctc"].astype(str).to_numpy() == pred["pred_ctc"].to_numpy()).all()
    np.testing.assert_array_equal(adata.obs["p_ctc_CTC"], pred["p_ctc_CTC"])
    np.testing.assert_array_equal(adata.obs["latent_cluster"].astype(int), emb["cluster"])

    assert adata.obsm["spatial"].shape == (230, 2)
    np.testing.assert_allclose(adata.obsm["spatial"], cells[["x", "y"]].to_numpy() * 0.65)
    np.testing.assert_allclose(adata.obsm["spatial"], cells[["x_um", "y_um"]].to_numpy())
    assert adata.obsm["X_latent"].shape == (230, 6)
    np.testing.assert_array_equal(adata.obsm["X_latent"], emb[[f"z_{i}" for i in range(6)]].to_numpy())
    np.testing.assert_array_equal(adata.obsm["X_map"], emb[["map_x", "map_y"]].to_numpy())

    prov = adata.uns["hemoprofile"]
    assert prov["version"] == hemoprofile.__version__ and prov["spatial_unit"] == "um"
    assert prov["config_sha256"] == config_digest({"seed": 0}) and len(prov["config_sha256"]) == 64
    slide = prov["slides"]["S1"]
    assert dict(slide["classifier_models"]) == MODEL_IDS and slide["embedder_model_id"] == EMBEDDER_ID
    assert slide["pixel_size_um"] == 0.65 and list(slide["channel_names"]) == ["DAPI", "CK", "VIM", "CD45"]


def test_cohort_file_stacks_slides_with_unique_names_and_shared_categories(tmp_path):
    # S2's cells have the same cell ids as S1's and a gate label S1 never has
    slides = [slide_inputs(tmp_path, "S1", 120, gate_labels=("leukocyte",)),
              slide_inputs(tmp_path, "S2", 80, seed=1, gate_labels=("CTC", "other"))]
    write_cells_h5ad(slides, tmp_path / "cohort.h5ad", chunk_rows=32)
    adata = ad.read_h5ad(tmp_path / "cohort.h5ad")
    assert adata.shape == (200, len(FEATURES)) and adata.obs_names.is_unique
    assert adata.obs["slide"].value_counts().to_dict() == {"S1": 120, "S2": 80}
    assert list(adata.obs["slide"].cat.categories) == ["S1", "S2"]
    assert set(adata.obs["gate_label"].cat.categories) == {"leukocyte", "CTC", "other"}
    assert set(adata.obs.loc[adata.obs["slide"] == "S1", "gate_label"]) == {"leukocyte"}
    assert list(adata.obs["condition"].cat.categories) == ["control", "disease_a"]
    both = pd.concat([pd.read_parquet(s.cells) for s in slides])
    np.testing.assert_array_equal(adata.X, both[FEATURES].to_numpy(np.float32))
    assert set(adata.uns["hemoprofile"]["slides"]) == {"S1", "S2"}
    assert adata.obsm["X_latent"].shape == (200, 8)


def test_chunked_writing_gives_the_same_content_as_writing_at_once(tmp_path):
    slides = [slide_inputs(tmp_path, "S1", 101), slide_inputs(tmp_path, "S2", 37, seed=2)]
    write_cells_h5ad(slides, tmp_path / "chunked.h5ad", chunk_rows=7)
    write_cells_h5ad(slides, tmp_path / "once.h5ad", chunk_rows=10**6)
    a, b = ad.read_h5ad(tmp_path / "chunked.h5ad"), ad.read_h5ad(tmp_path / "once.h5ad")
    np.testing.assert_array_equal(a.X, b.X)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert set(a.obsm) == set(b.obsm) == {"spatial", "X_latent", "X_map"}
    for key in a.obsm:
        np.testing.assert_array_equal(a.obsm[key], b.obsm[key])
    assert a.uns["hemoprofile"]["slides"]["S2"]["files"] == b.uns["hemoprofile"]["slides"]["S2"]["files"]


def test_without_pixel_size_or_embedding_centroids_are_in_pixels_and_obsm_holds_only_them(tmp_path):
    inputs = slide_inputs(tmp_path, "S1", 40, pixel_size_um=None, predictions=False, embedding=False)
    write_cells_h5ad([inputs], tmp_path / "S1.h5ad")
    adata = ad.read_h5ad(tmp_path / "S1.h5ad")
    assert set(adata.obsm) == {"spatial"} and adata.uns["hemoprofile"]["spatial_unit"] == "pixel"
    np.testing.assert_allclose(adata.obsm["spatial"], pd.read_parquet(inputs.cells)[["x", "y"]].to_numpy())
    assert not any(c.startswith(("p_", "pred_")) for c in adata.obs.columns) and "latent_cluster" not in adata.obs


def test_an_empty_slide_writes_a_readable_file(tmp_path):
    write_cells_h5ad([slide_inputs(tmp_path, "S1", 0)], tmp_path / "S1.h5ad")
    adata = ad.read_h5ad(tmp_path / "S1.h5ad")
    assert adata.shape == (0, len(FEATURES)) and adata.obsm["X_latent"].shape == (0, 8)
    assert adata.obs["cell_id"].dtype == np.int64 and adata.obs["p_ctc_CTC"].dtype == np.float32


def test_tables_of_other_runs_are_refused_naming_the_file(tmp_path):
    inputs = slide_inputs(tmp_path, "S1", 60)
    short = write_cell_tables(tmp_path / "short", "S1", 59)
    with pytest.raises(ValueError, match=r"short/predictions\.parquet: 59 rows, but .*cells\.parquet has 60"):
        write_cells_h5ad([SlideInputs("S1", inputs.cells, short["predictions"], inputs.embedding)], tmp_path / "x.h5ad")
    shifted = write_cell_tables(tmp_path / "shifted", "S1", 60, cell_id_offset=5)
    with pytest.raises(ValueError, match=r"shifted/embedding\.parquet: cell_id 6 at row 0"):
        write_cells_h5ad([SlideInputs("S1", inputs.cells, inputs.predictions, shifted["embedding"])], tmp_path / "x.h5ad")
    assert not (tmp_path / "x.h5ad").exists()
    with pytest.raises(FileNotFoundError, match="cells table not found: .*nowhere.parquet"):
        write_cells_h5ad([SlideInputs("S1", tmp_path / "nowhere.parquet")], tmp_path / "x.h5ad")


def test_slides_with_different_columns_cannot_share_a_file(tmp_path):
    one = slide_inputs(tmp_path, "S1", 10)
    other = slide_inputs(tmp_path, "S2", 10, latent_dim=4)
    with pytest.raises(ValueError, match=r"S2/cells\.parquet: its latent columns differ"):
        write_cells_h5ad([one, other], tmp_path / "x.h5ad")
    with pytest.raises(ValueError, match="slide named more than once"):
        write_cells_h5ad([one, one], tmp_path / "x.h5ad")


def test_cells_table_row_groups_do_not_matter(tmp_path):
    # predictions written in other row groups than cells.parquet still line up row by row
    inputs = slide_inputs(tmp_path, "S1", 90)
    table = pq.read_table(inputs.predictions)
    regrouped = tmp_path / "regrouped.parquet"
    pq.write_table(table, regrouped, row_group_size=17)
    write_cells_h5ad([SlideInputs("S1", inputs.cells, regrouped, inputs.embedding)], tmp_path / "x.h5ad", chunk_rows=20)
    adata = ad.read_h5ad(tmp_path / "x.h5ad")
    np.testing.assert_array_equal(adata.obs["p_lineage_myeloid"], table.column("p_lineage_myeloid").to_numpy())
