"""The ``segment`` section completed from the config schema's defaults."""

from hemoprofile.config import validate_config
from hemoprofile.segment.settings import segment_settings


def test_package_defaults_equal_the_config_schema_defaults():
    assert validate_config({})["segment"] == segment_settings()


def test_settings_merge_nested_sections():
    cfg = segment_settings({"classical": {"peak_distance": 0.5}}, diameter=20)
    assert cfg["classical"]["peak_distance"] == 0.5 and cfg["classical"]["smoothing_sigma"] == 1.0
    assert cfg["diameter"] == 20 and cfg["channels"]["nucleus"] == "DAPI"
