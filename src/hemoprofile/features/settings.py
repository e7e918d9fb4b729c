"""Settings of the extract stage: the ``extract`` config section completed with the schema's defaults
(:func:`hemoprofile.config.section_defaults`) and checked."""

from __future__ import annotations

from collections.abc import Mapping

from hemoprofile.config import section_defaults

#: Patch dtypes ``patch_dtype`` may name (:func:`hemoprofile.io.patches.to_patch_dtype` writes them).
PATCH_DTYPES = ("uint8", "uint16", "float16")


def resolve_extract(extract_cfg: Mapping | None) -> dict:
    """Return complete extract settings: the schema's ``extract`` defaults overridden by ``extract_cfg``.

    Raises
    ------
    ValueError for an unknown key, a patch dtype outside :data:`PATCH_DTYPES` or an out-of-range value.
    """
    cfg = section_defaults("extract")
    for key, value in (extract_cfg or {}).items():
        if key not in cfg:
            raise ValueError(f"extract: unknown key {key!r}; allowed: {', '.join(sorted(cfg))}")
        cfg[key] = value
    if str(cfg["patch_dtype"]) not in PATCH_DTYPES:
        raise ValueError(f"extract.patch_dtype must be one of {PATCH_DTYPES}, got {cfg['patch_dtype']!r}")
    if int(cfg["patch_size"]) < 4:
        raise ValueError(f"extract.patch_size must be >= 4, got {cfg['patch_size']}")
    if int(cfg["max_cell_diameter_px"]) < 1 or float(cfg["cluster_distance_um"]) < 0:
        raise ValueError("extract.max_cell_diameter_px must be >= 1 and cluster_distance_um >= 0")
    return cfg
