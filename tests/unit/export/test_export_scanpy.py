"""A cohort .h5ad works in scanpy: neighbours on the latent space and a UMAP run on it.

scanpy is a test-only dependency (the `test` extra in pyproject.toml); hemoprofile itself never imports it.
"""

import anndata as ad
import pytest
import scanpy as sc
from helpers.cell_tables import write_cell_tables

from hemoprofile.export import SlideInputs, write_cells_h5ad


# slow: numba compiles UMAP's and the neighbour graph's kernels on first use (25 s warm, ~60 s cold on 2
# busy cores); the file itself is 180 cells
@pytest.mark.slow
def test_scanpy_neighbours_and_umap_run_on_the_latent_space_of_a_small_cohort(tmp_path):
    slides = []
    for i, slide in enumerate(("S1", "S2", "S3")):
        paths = write_cell_tables(tmp_path / slide, slide, 60, seed=i)
        slides.append(SlideInputs(slide, paths["cells"], paths["predictions"], paths["embedding"],
                                  {"patient": f"p{i}", "condition": "control"}))
    write_cells_h5ad(slides, tmp_path / "cohort.h5ad", chunk_rows=25)
    adata = ad.read_h5ad(tmp_path / "cohort.h5ad")
    sc.pp.neighbors(adata, use_rep="X_latent", n_neighbors=10, random_state=0)
    sc.tl.umap(adata, random_state=0)
    assert adata.obsp["connectivities"].shape == (180, 180)
    assert adata.obsm["X_umap"].shape == (180, 2)
    # the plotting helpers find the categorical obs columns and the spatial coordinates
    sc.pl.embedding(adata, basis="spatial", color="latent_cluster", show=False)
    sc.pl.umap(adata, color=["slide", "pred_ctc"], show=False)
