"""The tile stage: image.zarr holds exactly the slide's pixels, NGFF metadata readers agree, memory stays
at a tile, bad pixels are refused and a failed run leaves nothing that looks finished."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from hemoprofile.ingest import tile as tile_module
from hemoprofile.io import open_ome_zarr
from hemoprofile.io.slide_sources import open_slide_source
from hemoprofile.ingest.tile import tile_slide
from helpers.slide_writers import CHANNELS3 as CHANNELS
from helpers.slide_writers import reference_image, write_frame_folder
SHAPE = (3, 700, 900)  # not a multiple of the 256-px tile: edge tiles are 188 x 132
TILE = 256


def write_slide(tmp_path: Path, image: np.ndarray, layout: str, pixel_size_um: float | None = None):
    """Write ``image`` in one of the input layouts; return the arguments that open it."""
    if layout.startswith("frames"):
        order = layout.split(":")[1]
        write_frame_folder(tmp_path / "frames", image, rows=2, cols=3, order=order)  # 350 x 300 frames
        return dict(path=tmp_path / "frames", fmt="frames", frame_rows=2, frame_cols=3, frame_order=order,
                    pixel_size_um=pixel_size_um)
    kwargs = dict(tile=(128, 128), compression="zlib") if layout == "ome-tiled" else {}
    metadata = {"axes": "CYX"}
    if pixel_size_um is not None:
        metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeY=pixel_size_um)
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(path, image, ome=True, metadata=metadata, **kwargs)
    return dict(path=path, fmt="ome-tiff")


def open_written(spec, channels=CHANNELS):
    spec = dict(spec)
    return open_slide_source(spec.pop("path"), spec.pop("fmt"), channels, **spec)


@pytest.mark.parametrize("layout", ["ome-tiled", "ome-untiled", "frames:row-major", "frames:snake"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_image_zarr_equals_the_slide(tmp_path, layout, dtype):
    image = reference_image(SHAPE, dtype, seed=1)
    spec = write_slide(tmp_path, image, layout)
    out = tmp_path / "results" / "P01_S1" / "image.zarr"
    with open_written(spec) as source:
        summary = tile_slide(source, out, TILE, progress=None)
    written = open_ome_zarr(out)
    assert written.array.dtype == np.dtype(dtype)
    assert written.array.chunks == (1, TILE, TILE)
    np.testing.assert_array_equal(written.array[:], image)
    assert summary["shape"] == SHAPE and summary["dtype"] == dtype
    assert summary["n_tiles"] == 3 * 3 * 4  # 3 channels x 3 tile rows x 4 tile columns
    assert summary["seconds"] > 0


def test_float64_is_stored_as_float32(tmp_path):
    image = reference_image(SHAPE, "float64", seed=2)
    spec = write_slide(tmp_path, image, "ome-tiled")
    with open_written(spec) as source:
        tile_slide(source, tmp_path / "image.zarr", TILE, progress=None)
    written = open_ome_zarr(tmp_path / "image.zarr")
    assert written.array.dtype == np.float32
    np.testing.assert_array_equal(written.array[:], image.astype(np.float32))
    assert written.attributes["source_dtype"] == "float64"


def test_ngff_metadata_reads_back_and_validates(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    image = reference_image(SHAPE, "uint16", seed=3)
    spec = write_slide(tmp_path, image, "ome-tiled", pixel_size_um=0.65)
    out = tmp_path / "P01_S1" / "image.zarr"
    with open_written(spec) as source:
        assert source.pixel_size_um == pytest.approx(0.65)  # from the OME-XML
        tile_slide(source, out, TILE, progress=None)

    node = next(iter(Reader(parse_url(str(out)))()))
    assert node.metadata["channel_names"] == CHANNELS
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == pytest.approx([1.0, 0.65, 0.65])
    assert [a.get("unit") for a in node.metadata["axes"]] == [None, "micrometer", "micrometer"]
    np.testing.assert_array_equal(np.asarray(node.data[0][1, 600:700, 800:900]), image[1, 600:700, 800:900])

    model = Image.from_zarr(zarr.open_group(str(out), mode="r"))
    assert model.attributes.ome.multiscales[0].datasets[0].path == "0"

    written = open_ome_zarr(out)
    assert written.channel_names == CHANNELS and written.pixel_size_um == pytest.approx(0.65)


def test_provenance_records_source_and_channel_ranges(tmp_path):
    image = reference_image(SHAPE, "uint16", seed=4)
    spec = write_slide(tmp_path, image, "frames:snake", pixel_size_um=0.5)
    with open_written(spec) as source:
        tile_slide(source, tmp_path / "image.zarr", TILE, progress=None)
    prov = open_ome_zarr(tmp_path / "image.zarr").attributes
    assert prov["source_path"] == str(tmp_path / "frames")
    assert prov["source_format"] == "frames"
    assert prov["dtype"] == "uint16" and prov["tile_size"] == TILE
    assert prov["pixel_size_um"] == 0.5
    assert prov["channel_min"] == {ch: int(image[c].min()) for c, ch in enumerate(CHANNELS)}
    assert prov["channel_max"] == {ch: int(image[c].max()) for c, ch in enumerate(CHANNELS)}


def test_reads_at_most_a_tile_and_writes_each_chunk_once(tmp_path, monkeypatch):
    image = reference_image(SHAPE, "uint16", seed=5)
    spec = write_slide(tmp_path, image, "ome-untiled")  # memory-mapped: the source itself reads nothing extra
    requested: list[int] = []
    written: list[tuple] = []

    class RecordingArray:
        """Stands in for the zarr array to record every write."""

        def __init__(self, array):
            self.array = array

        def __setitem__(self, key, value):
            written.append((key, value.shape))
            self.array[key] = value

    real_create = tile_module.create_ome_zarr_image
    monkeypatch.setattr(tile_module, "create_ome_zarr_image",
                        lambda *a, **k: RecordingArray(real_create(*a, **k)))
    with open_written(spec) as source:
        real_read = source.read_region

        def recording_read(c, y0, y1, x0, x1):
            requested.append((y1 - y0) * (x1 - x0))
            return real_read(c, y0, y1, x0, x1)

        source.read_region = recording_read
        tile_slide(source, tmp_path / "image.zarr", TILE, progress=None)

    assert max(requested) <= TILE * TILE
    assert sum(requested) == image.size  # every pixel read once
    chunk_keys = [(k[0], k[1].start // TILE, k[2].start // TILE) for k, _ in written]
    assert len(chunk_keys) == len(set(chunk_keys)) == 36
    np.testing.assert_array_equal(open_ome_zarr(tmp_path / "image.zarr").array[:], image)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_is_refused_and_nothing_is_left(tmp_path, bad):
    image = reference_image(SHAPE, "float32", seed=6)
    image[1, 650, 10] = bad  # CK, last tile row, first tile column
    spec = write_slide(tmp_path, image, "ome-tiled")
    out = tmp_path / "results" / "P01_S1" / "image.zarr"
    with open_written(spec) as source:
        message = r"slide\.ome\.tif: channel CK tile y\[512:700\] x\[0:256\] holds 1 non-finite"
        with pytest.raises(ValueError, match=message):
            tile_slide(source, out, TILE, progress=None)
    assert list(out.parent.iterdir()) == []  # neither the output nor its temporary sibling


def test_failed_writer_keeps_the_previous_output(tmp_path):
    image = reference_image(SHAPE, "uint8", seed=7)
    spec = write_slide(tmp_path, image, "ome-tiled")
    out = tmp_path / "image.zarr"
    with open_written(spec) as source:
        tile_slide(source, out, TILE, progress=None)
        real_read = source.read_region
        calls = []

        def failing_read(*args):
            calls.append(args)
            if len(calls) == 20:
                raise OSError("disk went away")
            return real_read(*args)

        source.read_region = failing_read
        with pytest.raises(OSError, match="disk went away"):
            tile_slide(source, out, TILE, progress=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.zarr", "slide.ome.tif"]
    np.testing.assert_array_equal(open_ome_zarr(out).array[:], image)


def test_progress_lines(tmp_path):
    image = reference_image((1, 700, 900), "uint8", seed=8)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image[0])
    lines: list[str] = []
    with open_slide_source(path, "tiff", ["DAPI"]) as source:
        tile_slide(source, tmp_path / "P01_S1" / "image.zarr", 100, progress=lines.append)  # 7 x 9 = 63 tiles
    tile_lines = [line for line in lines if "tiles" in line]
    assert tile_lines[0] == "tile P01_S1 DAPI: 7/63 tiles"
    assert tile_lines[-1] == "tile P01_S1 DAPI: 63/63 tiles"
    assert 9 <= len(tile_lines) <= 11
    assert lines[-1].startswith("tile P01_S1: 0.6 MP") and lines[-1].endswith("MP/s")


def test_bad_tile_size(tmp_path):
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, reference_image((1, 20, 20), "uint8")[0])
    with open_slide_source(path, "tiff", ["DAPI"]) as source:
        with pytest.raises(ValueError, match="tile_size must be positive"):
            tile_slide(source, tmp_path / "image.zarr", 0, progress=None)


def test_flat_tiles_and_saturated_pixels_are_reported_not_refused(tmp_path):
    image = reference_image((3, 700, 900), "uint16", seed=9) // 2  # nothing saturated
    image[0, :256, 256:512] = 0  # DAPI: one blank tile
    image[1, 512:, :256] = 65535  # CK: one saturated (edge) tile
    image[2, 5, 5:9] = 65535  # CD45: four saturated pixels
    spec = write_slide(tmp_path, image, "ome-tiled")
    lines: list[str] = []
    with open_written(spec) as source:
        tile_slide(source, tmp_path / "S1" / "image.zarr", TILE, progress=lines.append)
    written = open_ome_zarr(tmp_path / "S1" / "image.zarr")
    np.testing.assert_array_equal(written.array[:], image)
    assert written.attributes["flat_tiles"] == {"DAPI": {"n": 1, "first": [[0, 1, 0]]},
                                                "CK": {"n": 1, "first": [[2, 0, 65535]]},
                                                "CD45": {"n": 0, "first": []}}
    assert written.attributes["saturated_pixels"] == {"DAPI": 0, "CK": 188 * 256, "CD45": 4}
    warnings = [line for line in lines if "WARNING" in line]
    assert warnings == [
        "tile S1 DAPI: WARNING 1 of 12 tiles are flat (every pixel one value, a blank or saturated frame); "
        "first at y[0:256] x[256:512] = 0",
        "tile S1 CK: WARNING 1 of 12 tiles are flat (every pixel one value, a blank or saturated frame); "
        "first at y[512:700] x[0:256] = 65535",
    ]
    assert "tile S1 CD45: 4 pixels (0.000635%) are saturated (at the dtype's maximum)" in lines


def test_pyramid_adds_mean_levels_and_leaves_level_0_bitwise_unchanged(tmp_path):
    from ome_zarr_models.v05.image import Image

    from hemoprofile.io.pyramid import downsample_mean

    image = reference_image(SHAPE, "uint16", seed=6)
    spec = write_slide(tmp_path, image, "ome-tiled")
    with open_written(spec) as source:
        flat = tile_slide(source, tmp_path / "flat" / "image.zarr", TILE, progress=None, pyramid_smallest=None)
        pyramid = tile_slide(source, tmp_path / "pyramid" / "image.zarr", TILE, progress=None, pyramid_smallest=256)
    assert flat["pyramid_levels"] == [SHAPE]
    assert pyramid["pyramid_levels"] == [SHAPE, (3, 350, 450), (3, 175, 225)]
    level0 = {p.relative_to(tmp_path / "flat"): p.read_bytes() for p in sorted((tmp_path / "flat").rglob("0/c/**/*"))
              if p.is_file()}
    assert level0 and level0 == {p.relative_to(tmp_path / "pyramid"): p.read_bytes()
                                 for p in sorted((tmp_path / "pyramid").rglob("0/c/**/*")) if p.is_file()}
    root = zarr.open_group(str(tmp_path / "pyramid" / "image.zarr"), mode="r")
    np.testing.assert_array_equal(root["1"][:], downsample_mean(image))
    assert len(Image.from_zarr(root).attributes.ome.multiscales[0].datasets) == 3
    assert open_ome_zarr(tmp_path / "pyramid" / "image.zarr").attributes["pyramid_levels"] == 3
