"""Who is simulated: the cohort plan (one row per slide, in the format of the sample sheet), each
patient's condition, and each patient's leukocyte composition (Dirichlet around its condition's)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from hemoprofile.simulate.settings import CHANNELS, Settings, read_settings
from hemoprofile.vocabulary import LEUKOCYTE_TYPES

#: Sample-sheet condition of blinded synthetic patients (and of any patient whose condition is not known).
UNKNOWN_CONDITION = "unknown"


def plan_cohort(synth_cfg: Mapping, out_dir: str | os.PathLike) -> pd.DataFrame:
    """Plan the synthetic cohort: one row per slide, in the format of the sample sheet.

    Patients are numbered P01, P02, ... across conditions in the order of ``synth_cfg["conditions"]``;
    each has ``slides_per_patient`` slides named ``<patient>_S<k>``. No file is read or written; the
    plan depends only on the config, so the workflow can build its job graph from it.

    Parameters
    ----------
    synth_cfg : the ``synthetic`` section of the config (defaults filled in).
    out_dir : folder that receives one sub-folder per slide (``<out_dir>/<slide>/``).

    Returns
    -------
    pandas.DataFrame with columns slide, patient, condition, path, format, channels, pixel_size_um,
    frame_rows, frame_cols, batch (the slide name: each slide has its own batch effect), ctc_arm
    (``real``: CTCs at the conditions' real rates, an evaluation cohort; ``enriched``: rates multiplied
    by ``ctc_enrichment``, a spiked training or demo cohort) and ctc_enrichment (the factor). The rate
    itself is not a column: it would tell a blinded patient's condition.

    Example
    -------
    >>> plan = plan_cohort(cfg, "results/synthetic")  # doctest: +SKIP
    >>> plan.loc[0, ["slide", "patient", "condition", "path"]].tolist()  # doctest: +SKIP
    ['P01_S1', 'P01_S1', 'control', 'results/synthetic/P01_S1/frames']
    """
    s = read_settings(synth_cfg)
    n_patients = sum(_patients_of(spec) for spec in s.conditions.values())
    width = max(2, len(str(n_patients)))
    image_name = "frames" if s.output_format == "frames" else "slide.ome.tif"
    rows = []
    patient_number = 0
    for condition, spec in s.conditions.items():
        labelled = int(spec.get("patients", 0))
        for j in range(_patients_of(spec)):
            patient_number += 1
            patient = f"P{patient_number:0{width}d}"
            for k in range(1, s.slides_per_patient + 1):
                slide = f"{patient}_S{k}"
                rows.append({
                    "slide": slide,
                    "patient": patient,
                    "condition": condition if j < labelled else UNKNOWN_CONDITION,
                    "path": os.path.join(os.fspath(out_dir), slide, image_name),
                    "format": s.output_format,
                    "channels": ",".join(CHANNELS),
                    "pixel_size_um": s.pixel_size_um,
                    "frame_rows": s.rows,
                    "frame_cols": s.cols,
                    "batch": slide,
                    "ctc_arm": "enriched" if s.ctc_enrichment > 1 else "real",
                    "ctc_enrichment": s.ctc_enrichment,
                })
    columns = ["slide", "patient", "condition", "path", "format", "channels", "pixel_size_um",
               "frame_rows", "frame_cols", "batch", "ctc_arm", "ctc_enrichment"]
    plan = pd.DataFrame(rows, columns=columns)
    return plan.astype({"pixel_size_um": float, "frame_rows": int, "frame_cols": int, "ctc_enrichment": float})


def patient_composition(synth_cfg: Mapping, patient: str) -> dict[str, float]:
    """Return a patient's leukocyte composition: Dirichlet(patient_variation x condition composition).

    Parameters
    ----------
    synth_cfg : the ``synthetic`` section of the config.
    patient : a patient name from :func:`plan_cohort` (``P07``).

    Returns
    -------
    dict cell type -> fraction (sums to 1; types absent from the condition's composition get 0).
    """
    s = read_settings(synth_cfg)
    number = int(str(patient).lstrip("P"))
    condition = patient_condition(s, number)
    return dict(zip(LEUKOCYTE_TYPES, composition_of(s, condition, number)))


def _patients_of(spec: Mapping) -> int:
    """Patients simulated for a condition: the labelled ones and the blinded ones."""
    return int(spec.get("patients", 0)) + int(spec.get("blind_patients", 0))


def patient_condition(s: Settings, number: int) -> str:
    first = 1
    for name, spec in s.conditions.items():
        count = _patients_of(spec)
        if first <= number < first + count:
            return name
        first += count
    raise ValueError(f"patient P{number:02d} is not in the synthetic cohort")


def composition_of(s: Settings, condition: str, patient_number: int) -> np.ndarray:
    weights = s.conditions[condition]["composition"]
    mean = np.array([float(weights.get(t, 0.0)) for t in LEUKOCYTE_TYPES])
    mean = mean / mean.sum()
    rng = np.random.default_rng([s.seed, 1, patient_number])
    present = mean > 0  # Dirichlet needs positive concentrations; absent types stay absent
    composition = np.zeros_like(mean)
    composition[present] = rng.dirichlet(s.patient_variation * mean[present])
    return composition
