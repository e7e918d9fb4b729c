"""hemoprofile.embed.settings: defaults read from the config schema; unknown keys and bad values refused."""

import pytest

from hemoprofile.config import section_defaults
from hemoprofile.embed.settings import embed_defaults, resolve_embed


def test_resolve_embed_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="unknown key 'foo'"):
        resolve_embed({"foo": 1})
    with pytest.raises(ValueError, match="unknown key 'epoch'"):
        resolve_embed({"train": {"epoch": 1}})
    with pytest.raises(ValueError, match="condition_on"):
        resolve_embed({"condition_on": "patient"})
    with pytest.raises(ValueError, match="k_min <= k_max"):
        resolve_embed({"cluster": {"k_min": 5, "k_max": 3}})
    assert resolve_embed({"train": {"epochs": 3}})["train"]["lr"] == section_defaults("embed")["train"]["lr"]


def test_defaults_are_the_schema_s():
    assert resolve_embed(None) == section_defaults("embed") == embed_defaults()
    cfg = embed_defaults()
    cfg["cluster"]["k"] = 99  # a fresh copy each call
    assert embed_defaults("cluster")["k"] == 0
