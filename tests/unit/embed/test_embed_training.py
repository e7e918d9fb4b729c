"""hemoprofile.embed.training: train_embedder on tiny written slides is deterministic and writes its
metrics; the slides' cells give the same latents through the training sample and through embed_slide,
whose table keeps the embedding.parquet contract."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.embed_slides import TINY, two_slides

from hemoprofile.embed.clustering import apply_pca
from hemoprofile.embed.model_files import load_embedder
from hemoprofile.embed.slide import embed_slide
from hemoprofile.embed.training import _unit_tensor, encode, train_embedder
from hemoprofile.io.patches import open_patch_array

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return two_slides(tmp_path_factory.mktemp("slides"))


def test_unit_tensor_scales_stored_patches():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (3, 2, 4, 4)).astype(np.uint8)
    assert torch.equal(_unit_tensor(u8), torch.from_numpy(u8).float() / 255.0)
    u16 = rng.integers(0, 65536, (3, 2, 4, 4)).astype(np.uint16)
    assert torch.equal(_unit_tensor(u16), torch.from_numpy(u16.astype(np.float32) / np.float32(65535)))
    f16 = rng.normal(0.5, 0.5, (3, 2, 4, 4)).astype(np.float16)
    assert torch.equal(_unit_tensor(f16), torch.from_numpy(f16.astype(np.float32)).clamp(0.0, 1.0))
    assert _unit_tensor(u8[:, ::-1]).dtype == torch.float32  # non-contiguous input


def test_train_is_deterministic_and_embed_writes_the_contract(slides, tmp_path):
    m1 = train_embedder(slides, tmp_path / "a.pt", tmp_path / "a.json", TINY, seed=4, threads=1, progress=None)
    m2 = train_embedder(slides, tmp_path / "b.pt", tmp_path / "b.json", TINY, seed=4, threads=1, progress=None)
    a, b = load_embedder(tmp_path / "a.pt"), load_embedder(tmp_path / "b.pt")
    for (name, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), name
    assert m1["history"] == m2["history"]
    assert m1["cluster"] == m2["cluster"] and m1["metrics_training_sample"] == m2["metrics_training_sample"]
    for key in ("means", "covariances", "weights"):
        assert np.array_equal(a.clustering[key], b.clustering[key]), key
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["n_cells"] == 40 + 30 and saved["slides"] == ["S1", "S2"]  # capped at cells_per_slide
    lab = saved["metrics_training_sample"]["label"]  # collection label column found
    assert lab["n_labelled"] == 70 and 0.0 <= lab["purity"] <= 1.0
    assert saved["metrics_training_sample"]["batch"]["n_batches"] == 2

    out = tmp_path / "S2_embedding.parquet"
    summary = embed_slide(tmp_path / "a.pt", slides[1].patches, slides[1].cells, out, device="cpu",
                          batch_size=7, progress=None)
    table = pd.read_parquet(out)
    assert list(table.columns) == ["slide", "cell_id", "z_0", "z_1", "z_2", "map_x", "map_y", "cluster"]
    cells = pd.read_parquet(slides[1].cells)
    assert table["slide"].eq("S2").all() and np.array_equal(table["cell_id"], cells["cell_id"])
    assert table["cluster"].between(0, a.clustering["k"] - 1).all() and summary["n_cells"] == 30
    z = table[["z_0", "z_1", "z_2"]].to_numpy()
    assert np.allclose(table[["map_x", "map_y"]].to_numpy(), apply_pca(a.pca, z), atol=1e-5)
    # the same cells give the same latents through the training sample and through embed_slide
    array, _, _ = open_patch_array(slides[1].patches)
    assert np.allclose(encode(a.model, np.asarray(array[:5])), z[:5], atol=1e-5)
