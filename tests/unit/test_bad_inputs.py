"""Bad input, one test per case: each is refused with a message naming the file and the problem before
work is wasted, or runs through every stage to valid (possibly empty) outputs. The README's "Bad input"
table lists every case and the test that covers it; cases tested beside their module are named there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile
import yaml

from hemoprofile.config import ConfigError, check_sample_channels, read_sample_sheet, validate_config
from hemoprofile.features.extract import extract_slide
from hemoprofile.io.patches import open_patch_array
from hemoprofile.io.tables import cells_schema
from hemoprofile.io import open_ome_zarr
from hemoprofile.preprocess.pipeline import preprocess_slide
from hemoprofile.io.slide_sources import open_slide_source
from hemoprofile.segment.tiled import segment_slide
from hemoprofile.ingest.tile import tile_slide
from hemoprofile.simulate import plan_cohort, simulate_slide

HEADER = "slide\tpatient\tcondition\tpath\tformat\tchannels\tpixel_size_um\tframe_rows\tframe_cols\n"


def write_sheet(tmp_path, rows: list[str]):
    """A sample sheet whose rows point at existing (dummy) slide files a.tif, b.tif, ..."""
    for name in "abcd":
        (tmp_path / f"{name}.tif").write_bytes(b"II*\0")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(HEADER + "".join(row.replace("{dir}", str(tmp_path)) + "\n" for row in rows))
    return sheet


ROW = "{slide}\tP1\tcontrol\t{{dir}}/{file}\tome-tiff\t{channels}\t0.65\t\t"


def row(slide="S1", file="a.tif", channels="DAPI,CK,VIM,CD45"):
    return ROW.format(slide=slide, file=file, channels=channels)


# --- the sample sheet -----------------------------------------------------------------------------------


def test_sample_sheet_with_an_empty_required_cell_names_row_and_column(tmp_path):
    sheet = write_sheet(tmp_path, [row(), row("S2", "b.tif").replace("\tP1\t", "\t\t")])
    message = r"samples\.tsv: invalid sample sheet:\n  row 2 \(S2\): column 'patient' is empty"
    with pytest.raises(ConfigError, match=message):
        read_sample_sheet(sheet)


def test_sample_sheet_listing_a_slide_twice_names_both_rows(tmp_path):
    sheet = write_sheet(tmp_path, [row(), row("S2", "b.tif"), row("S1", "c.tif")])
    with pytest.raises(ConfigError, match=r"(?s)samples\.tsv: .*duplicated slide name 'S1' in rows 1 and 3"):
        read_sample_sheet(sheet)


def test_sample_sheet_listing_one_file_under_two_names_is_refused(tmp_path):
    # the same slide counted twice for its patient would bias every patient-level feature
    sheet = write_sheet(tmp_path, [row(), row("S2", "a.tif")])
    with pytest.raises(ConfigError, match=r"(?s)samples\.tsv: .*duplicated path '.*a\.tif' in rows 1 and 2"):
        read_sample_sheet(sheet)


def test_sample_sheet_with_a_repeated_channel_name_is_refused(tmp_path):
    sheet = write_sheet(tmp_path, [row(channels="DAPI,CK,CK,CD45")])
    message = r"(?s)samples\.tsv: .*row 1 \(S1\): channel name\(s\) CK appear more than once"
    with pytest.raises(ConfigError, match=message):
        read_sample_sheet(sheet)


def test_unknown_channel_names_are_named_with_the_config_key_before_any_job(tmp_path):
    sheet = write_sheet(tmp_path, [row(), row("S2", "b.tif", "DNA,PanCK,VIM,CD45")])
    samples = read_sample_sheet(sheet)
    config = validate_config({"preprocess": {"channels": {"CK": {"clahe": {"enabled": True}}}}})
    with pytest.raises(ConfigError) as err:
        check_sample_channels(samples, config, str(sheet))
    message = str(err.value)
    assert message.startswith(f"{sheet}: channel names do not fit the configuration")
    for expected in ("slide(s) S2: segment.channels.nucleus names 'DAPI', not among the channels "
                     "['DNA', 'PanCK', 'VIM', 'CD45']",
                     "slide(s) S2: segment.channels.cytoplasm names 'CK'",
                     "slide(s) S2: preprocess.channels names 'CK'",
                     "slide(s) S2: gating.gates reads 'mean_CK', 'max_DAPI'"):
        assert expected in message, message
    assert "S1:" not in message.split("slides list different channels")[0]  # S1 fits


def test_slides_listing_channels_in_different_orders_are_refused(tmp_path):
    sheet = write_sheet(tmp_path, [row(), row("S2", "b.tif", "DAPI,CD45,CK,VIM")])
    with pytest.raises(ConfigError, match=r"slides list different channels \(DAPI,CK,VIM,CD45 in S1; "
                                          r"DAPI,CD45,CK,VIM in S2\)"):
        check_sample_channels(read_sample_sheet(sheet), validate_config({}), str(sheet))


def test_channel_names_that_fit_pass(tmp_path):
    sheet = write_sheet(tmp_path, [row(), row("S2", "b.tif")])
    check_sample_channels(read_sample_sheet(sheet), validate_config({}), str(sheet))
    # a config asking for fewer channels, and gating off, fits a 2-channel cohort
    config = validate_config({"segment": {"channels": {"nucleus": "DAPI", "cytoplasm": ["CD45"]}},
                              "gating": {"enabled": False}})
    sheet = write_sheet(tmp_path, [row(channels="DAPI,CD45")])
    check_sample_channels(read_sample_sheet(sheet), config, str(sheet))


def test_ome_channel_names_in_another_order_than_the_sheet_are_refused(tmp_path):
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 20, 30), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD45", "CK"]}})
    with pytest.raises(ValueError, match=r"slide\.ome\.tif: the file's OME metadata names its channels "
                                         r"\['DAPI', 'CD45', 'CK'\], the sample sheet the same names in another order"):
        open_slide_source(path, "ome-tiff", ["DAPI", "CK", "CD45"])
    # other names (generic, or the lab's own) are the sheet's to give: used, with a warning in the tile log
    lines: list[str] = []
    with open_slide_source(path, "ome-tiff", ["DAPI", "PanCK", "CD45"]) as source:
        tile_slide(source, tmp_path / "S1" / "image.zarr", 64, progress=lines.append)
    assert lines[0] == ("tile S1: WARNING the file names its channels ['DAPI', 'CD45', 'CK']; the sample sheet's "
                        "names ['DAPI', 'PanCK', 'CD45'] are used (check that they are in file order)")
    assert open_ome_zarr(tmp_path / "S1" / "image.zarr").channel_names == ["DAPI", "PanCK", "CD45"]


def test_empty_sample_sheet_file_is_named(tmp_path):
    sheet = tmp_path / "samples.tsv"
    sheet.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"samples\.tsv: cannot parse as a tab-separated sample sheet"):
        read_sample_sheet(sheet)


# --- pixels: blank, saturated and cell-free slides run through every stage ---------------------------------

REPO = Path(__file__).resolve().parents[2]
CHANNELS = ["DAPI", "CK", "VIM", "CD45"]
TILE = 128  # one tile per frame: a blank frame is a flat tile


@pytest.fixture(scope="module")
def demo_config():
    """The full demo's preprocess, segment (bundled Cellpose model, found in the package), extract and gating
    settings: config/config.yaml with config/full.yaml over it, as `make demo-full` runs. The quick demo's
    classical backend does not pass the blank- and empty-slide checks below (it finds objects in camera
    noise): a known gap of the classical baseline, not hidden by this choice but recorded in the README."""
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "config" / "full.yaml").read_text()))
    return validate_config(config)


@pytest.fixture(scope="module")
def simulated_frames(tmp_path_factory, demo_config):
    """A simulated 2 x 2-frame slide (128 px frames, about 60 cells) as an HDSCA frame folder."""
    out = tmp_path_factory.mktemp("simulated")
    synthetic = validate_config({"synthetic": {
        "enabled": True, "seed": 3, "frame": {"height": 128, "width": 128}, "grid": {"rows": 2, "cols": 2},
        "cells_per_frame": 15,
        "conditions": {"control": {"patients": 1, "composition": {"CD4_T": 0.3, "granulocyte": 0.7}}}}})["synthetic"]
    sample = plan_cohort(synthetic, out).iloc[0]
    simulate_slide(synthetic, sample, out)
    return Path(sample["path"])


def frames_variant(simulated_frames, folder, change):
    """Copy the simulated frame folder, replacing frame file i's pixels by ``change(i, pixels)``."""
    shutil.copytree(simulated_frames, folder)
    for file in sorted(folder.glob("Tile*.tif")):
        index = int(file.stem[len("Tile"):]) - 1
        tifffile.imwrite(file, change(index, tifffile.imread(file)))
    return folder


