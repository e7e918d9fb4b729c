"""Tests of hemoprofile.preprocess.settings: per-channel settings and the halo a tile needs."""

from __future__ import annotations

import copy

import pytest
from helpers.preprocess_images import CONFIG

from hemoprofile.preprocess.settings import required_halo, resolve_channel_settings


def test_channel_settings_are_default_deep_merged_with_overrides():
    cfg = copy.deepcopy(CONFIG)
    settings = resolve_channel_settings(cfg, ["DAPI", "CK", "VIM", "CD45"])
    assert list(settings) == ["DAPI", "CK", "VIM", "CD45"]
    assert settings["DAPI"]["denoise"] == {"enabled": True, "weight": 0.04, "iterations": 20}
    assert settings["DAPI"]["clahe"] == CONFIG["default"]["clahe"]  # untouched sections come from default
    assert settings["CK"]["clahe"]["enabled"] and not settings["CK"]["denoise"]["enabled"]
    assert settings["VIM"] == settings["CD45"] == CONFIG["default"]
    partial = {"default": CONFIG["default"], "channels": {"CK": {"percentile_clip": {"high": 99.0}}}}
    assert resolve_channel_settings(partial, ["CK"])["CK"]["percentile_clip"] == {
        "enabled": True, "low": 0.5, "high": 99.0}
    settings["VIM"]["clahe"]["enabled"] = True  # results are copies: the config is never aliased
    assert cfg == CONFIG


def test_override_of_a_channel_the_image_lacks_is_an_error_naming_both():
    cfg = {"default": CONFIG["default"], "channels": {"CK": {}, "EpCAM": {}}}
    with pytest.raises(ValueError, match=r"EpCAM.*DAPI.*CK"):
        resolve_channel_settings(cfg, ["DAPI", "CK"])


def test_required_halo_adds_the_operators_needs_and_takes_the_largest_channel():
    settings = resolve_channel_settings(CONFIG, ["DAPI", "CK", "VIM"])
    assert required_halo({"VIM": settings["VIM"]}) == 0  # per-pixel maps only
    assert required_halo({"DAPI": settings["DAPI"]}) == 20  # TV: one pixel per iteration
    assert required_halo({"CK": settings["CK"]}) == 96  # CLAHE: 1.5 kernels of 64
    both = copy.deepcopy(settings["CK"])
    both["denoise"]["enabled"] = True
    assert required_halo({"CK": both}) == 96 + 20
    assert required_halo(settings) == 96
