"""Tests of hemoprofile.preprocess: statistics, the per-channel steps, and tiled == whole-image output."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from hemoprofile import io
from hemoprofile.preprocess import (
    STANDARD_PERCENTILES,
    background_noise_sigma,
    clahe_anchored,
    clip_range,
    percentile_key,
    preprocess_channel,
    preprocess_slide,
    required_halo,
    resolve_channel_settings,
    sample_channel_statistics,
)

TILE = 256  # 600 x 700 is not a multiple of it: edge tiles are 88 and 188 pixels

#: Mirrors config/config.yaml's preprocess section (copied so that config edits do not move these tests).
CONFIG = {
    "output_dtype": "uint16",
    "sample_tiles": 16,
    "default": {
        "percentile_clip": {"enabled": True, "low": 0.5, "high": 99.9},
        "normalise": {"enabled": True},
        "clahe": {"enabled": False, "kernel_size": 64, "clip_limit": 0.01},
        "denoise": {"enabled": False, "weight": 0.05, "iterations": 20},
    },
    "channels": {
        "DAPI": {"denoise": {"enabled": True, "weight": 0.04, "iterations": 20}},
        "CK": {"clahe": {"enabled": True, "kernel_size": 64, "clip_limit": 0.01}},
    },
}

#: One channel per operator combination, so one tiled run checks each operator alone and all together.
OPERATOR_CHANNELS = {
    "clip_normalise": {},
    "clahe": {"clahe": {"enabled": True}},
    "tv": {"denoise": {"enabled": True}},
    "all": {"clahe": {"enabled": True}, "denoise": {"enabled": True}},
}

#: Tiled vs whole-image tolerance on the [0, 1] scale. The design makes them bit-identical (integer
#: histograms, slide-anchored CLAHE grid, fixed TV iterations, halos from required_halo); 1e-6 only
#: leaves room for float reassociation on another platform, far below the 1e-3 aim and uint16's 1.5e-5.
TILED_TOLERANCE = 1e-6


def synthetic_channel(seed: int, shape=(600, 700)) -> np.ndarray:
    """A fluorescence-like uint16 channel: background gradient, Gaussian blobs, Poisson + read noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = 300.0 + 0.4 * xx + 0.3 * yy
    for _ in range(60):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        radius, amplitude = rng.uniform(4, 12), rng.uniform(500, 20000)
        img += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    img = rng.poisson(img) + rng.normal(0, 12, shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


def write_image(path, image_cyx: np.ndarray, names, tile=TILE, pixel_size_um=0.65):
    array = io.create_ome_zarr_image(
        path, image_cyx.shape, image_cyx.dtype, tile, names, pixel_size_um=pixel_size_um,
        extra_attributes={"stage": "tile", "slide": "S1"},
    )
    array[:] = image_cyx
    return path


@pytest.fixture(scope="module")
def tiled_run(tmp_path_factory):
    """One preprocess_slide run (float32 output) over a 4-channel image, one operator set per channel."""
    tmp = tmp_path_factory.mktemp("tiled")
    names = list(OPERATOR_CHANNELS)
    image = np.stack([synthetic_channel(seed) for seed in range(len(names))])
    cfg = copy.deepcopy(CONFIG)
    cfg["output_dtype"] = "float32"
    cfg["channels"] = copy.deepcopy(OPERATOR_CHANNELS)
    messages: list[str] = []
    src = write_image(tmp / "image.zarr", image, names)
    summary = preprocess_slide(src, tmp / "preprocessed.zarr", cfg, seed=3, progress=messages.append)
    return {"image": image, "names": names, "cfg": cfg, "summary": summary, "messages": messages,
            "out": io.open_ome_zarr(tmp / "preprocessed.zarr")}


# --- settings -------------------------------------------------------------------------------------------


def test_channel_settings_are_default_deep_merged_with_overrides():
    cfg = copy.deepcopy(CONFIG)
    settings = resolve_channel_settings(cfg, ["DAPI", "CK", "VIM", "CD45"])
    assert list(settings) == ["DAPI", "CK", "VIM", "CD45"]
    assert settings["DAPI"]["denoise"] == {"enabled": True, "weight": 0.04, "iterations": 20}
    assert settings["DAPI"]["clahe"] == CONFIG["default"]["clahe"]  # untouched sections come from default
    assert settings["CK"]["clahe"]["enabled"] and not settings["CK"]["denoise"]["enabled"]
    assert settings["VIM"] == settings["CD45"] == CONFIG["default"]
    partial = {"default": CONFIG["default"], "channels": {"CK": {"percentile_clip": {"high": 99.0}}}}
    assert resolve_channel_settings(partial, ["CK"])["CK"]["percentile_clip"] == {
        "enabled": True, "low": 0.5, "high": 99.0}
    settings["VIM"]["clahe"]["enabled"] = True  # results are copies: the config is never aliased
    assert cfg == CONFIG


def test_override_of_a_channel_the_image_lacks_is_an_error_naming_both():
    cfg = {"default": CONFIG["default"], "channels": {"CK": {}, "EpCAM": {}}}
    with pytest.raises(ValueError, match=r"EpCAM.*DAPI.*CK"):
        resolve_channel_settings(cfg, ["DAPI", "CK"])


def test_required_halo_adds_the_operators_needs_and_takes_the_largest_channel():
    settings = resolve_channel_settings(CONFIG, ["DAPI", "CK", "VIM"])
    assert required_halo({"VIM": settings["VIM"]}) == 0  # per-pixel maps only
    assert required_halo({"DAPI": settings["DAPI"]}) == 20  # TV: one pixel per iteration
    assert required_halo({"CK": settings["CK"]}) == 96  # CLAHE: 1.5 kernels of 64
    both = copy.deepcopy(settings["CK"])
    both["denoise"]["enabled"] = True
    assert required_halo({"CK": both}) == 96 + 20
    assert required_halo(settings) == 96


# --- statistics -----------------------------------------------------------------------------------------


def test_statistics_of_integer_images_are_numpys_percentiles_of_the_sampled_pixels():
    image = synthetic_channel(5, shape=(300, 260))[None]
    stats = sample_channel_statistics(image, 0, 128, sample_tiles=16, seed=0, percentiles=[0.5, 99.9, 37.25])
    assert stats["n_tiles_total"] == stats["n_tiles_sampled"] == 9  # fewer tiles than sample_tiles: all
    assert stats["n_pixels"] == 300 * 260 and stats["n_nonfinite"] == 0 and not stats["constant"]
    assert stats["min"] == image.min() and stats["max"] == image.max()
    for q in (0.5, 99.9, 37.25, *STANDARD_PERCENTILES):
        assert stats["percentiles"][percentile_key(q)] == pytest.approx(np.percentile(image, q), rel=1e-12)


def test_statistics_come_from_at_most_sample_tiles_tiles_spread_and_seeded():
    # every tile holds its own index, so the statistics reveal exactly which tiles were read
    grid = np.arange(6 * 7, dtype=np.uint16).reshape(6, 7)
    image = np.kron(grid, np.ones((16, 16), dtype=np.uint16))[None]

    class CountingArray:
        def __init__(self, array):
            self.array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, 0

        def __getitem__(self, key):
            self.reads += 1
            return self.array[key]

    counting = CountingArray(image)
    stats = sample_channel_statistics(counting, 0, 16, sample_tiles=5, seed=11)
    assert counting.reads == stats["n_tiles_sampled"] == 5 and stats["n_tiles_total"] == 42
    indices = sorted(r * 7 + c for r, c in stats["sampled_tiles"])
    assert stats["min"] == indices[0] and stats["max"] == indices[-1]
    assert stats["percentiles"]["50.0"] == np.percentile(indices, 50)
    bounds = (np.arange(6) * 42) // 5  # one tile from each fifth of the slide, top to bottom
    assert [int(np.searchsorted(bounds, i, side="right")) - 1 for i in indices] == [0, 1, 2, 3, 4]
    assert sample_channel_statistics(image, 0, 16, 5, seed=11) == stats
    others = [sample_channel_statistics(image, 0, 16, 5, seed=s)["sampled_tiles"] for s in (1, 2, 3)]
    assert any(o != stats["sampled_tiles"] for o in others)


def test_statistics_of_float_images_count_non_finite_pixels_and_bin_percentiles():
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 0.1, size=(1, 200, 200)).astype(np.float32)
    image[0, :3, :5] = np.nan
    image[0, 100, 100] = np.inf
    stats = sample_channel_statistics(image, 0, 64, 100, seed=0, percentiles=[0.5, 99.9])
    finite = image[np.isfinite(image)]
    assert stats["n_nonfinite"] == 16 and stats["n_pixels"] == finite.size
    assert (stats["min"], stats["max"]) == (float(finite.min()), float(finite.max()))
    bin_width = (finite.max() - finite.min()) / 65536
    for q in (0.5, 50.0, 99.9):
        assert abs(stats["percentiles"][percentile_key(q)] - np.percentile(finite, q)) <= bin_width


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_statistics_leave_out_flat_tiles_and_saturated_pixels(dtype):
    # a blank (0) and a saturated frame drawn into the sample must not move the percentiles of the rest
    image = synthetic_channel(9, shape=(256, 256))[None]
    spoilt = image.copy()
    spoilt[0, :64, :64] = 0  # a flat tile
    spoilt[0, 64:128, :64] = 65535  # another
    spoilt[0, 200, 200:210] = 65535  # ten saturated pixels in a tile with contrast
    image, spoilt = image.astype(dtype), spoilt.astype(dtype)
    stats = sample_channel_statistics(spoilt, 0, 64, 100, seed=0, percentiles=[0.5, 99.9])
    assert stats["n_tiles_sampled"] == 16 and stats["n_flat_tiles_skipped"] == 2
    kept = np.concatenate([image[0, 128:].ravel(), image[0, :128, 64:].ravel()])
    if dtype == "uint16":
        assert stats["n_saturated_excluded"] == 10
        kept = np.concatenate([spoilt[0, 128:].ravel(), spoilt[0, :128, 64:].ravel()])
        kept = kept[kept < 65535]
        for q in (0.5, 50.0, 99.9):
            assert stats["percentiles"][percentile_key(q)] == pytest.approx(np.percentile(kept, q), rel=1e-12)
    else:  # floats have no saturation value: only the flat tiles are left out
        assert stats["n_saturated_excluded"] == 0 and stats["max"] == 65535.0
    assert stats["n_pixels"] == 14 * 64 * 64 - (10 if dtype == "uint16" else 0)
    # nothing but flat tiles: they are what the slide is (a blank slide stays constant)
    for value in (0, 65535):
        blank = np.full((1, 128, 128), value, dtype)
        flat = sample_channel_statistics(blank, 0, 64, 100, seed=0)
        assert flat["constant"] and flat["min"] == flat["max"] == value and flat["n_flat_tiles_skipped"] == 0


