"""Configuration and sample sheet: validation against the JSON schemas in hemoprofile/config/schemas/.

The workflow calls these before any job starts, so a typo or a value out of range stops the run with a
message that names the key and what is allowed. Missing keys are filled with the schema's defaults, so
the rest of the code can rely on every key being present.

We validate with jsonschema directly rather than ``snakemake.utils.validate`` because its message is
jsonschema's raw dump; here every problem is listed on one line that names the key, and all problems
are reported at once.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from pathlib import Path

import jsonschema
import pandas as pd
import yaml

#: The JSON schemas (YAML), installed with the package.
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


class ConfigError(ValueError):
    """A configuration or sample sheet that does not satisfy its schema."""


def load_schema(path: str | os.PathLike) -> dict:
    """Load a YAML/JSON schema file."""
    with open(path) as handle:
        return yaml.safe_load(handle)


def _validator_filling_defaults():
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema and subschema["default"] is not None:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


_FillingValidator = _validator_filling_defaults()


def _key_name(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key_name(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        where = f"under '{key}'" if error.absolute_path else "at the top level"
        if allowed:
            return f"unknown key(s) {', '.join(map(repr, unknown))} {where}; allowed: {', '.join(allowed)}"
        return f"{where}: {error.message}"
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"key '{key}': {error.instance!r} is not allowed; allowed: {allowed}"
    if error.validator == "propertyNames":
        return f"key '{key}': {error.message}"
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"key '{key}': {error.instance!r} is out of range ({error.validator} {error.validator_value})"
    if error.validator == "type":
        return f"key '{key}': {error.instance!r} is not of type {error.validator_value}"
    if error.validator == "required":
        return f"key '{key}': {error.message}"
    return f"key '{key}': {error.message}"


def _leaf_errors(errors):
    # Errors inside a $ref'd schema nested in additionalProperties arrive as context; report the leaves.
    for error in errors:
        if error.context:
            yield from _leaf_errors(error.context)
        else:
            yield error


def validate_config(config: Mapping, schema_path: str | os.PathLike | None = None) -> dict:
    """Validate ``config`` against the config schema and return a copy with every default filled in.

    Raises
    ------
    ConfigError listing every problem, one per line, each naming the key and what is allowed.

    Example
    -------
    >>> validate_config({"tile": {"size": 256}})["tile"]["compression_level"]
    5
    """
    schema = load_schema(schema_path or SCHEMA_DIR / "config.schema.yaml")
    renamed = _renamed_key_problems(config)
    if renamed:  # before the schema, which would only call the old key unknown
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(renamed))
    filled = copy.deepcopy(dict(config))
    validator = _FillingValidator(schema)
    problems = sorted({_describe(e) for e in _leaf_errors(validator.iter_errors(filled))})
    problems += _semantic_config_problems(filled) if not problems else []
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return filled


def renamed_key_problems(synth_cfg: Mapping) -> list[str]:
    """Messages for keys of the ``synthetic`` section that were renamed (today ``ctc_per_1000``), each
    with the value to write instead; empty when there are none.

    Example
    -------
    >>> message, = renamed_key_problems({"conditions": {"d": {"ctc_per_1000": 4.0}}})
    >>> message.split(" was ")[0], message.split(": write ")[1]
    ('synthetic.conditions.d.ctc_per_1000', 'ctc_per_million: 4000')
    """
    problems = []
    conditions = synth_cfg.get("conditions") if isinstance(synth_cfg, Mapping) else None
    for name, spec in (conditions or {}).items():
        if isinstance(spec, Mapping) and "ctc_per_1000" in spec:
            try:
                converted = f"{float(spec['ctc_per_1000']) * 1000:g}"
            except (TypeError, ValueError):
                converted = "<ctc_per_1000 x 1000>"
            problems.append(
                f"synthetic.conditions.{name}.ctc_per_1000 was replaced by ctc_per_million (CTCs per million "
                f"nucleated cells): write ctc_per_million: {converted}"
            )
    return problems


def _renamed_key_problems(config: Mapping) -> list[str]:
    synthetic = config.get("synthetic") if isinstance(config, Mapping) else None
    return renamed_key_problems(synthetic) if isinstance(synthetic, Mapping) else []


def _semantic_config_problems(config: dict) -> list[str]:
    """Checks a JSON schema cannot express (relations between keys)."""
    problems = []
    settings = [("preprocess.default", config["preprocess"]["default"])]
    settings += [(f"preprocess.channels.{name}", s) for name, s in config["preprocess"]["channels"].items()]
    default_clip = config["preprocess"]["default"]["percentile_clip"]
    for where, channel in settings:
        clip = {**default_clip, **channel.get("percentile_clip", {})}
        if clip["low"] >= clip["high"]:
            problems.append(
                f"key '{where}.percentile_clip': low ({clip['low']}) must be below high ({clip['high']})"
            )
    synthetic = config["synthetic"]
    if synthetic["enabled"] and sum(c.get("patients", 0) for c in synthetic["conditions"].values()) == 0:
        problems.append("key 'synthetic.conditions': every condition has 0 patients; the cohort would be empty")
    for name, condition in synthetic["conditions"].items():
        emt, small = condition.get("emt_fraction", 0.3), condition.get("small_fraction", 0.2)
        if emt + small > 1:
            problems.append(
                f"key 'synthetic.conditions.{name}': emt_fraction ({emt}) + small_fraction ({small}) exceeds 1 "
                "(each CTC is one subtype)"
            )
    return problems


def load_config(path: str | os.PathLike, schema_path: str | os.PathLike | None = None) -> dict:
    """Read a YAML config file and validate it (see :func:`validate_config`)."""
    with open(path) as handle:
        raw = yaml.safe_load(handle) or {}
    try:
        return validate_config(raw, schema_path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


SAMPLE_COLUMNS_INT = ("frame_rows", "frame_cols")
SAMPLE_COLUMNS_FLOAT = ("pixel_size_um", "ctc_enrichment")


def _row_for_schema(row: Mapping) -> dict:
    clean = {}
    for key, value in row.items():
        if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
            continue
        if key in SAMPLE_COLUMNS_INT:
            number = float(value)
            value = int(number) if number.is_integer() else number
        elif key in SAMPLE_COLUMNS_FLOAT:
            value = float(value)
        else:
            value = str(value)
        clean[key] = value
    return clean


def validate_sample_sheet(
    samples: pd.DataFrame,
    source: str = "sample sheet",
    schema_path: str | os.PathLike | None = None,
    check_paths: bool = True,
) -> pd.DataFrame:
    """Validate a sample sheet (one row per slide or single-cell collection) and return it indexed by slide.

    A row with ``source: collection`` names a folder of single-cell crops (``path``) instead of a slide
    and needs no ``format`` or ``channels``; ``source`` defaults to ``slide``. Checks every row against samples.schema.yaml (an empty required cell is named as such), that slide
    names and paths are unique (a slide listed twice would be counted twice for its patient), that a
    row's channel names are unique, that frame folders give their grid, and (``check_paths``) that
    every path exists. Relative paths are kept as given.

    Raises
    ------
    ConfigError naming ``source``, the row (1-based, header excluded), the column and the problem.
    """
    schema = load_schema(schema_path or SCHEMA_DIR / "samples.schema.yaml")
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    if samples.empty:
        problems.append("no slides (the sheet has no rows)")
    rows = []
    for number, (_, row) in enumerate(samples.iterrows(), start=1):
        clean = _row_for_schema(row.to_dict())
        name = f"row {number}" + (f" ({clean['slide']})" if "slide" in clean else "")
        for error in validator.iter_errors(clean):
            if error.validator == "required" and not error.absolute_path:
                for column in error.validator_value:
                    if column not in clean:
                        where = "is empty" if column in samples.columns else "is missing from the sheet"
                        problems.append(f"{name}: column '{column}' {where}")
            else:
                problems.append(f"row {number}: {_describe(error).replace('key ', 'column ', 1)}")
        channels = channel_list(clean.get("channels", ""))
        repeated = sorted({c for c in channels if channels.count(c) > 1})
        if repeated:
            problems.append(f"{name}: channel name(s) {', '.join(repeated)} appear more than once in 'channels'")
        if clean.get("format") == "frames" and not ("frame_rows" in clean and "frame_cols" in clean):
            problems.append(f"row {number} ({clean.get('slide')}): format 'frames' needs frame_rows and frame_cols")
        if check_paths and "path" in clean and not Path(clean["path"]).exists():
            problems.append(f"row {number} ({clean.get('slide')}): path {clean['path']!r} does not exist")
        elif check_paths and clean.get("source") == "collection" and not Path(clean["path"]).is_dir():
            problems.append(f"row {number} ({clean.get('slide')}): source 'collection' needs a folder of "
                            f"single-cell images, but {clean['path']!r} is a file")
        if clean.get("source", "slide") != "collection" and "modality" in clean:
            problems.append(f"row {number} ({clean.get('slide')}): 'modality' is for source 'collection' rows only")
        clean.setdefault("source", "slide")
        clean.setdefault("batch", clean.get("slide"))
        rows.append(clean)
    table = pd.DataFrame(rows)
    for column, what in (("slide", "slide name"), ("path", "path")):
        if column not in table:
            continue
        for value, group in table.groupby(column, sort=True):
            if len(group) > 1:
                numbers = " and ".join(str(i + 1) for i in group.index)
                problems.append(f"duplicated {what} {value!r} in rows {numbers} (each slide must appear once)")
    if problems:
        raise ConfigError(f"{source}: invalid sample sheet:\n  " + "\n  ".join(dict.fromkeys(problems)))
    for column in SAMPLE_COLUMNS_INT:
        if column in table:
            table[column] = table[column].astype("Int64")
    return table.set_index("slide", drop=False)


def check_sample_channels(samples: pd.DataFrame, config: Mapping, source: str = "sample sheet") -> None:
    """Check the sheet's channel names against what the configuration asks of them, before any job runs.

    Without this a misnamed channel (``PanCK`` in the sheet, ``CK`` in the config) would surface only in
    the preprocess, segment or extract job, after the slides were tiled; and a slide listing its
    channels in another order would fail only when the cohort's classifier or embedder is trained.

    Checks, for every slide of ``samples`` (a validated sheet; collection rows are not slides and are
    passed over): the segmentation channels
    (``segment.channels``) and every ``preprocess.channels`` override name one of its channels; every
    gating feature (``gating.gates``, when gating is enabled) is a cells.parquet column for its channels;
    and all slides list the same channels in the same order (patches of a cohort share one layout).

    Parameters
    ----------
    samples : a sheet returned by :func:`validate_sample_sheet` (or :func:`read_sample_sheet`).
    config : a validated config (:func:`validate_config`).
    source : the sheet's name for the message (its path).

    Raises
    ------
    ConfigError naming ``source``, the slides, the config key and the unknown channel names.
    """
    from hemoprofile.io.tables import cells_schema  # pyarrow: only when checking

    segment = config["segment"]["channels"]
    wanted = {"segment.channels.nucleus": [segment["nucleus"]],
              "segment.channels.cytoplasm": list(segment["cytoplasm"]),
              "preprocess.channels": list(config["preprocess"]["channels"])}
    gating = config["gating"]
    features = [r["feature"] for g in gating["gates"] for r in g["rules"]] if gating["enabled"] else []
    problems: dict[str, list[str]] = {}  # problem -> slides
    layouts: dict[tuple[str, ...], list[str]] = {}
    for slide, row in samples.iterrows():
        if row.get("source") == "collection":  # crops: their channels come from the images
            continue
        channels = channel_list(row["channels"])
        layouts.setdefault(tuple(channels), []).append(str(slide))
        for key, names in wanted.items():
            unknown = [n for n in names if n not in channels]
            if unknown:
                problem = f"{key} names {', '.join(map(repr, unknown))}, not among the channels {channels}"
                problems.setdefault(problem, []).append(str(slide))
        columns = set(cells_schema(channels).names)
        unknown = list(dict.fromkeys(f for f in features if f not in columns))
        if unknown:
            problem = (f"gating.gates reads {', '.join(map(repr, unknown))}, which cells.parquet will not have "
                       f"for the channels {channels}")
            problems.setdefault(problem, []).append(str(slide))
    lines = [f"slide(s) {_slide_list(slides)}: {problem}" for problem, slides in problems.items()]
    if len(layouts) > 1:
        kinds = "; ".join(f"{','.join(layout)} in {_slide_list(slides)}" for layout, slides in layouts.items())
        lines.append(f"slides list different channels ({kinds}); the cohort's classifier and embedder need one "
                     "channel layout, so every slide must hold the same channels in the same order")
    if lines:
        raise ConfigError(f"{source}: channel names do not fit the configuration:\n  " + "\n  ".join(lines))


def collection_modality(row: Mapping, config: Mapping) -> str:
    """The modality of a ``source: collection`` row: its ``modality`` cell, else
    ``collection.default_modality``."""
    value = row.get("modality")
    return str(value) if isinstance(value, str) and value.strip() else str(config["collection"]["default_modality"])


def check_collection_models(samples: pd.DataFrame, config: Mapping, source: str = "sample sheet") -> None:
    """Check that every collection row's modality names a classifier in ``collection.models``.

    Raises
    ------
    ConfigError naming ``source``, the rows and the modalities without a model.
    """
    models = config["collection"]["models"]
    unknown: dict[str, list[str]] = {}
    for slide, row in samples.iterrows():
        if row.get("source") == "collection":
            modality = collection_modality(row, config)
            if modality not in models:
                unknown.setdefault(modality, []).append(str(slide))
    if unknown:
        lines = [f"row(s) {_slide_list(rows)}: modality {m!r} has no classifier in collection.models "
                 f"(known: {', '.join(models) or 'none'})" for m, rows in unknown.items()]
        raise ConfigError(f"{source}: collection rows without a model:\n  " + "\n  ".join(lines))


def _slide_list(slides: list[str], most: int = 5) -> str:
    shown = ", ".join(slides[:most])
    return shown + (f" and {len(slides) - most} more" if len(slides) > most else "")


def read_sample_sheet(path: str | os.PathLike, **kwargs) -> pd.DataFrame:
    """Read and validate a tab-separated sample sheet (see :func:`validate_sample_sheet`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: sample sheet not found")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, comment="#", skip_blank_lines=True)
    except Exception as err:  # pandas raises several parser errors
        raise ConfigError(f"{path}: cannot parse as a tab-separated sample sheet ({err})") from err
    return validate_sample_sheet(table, source=str(path), **kwargs)


def channel_list(channels: str) -> list[str]:
    """Split a sample sheet ``channels`` entry into names."""
    return [name.strip() for name in str(channels).split(",") if name.strip()]


_DEFAULTS: dict | None = None


def config_defaults() -> dict:
    """Every config key's default, read from the config schema (a fresh copy each call).

    Stages take their settings from here when called without a config, so the schema is the one
    place a default is written.

    Example
    -------
    >>> config_defaults()["tile"]["size"]
    512
    """
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = validate_config({})
    return copy.deepcopy(_DEFAULTS)


def section_defaults(section: str) -> dict:
    """The defaults of one config section (``segment``, ``extract``, ...), read from the schema."""
    defaults = config_defaults()
    if section not in defaults:
        raise KeyError(f"the config schema has no section {section!r}; sections: {sorted(defaults)}")
    return defaults[section]
