"""Real-size synthetic slides: the HDSCA preset, the scale fraction, determinism, incremental ground
truth and memory that does not grow with the slide."""

import gc
import re
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hemoprofile.config import ConfigError, validate_config
from hemoprofile.io import frame_filename
from hemoprofile.simulate import CHANNELS, plan_cohort, simulate_slide
from hemoprofile.simulate.lookalikes import LOOKALIKE_KINDS
from hemoprofile.simulate.settings import PRESETS, parse_scale, read_settings, scaled_grid

PATTERN = "Tile{index:06d}.tif"


def synthetic_config(**keys):
    """The ``synthetic`` section as the workflow sees it: the schema's defaults filled in around ``keys``
    (two patients, so that tests stay small)."""
    section = {
        "enabled": True, "seed": 5,
        "conditions": {
            "control": {"patients": 1, "ctc_per_million": 0.0,
                        "composition": {"CD4_T": 0.3, "B": 0.2, "granulocyte": 0.4, "monocyte": 0.1}},
            "disease": {"patients": 1, "ctc_per_million": 30000.0,
                        "composition": {"CD8_T": 0.3, "NK": 0.2, "granulocyte": 0.5}},
        },
        **keys,
    }
    return validate_config({"synthetic": section})["synthetic"]


def tiny(rows, cols, **keys):
    return synthetic_config(frame={"height": 96, "width": 128}, grid={"rows": rows, "cols": cols},
                            cells_per_frame=12, **keys)


def simulate(cfg, out_dir, slide_index=1, **kwargs):
    sample = plan_cohort(cfg, out_dir).iloc[slide_index]
    return sample, simulate_slide(cfg, sample, out_dir, **kwargs)


# --- geometry ----------------------------------------------------------------------------------------


def test_hdsca_preset_is_the_real_scanner_geometry():
    s = read_settings(synthetic_config(preset="hdsca"))
    assert (s.frame_h, s.frame_w) == (1004, 1362)
    assert (s.rows, s.cols, s.n_frames) == (96, 24, 2304)
    assert s.pixel_size_um == 0.591 and s.cells_per_frame == 1300
    assert s.n_frames * s.cells_per_frame == pytest.approx(3.0e6, rel=0.01)  # ~3 M cells per slide
    # the slide is 96k x 33k px, as the real slide
    assert (s.rows * s.frame_h, s.cols * s.frame_w) == (96384, 32688)
    # debris keeps the configured density per pixel: 3 per 256 x 256 frame by default
    assert s.debris_per_frame == pytest.approx(3 * 1004 * 1362 / 256**2)
    plan = plan_cohort(synthetic_config(preset="hdsca", scale="1/16"), "out")
    assert set(plan["pixel_size_um"]) == {0.591}
    assert set(plan["frame_rows"]) == {24} and set(plan["frame_cols"]) == {6}


@pytest.mark.parametrize("scale, grid", [
    (1, (96, 24)), ("1/4", (48, 12)), (0.25, (48, 12)), ("1/16", (24, 6)), (0.0625, (24, 6)),
    ("1/64", (12, 3)), (0.015625, (12, 3)), (" 1 / 64 ", (12, 3)), ("1/2304", (2, 1)),
])
def test_scale_shrinks_the_grid_and_keeps_frame_and_density(scale, grid):
    s = read_settings(synthetic_config(preset="hdsca", scale=scale))
    assert (s.rows, s.cols) == grid
    assert (s.frame_h, s.frame_w, s.cells_per_frame) == (1004, 1362, 1300)


def test_scaled_grid_keeps_the_four_to_one_aspect_and_frame_count():
    for denominator in (1, 4, 16, 64):
        rows, cols = scaled_grid(96, 24, 1 / denominator)
        assert rows == 4 * cols and rows * cols == 2304 // denominator
    assert scaled_grid(96, 24, 1e-9) == (1, 1)


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "2/1", "a quarter", "1/0", float("nan")])
def test_bad_scale_is_refused_with_its_value(value):
    with pytest.raises(ValueError, match="synthetic.scale"):
        parse_scale(value)


def test_scale_without_a_preset_and_unknown_presets_are_refused():
    with pytest.raises(ValueError, match="needs a preset"):
        read_settings(synthetic_config(scale="1/4"))
    with pytest.raises(ConfigError, match="preset"):
        synthetic_config(preset="zeiss")
    with pytest.raises(ConfigError, match="scale"):
        synthetic_config(preset="hdsca", scale=2)
    with pytest.raises(ConfigError, match="scale"):
        synthetic_config(preset="hdsca", scale="one")
    assert set(PRESETS) == {"hdsca"}


# --- determinism and incremental truth ---------------------------------------------------------------


def test_same_seed_gives_the_same_bytes_frame_by_frame(tmp_path):
    cfg = tiny(2, 2)
    sample_a, _ = simulate(cfg, tmp_path / "a")
    sample_b, _ = simulate(cfg, tmp_path / "b")
    for frame in (0, 3):
        for c, channel in enumerate(CHANNELS):
            name = frame_filename(PATTERN, frame, c, channel, 4)
            assert (Path(sample_a["path"]) / name).read_bytes() == (Path(sample_b["path"]) / name).read_bytes()
    truth_a = Path(sample_a["path"]).parent / "truth_cells.parquet"
    truth_b = Path(sample_b["path"]).parent / "truth_cells.parquet"
    assert truth_a.read_bytes() == truth_b.read_bytes()
    sample_c, _ = simulate(tiny(2, 2, seed=6), tmp_path / "c")
    name = frame_filename(PATTERN, 0, 0, CHANNELS[0], 4)
    assert (Path(sample_c["path"]) / name).read_bytes() != (Path(sample_a["path"]) / name).read_bytes()


