"""The ``classify`` config section: defaults read from the schema, overrides merged one level deep,
unknown keys, tasks and label sources named in the error."""

import pytest

from hemoprofile.classify.settings import classify_defaults, resolve_classify
from hemoprofile.config import section_defaults, validate_config


def test_defaults_are_the_schemas_with_every_key():
    defaults = classify_defaults()
    schema = section_defaults("classify")
    for key, value in defaults.items():
        if isinstance(value, dict) and key != "models":
            assert {k: v for k, v in value.items() if v is not None} == schema[key]
        else:
            assert value == schema[key]
    # null schema defaults (left out by validation) are present, so they can be overridden
    assert defaults["model"]["stem_stride"] is None and defaults["augment"]["crop"] is None
    # the workflow's validated section resolves to the same settings as no section at all
    assert resolve_classify(validate_config({})["classify"]) == resolve_classify(None)


def test_overrides_merge_one_level_deep():
    out = resolve_classify({"train": {"epochs": 3}, "augment": {"crop": 24}, "tasks": ["ctc"]})
    assert out["train"]["epochs"] == 3 and out["train"]["batch_size"] == classify_defaults()["train"]["batch_size"]
    assert out["augment"]["crop"] == 24 and out["tasks"] == ["ctc"]


def test_unknown_keys_tasks_and_sources_are_named():
    with pytest.raises(ValueError, match="unknown key"):
        resolve_classify({"epochs": 3})
    with pytest.raises(ValueError, match="classify.train: unknown key"):
        resolve_classify({"train": {"epoch": 3}})
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        resolve_classify({"tasks": ["nope"]})
    with pytest.raises(ValueError, match="label_source"):
        resolve_classify({"label_source": "guess"})
