"""hemoprofile.report.sections.latent_conditions: the latent clusters by condition section (heatmap, table,
medoid gallery) from the fixtures' table, and its notes when the table is missing or empty."""

import pandas as pd
import pytest
from helpers import report_fixtures

from hemoprofile.report.inputs import ReportContext
from hemoprofile.report.sections import latent_conditions


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return report_fixtures.make_report_inputs(tmp_path_factory.mktemp("cohort"))


def test_the_section_shows_heatmap_table_and_medoid_patches(inputs):
    ctx = ReportContext(inputs, lambda m: None)
    html = latent_conditions.render(ctx)
    table = pd.read_parquet(inputs.clusters_by_condition)
    assert "not available" not in html
    assert html.count("<h4>Cluster ") == len(table[table["n_cells"] > 0]) == 3
    # heatmap + 3 medoids per cluster, every one a patch from patches.zarr
    assert html.count("data:image/png;base64,") == 1 + 3 * 3 and "no image" not in html
    assert 'class="sortable' in html and "share control" in html and "log2 enr. disease_b" in html
    assert "patients disease_b" in html and "1/1" in html  # P3 carries every cluster; 1 disease_b patient
    assert "the VAE" in html and not ctx.notes.lines()


def test_a_cvae_table_says_what_the_model_was_conditioned_on(inputs, tmp_path):
    import json

    import pyarrow.parquet as pq

    t = pq.read_table(inputs.clusters_by_condition)
    meta = json.loads(t.schema.metadata[b"hemoprofile"])
    meta["condition_on"] = "condition"
    path = tmp_path / "cbc.parquet"
    pq.write_table(t.replace_schema_metadata({b"hemoprofile": json.dumps(meta).encode()}), path)
    ctx = ReportContext(dataclass_replace(inputs, clusters_by_condition=str(path)), lambda m: None)
    html = latent_conditions.render(ctx)
    assert "conditional VAE (conditioned on condition)" in html


def dataclass_replace(inputs, **kw):
    import dataclasses

    return dataclasses.replace(inputs, **kw)


def test_missing_or_empty_table_is_explained(inputs, tmp_path):
    ctx = ReportContext(dataclass_replace(inputs, clusters_by_condition=str(tmp_path / "none.parquet")),
                        lambda m: None)
    assert "does not exist" in latent_conditions.render(ctx)
    empty = tmp_path / "empty.parquet"
    pd.read_parquet(inputs.clusters_by_condition).head(0).to_parquet(empty)
    ctx = ReportContext(dataclass_replace(inputs, clusters_by_condition=str(empty)), lambda m: None)
    assert "has no clusters" in latent_conditions.render(ctx)


def test_medoids_of_a_slide_without_patches_become_a_note(inputs):
    slides = {s: {k: v for k, v in p.items() if k != "patches"} for s, p in inputs.slides.items()}
    ctx = ReportContext(dataclass_replace(inputs, slides=slides), lambda m: None)
    html = latent_conditions.render(ctx)
    assert "no image" in html
    assert any("no patches.zarr for medoids" in n for n in ctx.notes.lines())
