"""The ``synthetic`` config section read into :class:`Settings` (every key required: the config
validation fills the defaults from the schema, except ``preset`` and ``scale``, which default to none
and 1, ``lookalikes``, which defaults to :data:`~hemoprofile.simulate.lookalikes.LOOKALIKE_DEFAULTS`,
and ``ctc_enrichment``, which defaults to 1), the simulator's channels, and the real-size HDSCA preset.

Rare-event rates are per million nucleated cells: a condition's ``ctc_per_million`` (0 for controls)
and the cohort's ``lookalikes``. ``ctc_enrichment`` multiplies every condition's CTC rate: 1 is the real
rate (an evaluation cohort); above 1 the cohort is CTC-enriched, as a training cohort spiked with
cell-line cells is; the plan records it per slide (``ctc_arm``, ``ctc_enrichment``). The old key
``ctc_per_1000`` (per 1000 cells) is refused with the converted value in the message rather than
converted silently, so that one unit is read everywhere.

The ``hdsca`` preset is the Kuhn lab scanner's layout (10x objective, 0.591 um/px, 96 rows x 24 columns
of 1362 x 1004 px frames, overlap removed) at the density of a real slide, ~1,300 nucleated cells per
frame (~3 M per slide). It replaces ``pixel_size_um``, ``frame``, ``grid`` and ``cells_per_frame``;
``debris_per_frame`` keeps its density: it is read per configured frame area and scaled to the preset's
frame. ``scale`` (a fraction in (0, 1], e.g. 0.015625 or "1/64") keeps the frame size and the density
and shrinks the grid evenly, so that the slide stays 4:1 tall::

    rows = max(1, round(96 * sqrt(scale)))      cols = max(1, round(24 * sqrt(scale)))

which is exactly ``scale x 2,304`` frames for 1, 1/4 (48 x 12), 1/16 (24 x 6) and 1/64 (12 x 3).
Cell sizes stay in the simulator's pixels (its cell models are drawn for 0.65 um pixels), so at the
preset's 0.591 um/px cells are ~9% smaller in micrometres than the models say; segmentation settings
in pixels (``segment.diameter``) stay valid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

from hemoprofile.config.validation import renamed_key_problems
from hemoprofile.simulate.cell_models import CTC_EMT_FRACTION, CTC_SMALL_FRACTION
from hemoprofile.simulate.lookalikes import read_lookalike_rates
from hemoprofile.vocabulary import HDSCA_CHANNELS, LEUKOCYTE_TYPES

CHANNELS = tuple(HDSCA_CHANNELS)  # DAPI, CK, VIM, CD45


@dataclass(frozen=True)
class Preset:
    """A real slide geometry: frame size (px), frame grid, pixel size (um) and cells per frame."""

    frame_h: int
    frame_w: int
    rows: int
    cols: int
    pixel_size_um: float
    cells_per_frame: float


#: Named real-size slide geometries for ``synthetic.preset``.
PRESETS = {
    "hdsca": Preset(frame_h=1004, frame_w=1362, rows=96, cols=24, pixel_size_um=0.591, cells_per_frame=1300.0),
}


def parse_scale(value) -> float:
    """A slide scale as a float in (0, 1]: a number (0.015625) or a fraction string ("1/64").

    Raises ValueError naming the value when it is not a number in (0, 1].

    Example
    -------
    >>> parse_scale("1/64"), parse_scale(0.25)
    (0.015625, 0.25)
    """
    try:
        scale = float(Fraction(value.replace(" ", ""))) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError, TypeError):
        raise ValueError(f"synthetic.scale {value!r} is not a number or a fraction such as '1/64'") from None
    if not (math.isfinite(scale) and 0 < scale <= 1):
        raise ValueError(f"synthetic.scale {value!r} must be in (0, 1] (1 is the whole slide)")
    return scale


def scaled_grid(rows: int, cols: int, scale: float) -> tuple[int, int]:
    """The frame grid of a slide shrunk to ``scale`` of its frames, each side by sqrt(scale) (see the
    module docstring); at least one frame each way.

    Example
    -------
    >>> scaled_grid(96, 24, 1 / 64)
    (12, 3)
    """
    side = math.sqrt(scale)
    return max(1, round(rows * side)), max(1, round(cols * side))


@dataclass(frozen=True)
class Settings:
    """The ``synthetic`` section, flattened and typed (``frame_h``/``frame_w``: frame size; ``rows``/``cols``:
    the frame grid; the optics keys at the top level)."""

    seed: int
    slides_per_patient: int
    output_format: str
    pixel_size_um: float
    frame_h: int
    frame_w: int
    rows: int
    cols: int
    cells_per_frame: float
    touching_fraction: float
    cluster_rate: float
    debris_per_frame: float
    batch_effect: float
    blur_sigma: float
    background: float
    illumination: float
    photons_per_unit: float
    read_noise: float
    offset: float
    conditions: dict
    patient_variation: float
    preset: str = "none"
    scale: float = 1.0
    lookalikes: dict = None  # kind -> rate per million nucleated cells (read_lookalike_rates)
    ctc_enrichment: float = 1.0  # factor on every condition's ctc_per_million (1: real rates)

    @property
    def n_frames(self) -> int:
        return self.rows * self.cols

    def ctc_per_million(self, condition: str) -> float:
        """The CTC rate slides of ``condition`` are simulated at: its ``ctc_per_million`` times
        ``ctc_enrichment``."""
        return float(self.conditions[condition].get("ctc_per_million", 0.0)) * self.ctc_enrichment


def read_settings(cfg: Mapping) -> Settings:
    """Read and check the ``synthetic`` section; raise KeyError naming a missing key, ValueError for a bad
    output format or condition."""

    def get(*keys):
        node = cfg
        for key in keys:
            if not isinstance(node, Mapping) or key not in node:
                raise KeyError(
                    f"synthetic config lacks key '{'.'.join(keys)}' (hemoprofile.config.validate_config "
                    "fills every default)"
                )
            node = node[key]
        return node

    output_format = str(get("output_format"))
    if output_format not in ("frames", "ome-tiff"):
        raise ValueError(f"synthetic output_format {output_format!r} is not one of frames, ome-tiff")
    renamed = renamed_key_problems(cfg)
    if renamed:
        raise ValueError("; ".join(renamed))
    conditions = dict(get("conditions"))
    if not conditions:
        raise ValueError("synthetic config has no conditions")
    for name, condition in conditions.items():
        composition = condition.get("composition", {})
        unknown = sorted(set(composition) - set(LEUKOCYTE_TYPES))
        if unknown:
            raise ValueError(
                f"synthetic condition {name!r}: unknown cell type(s) {unknown} in composition; allowed: "
                f"{', '.join(LEUKOCYTE_TYPES)} (CTCs come from ctc_per_million)"
            )
        if sum(float(w) for w in composition.values()) <= 0:
            raise ValueError(f"synthetic condition {name!r}: composition weights sum to 0")
        rate = float(condition.get("ctc_per_million", 0.0))
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"synthetic condition {name!r}: ctc_per_million {rate!r} must be a finite rate >= 0")
        emt = float(condition.get("emt_fraction", CTC_EMT_FRACTION))
        small = float(condition.get("small_fraction", CTC_SMALL_FRACTION))
        if not (0 <= emt <= 1 and 0 <= small <= 1 and emt + small <= 1):
            raise ValueError(
                f"synthetic condition {name!r}: emt_fraction {emt} and small_fraction {small} must be in [0, 1] "
                "and sum to at most 1 (each CTC is one subtype)"
            )
    enrichment = float(cfg.get("ctc_enrichment", 1.0))
    if not (math.isfinite(enrichment) and enrichment >= 1):
        raise ValueError(
            f"synthetic.ctc_enrichment {cfg.get('ctc_enrichment')!r} must be >= 1 (1: real rates; above 1: a "
            "CTC-enriched cohort)"
        )
    lookalikes = read_lookalike_rates(cfg.get("lookalikes"))
    optics = get("optics")
    preset_name = str(cfg.get("preset", "none"))
    scale = parse_scale(cfg.get("scale", 1))
    geometry = {
        "pixel_size_um": float(get("pixel_size_um")),
        "frame_h": int(get("frame", "height")), "frame_w": int(get("frame", "width")),
        "rows": int(get("grid", "rows")), "cols": int(get("grid", "cols")),
        "cells_per_frame": float(get("cells_per_frame")), "debris_per_frame": float(get("debris_per_frame")),
    }
    if preset_name != "none":
        if preset_name not in PRESETS:
            raise ValueError(f"synthetic.preset {preset_name!r} is not one of none, {', '.join(PRESETS)}")
        preset = PRESETS[preset_name]
        area_ratio = (preset.frame_h * preset.frame_w) / (geometry["frame_h"] * geometry["frame_w"])
        rows, cols = scaled_grid(preset.rows, preset.cols, scale)
        geometry.update(
            pixel_size_um=preset.pixel_size_um, frame_h=preset.frame_h, frame_w=preset.frame_w, rows=rows,
            cols=cols, cells_per_frame=preset.cells_per_frame,
            debris_per_frame=geometry["debris_per_frame"] * area_ratio,
        )
    elif scale != 1:
        raise ValueError(
            f"synthetic.scale {cfg.get('scale')!r} needs a preset (synthetic.preset: hdsca); without one, set "
            "synthetic.grid directly"
        )
    return Settings(
        seed=int(get("seed")),
        slides_per_patient=int(get("slides_per_patient")),
        output_format=output_format,
        pixel_size_um=geometry["pixel_size_um"],
        frame_h=geometry["frame_h"],
        frame_w=geometry["frame_w"],
        rows=geometry["rows"],
        cols=geometry["cols"],
        cells_per_frame=geometry["cells_per_frame"],
        touching_fraction=float(get("touching_fraction")),
        cluster_rate=float(get("cluster_rate")),
        debris_per_frame=geometry["debris_per_frame"],
        batch_effect=float(get("batch_effect")),
        blur_sigma=float(optics["blur_sigma"]),
        background=float(optics["background"]),
        illumination=float(optics["illumination"]),
        photons_per_unit=float(optics["photons_per_unit"]),
        read_noise=float(optics["read_noise"]),
        offset=float(optics["offset"]),
        conditions=conditions,
        patient_variation=float(get("patient_variation")),
        preset=preset_name,
        scale=scale,
        lookalikes=lookalikes,
        ctc_enrichment=enrichment,
    )
