"""The slide simulator against the truth it writes: layout, determinism, ground truth and biology."""

import copy
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage

from hemoprofile.io import frame_filename, frame_grid_position, open_ome_zarr
from hemoprofile.simulate import (
    CHANNELS,
    TRUTH_COLUMNS,
    UNKNOWN_CONDITION,
    patient_composition,
    plan_cohort,
    read_synthetic_frame,
    render_frame_overlay,
    simulate_slide,
    write_cohort_truth,
)
from hemoprofile.vocabulary import LINEAGE, TRUTH_TYPES

ALL_TYPES = {"CD4_T": 0.2, "CD8_T": 0.15, "B": 0.1, "NK": 0.1, "granulocyte": 0.3, "monocyte": 0.15}
PATTERN = "Tile{index:06d}.tif"


def small_config(**overrides):
    """A complete synthetic config section for tiny slides; ``overrides`` are merged one level deep."""
    cfg = {
        "enabled": True,
        "seed": 11,
        "slides_per_patient": 1,
        "output_format": "frames",
        "pixel_size_um": 0.65,
        "frame": {"height": 128, "width": 128},
        "grid": {"rows": 2, "cols": 2},
        "cells_per_frame": 15,
        "touching_fraction": 0.15,
        "cluster_rate": 0.5,
        "debris_per_frame": 2,
        "batch_effect": 0.15,
        "optics": {"blur_sigma": 1.0, "background": 300.0, "illumination": 0.25, "photons_per_unit": 1.0,
                   "read_noise": 12.0, "offset": 100.0},
        "conditions": {
            "control": {"patients": 1, "ctc_per_million": 0.0, "composition": dict(ALL_TYPES)},
            "disease": {"patients": 1, "ctc_per_million": 60000.0, "composition": dict(ALL_TYPES)},
        },
        "patient_variation": 60.0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict) and key != "conditions":
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = copy.deepcopy(value)
    return cfg


def simulate(cfg, out_dir, slide_index=0, **kwargs):
    plan = plan_cohort(cfg, out_dir)
    sample = plan.iloc[slide_index]
    summary = simulate_slide(cfg, sample, out_dir, **kwargs)
    return sample, summary


def read_truth(sample):
    slide_dir = Path(sample["path"]).parent
    labels = np.asarray(open_ome_zarr(slide_dir / "truth_labels.zarr").array[:])
    cells = pd.read_parquet(slide_dir / "truth_cells.parquet")
    return labels, cells


def read_frames_mosaic(sample, cfg, order="row-major", pattern=PATTERN):
    """Assemble the slide from its frame files the way a reader of HDSCA folders would."""
    rows, cols = cfg["grid"]["rows"], cfg["grid"]["cols"]
    fh, fw = cfg["frame"]["height"], cfg["frame"]["width"]
    n = rows * cols
    mosaic = np.zeros((4, rows * fh, cols * fw), np.uint16)
    for f in range(n):
        r, c = frame_grid_position(f, rows, cols, order)
        for k, name in enumerate(CHANNELS):
            mosaic[k, r * fh:(r + 1) * fh, c * fw:(c + 1) * fw] = tifffile.imread(
                Path(sample["path"]) / frame_filename(pattern, f, k, name, n))
    return mosaic


def touching_ids(labels):
    """Ids of labels 8-adjacent to a different non-zero label."""
    grown_max = ndimage.maximum_filter(labels, size=3)
    masked = np.where(labels == 0, np.iinfo(labels.dtype).max, labels)
    grown_min = ndimage.minimum_filter(masked, size=3)
    inside = labels > 0
    contact = inside & ((grown_max != labels) & (grown_max > 0) | (grown_min != labels))
    return set(np.unique(labels[contact]).tolist())


# A disease slide in a 2 x 3 grid written in snake order, with many CTCs that all try to cluster.
MAIN_CFG = small_config(
    frame={"height": 160, "width": 160}, grid={"rows": 2, "cols": 3}, cells_per_frame=30,
    cluster_rate=1.0, touching_fraction=0.2, debris_per_frame=3,
)


