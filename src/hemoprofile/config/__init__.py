"""Configuration: the JSON schemas (package data, ``hemoprofile/config/schemas/``), validation of the
config and the sample sheet (:mod:`~hemoprofile.config.validation`), the defaults read from the schema,
and the key reference (:mod:`~hemoprofile.config.reference`; ``python -m hemoprofile.config``).
"""

from hemoprofile.config.reference import config_reference_markdown, schema_key_rows
from hemoprofile.config.validation import (
    SAMPLE_COLUMNS_FLOAT,
    SAMPLE_COLUMNS_INT,
    SCHEMA_DIR,
    ConfigError,
    channel_list,
    check_collection_models,
    check_sample_channels,
    collection_modality,
    config_defaults,
    load_config,
    load_schema,
    read_sample_sheet,
    section_defaults,
    validate_config,
    validate_sample_sheet,
)

__all__ = [
    "SAMPLE_COLUMNS_FLOAT", "SAMPLE_COLUMNS_INT", "SCHEMA_DIR", "ConfigError", "channel_list",
    "check_collection_models", "check_sample_channels", "collection_modality", "config_defaults", "config_reference_markdown", "load_config", "load_schema",
    "read_sample_sheet", "schema_key_rows", "section_defaults", "validate_config", "validate_sample_sheet",
]
