"""Bundled models are package data, named ``bundled:<name>``: found from any working directory, by the
config's default, the loaders and the command line; unknown names and missing paths fail with errors that
name them."""

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from helpers.segment_images import disc_cells

from hemoprofile.cli import main
from hemoprofile.config import section_defaults, validate_config
from hemoprofile.models import BUNDLED_MODELS, DEFAULT_CLASSIFIER_MODEL, DEFAULT_SEGMENTATION_MODEL, resolve_model

REPO = Path(__file__).resolve().parents[3]
PACKAGE_MODELS = REPO / "src" / "hemoprofile" / "models"


@pytest.mark.parametrize("name", sorted(BUNDLED_MODELS))
def test_every_bundled_name_resolves_to_its_package_file_from_anywhere(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = resolve_model(f"bundled:{name}")
    assert path.is_absolute() and path.is_file() and path.stem == name
    assert (path.parent / "README.md").is_file(), "a bundled model keeps its model card beside it"


def test_segmentation_model_keeps_its_sidecar_beside_it():
    path = resolve_model(DEFAULT_SEGMENTATION_MODEL)
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert {"nbase", "diam_mean", "nchan"} <= set(sidecar)


def test_config_defaults_name_the_bundled_segmentation_model():
    assert section_defaults("segment")["model"] == DEFAULT_SEGMENTATION_MODEL
    config = validate_config(__import__("yaml").safe_load((REPO / "config" / "config.yaml").read_text()))
    assert resolve_model(config["segment"]["model"]).is_file()


def test_unknown_name_and_missing_path_errors_name_them(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"bundled:nothing.*bundled:hemoprofile_cellpose"):
        resolve_model("bundled:nothing", "segment.model")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"--model: model file 'm/x\.pt' \(looked for {tmp_path}/m/x\.pt\) not found"):
        resolve_model("m/x.pt", "--model")
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="is a folder"):
        resolve_model("m", "--model")
    (tmp_path / "m" / "x.pt").write_bytes(b"weights")
    assert resolve_model("m/x.pt") == Path("m/x.pt")


def test_classify_cli_uses_the_bundled_model_from_another_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["classify", str(REPO / "tests" / "fixtures" / "pbc"), "--out", "pred.csv", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert DEFAULT_CLASSIFIER_MODEL.startswith("bundled:") and "accuracy" in out
    assert len((tmp_path / "pred.csv").read_text().splitlines()) == 1 + 16


@pytest.mark.slow  # imports cellpose and runs the model (13-28 s on the shared 2-core machine)
def test_segment_cli_cellpose_uses_the_bundled_model_from_another_directory(tmp_path, monkeypatch):
    image, truth = disc_cells(shape=(64, 64), n=5, ring=0.0, touching=0.0, radius=(5, 6), seed=3)
    (tmp_path / "in").mkdir()
    iio.imwrite(tmp_path / "in" / "nuclei.png", (image[0] * 255).astype(np.uint8))
    monkeypatch.chdir(tmp_path)
    assert main(["segment", "in", "out", "--backend", "cellpose", "--device", "cpu", "--diameter", "11"]) == 0
    labels = tifffile.imread(tmp_path / "out" / "nuclei.tif")
    assert labels.shape == truth.shape and 3 <= labels.max() <= 7


def test_segment_cli_missing_model_names_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    iio.imwrite(tmp_path / "in" / "a.png", np.zeros((16, 16), np.uint8))
    monkeypatch.chdir(tmp_path)
    assert main(["segment", "in", "out", "--backend", "cellpose", "--model", "bundled:nope"]) == 1
    assert "bundled:nope" in capsys.readouterr().err
    assert main(["segment", "in", "out", "--backend", "cellpose", "--model", "gone.pt"]) == 1
    assert f"'gone.pt' ({tmp_path / 'gone.pt'}) not found" in capsys.readouterr().err


def test_package_holds_no_stray_model_folder_at_the_repository_root():
    # models/ at the root only points to the package's copies (a relative models/... path would break
    # in an installed package)
    assert [p.name for p in (REPO / "models").iterdir()] == ["README.md"]
    assert (PACKAGE_MODELS / "segmentation" / "hemoprofile_cellpose.pt").is_file()


def test_segmented_slide_records_the_bundled_name_and_the_file_id(tmp_path):
    from hemoprofile.io import create_ome_zarr_image, model_id, open_ome_zarr
    from hemoprofile.segment.tiled import segment_slide

    channels = ["DAPI", "CK", "VIM", "CD45"]
    image, _ = disc_cells(shape=(64, 64), n=4, seed=5)
    array = create_ome_zarr_image(tmp_path / "pre.zarr", (4, 64, 64), "uint16", 64, channels, pixel_size_um=0.65,
                                  name="preprocessed")
    array[:] = np.round(np.broadcast_to(image[:1], (4, 64, 64)) * 65535).astype(np.uint16)
    segment_slide(tmp_path / "pre.zarr", tmp_path / "labels.zarr",
                  {"backend": "cellpose", "device": "cpu", "diameter": 11}, progress=None)
    meta = open_ome_zarr(tmp_path / "labels.zarr").attributes
    assert meta["model"] == DEFAULT_SEGMENTATION_MODEL
    assert meta["model_id"] == model_id(resolve_model(DEFAULT_SEGMENTATION_MODEL))