@pytest.fixture(scope="module")
def main_slide(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    sample, summary = simulate(MAIN_CFG, out, slide_index=1, frame_order="snake")
    labels, cells = read_truth(sample)
    mosaic = read_frames_mosaic(sample, MAIN_CFG, order="snake")
    return {"sample": sample, "summary": summary, "labels": labels, "cells": cells, "mosaic": mosaic, "out": out}


# --- plan ------------------------------------------------------------------------------------------


def test_plan_matches_config(tmp_path):
    cfg = small_config(slides_per_patient=2, conditions={
        "control": {"patients": 2, "ctc_per_million": 0.0, "composition": {"CD4_T": 1.0}},
        "disease_a": {"patients": 3, "ctc_per_million": 5000.0, "composition": {"granulocyte": 1.0}},
    })
    plan = plan_cohort(cfg, tmp_path)
    assert list(plan.columns) == ["slide", "patient", "condition", "path", "format", "channels",
                                  "pixel_size_um", "frame_rows", "frame_cols", "batch", "ctc_arm", "ctc_enrichment"]
    assert set(plan["ctc_arm"]) == {"real"} and (plan["ctc_enrichment"] == 1.0).all()
    assert len(plan) == 10 and plan["slide"].is_unique
    assert plan["patient"].unique().tolist() == ["P01", "P02", "P03", "P04", "P05"]
    assert plan.groupby("condition")["patient"].nunique().to_dict() == {"control": 2, "disease_a": 3}
    assert plan["slide"].tolist()[:3] == ["P01_S1", "P01_S2", "P02_S1"]
    assert plan.set_index("slide").loc["P03_S2", "condition"] == "disease_a"
    assert (plan["batch"] == plan["slide"]).all()
    assert set(plan["channels"]) == {"DAPI,CK,VIM,CD45"} and set(plan["format"]) == {"frames"}
    assert plan.loc[0, "path"] == str(tmp_path / "P01_S1" / "frames")
    assert (plan["frame_rows"] == 2).all() and (plan["frame_cols"] == 2).all()
    assert (plan["pixel_size_um"] == 0.65).all()
    assert plan_cohort(cfg, tmp_path).equals(plan)
    tiff_plan = plan_cohort(small_config(output_format="ome-tiff"), tmp_path)
    assert tiff_plan.loc[0, "path"] == str(tmp_path / "P01_S1" / "slide.ome.tif")
    assert set(tiff_plan["format"]) == {"ome-tiff"}
    assert not any(tmp_path.iterdir())  # planning writes nothing


def test_config_errors_are_clear(tmp_path):
    bad = small_config(conditions={"x": {"patients": 1, "ctc_per_million": 0.0, "composition": {"T": 1.0}}})
    with pytest.raises(ValueError, match="unknown cell type"):
        plan_cohort(bad, tmp_path)
    cfg = small_config()
    with pytest.raises(ValueError, match="not in the synthetic cohort plan"):
        simulate_slide(cfg, {"slide": "P99_S1"}, tmp_path)
    with pytest.raises(KeyError, match="cells_per_frame"):
        plan_cohort({k: v for k, v in cfg.items() if k != "cells_per_frame"}, tmp_path)


# --- determinism -----------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_different_seed_differs(tmp_path):
    cfg = small_config(grid={"rows": 1, "cols": 2})
    first, _ = simulate(cfg, tmp_path / "a", slide_index=1)
    second, _ = simulate(cfg, tmp_path / "b", slide_index=1)
    np.testing.assert_array_equal(read_frames_mosaic(first, cfg), read_frames_mosaic(second, cfg))
    labels_a, cells_a = read_truth(first)
    labels_b, cells_b = read_truth(second)
    np.testing.assert_array_equal(labels_a, labels_b)
    pd.testing.assert_frame_equal(cells_a, cells_b)

    other_seed = small_config(grid={"rows": 1, "cols": 2}, seed=12)
    third, _ = simulate(other_seed, tmp_path / "c", slide_index=1)
    assert not np.array_equal(read_frames_mosaic(third, other_seed), read_frames_mosaic(first, cfg))
    other_slide, _ = simulate(cfg, tmp_path / "a", slide_index=0)  # same seed, another slide
    assert not np.array_equal(read_frames_mosaic(other_slide, cfg), read_frames_mosaic(first, cfg))


# --- ground truth ----------------------------------------------------------------------------------


def test_truth_table_matches_label_image(main_slide):
    labels, cells = main_slide["labels"], main_slide["cells"]
    assert labels.dtype == np.uint32 and labels.shape == (320, 480)
    assert list(cells.columns) == list(TRUTH_COLUMNS)
    ids = np.unique(labels[labels > 0])
    assert sorted(cells["cell_id"]) == ids.tolist() == list(range(1, len(cells) + 1))
    area = np.bincount(labels.ravel(), minlength=len(cells) + 1)
    np.testing.assert_array_equal(cells["area_px"].to_numpy(), area[cells["cell_id"].to_numpy()])
    centroids = np.array(ndimage.center_of_mass(labels > 0, labels, cells["cell_id"].to_numpy()))
    np.testing.assert_allclose(cells[["y", "x"]].to_numpy(), centroids, atol=1e-6)
    nucleated = cells[cells["cell_type"] != "CK_debris"]  # debris may have no nucleus at all
    assert (nucleated["nucleus_area_px"] > 0).all() and (cells["nucleus_area_px"] < cells["area_px"]).all()
    assert (cells["lineage"] == cells["cell_type"].map(LINEAGE)).all()
    assert set(cells["slide"]) == {"P02_S1"} and set(cells["condition"]) == {"disease"}
    assert main_slide["summary"]["n_cells"] == len(cells)
    assert main_slide["summary"]["counts"] == {t: int((cells["cell_type"] == t).sum()) for t in TRUTH_TYPES}


def test_cells_stay_inside_their_frame(main_slide):
    labels, cells = main_slide["labels"], main_slide["cells"]
    boxes = ndimage.find_objects(labels)
    for cell in cells.itertuples():
        box = boxes[cell.cell_id - 1]
        row, col = frame_grid_position(cell.frame, 2, 3, "snake")
        y0, x0 = row * 160, col * 160
        # wholly inside, not even touching the frame edge
        assert y0 < box[0].start and box[0].stop < y0 + 160, cell
        assert x0 < box[1].start and box[1].stop < x0 + 160, cell


def test_frames_are_written_at_their_grid_positions(main_slide):
    sample, labels = main_slide["sample"], main_slide["labels"]
    files = sorted(p.name for p in Path(sample["path"]).iterdir())
    assert files == [f"Tile{i:06d}.tif" for i in range(1, 6 * 4 + 1)]
    # each frame file's bright pixels must coincide with the truth labels at the position that
    # frame_grid_position gives (snake order), and with no other position
    cell_mask = labels > 0
    for f in range(6):
        frame = tifffile.imread(Path(sample["path"]) / frame_filename(PATTERN, f, 3, "CD45", 6))
        assert frame.dtype == np.uint16 and frame.shape == (160, 160)
        scores = {}
        for r in range(2):
            for c in range(3):
                mask = cell_mask[r * 160:(r + 1) * 160, c * 160:(c + 1) * 160]
                scores[(r, c)] = frame[mask].mean() - frame[~mask].mean()
        assert max(scores, key=scores.get) == frame_grid_position(f, 2, 3, "snake")


def test_ctcs_are_ck_high_and_cd45_low_in_the_image(main_slide):
    labels, cells, mosaic = main_slide["labels"], main_slide["cells"], main_slide["mosaic"]
    ids = cells["cell_id"].to_numpy()
    measured = {}
    for k, name in enumerate(CHANNELS):
        channel = mosaic[k].astype(float)
        background = np.median(channel[labels == 0])
        measured[name] = np.asarray(ndimage.mean(channel, labels, ids)) - background
    is_ctc = (cells["cell_type"] == "CTC").to_numpy()
    assert is_ctc.sum() >= 4
    leukocyte_ck = np.median(measured["CK"][~is_ctc])
    leukocyte_cd45 = np.median(measured["CD45"][~is_ctc])
    assert np.min(measured["CK"][is_ctc]) > 5 * max(leukocyte_ck, 50)
    assert np.max(measured["CD45"][is_ctc]) < 0.35 * leukocyte_cd45
    # the noise-free levels tell the same story
    assert cells.loc[is_ctc, "true_CK"].min() > 10 * cells.loc[~is_ctc, "true_CK"].median()
    assert cells.loc[is_ctc, "true_CD45"].max() < 0.1 * cells.loc[~is_ctc, "true_CD45"].median()


def test_cell_sizes_follow_the_cell_types(main_slide):
    cells = main_slide["cells"]
    median_area = cells.groupby("cell_type")["area_px"].median()
    lymphocytes = cells[cells["lineage"] == "lymphoid"]["area_px"].median()
    assert median_area["CTC"] > median_area["monocyte"] > median_area["granulocyte"] > lymphocytes
    ctc = cells[cells["cell_type"] == "CTC"]
    small = ctc["ctc_subtype"] == "small"
    assert ctc.loc[~small, "radius_px"].between(12, 20).all() and ctc.loc[small, "radius_px"].between(7, 10).all()
    assert (ctc["nucleus_area_px"].median() > cells[cells["lineage"] != "tumour"]["nucleus_area_px"].median())


def test_clusters_share_an_id_and_touch(main_slide):
    labels, cells = main_slide["labels"], main_slide["cells"]
    clustered = cells[cells["cluster_id"] >= 0]
    assert clustered["cluster_id"].nunique() >= 3
    assert sorted(clustered["cluster_id"].unique()) == list(range(clustered["cluster_id"].nunique()))
    for cluster_id, members in clustered.groupby("cluster_id"):
        assert (members["cell_type"] == "CTC").sum() == 1, members
        assert 2 <= len(members) <= 4 and members["frame"].nunique() == 1
        ctc_id = int(members.loc[members["cell_type"] == "CTC", "cell_id"].iloc[0])
        near_ctc = ndimage.binary_dilation(labels == ctc_id, structure=np.ones((3, 3), bool))
        for leukocyte in members[members["cell_type"] != "CTC"]["cell_id"]:
            assert (near_ctc & (labels == leukocyte)).any(), (cluster_id, leukocyte)
    assert (cells["cluster_id"] == -1).sum() > 0


def test_touching_fraction_controls_contacts(tmp_path):
    base = dict(grid={"rows": 1, "cols": 2}, cells_per_frame=25)
    apart = small_config(**base, touching_fraction=0.0)
    sample, _ = simulate(apart, tmp_path / "apart", slide_index=0)
    labels, cells = read_truth(sample)
    assert touching_ids(labels) == set() and not cells["touching"].any()

    pressed = small_config(**base, touching_fraction=0.6)
    sample, _ = simulate(pressed, tmp_path / "pressed", slide_index=0)
    labels, cells = read_truth(sample)
    assert touching_ids(labels) == set(cells.loc[cells["touching"], "cell_id"])
    assert cells["touching"].mean() > 0.4


def test_debris_is_bright_but_never_a_cell(tmp_path):
    cfg = small_config(grid={"rows": 1, "cols": 1}, cells_per_frame=0, debris_per_frame=12)
    sample, summary = simulate(cfg, tmp_path, slide_index=0)
    labels, cells = read_truth(sample)
    assert summary["n_debris"] > 0 and not labels.any()
    assert cells.empty and list(cells.columns) == list(TRUTH_COLUMNS)
    mosaic = read_frames_mosaic(sample, cfg)
    dapi_or_ck = np.maximum(mosaic[0].astype(float), mosaic[1].astype(float))
    assert dapi_or_ck.max() > np.median(dapi_or_ck) + 800


# --- cohort ----------------------------------------------------------------------------------------


def test_condition_composition_shifts_cell_counts(tmp_path):
    cfg = small_config(
        grid={"rows": 1, "cols": 2}, cells_per_frame=20, debris_per_frame=0, patient_variation=40.0,
        conditions={
            "myeloid_rich": {"patients": 2, "ctc_per_million": 0.0, "composition": {"granulocyte": 0.8, "B": 0.2}},
            "lymphoid_rich": {"patients": 2, "ctc_per_million": 0.0, "composition": {"granulocyte": 0.2, "B": 0.8}},
        },
    )
    plan = plan_cohort(cfg, tmp_path)
    fraction = {}
    for index, sample in plan.iterrows():
        simulate_slide(cfg, sample, tmp_path)
        cells = read_truth(sample)[1]
        assert set(cells["cell_type"]) <= {"granulocyte", "B"}
        fraction[sample["slide"]] = (cells["cell_type"] == "granulocyte").mean()
    by_condition = plan.assign(f=plan["slide"].map(fraction)).groupby("condition")["f"]
    assert by_condition.min()["myeloid_rich"] > by_condition.max()["lymphoid_rich"]
    assert by_condition.mean()["myeloid_rich"] - by_condition.mean()["lymphoid_rich"] > 0.4
    # patients of one condition differ (Dirichlet), around the condition's composition
    p1, p2 = patient_composition(cfg, "P01"), patient_composition(cfg, "P02")
    assert p1 != p2 and abs(p1["granulocyte"] - 0.8) < 0.2 and p1["CD4_T"] == 0.0


def test_batch_effect_makes_slides_differ_systematically(tmp_path):
    def slide_backgrounds(batch_effect, folder):
        cfg = small_config(grid={"rows": 1, "cols": 1}, cells_per_frame=5, debris_per_frame=0,
                           batch_effect=batch_effect)
        levels = []
        for index in (0, 1):
            sample, _ = simulate(cfg, tmp_path / folder, slide_index=index)
            levels.append(np.median(read_frames_mosaic(sample, cfg), axis=(1, 2)))
        return np.abs(np.log(levels[0] / levels[1]))

    assert slide_backgrounds(0.0, "none").max() < 0.06
    assert slide_backgrounds(0.5, "strong").max() > 0.15


def test_ome_tiff_holds_the_same_slide_as_the_frames(tmp_path):
    frames_cfg = small_config(grid={"rows": 1, "cols": 2})
    tiff_cfg = small_config(grid={"rows": 1, "cols": 2}, output_format="ome-tiff")
    frames_sample, _ = simulate(frames_cfg, tmp_path / "frames", slide_index=1)
    tiff_sample, _ = simulate(tiff_cfg, tmp_path / "tiff", slide_index=1)
    path = Path(tiff_sample["path"])
    assert path.name == "slide.ome.tif" and tiff_sample["format"] == "ome-tiff"
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "CYX" and series.shape == (4, 128, 256) and series.dtype == np.uint16
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        image = series.asarray()
        ome = ET.fromstring(tif.ome_metadata)
    ns = {"ome": ome.tag.split("}")[0].strip("{")}
    pixels = ome.find(".//ome:Pixels", ns)
    assert float(pixels.get("PhysicalSizeX")) == pytest.approx(0.65)
    assert float(pixels.get("PhysicalSizeY")) == pytest.approx(0.65)
    assert [c.get("Name") for c in pixels.findall("ome:Channel", ns)] == list(CHANNELS)
    np.testing.assert_array_equal(image, read_frames_mosaic(frames_sample, frames_cfg))
    np.testing.assert_array_equal(read_truth(tiff_sample)[0], read_truth(frames_sample)[0])


def test_ome_tiff_too_large_for_memory_is_refused(tmp_path):
    cfg = small_config(output_format="ome-tiff", frame={"height": 1024, "width": 1024},
                       grid={"rows": 6, "cols": 6})
    with pytest.raises(ValueError, match="output_format to 'frames'"):
        simulate(cfg, tmp_path)
    assert not any(tmp_path.rglob("*"))


def test_failed_simulation_leaves_no_output_that_looks_complete(tmp_path, monkeypatch):
    cfg = small_config()
    calls = []

    real_imwrite = tifffile.imwrite

    def failing_imwrite(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 6:
            raise OSError("disk full")
        return real_imwrite(*args, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", failing_imwrite)
    with pytest.raises(OSError, match="disk full"):
        simulate(cfg, tmp_path)
    assert len(calls) == 6
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # not even temporary files


def test_write_cohort_truth_concatenates_slides(main_slide, tmp_path):
    cfg = small_config(grid={"rows": 1, "cols": 1})
    other, _ = simulate(cfg, tmp_path, slide_index=0)
    parquets = [Path(s["path"]).parent / "truth_cells.parquet" for s in (main_slide["sample"], other)]
    out = tmp_path / "cohort" / "truth_cells.parquet"
    n_rows = write_cohort_truth(parquets, out)
    written = pd.read_parquet(out)
    expected = pd.concat([pd.read_parquet(p) for p in parquets], ignore_index=True)
    pd.testing.assert_frame_equal(written, expected)
    assert n_rows == len(written) == len(main_slide["cells"]) + len(read_truth(other)[1])
    assert not (written[["slide", "cell_id"]].duplicated()).any()
    assert [p.name for p in out.parent.iterdir()] == ["truth_cells.parquet"]


def test_render_frame_overlay_writes_a_png(main_slide, tmp_path):
    frame = int(main_slide["cells"].loc[main_slide["cells"]["cell_type"] == "CTC", "frame"].iloc[0])
    out = render_frame_overlay(main_slide["sample"], frame, tmp_path / "overlay.png", frame_order="snake")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(data) < 400_000
    image, labels, cells = read_synthetic_frame(main_slide["sample"], frame, frame_order="snake")
    assert image.shape == (4, 160, 160) and set(cells["cell_id"]) == set(np.unique(labels[labels > 0]))


def test_blind_patients_enter_the_sheet_as_unknown_and_keep_their_truth(tmp_path):
    cfg = small_config(grid={"rows": 1, "cols": 1}, cells_per_frame=10, conditions={
        "control": {"patients": 1, "blind_patients": 1, "ctc_per_million": 0.0, "composition": {"B": 1.0}},
        "disease": {"patients": 1, "blind_patients": 1, "ctc_per_million": 0.0, "composition": {"granulocyte": 1.0}},
    })
    plan = plan_cohort(cfg, tmp_path)
    assert plan["condition"].tolist() == ["control", UNKNOWN_CONDITION, "disease", UNKNOWN_CONDITION]
    blinded = plan.iloc[3]  # simulated as 'disease' (granulocytes only), recorded as such in the truth
    simulate_slide(cfg, blinded, tmp_path)
    cells = read_truth(blinded)[1]
    assert set(cells["condition"]) == {"disease"} and set(cells["cell_type"]) == {"granulocyte"}


def test_condition_sets_its_ctc_cluster_rate_and_emt_fraction(tmp_path):
    base = {"patients": 1, "ctc_per_million": 150000.0, "composition": dict(ALL_TYPES)}
    cfg = small_config(grid={"rows": 2, "cols": 2}, cells_per_frame=30, debris_per_frame=0, conditions={
        "loner": {**base, "cluster_rate": 0.0, "emt_fraction": 0.0},
        "social": {**base, "cluster_rate": 1.0, "emt_fraction": 1.0, "small_fraction": 0.0},
    })
    plan = plan_cohort(cfg, tmp_path)
    ctcs = {}
    for _, sample in plan.iterrows():
        simulate_slide(cfg, sample, tmp_path)
        cells = read_truth(sample)[1]
        ctcs[sample["condition"]] = cells[cells["cell_type"] == "CTC"]
    assert len(ctcs["loner"]) > 5 and len(ctcs["social"]) > 5
    assert (ctcs["loner"]["cluster_id"] < 0).all() and (ctcs["social"]["cluster_id"] >= 0).mean() > 0.5
    # EMT CTCs carry ~1600 VIM and ~700 CK, the others ~150 VIM and ~4000 CK
    assert ctcs["loner"]["true_VIM"].median() < 400 < ctcs["social"]["true_VIM"].median()
    assert ctcs["social"]["true_CK"].median() < 0.5 * ctcs["loner"]["true_CK"].median()
    assert set(ctcs["social"]["ctc_subtype"]) == {"EMT"} and "EMT" not in set(ctcs["loner"]["ctc_subtype"])


def test_simulate_cohort_writes_every_slide_then_the_sheet(tmp_path):
    from hemoprofile.simulate import simulate_cohort

    cfg = small_config(grid={"rows": 1, "cols": 1})
    lines = []
    plan = simulate_cohort(cfg, tmp_path / "slides", tmp_path / "cohort.tsv", progress=lines.append)
    sheet = pd.read_csv(tmp_path / "cohort.tsv", sep="\t")
    assert list(sheet["slide"]) == list(plan["slide"]) and len(plan) >= 2
    for slide in plan["slide"]:
        assert (tmp_path / "slides" / slide / "truth_cells.parquet").exists()
    assert lines[-1].startswith(f"wrote {len(plan)} slides")
