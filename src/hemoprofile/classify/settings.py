"""The ``classify`` config section: its defaults, read from the config schema, and
:func:`resolve_classify`, which completes a partial section and checks its keys, tasks and label source."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping

from hemoprofile.config import SCHEMA_DIR, load_schema, section_defaults
from hemoprofile.vocabulary import TASK_NAMES

#: Where training labels come from (``collection``: the ``label`` column of an ingested collection,
#: which ``hemoprofile train-classifier`` uses; the workflow's schema allows the other three).
LABEL_SOURCES = ("truth", "column", "table", "collection")


@functools.lru_cache(maxsize=1)
def _section_properties() -> dict:
    return load_schema(SCHEMA_DIR / "config.schema.yaml")["properties"]["classify"]["properties"]


def _with_every_key(defaults: dict, properties: Mapping) -> dict:
    """``defaults`` with every key the schema names, in the schema's order: a key whose schema default is
    null (which config validation leaves out) is ``None``."""
    return {name: defaults.get(name) for name in properties}


def classify_defaults() -> dict:
    """Defaults of the ``classify`` config section, read from the schema (a fresh copy).

    Unlike the validated config, every key is present, nulls included (``model.stem_stride``,
    ``augment.crop``), so :func:`resolve_classify` knows which keys are allowed.

    Example
    -------
    >>> d = classify_defaults()
    >>> d["tasks"], d["train"]["epochs"], d["augment"]["crop"]
    (['lineage', 'immune5', 'ctc'], 40, None)
    """
    properties = _section_properties()
    out = _with_every_key(section_defaults("classify"), properties)
    for key, schema in properties.items():
        if isinstance(out[key], dict) and "properties" in schema:
            out[key] = _with_every_key(out[key], schema["properties"])
    return out


def resolve_classify(cfg: Mapping | None) -> dict:
    """Complete ``classify`` settings: :func:`classify_defaults` overridden (one level deep) by ``cfg``.

    Raises
    ------
    ValueError naming an unknown key, task or label source.
    """
    out = classify_defaults()
    for key, value in (cfg or {}).items():
        if key not in out:
            raise ValueError(f"classify: unknown key {key!r}; allowed: {', '.join(sorted(out))}")
        if isinstance(out[key], dict) and key != "models" and isinstance(value, Mapping):
            unknown = set(value) - set(out[key])
            if unknown:
                raise ValueError(f"classify.{key}: unknown key(s) {sorted(unknown)}; allowed: {sorted(out[key])}")
            out[key].update(value)
        else:
            out[key] = copy.deepcopy(value)
    for task in out["tasks"]:
        if task not in TASK_NAMES:
            raise ValueError(f"classify.tasks: unknown task {task!r}; known: {', '.join(TASK_NAMES)}")
    if out["label_source"] not in LABEL_SOURCES:
        raise ValueError(f"classify.label_source {out['label_source']!r} not one of {LABEL_SOURCES}")
    return out
