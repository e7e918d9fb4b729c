"""Readers of input slides: every layout returns exactly the pixels written, and damage is named."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from hemoprofile.io.slide_sources import FrameFolderSource, open_slide_source
from helpers.slide_writers import CHANNELS3, reference_image, write_frame_folder


# windows inside a 3 x 70 x 90 image crossing 32-px TIFF tiles, 30 x 45 frames, and both far edges
WINDOWS = [(0, 70, 0, 90), (5, 37, 31, 33), (29, 70, 44, 90), (0, 1, 89, 90), (69, 70, 0, 90)]


def assert_regions_match(source, image):
    for c in range(image.shape[0]):
        for y0, y1, x0, x1 in WINDOWS:
            got = source.read_region(c, y0, y1, x0, x1)
            assert got.dtype == image.dtype
            np.testing.assert_array_equal(got, image[c, y0:y1, x0:x1])


# --- TIFF layouts -----------------------------------------------------------------------------------

TIFF_LAYOUTS = {
    # name: (writer keyword arguments, how the 3 channels are laid out)
    "ome-tiled-zlib": dict(ome=True, tile=(32, 32), compression="zlib", metadata={"axes": "CYX"}),
    "ome-untiled": dict(ome=True, metadata={"axes": "CYX"}),
    "tiff-strips-zlib": dict(photometric="minisblack", compression="zlib", rowsperstrip=8),
    "tiff-big-endian": dict(photometric="minisblack", byteorder=">"),
    "tiff-samples-last": dict(photometric="minisblack", planarconfig="contig", samples_last=True),
    "tiff-samples-last-zlib": dict(photometric="minisblack", planarconfig="contig", compression="zlib",
                                   samples_last=True),
}


@pytest.mark.parametrize("layout", sorted(TIFF_LAYOUTS))
def test_tiff_layouts_read_exact_regions(tmp_path, layout):
    image = reference_image((3, 70, 90), "uint16")
    kwargs = dict(TIFF_LAYOUTS[layout])
    data = image
    if kwargs.pop("samples_last", False):
        data = np.moveaxis(image, 0, -1)  # Y x X x 3 interleaved
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, data, **kwargs)
    with open_slide_source(path, "tiff", CHANNELS3) as source:
        assert source.shape == (3, 70, 90)
        assert source.channel_names == CHANNELS3
        assert_regions_match(source, image)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "float64"])
@pytest.mark.parametrize("tiled", [True, False])
def test_ome_tiff_dtypes_read_as_stored(tmp_path, dtype, tiled):
    image = reference_image((3, 70, 90), dtype)
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(path, image, ome=True, metadata={"axes": "CYX"},
                     **(dict(tile=(32, 32), compression="zlib") if tiled else {}))
    with open_slide_source(path, "ome-tiff", CHANNELS3) as source:
        assert source.dtype == np.dtype(dtype)
        assert source.storage == ("chunks 32x32" if tiled else "memmap")
        assert_regions_match(source, image)


@pytest.mark.parametrize("metadata", [{}, None], ids=["series-per-page", "one-series"])
def test_pages_written_one_by_one_are_channels(tmp_path, metadata):
    image = reference_image((3, 70, 90), "uint8")
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        for plane in image:
            tw.write(plane, photometric="minisblack", compression="zlib", metadata=metadata)
    with open_slide_source(path, "tiff", CHANNELS3) as source:
        assert_regions_match(source, image)


def test_single_plane_with_one_channel(tmp_path):
    image = reference_image((1, 70, 90), "uint16")
    path = tmp_path / "dapi.tif"
    tifffile.imwrite(path, image[0])
    with open_slide_source(path, "tiff", ["DAPI"]) as source:
        assert source.shape == (1, 70, 90)
        assert_regions_match(source, image)


def test_pixel_size_from_ome_metadata_unless_sheet_gives_one(tmp_path):
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(path, reference_image((3, 20, 30), "uint16"), ome=True, metadata={
        "axes": "CYX", "PhysicalSizeX": 650.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 650.0,
        "PhysicalSizeYUnit": "nm", "Channel": {"Name": ["dapi", "ck", "cd45"]}})
    with open_slide_source(path, "ome-tiff", CHANNELS3) as source:
        assert source.pixel_size_um == pytest.approx(0.65)
        assert source.channel_names == CHANNELS3  # the sheet names the channels
        assert source.file_channel_names == ["dapi", "ck", "cd45"]
    with open_slide_source(path, "ome-tiff", CHANNELS3, pixel_size_um=0.8) as source:
        assert source.pixel_size_um == 0.8
    with open_slide_source(path, "ome-tiff", CHANNELS3, pixel_size_um=float("nan")) as source:
        assert source.pixel_size_um == pytest.approx(0.65)  # an empty sheet cell defers to the file
    with pytest.raises(ValueError, match="positive number of micrometres"):
        open_slide_source(path, "ome-tiff", CHANNELS3, pixel_size_um=-1)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, reference_image((3, 20, 30), "uint16"), photometric="minisblack")
    with open_slide_source(plain, "tiff", CHANNELS3) as source:
        assert source.pixel_size_um is None


def test_wrong_channel_count_names_file_count_and_channels(tmp_path):
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(path, reference_image((3, 20, 30), "uint16"), ome=True, metadata={"axes": "CYX"})
    with pytest.raises(ValueError, match=r"slide\.ome\.tif: file holds 3 channel.*names 4.*'VIM'"):
        open_slide_source(path, "ome-tiff", ["DAPI", "CK", "VIM", "CD45"])


def test_empty_file_and_non_tiff_name_the_file(tmp_path):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.tif: file is empty"):
        open_slide_source(empty, "tiff", ["DAPI"])
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not an image" * 10)
    with pytest.raises(ValueError, match=r"junk\.tif: not a readable TIFF"):
        open_slide_source(junk, "tiff", ["DAPI"])
    with pytest.raises(FileNotFoundError, match=r"absent\.tif"):
        open_slide_source(tmp_path / "absent.tif", "tiff", ["DAPI"])


@pytest.mark.parametrize("kwargs", [dict(tile=(32, 32), compression="zlib"), {}], ids=["tiled", "contiguous"])
@pytest.mark.parametrize("keep", [0.95, 0.5, 0.05])
def test_truncated_tiff_is_refused_naming_the_file(tmp_path, kwargs, keep):
    whole = tmp_path / "whole.ome.tif"
    tifffile.imwrite(whole, reference_image((3, 70, 90), "uint16"), ome=True, metadata={"axes": "CYX"}, **kwargs)
    data = whole.read_bytes()
    cut = tmp_path / "cut.ome.tif"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"cut\.ome\.tif: (corrupt or truncated|truncated TIFF|file holds)"):
        with open_slide_source(cut, "ome-tiff", CHANNELS3) as source:
            source.read_region(2, 0, 70, 0, 90)


@pytest.mark.parametrize("kwargs", [dict(tile=(32, 32), compression="zlib"), {}], ids=["tiled", "contiguous"])
def test_pixel_data_cut_off_is_refused_before_reading(tmp_path, kwargs):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, reference_image((1, 70, 90), "uint16")[0], **kwargs)  # header first, data last
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[:-100])
    message = r"cut\.tif: truncated TIFF: pixel data of page 0 ends at byte \d+ but the file"
    with pytest.raises(ValueError, match=message):
        open_slide_source(cut, "tiff", ["DAPI"])


def test_corrupt_compressed_tile_is_named_when_read(tmp_path):
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, reference_image((1, 64, 64), "uint16")[0], tile=(32, 32), compression="zlib")
    with tifffile.TiffFile(path) as tf:
        offset = int(tf.pages[0].dataoffsets[1])
    data = bytearray(path.read_bytes())
    data[offset : offset + 16] = b"\xff" * 16  # destroy the zlib header of the second tile
    path.write_bytes(bytes(data))
    with open_slide_source(path, "tiff", ["DAPI"]) as source:
        np.testing.assert_array_equal(source.read_region(0, 0, 32, 0, 32).shape, (32, 32))
        with pytest.raises(ValueError, match=r"slide\.tif: cannot read channel 0 \(DAPI\) region y\[0:32\] x\[0:64\]"):
            source.read_region(0, 0, 32, 0, 64)


def test_region_outside_slide_and_unknown_format(tmp_path):
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, reference_image((1, 20, 30), "uint8")[0])
    with open_slide_source(path, "tiff", ["DAPI"]) as source:
        with pytest.raises(IndexError, match="outside"):
            source.read_region(0, 0, 21, 0, 30)
        with pytest.raises(IndexError, match="channel 1"):
            source.read_region(1, 0, 1, 0, 1)
    with pytest.raises(ValueError, match="'czi' is not one of"):
        open_slide_source(path, "czi", ["DAPI"])


# --- frame folders ----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["row-major", "snake"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_frame_folder_assembles_exact_regions(tmp_path, order, dtype):
    image = reference_image((3, 70, 90), dtype)
    write_frame_folder(tmp_path / "frames", image, rows=2, cols=2, order=order)
    with open_slide_source(tmp_path / "frames", "frames", CHANNELS3, frame_rows=2, frame_cols=2,
                           frame_order=order, pixel_size_um=0.65) as source:
        assert source.shape == (3, 70, 90)
        assert source.dtype == np.dtype(dtype)
        assert source.pixel_size_um == 0.65
        assert_regions_match(source, image)


def test_frame_folder_with_channel_subfolders(tmp_path):
    image = reference_image((3, 70, 90), "uint16")
    pattern = "{channel}/frame{frame:03d}.tif"
    write_frame_folder(tmp_path / "frames", image, rows=2, cols=3, order="row-major", pattern=pattern)
    with open_slide_source(tmp_path / "frames", "frames", CHANNELS3, frame_rows=2, frame_cols=3,
                           frame_pattern=pattern) as source:
        assert_regions_match(source, image)


def test_missing_frames_are_counted_and_named_before_any_read(tmp_path):
    write_frame_folder(tmp_path / "frames", reference_image((3, 70, 90), "uint16"), 2, 2, "row-major")
    (tmp_path / "frames" / "Tile000006.tif").unlink()
    (tmp_path / "frames" / "Tile000012.tif").unlink()
    message = r"frames: 2 of 12 frame files missing.*Tile000006\.tif, Tile000012\.tif"
    with pytest.raises(FileNotFoundError, match=message):
        open_slide_source(tmp_path / "frames", "frames", CHANNELS3, frame_rows=2, frame_cols=2)


def test_empty_frame_file_is_named(tmp_path):
    write_frame_folder(tmp_path / "frames", reference_image((3, 70, 90), "uint16"), 2, 2, "row-major")
    (tmp_path / "frames" / "Tile000007.tif").write_bytes(b"")
    with pytest.raises(ValueError, match=r"1 frame file\(s\) are empty.*Tile000007\.tif"):
        open_slide_source(tmp_path / "frames", "frames", CHANNELS3, frame_rows=2, frame_cols=2)


@pytest.mark.parametrize("bad", ["shape", "dtype", "truncated", "not a tiff"])
def test_inconsistent_or_damaged_frame_is_named_when_the_folder_is_opened(tmp_path, bad):
    image = reference_image((3, 70, 90), "uint16")
    write_frame_folder(tmp_path / "frames", image, 2, 2, "row-major")
    odd = tmp_path / "frames" / "Tile000006.tif"  # channel CK, frame 1 (top right)
    if bad == "shape":
        tifffile.imwrite(odd, image[1, :35, :44])
    elif bad == "dtype":
        tifffile.imwrite(odd, image[1, :35, 45:].astype("uint8"))
    elif bad == "truncated":
        odd.write_bytes(odd.read_bytes()[:200])
    else:
        odd.write_bytes(b"<html>proxy error</html>" * 20)
    expected = {"shape": r"frame has shape \(35, 44\)", "dtype": "dtype uint8", "truncated": "truncated",
                "not a tiff": "not a readable TIFF"}[bad]
    # found from the headers alone, before any pixel is read
    with pytest.raises(ValueError, match=rf"frames: 1 of 12 frame files are damaged.*Tile000006\.tif: .*{expected}"):
        open_slide_source(tmp_path / "frames", "frames", CHANNELS3, frame_rows=2, frame_cols=2)


def test_corrupt_compressed_frame_is_named_when_read(tmp_path):
    image = reference_image((3, 70, 90), "uint16")
    write_frame_folder(tmp_path / "frames", image, 2, 2, "row-major")
    odd = tmp_path / "frames" / "Tile000006.tif"
    tifffile.imwrite(odd, image[1, :35, 45:], compression="zlib")
    with tifffile.TiffFile(odd) as tf:
        offset = int(tf.pages[0].dataoffsets[0])
    data = bytearray(odd.read_bytes())
    data[offset : offset + 16] = b"\xff" * 16  # the header is intact, the pixel data is not
    odd.write_bytes(bytes(data))
    with open_slide_source(tmp_path / "frames", "frames", CHANNELS3, frame_rows=2, frame_cols=2) as source:
        source.read_region(1, 0, 35, 0, 45)  # the intact neighbour reads fine
        with pytest.raises(ValueError, match=r"Tile000006\.tif: cannot decode frame"):
            source.read_region(1, 0, 35, 0, 90)


@pytest.mark.parametrize("grid", [(2, 2), (1, 2)], ids=["a channel not in the sheet", "grid too small"])
def test_frames_beyond_the_sheets_channels_and_grid_are_refused(tmp_path, grid):
    write_frame_folder(tmp_path / "frames", reference_image((3, 70, 90), "uint16"), 2, 2, "row-major")
    channels = CHANNELS3[:2] if grid == (2, 2) else CHANNELS3
    with pytest.raises(ValueError, match=r"frames: holds Tile0000(09|07)\.tif, beyond the .* check frame_rows"):
        open_slide_source(tmp_path / "frames", "frames", channels, frame_rows=grid[0], frame_cols=grid[1])


def test_frame_folder_needs_grid_size(tmp_path):
    write_frame_folder(tmp_path / "frames", reference_image((3, 70, 90), "uint16"), 2, 2, "row-major")
    with pytest.raises(ValueError, match="frame_rows and frame_cols"):
        open_slide_source(tmp_path / "frames", "frames", CHANNELS3)


def test_tiling_a_frame_folder_decodes_each_frame_once(tmp_path, monkeypatch):
    image = reference_image((3, 60, 90), "uint16")
    write_frame_folder(tmp_path / "frames", image, rows=3, cols=3, order="snake")  # 20 x 30 frames
    decoded: list[str] = []
    original = FrameFolderSource._decode

    def counting_decode(self, file):
        decoded.append(file.name)
        return original(self, file)

    monkeypatch.setattr(FrameFolderSource, "_decode", counting_decode)
    with open_slide_source(tmp_path / "frames", "frames", CHANNELS3, frame_rows=3, frame_cols=3,
                           frame_order="snake") as source:
        for c in range(3):
            for y0 in range(0, 60, 16):  # 16-px tiles: bands straddle frame rows
                for x0 in range(0, 90, 16):
                    got = source.read_region(c, y0, min(y0 + 16, 60), x0, min(x0 + 16, 90))
                    np.testing.assert_array_equal(got, image[c, y0:y0 + 16, x0:x0 + 16])
    assert len(decoded) == 27 and len(set(decoded)) == 27
