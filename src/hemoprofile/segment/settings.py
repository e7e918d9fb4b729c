"""The ``segment`` config section completed from the schema's defaults (the package works without the
workflow; the schema is the one place a default is written)."""

from __future__ import annotations

from collections.abc import Mapping

from hemoprofile.config import section_defaults


def segment_settings(segment_cfg: Mapping | None = None, **overrides) -> dict:
    """Return a complete ``segment`` section: ``segment_cfg`` over the schema's defaults, then ``overrides``.

    Nested sections (``channels``, ``classical``) merge key by key.

    Example
    -------
    >>> cfg = segment_settings({"classical": {"peak_distance": 0.5}}, diameter=20)
    >>> cfg["diameter"], cfg["classical"]["peak_distance"], cfg["classical"]["smoothing_sigma"]
    (20, 0.5, 1.0)
    """
    merged = section_defaults("segment")
    for source in (segment_cfg or {}, overrides):
        for key, value in source.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged[key] = value
    return merged