def run_stages(frames, out, config, progress=None):
    """tile -> preprocess -> segment -> extract through the package functions; return the summaries."""
    say = progress or (lambda _line: None)
    with open_slide_source(frames, "frames", CHANNELS, frame_rows=2, frame_cols=2, pixel_size_um=0.65) as source:
        tile_slide(source, out / "image.zarr", TILE, progress=say)
    preprocess_slide(out / "image.zarr", out / "preprocessed.zarr", config["preprocess"], progress=say)
    segmented = segment_slide(out / "preprocessed.zarr", out / "labels.zarr", config["segment"], progress=say)
    extracted = extract_slide(out / "labels.zarr", out / "image.zarr", out / "preprocessed.zarr",
                              out / "cells.parquet", out / "patches.zarr", out / "clusters.parquet",
                              config["extract"], config["gating"], slide="S1", progress=say)
    return segmented, extracted


def assert_empty_but_well_formed(out, config):
    """0 cells: every output exists and opens, with the full schema and an N = 0 patch array."""
    assert open_ome_zarr(out / "labels.zarr").array[:].max() == 0
    cells = pq.read_table(out / "cells.parquet")
    assert cells.num_rows == 0
    assert cells.schema.remove_metadata() == cells_schema(CHANNELS, config["gating"]["column"])
    assert json.loads(cells.schema.metadata[b"hemoprofile"])["slide"] == "S1"
    patches, _, attributes = open_patch_array(out / "patches.zarr")
    assert patches.shape == (0, 4, 32, 32) and attributes["n_cells"] == 0
    assert attributes["channel_names"] == CHANNELS
    assert pq.read_table(out / "clusters.parquet").num_rows == 0


