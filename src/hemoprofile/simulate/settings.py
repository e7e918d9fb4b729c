"""The ``synthetic`` config section read into :class:`Settings` (every key required: the config
validation fills the defaults from the schema), and the simulator's channels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hemoprofile.vocabulary import HDSCA_CHANNELS, LEUKOCYTE_TYPES

CHANNELS = tuple(HDSCA_CHANNELS)  # DAPI, CK, VIM, CD45


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

    @property
    def n_frames(self) -> int:
        return self.rows * self.cols


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
    conditions = dict(get("conditions"))
    if not conditions:
        raise ValueError("synthetic config has no conditions")
    for name, condition in conditions.items():
        composition = condition.get("composition", {})
        unknown = sorted(set(composition) - set(LEUKOCYTE_TYPES))
        if unknown:
            raise ValueError(
                f"synthetic condition {name!r}: unknown cell type(s) {unknown} in composition; allowed: "
                f"{', '.join(LEUKOCYTE_TYPES)} (CTCs come from ctc_per_1000)"
            )
        if sum(float(w) for w in composition.values()) <= 0:
            raise ValueError(f"synthetic condition {name!r}: composition weights sum to 0")
    optics = get("optics")
    return Settings(
        seed=int(get("seed")),
        slides_per_patient=int(get("slides_per_patient")),
        output_format=output_format,
        pixel_size_um=float(get("pixel_size_um")),
        frame_h=int(get("frame", "height")),
        frame_w=int(get("frame", "width")),
        rows=int(get("grid", "rows")),
        cols=int(get("grid", "cols")),
        cells_per_frame=float(get("cells_per_frame")),
        touching_fraction=float(get("touching_fraction")),
        cluster_rate=float(get("cluster_rate")),
        debris_per_frame=float(get("debris_per_frame")),
        batch_effect=float(get("batch_effect")),
        blur_sigma=float(optics["blur_sigma"]),
        background=float(optics["background"]),
        illumination=float(optics["illumination"]),
        photons_per_unit=float(optics["photons_per_unit"]),
        read_noise=float(optics["read_noise"]),
        offset=float(optics["offset"]),
        conditions=conditions,
        patient_variation=float(get("patient_variation")),
    )
