"""Single-cell image collections: ingest of the PBC fixture and of folders without labels.csv."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from hemoprofile.ingest.collection import fit_crop, ingest_collection, read_crop
from hemoprofile.io.patches import open_patch_array

PBC = Path(__file__).resolve().parents[2] / "fixtures" / "pbc"


def test_pbc_fixture_ingests_into_the_patches_and_cells_contract(tmp_path):
    summary = ingest_collection(PBC, tmp_path / "cells.parquet", tmp_path / "patches.zarr", 24, progress=None)
    cells = pd.read_parquet(tmp_path / "cells.parquet")
    patches, _, attrs = open_patch_array(tmp_path / "patches.zarr")
    listed = pd.read_csv(PBC / "labels.csv")
    assert summary["n_cells"] == len(cells) == patches.shape[0] == 16
    assert patches.shape == (16, 3, 24, 24) and patches.dtype == np.uint8
    assert attrs["channel_names"] == ["R", "G", "B"] and attrs["patch_size"] == 24
    assert cells["path"].tolist() == listed["path"].tolist()  # row order = labels.csv order
    assert cells["label"].tolist() == listed["label"].tolist()
    assert cells["subtype"].tolist() == listed["subtype"].tolist()
    assert (cells["slide"] == "pbc").all() and cells["cell_id"].tolist() == list(range(1, 17))
    assert summary["labels"] == {label: 2 for label in listed["label"].unique()}
    # patch i is the resized crop of row i
    crop = read_crop(PBC / cells["path"][5])
    expected = np.rint(fit_crop(crop, 24) * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(patches[5]), expected)
    assert cells.loc[5, ["height", "width"]].tolist() == list(crop.shape[1:])


def test_without_labels_csv_the_folder_name_is_the_label(tmp_path):
    folder = tmp_path / "mini"
    for cls in ("lymphocyte", "neutrophil"):
        shutil.copytree(PBC / "images" / cls, folder / "images" / cls)
    ingest_collection(folder, tmp_path / "c.parquet", tmp_path / "p.zarr", 16, "float16", progress=None)
    cells = pd.read_parquet(tmp_path / "c.parquet")
    assert cells["label"].tolist() == ["lymphocyte"] * 2 + ["neutrophil"] * 2
    assert "subtype" not in cells.columns
    assert open_patch_array(tmp_path / "p.zarr")[0].dtype == np.float16


def test_multichannel_tiffs_and_patient_column(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "deparray"
    (folder / "crops").mkdir(parents=True)
    rows = []
    for i in range(5):
        tifffile.imwrite(folder / "crops" / f"c{i}.tif", rng.integers(0, 65535, (4, 30, 20)).astype(np.uint16),
                         photometric="minisblack")
        rows.append({"path": f"crops/c{i}.tif", "label": "CTC" if i % 2 else "WBC", "patient": f"P{i // 3}"})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    ingest_collection(folder, tmp_path / "c.parquet", tmp_path / "p.zarr", 16, "uint16",
                      channel_names=["DAPI", "CK", "VIM", "CD45"], progress=None)
    cells = pd.read_parquet(tmp_path / "c.parquet")
    patches, _, attrs = open_patch_array(tmp_path / "p.zarr")
    assert patches.shape == (5, 4, 16, 16) and attrs["channel_names"] == ["DAPI", "CK", "VIM", "CD45"]
    assert cells["patient"].tolist() == ["P0", "P0", "P0", "P1", "P1"]
    # a crop with another channel count is skipped and listed in the QC table, naming the file
    tifffile.imwrite(folder / "crops" / "c4.tif", np.zeros((2, 30, 20), np.uint16))
    summary = ingest_collection(folder, tmp_path / "c2.parquet", tmp_path / "p2.zarr", 16, progress=None)
    assert summary["n_cells"] == 4 and summary["problems"] == {"channels": 1}
    qc = pd.read_csv(tmp_path / "qc.csv", keep_default_na=False)
    row = qc[qc["path"] == "crops/c4.tif"].iloc[0]
    assert row["status"] == "skipped" and row["problem"] == "channels" and "2 channels" in row["details"]


def test_fit_crop_keeps_the_aspect_by_padding_with_edges():
    crop = np.zeros((1, 40, 20), np.float32)
    crop[:, :, :10] = 1.0
    out = fit_crop(crop, 20)
    assert out.shape == (1, 20, 20)
    assert out[0, 10, 0] == pytest.approx(1.0) and out[0, 10, 19] == pytest.approx(0.0)
    stretched = fit_crop(crop, 20, keep_aspect=False)
    assert stretched[0, 10, :9].min() > 0.9 and stretched[0, 10, 11:].max() < 0.1


def test_missing_listed_file_names_it(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    pd.DataFrame({"path": ["images/x.jpg"], "label": ["a"]}).to_csv(folder / "labels.csv", index=False)
    with pytest.raises(ValueError, match="none of its 1 file"):
        ingest_collection(folder, tmp_path / "c.parquet", tmp_path / "p.zarr", 16, progress=None)
    qc = pd.read_csv(tmp_path / "qc.csv")
    assert qc[["path", "status", "problem"]].values.tolist() == [["images/x.jpg", "skipped", "missing"]]
    assert not (tmp_path / "c.parquet").exists() and not (tmp_path / "p.zarr").exists()


def test_command_line_subcommand(tmp_path, capsys):
    import argparse

    from hemoprofile.cli.collection import add_ingest_collection_parser

    parser = argparse.ArgumentParser(prog="hemoprofile")
    add_ingest_collection_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ingest-collection", str(PBC), str(tmp_path / "out"), "--patch-size", "16",
                              "--limit", "3"])
    assert args.func(args) == 0
    assert "pbc: 3 crops" in capsys.readouterr().out
    assert open_patch_array(tmp_path / "out" / "patches.zarr")[0].shape == (3, 3, 16, 16)