@pytest.mark.parametrize("value", [0, 65535], ids=["all-zero", "saturated"])
def test_blank_or_saturated_slide_runs_every_stage_to_empty_outputs(tmp_path, simulated_frames, demo_config, value):
    frames = frames_variant(simulated_frames, tmp_path / "frames", lambda _i, pixels: np.full_like(pixels, value))
    lines: list[str] = []
    segmented, extracted = run_stages(frames, tmp_path, demo_config, lines.append)
    assert segmented["n_objects"] == 0 and extracted["n_cells"] == 0
    assert_empty_but_well_formed(tmp_path, demo_config)
    # the tile log says what the frames are; preprocess writes the constant channels as zeros
    assert sum("WARNING 4 of 4 tiles are flat" in line for line in lines) == 4
    assert not open_ome_zarr(tmp_path / "preprocessed.zarr").array[:].any()


def test_one_blank_and_one_saturated_frame_leave_the_other_frames_cells_alone(tmp_path, simulated_frames,
                                                                             demo_config):
    def spoil(index, pixels):  # frame 1 (top right) blank, frame 2 (bottom left) saturated, every channel
        frame = index % 4
        return np.zeros_like(pixels) if frame == 1 else np.full_like(pixels, 65535) if frame == 2 else pixels

    _, clean = run_stages(simulated_frames, tmp_path / "clean", demo_config)
    _, spoilt = run_stages(frames_variant(simulated_frames, tmp_path / "frames", spoil), tmp_path / "spoilt",
                           demo_config)
    statistics = open_ome_zarr(tmp_path / "spoilt" / "preprocessed.zarr").attributes["statistics"]
    assert all(s["n_flat_tiles_skipped"] > 0 for s in statistics.values())

    def cells_in_good_frames(name):  # frames 0 (top left) and 3 (bottom right), away from the bad ones
        cells = pd.read_parquet(tmp_path / name / "cells.parquet")
        top_left = (cells["y"] < 118) & (cells["x"] < 118)
        bottom_right = (cells["y"] > 138) & (cells["x"] > 138)
        return cells[top_left | bottom_right]

    good_clean, good_spoilt = cells_in_good_frames("clean"), cells_in_good_frames("spoilt")
    assert len(good_clean) >= 20
    # without leaving the saturated frame out of the statistics, its 99.9th percentile would be
    # saturation and the real cells would be squashed to near zero: about 1 cell found instead of 20+
    assert abs(len(good_spoilt) - len(good_clean)) <= 0.1 * len(good_clean)
    bad = pd.read_parquet(tmp_path / "spoilt" / "cells.parquet")
    in_blank = (bad["y"] < 118) & (bad["x"] > 138)
    assert in_blank.sum() == 0


def test_slide_without_cells_runs_every_stage_to_empty_outputs(tmp_path, demo_config):
    # background, uneven illumination and camera noise only, as a slide whose cells washed off looks
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128]
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(16):
        light = 300.0 * (1 + 0.2 * np.sin(yy / 60 + index) * np.cos(xx / 70))
        tifffile.imwrite(frames / f"Tile{index + 1:06d}.tif",
                         (rng.poisson(light) + rng.normal(100, 12, light.shape)).astype(np.uint16))
    segmented, extracted = run_stages(frames, tmp_path, demo_config)
    assert segmented["n_objects"] == 0 and extracted["n_cells"] == 0
    assert_empty_but_well_formed(tmp_path, demo_config)
    # and the classify stage writes a 0-row predictions table with its columns
    from hemoprofile.classify.checkpoints import save_classifier
    from hemoprofile.classify.inference import classify_slide
    from hemoprofile.nn.cnn import CellNetSpec, build_model

    model = tmp_path / "classifier_ctc.pt"
    save_classifier(model, build_model(CellNetSpec(4, 2, 32, widths=(4,), blocks=(1,))).eval(), "ctc",
                    ["leukocyte", "CTC"], CHANNELS, 32)
    summary = classify_slide(tmp_path / "patches.zarr", tmp_path / "cells.parquet", [str(model)],
                             tmp_path / "predictions.parquet", device="cpu")
    predictions = pq.read_table(tmp_path / "predictions.parquet")
    assert summary["n_cells"] == 0 and predictions.num_rows == 0
    assert {"cell_id", "p_ctc_CTC", "pred_ctc"} <= set(predictions.column_names)
