"""Config and sample sheet validation: defaults filled, bad keys and values named with what is allowed."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from hemoprofile.config import (
    SCHEMA_DIR,
    ConfigError,
    load_config,
    read_sample_sheet,
    validate_config,
    validate_sample_sheet,
)

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_is_valid_and_defaults_are_filled():
    config = load_config(REPO / "config" / "config.yaml")
    assert config["tile"]["size"] == 512
    # preprocess.default sub-keys that config.yaml leaves out come from the schema
    assert config["preprocess"]["default"]["clahe"]["kernel_size"] == 64
    assert config["frames"]["pattern"] == "Tile{index:06d}.tif"


def test_empty_config_takes_every_default():
    config = validate_config({})
    assert config["synthetic"]["enabled"] is False
    assert set(config["synthetic"]["conditions"]) == {"control", "disease_a", "disease_b"}
    assert config["preprocess"]["output_dtype"] == "uint16"


def _all_properties(schema, path=""):
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}{name}", sub
        yield from _all_properties(sub, f"{path}{name}.")


def test_every_schema_key_has_description_and_default():
    schema = yaml.safe_load(open(SCHEMA_DIR / "config.schema.yaml"))
    missing = []
    for key, sub in _all_properties(schema):
        if "description" not in sub and "$ref" not in sub:
            missing.append(f"{key}: description")
        if "default" not in sub and key != "synthetic.conditions.composition":
            missing.append(f"{key}: default")
    for name, definition in schema["$defs"].items():
        if name == "channel_override":  # its keys inherit from preprocess.default, by design
            continue
        for key, sub in _all_properties(definition, f"$defs.{name}."):
            if "description" not in sub and "$ref" not in sub:
                missing.append(f"{key}: description")
            if "default" not in sub and not key.endswith("composition"):
                missing.append(f"{key}: default")
    assert not missing, missing
    for key, sub in _all_properties(schema["$defs"]["channel_override"]):
        assert "description" in sub and "Inherits" in sub["description"] or sub.get("type") == "object", key


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"tile": {"sise": 256}}, ["'sise'", "under 'tile'", "allowed: compression_level, size"]),
        ({"synthetic": {"output_format": "png"}}, ["synthetic.output_format", "'png'", "allowed: frames, ome-tiff"]),
        ({"tile": {"size": 10}}, ["tile.size", "minimum 64"]),
        ({"preprocess": {"channels": {"DAPI": {"clahe": {"kernel": 3}}}}}, ["preprocess.channels.DAPI.clahe", "kernel_size"]),
        ({"preprocess": {"default": {"percentile_clip": {"low": 99, "high": 5}}}}, ["low (99) must be below high (5)"]),
        ({"nonsense": 1}, ["'nonsense'", "top level"]),
        ({"synthetic": {"conditions": {"x": {"composition": {"T": 1.0}}}}}, ["composition", "'T'", "CD4_T"]),
    ],
)
def test_bad_key_or_value_names_the_key_and_what_is_allowed(config, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    for fragment in expected:
        assert fragment in str(err.value)


def test_channel_override_does_not_fill_defaults():
    config = validate_config({"preprocess": {"channels": {"DAPI": {"denoise": {"enabled": True}}}}})
    assert config["preprocess"]["channels"]["DAPI"] == {"denoise": {"enabled": True}}


def _sheet(**overrides):
    row = {
        "slide": "S1", "patient": "P1", "condition": "control", "path": ".", "format": "ome-tiff",
        "channels": "DAPI,CK,VIM,CD45", "pixel_size_um": "0.65", "frame_rows": "", "frame_cols": "",
    }
    row.update(overrides)
    return pd.DataFrame([row])


def test_valid_sample_sheet_is_indexed_by_slide_with_batch_default():
    table = validate_sample_sheet(_sheet())
    assert list(table.index) == ["S1"]
    assert table.loc["S1", "batch"] == "S1"
    assert table.loc["S1", "pixel_size_um"] == pytest.approx(0.65)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"format": "png"}, "column 'format': 'png' is not allowed; allowed: frames, tiff, ome-tiff"),
        ({"slide": "bad name"}, "column 'slide'"),
        ({"format": "frames"}, "needs frame_rows and frame_cols"),
        ({"path": "/no/such/slide.tif"}, "'/no/such/slide.tif' does not exist"),
        ({"channels": "DAPI,,CK"}, "column 'channels'"),
    ],
)
def test_bad_sample_sheet_row_is_named(overrides, expected):
    with pytest.raises(ConfigError) as err:
        validate_sample_sheet(_sheet(**overrides), source="samples.tsv")
    assert "samples.tsv" in str(err.value) and "row 1" in str(err.value)
    assert expected in str(err.value)


def test_duplicated_and_missing_columns(tmp_path):
    table = pd.concat([_sheet(), _sheet()])
    with pytest.raises(ConfigError, match="duplicated slide name"):
        validate_sample_sheet(table)
    with pytest.raises(ConfigError, match="row 1 \\(S1\\): column 'patient' is missing from the sheet"):
        validate_sample_sheet(_sheet().drop(columns=["patient"]))
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("# only comments\nslide\tpatient\tcondition\tpath\tformat\tchannels\n")
    with pytest.raises(ConfigError, match="no slides"):
        read_sample_sheet(sheet)
    with pytest.raises(ConfigError, match="not found"):
        read_sample_sheet(tmp_path / "missing.tsv")


def test_config_readme_documents_every_key_of_the_schema():
    from hemoprofile.config import config_reference_markdown

    readme = (REPO / "config" / "README.md").read_text()
    assert config_reference_markdown() in readme, "regenerate with: python -m hemoprofile.config"
