"""Robust collection ingestion: every kind of bad file is skipped or converted with a message and a QC
row, never a crash and never a silent drop; ``classify`` and ``ingest-collection`` go on past bad files
and exit non-zero only with ``--strict``."""

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hemoprofile.ingest.collection import ingest_collection
from hemoprofile.io.crops import CropLimits, check_crop
from hemoprofile.models import resolve_model
from hemoprofile.io.patches import open_patch_array

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
PBC = FIXTURES / "pbc"
PBC8 = resolve_model("bundled:pbc8_cellnet96")
GOOD = sorted((PBC / "images").rglob("*.jpg"))


def _png(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


def _bad_collection(folder: Path) -> dict[str, tuple[str, str]]:
    """A collection with 3 good crops and one file of each bad kind -> {name: (status, problem)}."""
    images = folder / "images" / "mixed"
    images.mkdir(parents=True)
    expected = {}
    for src in GOOD[:3]:
        shutil.copy(src, images / src.name)
        expected[src.name] = ("ok", "")
    shutil.copy(GOOD[0], images / "zz_copy.jpg")
    expected["zz_copy.jpg"] = ("skipped", "duplicate")
    (images / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = ("skipped", "empty")
    (images / "._DS_Store.jpg").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(200))
    expected["._DS_Store.jpg"] = ("skipped", "not_an_image")
    raw = GOOD[1].read_bytes()
    (images / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    expected["truncated.jpg"] = ("skipped", "truncated")
    (images / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(300))
    expected["garbage.png"] = ("skipped", "unreadable")
    rgb = np.asarray(Image.open(GOOD[2]).convert("RGB"))
    Image.fromarray(rgb).convert("CMYK").save(images / "cmyk.jpg")
    expected["cmyk.jpg"] = ("converted", "")
    Image.fromarray((np.arange(60 * 60).reshape(60, 60) * 18).astype(np.uint16)).save(images / "grey16.png")
    expected["grey16.png"] = ("converted", "")
    rgba = np.dstack([rgb[:80, :80], np.full((80, 80), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(images / "rgba.png")
    expected["rgba.png"] = ("converted", "")
    Image.fromarray(rgb[:90, :90]).convert("P").save(images / "palette.png")
    expected["palette.png"] = ("converted", "")
    _png(images / "tiny.png", np.zeros((4, 4), np.uint8))
    expected["tiny.png"] = ("skipped", "too_small")
    _png(images / "huge.png", np.zeros((4200, 4200), np.uint8))
    expected["huge.png"] = ("skipped", "too_large")
    _png(images / "strip.png", np.zeros((10, 120, 3), np.uint8))
    expected["strip.png"] = ("skipped", "aspect")
    (images / "notes.txt").write_text("not a crop")
    expected["notes.txt"] = ("skipped", "not_an_image")
    return expected


def test_each_bad_file_gets_a_qc_row_and_the_good_ones_are_ingested(tmp_path):
    expected = _bad_collection(tmp_path / "coll")
    messages = []
    summary = ingest_collection(tmp_path / "coll", tmp_path / "out" / "cells.parquet", tmp_path / "out" / "patches.zarr",
                                32, progress=messages.append)
    qc = pd.read_csv(tmp_path / "out" / "qc.csv", keep_default_na=False)
    assert pd.read_parquet(tmp_path / "out" / "qc.parquet")["path"].tolist() == qc["path"].tolist()
    got = {Path(p).name: (s, pr) for p, s, pr in qc[["path", "status", "problem"]].itertuples(index=False)}
    assert got == expected  # every file listed once, with its verdict
    assert (qc["details"][qc["status"] != "ok"] != "").all()
    details = dict(zip(qc["path"].map(lambda p: Path(p).name), qc["details"]))
    assert "CMYK" in details["cmyk.jpg"] and "16-bit" in details["grey16.png"]
    assert "alpha" in details["rgba.png"] and "palette" in details["palette.png"]
    assert ".DS_Store" in details["._DS_Store.jpg"] and GOOD[0].name in details["zz_copy.jpg"]
    n_used = sum(s != "skipped" for s, _ in expected.values())
    cells = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    patches, channels, _ = open_patch_array(tmp_path / "out" / "patches.zarr")
    assert summary["n_cells"] == len(cells) == patches.shape[0] == n_used == 7
    assert channels == ["R", "G", "B"] and cells["cell_id"].tolist() == list(range(1, 8))
    assert summary["n_skipped"] == len(expected) - n_used and summary["problems"]["duplicate"] == 1
    # one message per file not ok, and the summary line
    for name, (status, _) in expected.items():
        if status != "ok":
            assert any(name in m and status in m for m in messages), name
    assert "7 crops" in summary["summary"] and "skipped" in messages[-1]


def test_check_crop_reads_16_bit_grey_scaled_to_unit_range(tmp_path):
    data = np.full((20, 20), 65535, np.uint16)
    data[0, 0] = 0
    Image.fromarray(data).save(tmp_path / "g.png")
    check = check_crop(tmp_path / "g.png")
    assert check.status == "converted" and check.data.shape == (1, 20, 20)
    assert check.data.max() == pytest.approx(1.0) and check.data.min() == 0.0
    assert check_crop(tmp_path / "g.png", CropLimits(min_side=30)).problem == "too_small"


def test_folder_of_only_bad_files_raises_after_writing_the_qc_table(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="none of its 1 file"):
        ingest_collection(tmp_path / "c", tmp_path / "cells.parquet", tmp_path / "p.zarr", 16, progress=None)
    assert pd.read_csv(tmp_path / "qc.csv")["problem"].tolist() == ["empty"]


def _ten_good_and_one_empty(folder: Path) -> Path:
    for src in GOOD[:10]:
        (folder / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, folder / src.parent.name / src.name)
    (folder / "neutrophil").mkdir(exist_ok=True)
    (folder / "neutrophil" / "empty.jpg").write_bytes(b"")
    return folder


def _cli(argv):
    from hemoprofile.cli.main import build_parser

    args = build_parser().parse_args(argv)
    return args.func(args)


def test_classify_goes_past_an_empty_jpg_and_classifies_the_ten(tmp_path, capsys):
    folder = _ten_good_and_one_empty(tmp_path / "ten")
    out = tmp_path / "pred.csv"
    assert _cli(["classify", str(folder), "--model", str(PBC8), "--out", str(out), "--device", "cpu"]) == 0
    predictions = pd.read_csv(out)
    assert len(predictions) == 10 and "empty.jpg" not in " ".join(predictions["path"])
    qc = pd.read_csv(tmp_path / "pred.qc.csv", keep_default_na=False)
    assert len(qc) == 11 and qc.set_index("path").loc["neutrophil/empty.jpg", "problem"] == "empty"
    text = capsys.readouterr().out
    assert "skipped neutrophil/empty.jpg [empty]" in text and "1 skipped: empty 1" in text
    # against the folder names as labels (the fixture crops are PBC images)
    assert (predictions["predicted_label"] == predictions["path"].str.split("/").str[0]).mean() >= 0.9
    assert _cli(["classify", str(folder), "--model", str(PBC8), "--out", str(out), "--device", "cpu",
                 "--strict"]) == 1


def test_ingest_collection_command_skips_and_is_strict_only_when_asked(tmp_path, capsys):
    folder = _ten_good_and_one_empty(tmp_path / "ten")
    assert _cli(["ingest-collection", str(folder), str(tmp_path / "out"), "--patch-size", "16"]) == 0
    text = capsys.readouterr().out
    assert "skipped neutrophil/empty.jpg [empty]: 0-byte file" in text and "10 crops" in text
    assert len(pd.read_csv(tmp_path / "out" / "qc.csv")) == 11
    assert _cli(["ingest-collection", str(folder), str(tmp_path / "out2"), "--patch-size", "16", "--strict"]) == 1
    assert open_patch_array(tmp_path / "out2" / "patches.zarr")[0].shape[0] == 10  # still written


def test_an_argparse_namespace_without_the_new_options_still_runs(tmp_path):
    from hemoprofile.cli.collection import run_ingest_collection

    folder = _ten_good_and_one_empty(tmp_path / "ten")
    args = argparse.Namespace(folder=folder, out_dir=tmp_path / "o", patch_size=16, dtype="uint8", name=None,
                              stretch=False, channel_names=None, limit=None)
    assert run_ingest_collection(args) == 0
