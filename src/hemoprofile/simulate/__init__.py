"""Simulator of HDSCA-like immunofluorescence slides (DAPI, CK, VIM, CD45) with ground truth.

The synthetic cohort is the project's embedded default: every stage can run on it with no data and be
scored against what the simulator knows. A slide is a ``rows x cols`` grid of frames placed side by
side without overlap. For each slide the simulator writes::

    <out_dir>/<slide>/frames/             one 2-D uint16 TIFF per frame and channel (output_format frames)
    <out_dir>/<slide>/slide.ome.tif       or one tiled, zlib-compressed C x Y x X OME-TIFF (ome-tiff)
    <out_dir>/<slide>/truth_labels.zarr   OME-Zarr label image of the whole mosaic (uint32, ids 1..N)
    <out_dir>/<slide>/truth_cells.parquet one row per cell (see ``TRUTH_COLUMNS``)

What is modelled, and why it makes segmentation and classification non-trivial:

- Cell types (radius in 0.65 um pixels): CD4_T (~6.3), CD8_T (~6.0), B (~5.8), NK (~7.0) lymphocytes,
  granulocytes (~8.5, 3-4 connected nuclear lobes), monocytes (~10.5, kidney-shaped nucleus) and CTCs
  (12-20, large irregular CK+ CD45- cells; small ones 7-10; EMT-like ones CK-low, VIM+). Every size, shape and marker level is drawn per
  cell from overlapping distributions (``CELL_MODELS``); CD4/CD8 differ only subtly (size, CD45).
- Shapes: radial harmonics and ellipticity at a random orientation; nuclei drawn in the cell's frame.
- Placement: cells lie wholly inside their frame; a fraction touch or slightly overlap a neighbour
  (each pixel belongs to one cell: the one whose boundary it is relatively deeper inside); CTC-leukocyte
  clusters share a ``cluster_id``; debris specks are bright in DAPI and/or CK but are not cells.
- Optics per channel: per-cell defocus, Gaussian PSF, background, smooth uneven illumination (slide-wide
  vignetting times per-frame low-frequency variation), Poisson shot noise, read noise, camera offset.
- Rare events (:mod:`~hemoprofile.simulate.lookalikes`): CTCs are Poisson per slide at the condition's
  ``ctc_per_million`` (per million nucleated cells) times the cohort's ``ctc_enrichment`` (1: real
  rates; the plan's ``ctc_arm`` says ``real`` or ``enriched``), with the condition's share in
  CTC-leukocyte clusters (``cluster_rate``) and subtypes (``ctc_subtype``: CK_high, EMT = CK-low VIM-high
  by ``emt_fraction``, small by ``small_fraction``); every slide also holds look-alikes at
  ``lookalikes`` rates per million (CK+ debris and apoptotic cells as truth types of their own,
  CK+ CD45+ overlaps, dim-CD45 and CTC-sized leukocytes as flagged leukocytes; truth column
  ``lookalike``).
- Cohort: a patient's composition is Dirichlet around its condition's; each slide has its own
  per-channel gain and background (a batch effect for batch correction to remove). A condition's ``blind_patients`` are simulated from it but enter the sample
  sheet with condition ``unknown`` (:data:`UNKNOWN_CONDITION`): new patients for the patient model to
  score, whose truth stays in ``truth_cells.parquet``.

The recorded ``true_<channel>`` levels are the mean noise-free signal inside the cell's label before
optics and before the slide's batch gain, so they are comparable across slides.

Randomness: slide ``i`` (its position in :func:`plan_cohort`) draws its slide-level values from
``default_rng([seed, 2, i])`` and frame ``f`` from ``default_rng([seed, 3, i, f])``; patient ``p``'s
composition from ``default_rng([seed, 1, p])``. The same config therefore gives bit-identical files,
slides are independent streams, and a frame does not depend on how many frames came before it.

Modules, in the order a slide is made:

- :mod:`~hemoprofile.simulate.settings`: the ``synthetic`` config section read and checked; ``CHANNELS``.
- :mod:`~hemoprofile.simulate.cohort`: the cohort plan (:func:`plan_cohort`), patients' conditions and
  compositions.
- :mod:`~hemoprofile.simulate.cell_models`: each cell type's size, shape and marker distributions.
- :mod:`~hemoprofile.simulate.lookalikes`: a slide's CTC and look-alike counts and the frames they fall
  on; a frame's look-alikes made into cells.
- :mod:`~hemoprofile.simulate.cells`: drawing, placing and rasterising cells.
- :mod:`~hemoprofile.simulate.render`: the noise-free stain signal of cells and debris.
- :mod:`~hemoprofile.simulate.optics`: batch effect, illumination, blur, noise, camera.
- :mod:`~hemoprofile.simulate.frame`: one frame from all of the above.
- :mod:`~hemoprofile.simulate.slide`: a slide written frame by frame with its truth
  (:func:`simulate_slide`), the cohort truth table, a frame read back (:func:`read_synthetic_frame`).
- :mod:`~hemoprofile.simulate.overlay`: a frame drawn with its truth outlines (:func:`render_frame_overlay`).
"""

from hemoprofile.simulate.cohort import UNKNOWN_CONDITION, patient_composition, plan_cohort
from hemoprofile.simulate.overlay import render_frame_overlay
from hemoprofile.simulate.settings import CHANNELS
from hemoprofile.simulate.slide import (
    TRUTH_COLUMNS,
    TRUTH_SCHEMA,
    read_synthetic_frame,
    simulate_cohort,
    simulate_slide,
    write_cohort_truth,
)

__all__ = [
    "CHANNELS", "TRUTH_COLUMNS", "TRUTH_SCHEMA", "UNKNOWN_CONDITION", "patient_composition", "plan_cohort",
    "read_synthetic_frame", "render_frame_overlay", "simulate_cohort", "simulate_slide", "write_cohort_truth",
]