def test_truth_is_written_in_row_groups_equal_to_a_one_shot_write(tmp_path):
    cfg = tiny(3, 3)
    one_shot, summary = simulate(cfg, tmp_path / "one", truth_row_group=10**9)
    grouped, _ = simulate(cfg, tmp_path / "groups", truth_row_group=16)
    one_file = pq.ParquetFile(Path(one_shot["path"]).parent / "truth_cells.parquet")
    grouped_file = pq.ParquetFile(Path(grouped["path"]).parent / "truth_cells.parquet")
    n = summary["n_cells"]
    assert n > 64  # several frames' worth, more than a row group
    assert one_file.metadata.num_row_groups == 1
    sizes = [grouped_file.metadata.row_group(i).num_rows for i in range(grouped_file.metadata.num_row_groups)]
    assert sizes == [16] * (n // 16) + ([n % 16] if n % 16 else [])  # groups do not follow frame edges
    assert grouped_file.read().equals(one_file.read())
    with pytest.raises(ValueError, match="truth_row_group"):
        simulate(cfg, tmp_path / "bad", truth_row_group=0)


def _tree_bytes(root):
    """Every file's bytes, with the OME-XML UUID masked: tifffile draws a new one at each write."""
    return {p.relative_to(root).as_posix(): re.sub(rb"urn:uuid:[0-9a-f-]+", b"urn:uuid:-", p.read_bytes())
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("output_format", ["frames", "ome-tiff"])
def test_threads_give_byte_identical_slides(tmp_path, output_format):
    """Frames rendered on 2 worker processes, numbered and written in frame order: every file of the
    slide (frame TIFFs or the OME-TIFF, truth_labels.zarr, truth_cells.parquet) equals the 1-thread run,
    with clusters and cell ids running across frames, and look-alikes and CTC subtypes in the truth."""
    cfg = tiny(3, 3, output_format=output_format, ctc_enrichment=2, lookalikes=dict.fromkeys(LOOKALIKE_KINDS, 20000.0),
               conditions={
        "control": {"patients": 1, "ctc_per_million": 0.0, "composition": {"CD4_T": 0.5, "granulocyte": 0.5}},
        "disease": {"patients": 1, "ctc_per_million": 200000.0, "cluster_rate": 0.9,
                    "composition": {"CD8_T": 0.5, "granulocyte": 0.5}},
    })
    sample, one = simulate(cfg, tmp_path / "one", truth_row_group=16)
    _, two = simulate(cfg, tmp_path / "two", truth_row_group=16, threads=2)
    assert one == {**two, "seconds": one["seconds"]}
    slide_one, slide_two = tmp_path / "one" / sample["slide"], tmp_path / "two" / sample["slide"]
    files = _tree_bytes(slide_one)
    assert len(files) > 3 and files == _tree_bytes(slide_two)
    truth = pq.read_table(slide_one / "truth_cells.parquet").to_pandas()
    assert list(truth["cell_id"]) == list(range(1, one["n_cells"] + 1))
    clustered = truth[truth["cluster_id"] >= 0]
    assert clustered["frame"].nunique() > 1  # cluster ids are numbered across frames too
    assert one["n_clusters"] == clustered["cluster_id"].nunique() == clustered["cluster_id"].max() + 1
    assert set(truth["lookalike"]) > {""} and set(truth["ctc_subtype"]) > {""}


# --- memory ------------------------------------------------------------------------------------------


def _peak_bytes(cfg, out_dir):
    gc.collect()
    tracemalloc.reset_peak()
    start, _ = tracemalloc.get_traced_memory()
    simulate(cfg, out_dir)
    return tracemalloc.get_traced_memory()[1] - start


def test_peak_memory_does_not_grow_with_the_grid(tmp_path):
    """A 6 x 6 slide must peak like a 2 x 2 one: a whole-slide label image alone would add 36 frames of
    uint32 (1.8 MB here, over the 2 x 2 slide's whole peak), and the truth rows are held per row group."""
    # CTCs in both slides: a frame's peak is set by its largest cells (a CTC's filaments), so a small
    # slide without one would peak lower for reasons that have nothing to do with the grid
    conditions = {"control": {"patients": 1, "composition": {"CD4_T": 1.0}},
                  "disease": {"patients": 1, "ctc_per_million": 150000.0,
                              "composition": {"CD8_T": 0.3, "NK": 0.2, "granulocyte": 0.5}}}
    small, large = tiny(2, 2, conditions=conditions), tiny(6, 6, conditions=conditions)
    tracemalloc.start()
    try:
        _peak_bytes(small, tmp_path / "warm")  # imports and caches are not the slide's
        peak_small = _peak_bytes(small, tmp_path / "small")
        peak_large = _peak_bytes(large, tmp_path / "large")
    finally:
        tracemalloc.stop()
    frame_px = 96 * 128
    whole_slide_labels = 36 * frame_px * 4
    print(f"peak tracemalloc: 2x2 {peak_small} B, 6x6 {peak_large} B")
    assert peak_large < 1.25 * peak_small, (peak_small, peak_large)
    assert peak_large - peak_small < whole_slide_labels / 2, (peak_small, peak_large)
