"""``hemoprofile segment`` on a folder of images: one label TIFF per input, same stem, sensible errors."""

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from helpers.segment_images import disc_cells

from hemoprofile.cli import build_parser, main
from hemoprofile.io.images import read_image
from hemoprofile.segment.metrics import match_instances


@pytest.fixture()
def png_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    truths = {}
    # a grayscale 8-bit nucleus image and an RGB one (gray stored as colour, as in DSB 2018), with
    # different nucleus sizes so the per-image diameter estimate matters
    image, truth = disc_cells(shape=(120, 140), n=12, ring=0.0, touching=0.0, radius=(4, 5), seed=1)
    iio.imwrite(folder / "small_nuclei.png", (image[0] * 255).astype(np.uint8))
    truths["small_nuclei"] = truth
    image, truth = disc_cells(shape=(150, 150), n=8, ring=0.0, touching=0.0, radius=(11, 13), seed=2)
    gray = (image[0] * 255).astype(np.uint8)
    iio.imwrite(folder / "big_nuclei.png", np.stack([gray, gray, gray], axis=-1))
    truths["big_nuclei"] = truth
    return folder, truths


@pytest.mark.slow  # the CLI end to end
def test_segment_folder_writes_one_label_tiff_per_image(png_folder, tmp_path, capsys):
    folder, truths = png_folder
    out = tmp_path / "labels"
    assert main(["segment", str(folder), str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["big_nuclei.tif", "small_nuclei.tif"]
    for stem, truth in truths.items():
        labels = tifffile.imread(out / f"{stem}.tif")
        assert labels.dtype == np.uint16 and labels.shape == truth.shape
        assert match_instances(truth, labels, 0.5)["ap"] >= 0.9, stem
    printed = capsys.readouterr().out
    assert "[2/2]" in printed and "s/MP" in printed


def test_cli_errors_are_one_line_with_exit_status_1(png_folder, tmp_path, capsys):
    folder, _ = png_folder
    assert main(["segment", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert main(["segment", str(folder), str(tmp_path / "out"), "--channels", "0", "5"]) == 1
    assert "'5'" in capsys.readouterr().err
    missing_model = tmp_path / "no_model.pt"
    assert main(["segment", str(folder), str(tmp_path / "out"), "--backend", "cellpose",
                 "--model", str(missing_model), "--device", "cpu"]) == 1
    assert "no_model.pt" in capsys.readouterr().err


def test_parser_has_segment_subcommand_and_diameter_auto():
    args = build_parser().parse_args(["segment", "in", "out", "--diameter", "auto", "--channels", "0", "1"])
    assert args.command == "segment" and args.diameter == 0 and args.channels == ["0", "1"]
    args = build_parser().parse_args(["segment", "in", "out", "--diameter", "17"])
    assert args.diameter == 17.0


def test_read_image_puts_channels_first_and_drops_alpha(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    iio.imwrite(tmp_path / "a.png", rgba)
    assert read_image(tmp_path / "a.png").shape == (3, 20, 30)
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((2, 20, 30), np.uint16))
    assert read_image(tmp_path / "b.tif").shape == (2, 20, 30)


@pytest.mark.slow  # the installed console script, in a subprocess
def test_console_script_is_installed():
    script = Path(sys.executable).with_name("hemoprofile")
    result = subprocess.run([str(script), "segment", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "INPUT_DIR" in result.stdout
