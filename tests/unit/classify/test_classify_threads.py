"""classify_slide with torch on 1 and 2 CPU threads writes the same predictions.parquet, byte for byte."""

import torch
from helpers.classify_cohort import CHANNELS, write_slide
from helpers.thread_equality import assert_parquet_identical

from hemoprofile.classify.checkpoints import save_classifier
from hemoprofile.classify.inference import classify_slide
from hemoprofile.nn.cnn import CellNet, CellNetSpec


def test_predictions_are_byte_identical_for_1_and_2_threads(tmp_path):
    torch.manual_seed(0)
    classes = ["lymphoid", "myeloid", "CTC"]
    # the default widths (32..256) on 32 px patches: convolutions large enough for torch to split them
    model = CellNet(CellNetSpec(len(CHANNELS), len(classes), patch_size=32)).eval()
    save_classifier(tmp_path / "lineage.pt", model, "lineage", classes, CHANNELS, 32)
    cells, patches = write_slide(tmp_path / "S1", "S1", ["CD4_T", "monocyte", "CTC"] * 100, size=32)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            summary = classify_slide(patches, cells, [str(tmp_path / "lineage.pt")], tmp_path / f"p{threads}.parquet",
                                     device="cpu", mixed_precision=False, batch_size=128, threads=threads)
            assert f"({threads} threads)" in summary["device"]  # torch really ran on that many
    finally:
        torch.set_num_threads(before)
    assert assert_parquet_identical(tmp_path / "p1.parquet", tmp_path / "p2.parquet") == 300
