"""hemoprofile.embed.slide: embed_slide with a conditional VAE (unknown condition -> the average one,
with a warning in the table's metadata) and errors naming the files."""

import json

import pyarrow.parquet as pq
import pytest
import torch
from helpers.embed_slides import TINY, two_slides

from hemoprofile.embed.model_files import load_embedder
from hemoprofile.embed.slide import embed_slide, read_embeddings
from hemoprofile.embed.training import train_embedder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return two_slides(tmp_path_factory.mktemp("slides"))


def test_conditional_vae_and_unknown_condition(slides, tmp_path):
    cfg = {**TINY, "condition_on": "batch", "train": {"epochs": 1, "batch_size": 16}}
    train_embedder(slides, tmp_path / "c.pt", tmp_path / "c.json", cfg, seed=0, progress=None)
    model = load_embedder(tmp_path / "c.pt")
    assert model.categories == ["b1", "b2"] and model.model.spec.n_conditions == 2
    with pytest.raises(ValueError, match="give the slide's batch"):
        embed_slide(model, slides[0].patches, slides[0].cells, tmp_path / "x.parquet", progress=None)
    messages = []
    embed_slide(model, slides[0].patches, slides[0].cells, tmp_path / "x.parquet", category="b9",
                device="cpu", progress=messages.append)
    assert any("not in the embedder's training set" in m for m in messages)
    meta = json.loads(pq.read_schema(tmp_path / "x.parquet").metadata[b"hemoprofile"])
    assert meta["category"] == "b9" and "average condition" in meta["warning"] and meta["condition_on"] == "batch"
    frame = read_embeddings([tmp_path / "x.parquet"], max_cells=20, seed=1)
    assert len(frame) == 20 and frame["row"].is_monotonic_increasing and frame["row"].max() < 50


def test_errors_name_the_files(slides, tmp_path):
    train_embedder(slides[:1], tmp_path / "m.pt", tmp_path / "m.json", {**TINY, "train": {"epochs": 1}},
                   progress=None)
    with pytest.raises(ValueError, match="S2/cells.parquet has 30 rows but .*S1/patches.zarr has 50"):
        embed_slide(tmp_path / "m.pt", slides[0].patches, slides[1].cells, tmp_path / "e.parquet", progress=None)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_embedder(tmp_path / "nothing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.pt"):
        load_embedder(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        read_embeddings([tmp_path / "missing.parquet"])
