"""The human-in-the-loop round trip: segment a slide made of the DSB 2018 fixture images, export the least
sure tiles, "correct" them (the expert masks replace the exported ones, as a person would in the Cellpose
GUI), fine-tune the bundled model a few steps, and check the held-out AP and the sidecar's record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.segmentation import relabel_sequential

from hemoprofile.cli.main import main
from hemoprofile.io import create_ome_zarr_image
from hemoprofile.segment.annotation import export_for_annotation
from hemoprofile.segment.cellpose_model import read_sidecar
from hemoprofile.segment.tiled import segment_slide
from hemoprofile.segment.training import data as st
from hemoprofile.segment.training.annotations import file_sha256, read_annotation_folder
from hemoprofile.segment.training.evaluate import evaluate_segmenter
from hemoprofile.models import resolve_model
from hemoprofile.segment.training.finetune import (
    bundled_segmentation_model,
    finetune_from_folders,
)

REPO = Path(__file__).resolve().parents[3]
FIXTURE_DSB = REPO / "tests" / "fixtures" / "dsb2018"
CFG = {"backend": "classical", "diameter": 20, "channels": {"nucleus": "DAPI", "cytoplasm": []}}


def start_model() -> str:
    return str(resolve_model(bundled_segmentation_model()))


def dsb_slide(root: Path):
    """The three fixture images side by side as one single-channel slide (128 px tiles), and the truth."""
    ids = st.dsb_image_ids(FIXTURE_DSB)
    images, labels = zip(*(st.read_dsb_image(FIXTURE_DSB, i) for i in ids))
    image = np.concatenate(images, axis=1)
    truth = np.concatenate([lab + (lab > 0) * 1000 * k for k, lab in enumerate(labels)], axis=1)
    array = create_ome_zarr_image(root / "S1" / "preprocessed.zarr", (1, *image.shape), "uint16", 128, ["DAPI"],
                                  pixel_size_um=0.65, name="preprocessed")
    array[0] = image.astype(np.uint16) * 257
    segment_slide(root / "S1" / "preprocessed.zarr", root / "S1" / "labels.zarr", CFG, progress=None)
    return root / "S1", truth


def correct(folder: Path, table, truth) -> None:
    """What a person does in the GUI: replace each tile's masks by the right ones and save the _seg.npy."""
    for row in table.itertuples():
        path = folder / f"{row.name}_seg.npy"
        record = np.load(path, allow_pickle=True).item()
        record["masks"] = relabel_sequential(truth[row.y0:row.y1, row.x0:row.x1])[0].astype(np.uint16)
        np.save(path, record, allow_pickle=True)


@pytest.mark.slow  # Cellpose training and scoring on the CPU (about 40 s on two shared cores)
def test_export_correct_finetune_round_trip(tmp_path):
    slide, truth = dsb_slide(tmp_path)
    out = tmp_path / "fix"
    table = export_for_annotation(slide / "preprocessed.zarr", slide / "labels.zarr", out, k=6, segment_cfg=CFG,
                                  progress=None)
    folder = out / "cellpose"
    correct(folder, table, truth)
    model = tmp_path / "mine.pt"
    params = {"finetune": {"steps": 8, "validation_fraction": 0.34}, "batch_size": 4, "bsize": 96}
    result = finetune_from_folders([folder], model, params, CFG, start_model=start_model())

    before, after = result["before"], result["after"]
    assert before["n_images"] == after["n_images"] == 2
    assert after["ap@0.5"] >= before["ap@0.5"]  # the corrected masks do not make the model worse
    assert result["steps"] == 8

    sidecar = read_sidecar(model)
    ft = sidecar["finetune"]
    assert ft["validation"]["before"] == before and ft["validation"]["after"] == after
    assert ft["start_model"] == start_model() and ft["start_model_sha256"] == file_sha256(start_model())
    assert ft["steps_run"] == 8 and sidecar["training"]["steps"] == 8
    data = sidecar["data"]
    assert data["folders"] == [str(folder)] and data["n_images"] == 6 and data["n_files"] == 12
    assert len(data["train"]) == 4 and len(data["validation"]) == 2
    assert not set(data["train"]) & set(data["validation"])
    # the hashes are those of the corrected files: the data the model saw
    for entry in data["files"]:
        assert entry["masks_sha256"] == file_sha256(entry["masks"]) and entry["masks"].endswith("_seg.npy")
    assert json.loads(model.with_name("mine_metrics.json").read_text())["finetune"] == ft
    assert sidecar["nbase"] == read_sidecar(start_model())["nbase"]

    # the recorded "after" is the written model's score on the held-out corrected tiles
    items = {f"{folder.name}/{i.name}": i for i in read_annotation_folder(folder)}
    held_out = [items[name] for name in data["validation"]]
    rescored = evaluate_segmenter(model, [i.image for i in held_out], [i.labels for i in held_out])
    assert rescored["ap@0.5"] == pytest.approx(after["ap@0.5"])


def test_train_segmenter_cli_reports_bad_folders(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["train-segmenter", str(empty), "--out", str(tmp_path / "m.pt"), "--start", start_model()])
    assert code == 1 and "holds no image / mask pairs" in capsys.readouterr().err
    code = main(["train-segmenter", str(empty), "--out", str(tmp_path / "m.pt"), "--start", str(tmp_path / "no.pt")])
    assert code == 1 and "no.pt" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
