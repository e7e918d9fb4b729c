"""The tiny synthetic cohort that the workflow tests (tests/workflow, tests/slurm) run end to end.

Seven 256 x 256 px slides: two patients per condition, so the patient model can cross-validate both
stages (it needs two patients per class), and one blinded patient (condition 'unknown') for
predict_patients. Small, fast models: these runs check the plumbing and the reproducibility, not the
accuracy. No setting stops by the clock (classify.train.minutes is null), so two runs give the same
files.
"""

import copy

_COMPOSITIONS = {
    "control": {"CD4_T": 0.3, "granulocyte": 0.7},
    "disease_a": {"CD8_T": 0.3, "monocyte": 0.7},
    "disease_b": {"B": 0.4, "granulocyte": 0.6},
}

TINY_CONFIG = {
    "results": "results",
    "synthetic": {
        "enabled": True,
        "seed": 3,
        "frame": {"height": 128, "width": 128},
        "grid": {"rows": 2, "cols": 2},
        "cells_per_frame": 15,
        "conditions": {
            "control": {"patients": 2, "blind_patients": 1, "composition": _COMPOSITIONS["control"]},
            "disease_a": {"patients": 2, "ctc_per_million": 50000.0, "composition": _COMPOSITIONS["disease_a"]},
            "disease_b": {"patients": 2, "ctc_per_million": 50000.0, "composition": _COMPOSITIONS["disease_b"]},
        },
    },
    # 256 px slides in 96 px tiles: edge tiles are partial, so sizes that are not multiples are covered
    "tile": {"size": 96},
    # 256 px slides: a 128 px smallest level gives image.zarr and labels.zarr a second level (view.zarr links them)
    "pyramid": {"smallest": 128},
    "classify": {"tasks": ["lineage", "ctc"], "max_cells_per_label": 200, "train": {"epochs": 2, "minutes": None}},
    "embed": {"widths": [8, 16], "cells_per_slide": 200, "train": {"epochs": 2}, "cluster": {"k_max": 4}},
    "preprocess": {
        "sample_tiles": 4,
        "channels": {"DAPI": {"denoise": {"enabled": True, "iterations": 5}}, "CK": {"clahe": {"enabled": True, "kernel_size": 32}}},
    },
    # the interaction stage on (its schema default is off), small: 4 + 4 windows per slide, 2 CNN epochs
    "interaction": {"enabled": True, "cluster_windows": 4, "random_windows": 4, "epochs": 2, "bootstrap": 100},
    "patient_model": {
        "cv_folds": 2, "cv_repeats": 1, "bootstrap": 50,
        "models": {"xgboost": {"n_estimators": 10}, "catboost": {"iterations": 20}, "random_forest": {"n_estimators": 20},
                   "mlp": {"hidden": [8], "max_iter": 200}},
    },
}

#: Slides of TINY_CONFIG's cohort, in plan order (P03 is the blinded control patient).
TINY_SLIDES = [f"P{i:02d}_S1" for i in range(1, 8)]


def tiny_config(**overrides):
    """A deep copy of TINY_CONFIG with top-level keys replaced by ``overrides``."""
    config = copy.deepcopy(TINY_CONFIG)
    config.update(copy.deepcopy(overrides))
    return config
