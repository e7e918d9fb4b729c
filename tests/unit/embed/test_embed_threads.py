"""embed_slide with torch on 1 and 2 CPU threads writes the same embedding.parquet, byte for byte."""

import torch
from helpers.embed_slides import TINY, write_slide
from helpers.thread_equality import assert_parquet_identical

from hemoprofile.embed.slide import embed_slide
from hemoprofile.embed.training import train_embedder


def test_embedding_is_byte_identical_for_1_and_2_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train = write_slide(tmp_path / "T1", "T1", 40, 1.0, 1, size=32)
        cfg = {**TINY, "latent_dim": 8, "widths": [32, 64], "train": {"epochs": 1, "batch_size": 16}}
        train_embedder([train], tmp_path / "m.pt", tmp_path / "m.json", cfg, seed=0, progress=None)
        slide = write_slide(tmp_path / "S1", "S1", 400, 1.2, 2, size=32)
        for threads in (1, 2):
            embed_slide(tmp_path / "m.pt", slide.patches, slide.cells, tmp_path / f"e{threads}.parquet",
                        device="cpu", mixed_precision=False, batch_size=64, threads=threads, progress=None)
            assert torch.get_num_threads() == 1  # blocks in parallel, torch on one thread each
    finally:
        torch.set_num_threads(before)
    assert assert_parquet_identical(tmp_path / "e1.parquet", tmp_path / "e2.parquet") == 400
