"""``hemoprofile segment`` on a folder with bad images among good ones: each bad file is reported by name
with its problem, the rest are segmented, a summary line ends the run, and the exit status says so."""

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from helpers.segment_images import disc_cells

from hemoprofile.cli import main
from hemoprofile.cli.segment import BadImage, read_input_image


def _good_png(path, seed):
    image, _ = disc_cells(shape=(64, 64), n=4, ring=0.0, touching=0.0, radius=(5, 6), seed=seed)
    iio.imwrite(path, (image[0] * 255).astype(np.uint8))


@pytest.fixture()
def mixed_folder(tmp_path):
    """Bad files sorted before, between and after the good ones, so going on after each one matters."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a_empty.png").write_bytes(b"")
    _good_png(folder / "b_good.png", 1)
    good = (folder / "b_good.png").read_bytes()
    (folder / "c_truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "d_corrupt.tif").write_bytes(b"this is not a TIFF file " * 20)
    tifffile.imwrite(folder / "e_stack.tif", np.zeros((2, 3, 40, 40), np.uint8), photometric="minisblack")  # 4-D: not a 2-D image
    tifffile.imwrite(folder / "f_tiny.tif", np.zeros((3, 3), np.uint8))
    _good_png(folder / "g_good.png", 2)
    (folder / "notes.txt").write_text("not an image suffix: ignored")
    return folder


BAD = {
    "a_empty.png": "empty file",
    "c_truncated.png": "not a readable PNG image",
    "d_corrupt.tif": "not a readable TIF image",
    "e_stack.tif": "not a 2-D image",
    "f_tiny.tif": "too small",
}


def test_bad_images_are_reported_and_the_rest_is_segmented(mixed_folder, tmp_path, capsys):
    out = tmp_path / "labels"
    assert main(["segment", str(mixed_folder), str(out)]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["b_good.tif", "g_good.tif"]
    assert tifffile.imread(out / "g_good.tif").max() >= 3
    captured = capsys.readouterr()
    failures = [line for line in captured.err.splitlines() if "FAILED" in line]
    assert len(failures) == len(BAD), captured.err
    for name, problem in BAD.items():
        assert any(name in line and problem in line for line in failures), (name, failures)
    assert "Traceback" not in captured.err
    summary = captured.out.strip().splitlines()[-1]
    assert summary.startswith("2 segmented, 5 failed") and "a_empty.png" in summary, summary


def test_strict_stops_at_the_first_bad_image(mixed_folder, tmp_path, capsys):
    out = tmp_path / "labels"
    assert main(["segment", str(mixed_folder), str(out), "--strict"]) == 1
    err = capsys.readouterr().err
    assert "a_empty.png" in err and "empty file" in err and "--strict" in err
    assert not list(out.glob("*.tif"))


def test_a_folder_of_good_images_exits_0(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    _good_png(folder / "one.png", 3)
    assert main(["segment", str(folder), str(tmp_path / "labels")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("1 segmented, 0 failed")


def test_missing_channel_is_a_per_image_failure(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    _good_png(folder / "gray.png", 4)
    tifffile.imwrite(folder / "two_channels.tif", np.stack([iio.imread(folder / "gray.png")] * 2))
    assert main(["segment", str(folder), str(tmp_path / "labels"), "--channels", "0", "1"]) == 1
    err = capsys.readouterr().err
    assert "gray.png" in err and "'1' not among" in err
    assert [p.name for p in (tmp_path / "labels").iterdir()] == ["two_channels.tif"]


def test_read_input_image_names_the_problem(tmp_path):
    header_only = tmp_path / "header_only.png"
    header_only.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(BadImage, match="not a readable PNG image"):
        read_input_image(header_only)
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((20, 20), np.nan, np.float32))
    with pytest.raises(BadImage, match="NaN"):
        read_input_image(nan)
    fine = tmp_path / "fine.tif"
    tifffile.imwrite(fine, np.zeros((20, 30), np.uint16))
    assert read_input_image(fine).shape == (1, 20, 30)
