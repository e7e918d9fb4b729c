"""What each cell type looks like: the distributions of its size, shape and marker levels.

A model is keyed by its own name, which is the cell type for ordinary cells; CTC subtypes and
look-alikes have models of their own (``CTC_small``, ``large_leukocyte``, ``CK_debris``, ``apoptotic``)
whose events are recorded in the truth under the type a classifier should call them
(:mod:`hemoprofile.simulate.lookalikes` says which).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CellModel:
    """Distributions of one cell type's size, shape and marker levels.

    Levels are mean pre-optics signal (ADU at gain 1) of each channel's stain; a cell's level is the type's
    mean times a lognormal factor (a shared factor of sigma 0.1 plus an independent one of
    ``level_sigma``), so neighbouring types overlap.
    """

    radius: tuple[float, float]  # (mean, coefficient of variation); CTCs: (low, high) of a uniform
    ellipticity: float  # maximum amplitude of the 2nd radial harmonic
    irregularity: float  # sigma of the 3rd harmonic's amplitude; the kth's is 3/k of it (up to the 7th)
    nucleus: str  # round | lobed | kidney | irregular
    # uniform (low, high) of the nucleus size relative to the cell radius; lobed: each lobe's radius;
    # kidney: a scale of the 0.60 x 0.45 radius ellipse
    nucleus_ratio: tuple[float, float]
    levels: dict[str, float]
    level_sigma: float = 0.22
    granularity: float = 0.0  # 0: smooth cytoplasm; up to 1: strongly granular
    chromatin: float = 0.2  # relative amplitude of the DAPI texture
    # CK/VIM texture: leukocyte (granules, mottle), epithelial (filaments), fragment (blotchy blebs)
    pattern: str = "leukocyte"
    radius_uniform: bool = False  # radius drawn uniform in (low, high) rather than (mean, CV)


CELL_MODELS: dict[str, CellModel] = {
    "CD4_T": CellModel((6.3, 0.08), 0.10, 0.025, "round", (0.76, 0.86),
                       {"DAPI": 2800, "CK": 15, "VIM": 650, "CD45": 2500}),
    # CD8 T cells: a little smaller and a little brighter in CD45 than CD4 T cells, nothing more.
    "CD8_T": CellModel((6.0, 0.08), 0.10, 0.025, "round", (0.76, 0.86),
                       {"DAPI": 2800, "CK": 15, "VIM": 600, "CD45": 2900}),
    "B": CellModel((5.8, 0.08), 0.08, 0.02, "round", (0.84, 0.92),
                   {"DAPI": 3000, "CK": 15, "VIM": 550, "CD45": 2200}),
    "NK": CellModel((7.0, 0.09), 0.12, 0.03, "round", (0.64, 0.76),
                    {"DAPI": 2600, "CK": 20, "VIM": 800, "CD45": 2300}, granularity=0.55),
    # Granulocytes: weaker CD45 than lymphocytes, granules (a little CK-channel autofluorescence).
    "granulocyte": CellModel((8.5, 0.08), 0.12, 0.03, "lobed", (0.27, 0.33),
                             {"DAPI": 3300, "CK": 60, "VIM": 900, "CD45": 1300}, granularity=0.6,
                             chromatin=0.15),
    "monocyte": CellModel((10.5, 0.09), 0.16, 0.035, "kidney", (0.9, 1.1),
                          {"DAPI": 2300, "CK": 20, "VIM": 1800, "CD45": 2800}, granularity=0.15,
                          chromatin=0.25),
    # CTCs: large, CK-high (filamentous), CD45-negative, dimmer DAPI per pixel; VIM set per cell (EMT).
    "CTC": CellModel((12.0, 20.0), 0.25, 0.07, "irregular", (0.45, 0.65),
                     {"DAPI": 1500, "CK": 4000, "VIM": 150, "CD45": 12}, level_sigma=0.35, chromatin=0.35,
                     pattern="epithelial", radius_uniform=True),
    # Small CTCs (HDSCA's "CTC-small"): CK-high and CD45-negative but leukocyte-sized, a high
    # nucleus-to-cytoplasm ratio; size alone no longer tells them from leukocytes.
    "CTC_small": CellModel((7.0, 10.0), 0.2, 0.06, "irregular", (0.6, 0.78),
                           {"DAPI": 1800, "CK": 4000, "VIM": 150, "CD45": 12}, level_sigma=0.35, chromatin=0.35,
                           pattern="epithelial", radius_uniform=True),
    # A CTC-sized leukocyte (activated or large monocyte, macrophage-like): CD45+, CK-, VIM-high, kidney
    # nucleus; fools a size rule and, with dim CD45, a CD45 rule. Recorded as a monocyte.
    "large_leukocyte": CellModel((14.0, 0.10), 0.18, 0.04, "kidney", (0.95, 1.1),
                                 {"DAPI": 2300, "CK": 25, "VIM": 1800, "CD45": 2600}, granularity=0.2,
                                 chromatin=0.25),
    # CK+ debris: a CK-bright fragment (cytoskeleton remnant, skin or cell-line debris) with no nucleus
    # or a tiny one (``tiny``: none in about half of them); blotchy CK, no CD45. Radius ~6 px, CV 35%
    # (area ~50-300 px), so the larger ones pass an area rule.
    "CK_debris": CellModel((6.0, 0.35), 0.35, 0.10, "tiny", (0.15, 0.35),
                           {"DAPI": 2500, "CK": 3000, "VIM": 120, "CD45": 15}, level_sigma=0.4,
                           chromatin=0.3, pattern="fragment"),
    # An apoptotic / fragmented epithelial cell: shrunken, blebbed outline, condensed nuclear fragments
    # (karyorrhexis: bright, small DAPI blobs), CK in blebs, CD45 low. HDSCA counts apoptotic CTCs as a
    # category of their own; here they are negatives of the ctc task (an intact CTC is the target).
    "apoptotic": CellModel((7.5, 0.15), 0.25, 0.08, "fragmented", (0.15, 0.3),
                           {"DAPI": 5500, "CK": 1800, "VIM": 250, "CD45": 60}, level_sigma=0.35,
                           chromatin=0.1, pattern="fragment"),
}

#: Fraction of CTCs with an epithelial-mesenchymal (EMT-like) phenotype, CK-low and VIM-high (a
#: condition's ``emt_fraction`` overrides it), and their CK and VIM levels: CK about a sixth of a
#: CK-high CTC's (still well above a leukocyte's 15-60), VIM a monocyte's.
CTC_EMT_FRACTION = 0.3
CTC_EMT_CK = 700.0
CTC_EMT_VIM = 1600.0
#: Fraction of CTCs that are small (model ``CTC_small``; a condition's ``small_fraction`` overrides it).
CTC_SMALL_FRACTION = 0.2
#: CTC subtypes as recorded in truth_cells.parquet's ``ctc_subtype`` (clustering is ``cluster_id``).
CTC_SUBTYPES = ("CK_high", "EMT", "small")