# --- per-channel steps ----------------------------------------------------------------------------------


def _settings(**enabled):
    settings = copy.deepcopy(CONFIG["default"])
    for step, on in enabled.items():
        settings[step]["enabled"] = on
    return settings


def test_percentile_clip_and_normalise_map_the_percentiles_to_0_and_1():
    image = synthetic_channel(7, shape=(200, 300))
    stats = sample_channel_statistics(image[None], 0, 128, 16, 0, percentiles=[0.5, 99.9])
    lo, hi = stats["percentiles"]["0.5"], stats["percentiles"]["99.9"]
    out = preprocess_channel(image, _settings(), stats)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.all(out[image <= lo] == 0.0) and np.all(out[image >= hi] == 1.0)
    assert np.mean(out == 0.0) == pytest.approx(0.005, abs=0.002)
    assert np.mean(out == 1.0) == pytest.approx(0.001, abs=0.001)
    inside = (image > lo) & (image < hi)
    np.testing.assert_allclose(out[inside], (image[inside] - lo) / (hi - lo), atol=1e-6)


def _noise_slide(seed: int, bright_cells: int) -> np.ndarray:
    """Gaussian background (mean 300, sigma 10) with ``bright_cells`` 6x6 squares at 4000 (CK+ cells)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(300, 10, (400, 400))
    for k in range(bright_cells):
        y, x = 20 + 40 * (k // 9), 20 + 40 * (k % 9)
        image[y : y + 6, x : x + 6] = 4000
    return np.clip(image, 0, 65535).astype(np.uint16)


def test_background_noise_sigma_estimates_the_noise_of_the_dark_half():
    stats = sample_channel_statistics(_noise_slide(0, 0)[None], 0, 128, 16, 0)
    assert background_noise_sigma(stats) == pytest.approx(10.0, rel=0.05)


def test_noise_floor_keeps_a_slide_without_positive_cells_from_being_stretched():
    floored = {"percentile_clip": {"enabled": True, "low": 0.5, "high": 99.9, "min_high_noise_sigmas": 100},
               "normalise": {"enabled": True}}
    plain = copy.deepcopy(floored)
    plain["percentile_clip"]["min_high_noise_sigmas"] = 0
    negative, positive = _noise_slide(1, 0), _noise_slide(2, 30)
    stats_neg = sample_channel_statistics(negative[None], 0, 128, 16, 0, percentiles=[0.5, 99.9])
    stats_pos = sample_channel_statistics(positive[None], 0, 128, 16, 0, percentiles=[0.5, 99.9])

    # without the floor, the negative slide's noise fills the whole range
    assert preprocess_channel(negative, plain, stats_neg).max() == 1.0
    # with it, hi = median + 100 sigma (about 1300), so noise stays dark
    lo, hi = clip_range(floored, stats_neg)
    assert hi == pytest.approx(stats_neg["percentiles"]["50.0"] + 100 * background_noise_sigma(stats_neg))
    assert 1200 < hi < 1400
    assert preprocess_channel(negative, floored, stats_neg).max() < 0.1
    # a slide whose 99.9th percentile is a bright cell keeps its percentile (the floor is below it)
    assert clip_range(floored, stats_pos) == clip_range(plain, stats_pos)
    assert clip_range(plain, stats_pos)[1] == 4000


def test_negative_noise_floor_is_refused():
    stats = sample_channel_statistics(_noise_slide(0, 0)[None], 0, 128, 16, 0)
    bad = {"percentile_clip": {"enabled": True, "low": 0.5, "high": 99.9, "min_high_noise_sigmas": -1}}
    with pytest.raises(ValueError, match="min_high_noise_sigmas"):
        clip_range(bad, stats)


def test_normalise_without_clipping_uses_the_sampled_min_and_max():
    image = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    stats = sample_channel_statistics(image[None], 0, 2, 16, 0)
    out = preprocess_channel(image, _settings(percentile_clip=False), stats)
    np.testing.assert_allclose(out, [[0.0, 0.25], [0.5, 1.0]])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[0, 1000, 65535]], dtype=np.uint16), [[0.0, 1000 / 65535, 1.0]]),
        (np.array([[0, 51, 255]], dtype=np.uint8), [[0.0, 0.2, 1.0]]),
        (np.array([[-0.5, 0.3, 1.7]], dtype=np.float32), [[0.0, 0.3, 1.0]]),
    ],
)
def test_disabled_normalise_scales_by_the_dtype_range(values, expected):
    unused_stats = {"min": 123.0, "max": 124.0, "percentiles": {}}  # a fixed map needs no statistics
    out = preprocess_channel(values, _settings(percentile_clip=False, normalise=False), unused_stats)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_clahe_clip_limit_is_a_fraction_of_the_block_and_excess_fills_the_other_bins():
    flat = np.full((64, 64), 0.5, dtype=np.float32)  # one block, every pixel in bin 128 of 256
    cap = int(0.01 * 64 * 64)  # 40 pixels per bin
    level = (64 * 64 - cap) / 255  # the excess, shared by the 255 other bins (none above the cap)
    expected = (128 * level + cap) / (64 * 64)  # cumulative fraction up to bin 128
    np.testing.assert_allclose(clahe_anchored(flat, 64, 0.01), expected, rtol=1e-6)
    two_levels = np.repeat(np.array([0.2, 0.8], np.float32), 32)[:, None] * np.ones((1, 64), np.float32)
    # bins 51 and 204 hold 2048 each, capped at 40; the 254 others share 2 * 2008 (15.8 each)
    level = 2 * (2048 - cap) / 254
    top_half = clahe_anchored(two_levels, 64, 0.01)[:32]
    np.testing.assert_allclose(top_half, (51 * level + cap) / 4096, rtol=1e-6)
    np.testing.assert_allclose(clahe_anchored(flat, 64, 0.0), 1.0)  # 0: no clipping, plain equalisation


def test_clahe_agrees_with_skimage_where_skimage_is_defined_the_same_way():
    from skimage.exposure import equalize_adapthist

    image = synthetic_channel(2, shape=(256, 320)).astype(np.float32)
    image = (image - image.min()) / (image.max() - image.min())  # skimage rescales its input to min..max
    ours = clahe_anchored(image, 64, 0.01)
    ours = (ours - ours.min()) / (ours.max() - ours.min())  # ...and its output
    theirs = equalize_adapthist(image, kernel_size=64, clip_limit=0.01)
    # measured 0.0015 mean, 0.013 max: skimage bins 16383 levels by 65 (253 bins), truncates its LUT
    # to integers and redistributes the clipped excess in integer steps
    assert np.abs(ours - theirs).mean() < 0.005 and np.abs(ours - theirs).max() < 0.05
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.999


def test_preprocess_channel_does_not_modify_its_inputs():
    settings = _settings(clahe=True, denoise=True)
    raw = synthetic_channel(1, shape=(100, 120))
    for image in (raw, raw.astype(np.float32)):
        stats = sample_channel_statistics(image[None], 0, 64, 16, 0, percentiles=[0.5, 99.9])
        before_image, before_settings = image.copy(), copy.deepcopy(settings)
        before_stats = copy.deepcopy(stats)
        preprocess_channel(image, settings, stats)
        assert np.array_equal(image, before_image) and image.dtype == before_image.dtype
        assert settings == before_settings and stats == before_stats


# --- slides ---------------------------------------------------------------------------------------------


def _whole_image_reference(run, channel_index):
    name = run["names"][channel_index]
    settings = run["summary"]["settings"][name]
    stats = run["summary"]["statistics"][name]
    return preprocess_channel(run["image"][channel_index], settings, stats)


@pytest.mark.parametrize("channel", list(OPERATOR_CHANNELS))
def test_tiled_output_equals_whole_image_output_without_seams(tiled_run, channel):
    ci = tiled_run["names"].index(channel)
    tiled = np.asarray(tiled_run["out"].array[ci])
    whole = _whole_image_reference(tiled_run, ci)
    diff = np.abs(tiled.astype(np.float64) - whole)
    print(f"{channel}: max |tiled - whole| = {diff.max():.3g}")
    assert diff.max() <= TILED_TOLERANCE
    seams = np.zeros(diff.shape, dtype=bool)
    for edge in range(TILE, max(diff.shape), TILE):
        seams[edge - 1 : edge + 1, :] = True
        seams[:, edge - 1 : edge + 1] = True
    assert diff[seams].max() <= diff[~seams].max() + TILED_TOLERANCE / 10
    if channel != "clip_normalise":  # the operator visibly changes the image, so the test has power
        assert np.abs(whole - _whole_image_reference_without(tiled_run, ci)).max() > 1e-2


def _whole_image_reference_without(run, channel_index):
    name = run["names"][channel_index]
    settings = copy.deepcopy(run["summary"]["settings"][name])
    settings["clahe"]["enabled"] = settings["denoise"]["enabled"] = False
    return preprocess_channel(run["image"][channel_index], settings, run["summary"]["statistics"][name])


def test_tiles_without_halo_do_differ_so_the_halo_matters(tiled_run):
    ci = tiled_run["names"].index("all")
    name = tiled_run["names"][ci]
    image, settings = tiled_run["image"][ci], tiled_run["summary"]["settings"][name]
    stats = tiled_run["summary"]["statistics"][name]
    no_halo = np.zeros(image.shape, dtype=np.float32)
    for tile in io.iter_tiles(image.shape, TILE):
        window = image[tile.y0 : tile.y1, tile.x0 : tile.x1]
        no_halo[tile.y0 : tile.y1, tile.x0 : tile.x1] = preprocess_channel(
            window, settings, stats, origin=(tile.y0, tile.x0), slide_shape=image.shape)
    assert np.abs(no_halo - _whole_image_reference(tiled_run, ci)).max() > 1e-3


def test_slide_output_keeps_shape_chunks_channels_and_records_provenance(tiled_run):
    out, summary = tiled_run["out"], tiled_run["summary"]
    assert out.array.shape == tiled_run["image"].shape and out.array.dtype == np.float32
    assert out.array.chunks == (1, TILE, TILE)
    assert out.channel_names == tiled_run["names"] and out.pixel_size_um == pytest.approx(0.65)
    attrs = out.attributes
    assert attrs["stage"] == "preprocess" and attrs["seed"] == 3
    assert attrs["halo"] == 116
    assert attrs["halo_per_channel"] == {"clip_normalise": 0, "clahe": 96, "tv": 20, "all": 116}
    resolved = resolve_channel_settings(tiled_run["cfg"], tiled_run["names"])
    assert attrs["settings"] == summary["settings"] == resolved
    assert attrs["statistics"] == summary["statistics"]
    assert attrs["statistics"]["clahe"]["n_tiles_sampled"] == 9
    assert attrs["input_attributes"] == {"stage": "tile", "slide": "S1"}
    per_channel = [m for m in tiled_run["messages"] if m.startswith("preprocess: tv ") and "tiles" in m]
    assert per_channel[-1] == "preprocess: tv 9/9 tiles"
    assert len(per_channel) == 9  # with 9 tiles each one is over 10%
    assert "MP/s" in tiled_run["messages"][-1]


@pytest.mark.parametrize("dtype", ["uint16", "uint8"])
def test_integer_output_is_the_unit_result_scaled_to_the_full_range(tmp_path, dtype):
    # tile 95: the second tile starts at row 95 = 31 (mod 64), the position that needs CLAHE's full halo
    image = np.stack([synthetic_channel(9, shape=(200, 230)), synthetic_channel(10, shape=(200, 230))])
    src = write_image(tmp_path / "image.zarr", image, ["DAPI", "CK"], tile=95)
    cfg = copy.deepcopy(CONFIG)
    cfg["output_dtype"] = dtype
    summary = preprocess_slide(src, tmp_path / "out.zarr", cfg, progress=None)
    out = io.open_ome_zarr(tmp_path / "out.zarr")
    assert out.array.dtype == np.dtype(dtype) and out.channel_names == ["DAPI", "CK"]
    assert out.array.chunks == (1, 95, 95)
    scale = np.iinfo(dtype).max
    for ci, name in enumerate(["DAPI", "CK"]):  # TV and CLAHE respectively
        whole = preprocess_channel(image[ci], summary["settings"][name], summary["statistics"][name])
        assert np.array_equal(out.array[ci], np.rint(whole * np.float32(scale)).astype(dtype))
    assert np.array_equal(io.open_ome_zarr(src).array[:], image)  # the input is untouched


def test_a_constant_channel_gives_zeros_without_dividing_by_zero(tmp_path):
    image = np.stack([np.zeros((100, 90), np.uint16), synthetic_channel(4, shape=(100, 90))])
    src = write_image(tmp_path / "image.zarr", image, ["DAPI", "CK"], tile=64)
    cfg = copy.deepcopy(CONFIG)
    cfg["default"]["clahe"]["enabled"] = True  # the neighbourhood steps must not resurrect contrast
    messages: list[str] = []
    with np.errstate(divide="raise", invalid="raise"):
        summary = preprocess_slide(src, tmp_path / "out.zarr", cfg, progress=messages.append)
    out = io.open_ome_zarr(tmp_path / "out.zarr")
    assert not out.array[0].any() and out.array[1].any()
    dapi = out.attributes["statistics"]["DAPI"]
    assert dapi["constant"] and dapi["min"] == dapi["max"] == 0.0
    assert out.attributes["normalise_range"]["DAPI"] == [0.0, 0.0] == summary["normalise_range"]["DAPI"]
    assert any("WARNING channel DAPI" in m for m in messages)


def test_slide_with_an_unknown_channel_override_fails_before_writing(tmp_path):
    src = write_image(tmp_path / "image.zarr", np.zeros((1, 32, 32), np.uint16), ["DAPI"], tile=32)
    with pytest.raises(ValueError, match="CK"):
        preprocess_slide(src, tmp_path / "out.zarr", CONFIG, progress=None)
    assert not (tmp_path / "out.zarr").exists()
