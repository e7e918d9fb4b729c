"""Bad input, one test per case: each is refused with a message naming the file and the problem before
work is wasted, or runs through every stage to valid (possibly empty) outputs. The README's "Bad input"
table lists every case and the test that covers it; cases tested beside their module are named there."""

from __future__ import annotations

import pandas as pd
import pytest

from hemoprofile.config import ConfigError, check_sample_channels, read_sample_sheet, validate_config

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
    with pytest.raises(ConfigError, match=r"samples\.tsv: invalid sample sheet:\n  row 2 \(S2\): column 'patient' is empty"):
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
    with pytest.raises(ConfigError, match=r"(?s)samples\.tsv: .*row 1 \(S1\): channel name\(s\) CK appear more than once"):
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


def test_empty_sample_sheet_file_is_named(tmp_path):
    sheet = tmp_path / "samples.tsv"
    sheet.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"samples\.tsv: cannot parse as a tab-separated sample sheet"):
        read_sample_sheet(sheet)
