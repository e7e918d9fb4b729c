"""``hemoprofile export-h5ad``: slide folders (+ a sample sheet) -> one .h5ad; bad input -> exit 1 with the file named."""

import anndata as ad
from helpers.cell_tables import write_cell_tables

from hemoprofile.cli.main import main


def test_export_h5ad_writes_slide_folders_with_the_sheet_fields(tmp_path, capsys):
    write_cell_tables(tmp_path / "A1", "A1", 30)
    write_cell_tables(tmp_path / "B1", "B1", 20, seed=1, predictions=False, embedding=False)
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("# comment\nslide\tpatient\tcondition\tpath\nA1\tpa\tcontrol\tx\nB1\tpb\tdisease_a\ty\n")
    # B1 has no predictions or embedding: a cohort file needs the same columns for every slide
    assert main(["export-h5ad", str(tmp_path / "A1"), str(tmp_path / "B1"), "-o", str(tmp_path / "c.h5ad")]) == 1
    assert "B1/cells.parquet: its probabilities" in capsys.readouterr().err

    code = main(["export-h5ad", str(tmp_path / "A1"), "-o", str(tmp_path / "a.h5ad"), "--sheet", str(sheet),
                 "--compression", "none"])
    assert code == 0 and "30 cells x 24 features from 1 slide(s)" in capsys.readouterr().out
    adata = ad.read_h5ad(tmp_path / "a.h5ad")
    assert adata.n_obs == 30 and (adata.obs["patient"] == "pa").all() and "path" not in adata.obs
    assert set(adata.obsm) == {"spatial", "X_latent", "X_map"}

    assert main(["export-h5ad", str(tmp_path / "B1"), "-o", str(tmp_path / "b.h5ad")]) == 0
    assert set(ad.read_h5ad(tmp_path / "b.h5ad").obsm) == {"spatial"}

    other = tmp_path / "other.tsv"
    other.write_text("slide\tpatient\nZ9\tpz\n")
    assert main(["export-h5ad", str(tmp_path / "A1"), "-o", str(tmp_path / "x.h5ad"), "--sheet", str(other)]) == 1
    assert "other.tsv: no row for slide(s) ['A1']" in capsys.readouterr().err
