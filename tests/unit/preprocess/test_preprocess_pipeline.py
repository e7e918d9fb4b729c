"""Tests of hemoprofile.preprocess.pipeline: the per-channel steps, and tiled == whole-image output."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers.preprocess_images import CONFIG, TILE, synthetic_channel, write_image

from hemoprofile import io
from hemoprofile.preprocess.pipeline import preprocess_channel, preprocess_slide
from hemoprofile.preprocess.settings import resolve_channel_settings
from hemoprofile.preprocess.statistics import sample_channel_statistics

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
