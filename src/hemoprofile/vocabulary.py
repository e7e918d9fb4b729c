"""The project's shared vocabulary: channel names and colours, cell types and lineages, classification
tasks, and how stored intensities map to [0, 1].

Every stage names these things the same way by importing them from here. Nothing here imports torch
or the imaging stack (parsing the Snakefile imports this module).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

# --- channels ------------------------------------------------------------------------------------------

#: Channel names of an HDSCA-style immunofluorescence slide, in acquisition order.
HDSCA_CHANNELS = ("DAPI", "CK", "VIM", "CD45")

#: Weight of each channel in a false-colour RGB composite (DAPI blue, CK red, VIM green, CD45 grey;
#: VIM dimmed so that VIM+CK cells read as orange rather than yellow). RGB collections (R, G, B) show
#: as they are. Other channels are grey (:data:`OTHER_CHANNEL_RGB`).
CHANNEL_RGB = {"DAPI": (0.0, 0.0, 1.0), "CK": (1.0, 0.0, 0.0), "VIM": (0.0, 0.8, 0.0), "CD45": (0.6, 0.6, 0.6),
               "R": (1.0, 0.0, 0.0), "G": (0.0, 1.0, 0.0), "B": (0.0, 0.0, 1.0)}
OTHER_CHANNEL_RGB = (0.5, 0.5, 0.5)


def channel_rgb(name: str) -> tuple[float, float, float]:
    """The composite weight of a channel (:data:`CHANNEL_RGB`; other channels grey)."""
    return CHANNEL_RGB.get(str(name), OTHER_CHANNEL_RGB)


def channel_colour_hex(name: str) -> str:
    """The display colour of a channel as OME-Zarr ``omero`` metadata stores it: hex RGB at full
    brightness (the composite weight scaled so its largest component is 1; unknown channels grey).

    Example
    -------
    >>> [channel_colour_hex(c) for c in ("DAPI", "VIM", "CD45", "other")]
    ['0000FF', '00FF00', 'FFFFFF', '808080']
    """
    if str(name) not in CHANNEL_RGB:
        return "808080"
    rgb = np.asarray(CHANNEL_RGB[str(name)], float)
    rgb = rgb / rgb.max()
    return "".join(f"{int(round(v * 255)):02X}" for v in rgb)


# --- stored intensities ----------------------------------------------------------------------------------


def to_unit(values) -> np.ndarray:
    """Stored intensities -> float32 in [0, 1]: integers divided by their dtype's maximum (preprocessed
    images and patches store [0, 1] scaled to the full integer range), floats clipped to [0, 1].

    Example
    -------
    >>> to_unit(np.array([0, 255], np.uint8)).tolist(), to_unit(np.array([-0.5, 0.25, 2.0])).tolist()
    ([0.0, 1.0], [0.0, 0.25, 1.0])
    """
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float32) / np.float32(np.iinfo(values.dtype).max)
    return np.clip(values.astype(np.float32, copy=False), 0.0, 1.0)


# --- cell types --------------------------------------------------------------------------------------------

#: Leukocyte types the simulator draws and the finest immune task (``immune6``) names.
LEUKOCYTE_TYPES = ("CD4_T", "CD8_T", "B", "NK", "granulocyte", "monocyte")
CTC = "CTC"
#: Every simulated cell type.
CELL_TYPES = (*LEUKOCYTE_TYPES, CTC)
#: Simulated events that are neither a leukocyte nor a CTC but may pass a CK gate: ``CK_debris`` (a
#: CK-positive fragment without a nucleus or with a tiny one) and ``apoptotic`` (a fragmented, CK-positive
#: dying cell). They are not typeable cells: no immune task names them, and for the ``ctc`` task they
#: are negatives (class ``leukocyte``, which there means "not a CTC").
ARTEFACT_TYPES = ("CK_debris", "apoptotic")
#: Every ``cell_type`` value of a synthetic truth_cells.parquet.
TRUTH_TYPES = (*CELL_TYPES, *ARTEFACT_TYPES)
#: Training label of a segmented object whose centroid lies on no true cell (a fragment, background debris,
#: a split of a cell): not typeable, and for the ``ctc`` task a negative. On real-size synthetic slides such
#: objects made 78 of the CNN's 85 false CTC candidates while it had never been shown one (bench/RESULTS.md).
NOT_A_CELL = "not_a_cell"
#: Lineage of each leukocyte type.
LINEAGE_OF = {"CD4_T": "lymphoid", "CD8_T": "lymphoid", "B": "lymphoid", "NK": "lymphoid",
              "granulocyte": "myeloid", "monocyte": "myeloid"}
#: Lineage of every truth type (a CTC is ``tumour``, an artefact ``artefact``): the ``lineage`` column of
#: truth_cells.parquet.
LINEAGE = {**LINEAGE_OF, CTC: "tumour", **{t: "artefact" for t in ARTEFACT_TYPES}}
#: Display colour of each cell type (outlines in figures).
TYPE_COLOURS = {
    "CD4_T": "#ffff33",
    "CD8_T": "#ff7f00",
    "B": "#00e5ff",
    "NK": "#ff9896",
    "granulocyte": "#ffffff",
    "monocyte": "#a98bff",
    "CTC": "#ff00ff",
    "CK_debris": "#ff4040",
    "apoptotic": "#8c564b",
}

# --- classification tasks -----------------------------------------------------------------------------------


#: Task -> {cell type or label -> class}; the class order of a task is the order of first appearance.
TASKS: dict[str, dict[str, str]] = {
    "lineage": dict(LINEAGE_OF),
    "immune5": {"CD4_T": "T", "CD8_T": "T", "B": "B", "NK": "NK", "granulocyte": "granulocyte",
                "monocyte": "monocyte"},
    "immune6": {t: t for t in LEUKOCYTE_TYPES},
    # "leukocyte" is the ctc task's negative class: every truth event that is not a CTC, look-alike
    # artefacts and segmented objects on no true cell included, so that a CTC classifier trained on truth
    # learns to reject them.
    "ctc": {**{t: "leukocyte" for t in LEUKOCYTE_TYPES}, "CTC": "CTC", **{t: "leukocyte" for t in ARTEFACT_TYPES},
            NOT_A_CELL: "leukocyte"},
}
#: Stained-smear names (PBC, CellaVision) with an unambiguous place in a task; a lymphocyte is not
#: split into T/B/NK by morphology alone, so it maps only for ``lineage``.
SMEAR_ALIASES: dict[str, dict[str, str]] = {
    "lineage": {"lymphocyte": "lymphoid", "neutrophil": "myeloid", "eosinophil": "myeloid",
                "basophil": "myeloid", "monocyte": "myeloid", "ig": "myeloid"},
    "immune5": {"neutrophil": "granulocyte", "eosinophil": "granulocyte", "basophil": "granulocyte"},
    "immune6": {"neutrophil": "granulocyte", "eosinophil": "granulocyte", "basophil": "granulocyte"},
}
HIERARCHICAL = "hierarchical"
COLLECTION = "collection"
TASK_NAMES = (*TASKS, HIERARCHICAL, COLLECTION)


def task_classes(task: str, labels: Sequence[str] | None = None) -> list[str]:
    """The class names of ``task`` in their fixed order (``collection``: the sorted distinct ``labels``).

    Example
    -------
    >>> task_classes("immune5")
    ['T', 'B', 'NK', 'granulocyte', 'monocyte']
    """
    if task == COLLECTION:
        if labels is None:
            raise ValueError("task 'collection' takes its classes from the labels; none given")
        return sorted({str(v) for v in labels if isinstance(v, str) and v})
    if task == HIERARCHICAL:
        return list(LEUKOCYTE_TYPES)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASK_NAMES)}")
    return list(dict.fromkeys(TASKS[task].values()))


def map_labels(labels: Sequence, task: str) -> np.ndarray:
    """Map cell types (or labels that already are the task's classes) to the task's classes.

    Returns an object array with the class name, or ``None`` where the label is outside the task
    (e.g. a CTC for ``lineage``, a missing label).

    Example
    -------
    >>> list(map_labels(["CD8_T", "CTC", "monocyte"], "lineage"))
    ['lymphoid', None, 'myeloid']
    """
    if task == COLLECTION:
        return np.array([str(v) if isinstance(v, str) and v else None for v in labels], dtype=object)
    task_map = TASKS["immune6"] if task == HIERARCHICAL else TASKS[task]
    classes = set(task_classes(task))
    aliases = SMEAR_ALIASES.get("immune6" if task == HIERARCHICAL else task, {})
    out = np.empty(len(labels), dtype=object)
    for i, v in enumerate(labels):
        v = v if isinstance(v, str) else None
        out[i] = task_map.get(v) or (v if v in classes else None) or aliases.get(v) if v else None
    return out


# --- one cell type per cell --------------------------------------------------------------------------

#: Preference order of the classification tasks that name a leukocyte's type (finest first); a
#: single-cell collection's classifier (task ``collection``, e.g. the bundled 8-class PBC model) last.
TYPE_TASKS = ("immune6", "hierarchical", "immune5", "lineage", COLLECTION)


def cell_type_names(tasks: Sequence[str]) -> list[str]:
    """The cell types a cohort's patient table has columns for, given the classification tasks run.

    Example
    -------
    >>> cell_type_names(["lineage", "immune5", "ctc"])
    ['T', 'B', 'NK', 'granulocyte', 'monocyte', 'CTC']
    """
    task = next((t for t in TYPE_TASKS if t in tasks and t != COLLECTION), None)  # collection: the model's classes
    names = [] if task is None else task_classes("immune6" if task == HIERARCHICAL else task)
    return names + ([CTC] if "ctc" in tasks else [])


def cell_type_columns(columns: Sequence[str]) -> list[str]:
    """The prediction columns :func:`cell_types` reads from a table with these ``columns``: the finest
    task of :data:`TYPE_TASKS` present and ``pred_ctc`` (so a reader can load only those).

    Example
    -------
    >>> cell_type_columns(["cell_id", "pred_lineage", "pred_immune5", "p_ctc_CTC", "pred_ctc"])
    ['pred_immune5', 'pred_ctc']
    """
    task = next((t for t in TYPE_TASKS if f"pred_{t}" in columns), None)
    return ([f"pred_{task}"] if task else []) + (["pred_ctc"] if "pred_ctc" in columns else [])


def _string_categorical(values: pd.Series) -> pd.Categorical:
    """``values`` as a categorical of their ``str`` forms (a missing value reads ``"None"``, as an
    object column read from parquet would), without converting row by row."""
    cat = values.astype("category").array if not isinstance(values.dtype, pd.CategoricalDtype) else values.array
    codes = np.asarray(cat.codes, np.int64)
    missing = bool((codes < 0).any())
    names = np.array([str(c) for c in cat.categories] + (["None"] if missing else []), dtype=object)
    unique, inverse = np.unique(names, return_inverse=True)
    return pd.Categorical.from_codes(inverse[codes], unique)  # code -1 (missing) -> the last name, "None"


def cell_types_categorical(predictions: pd.DataFrame) -> tuple[pd.Categorical, str]:
    """:func:`cell_types` as a ``pd.Categorical`` (one byte or so per cell instead of a Python string):
    the per-cell type of millions of cells in little memory. Prediction columns may be object or
    categorical (e.g. parquet read with ``read_dictionary``).

    Example
    -------
    >>> p = pd.DataFrame({"pred_immune5": ["T", "B", "T"], "pred_ctc": ["leukocyte", "leukocyte", "CTC"]})
    >>> types, task = cell_types_categorical(p)
    >>> list(types), list(types.categories), task
    (['T', 'B', 'CTC'], ['B', 'T', 'CTC'], 'immune5')
    """
    columns = cell_type_columns(list(predictions.columns))
    if not columns:
        raise ValueError(
            f"predictions have no cell-type column: need pred_ctc or one of "
            f"{', '.join('pred_' + t for t in TYPE_TASKS)}; columns are {list(predictions.columns)}"
        )
    task = columns[0][len("pred_"):] if columns[0] != "pred_ctc" else None
    if task is None:
        types = pd.Categorical.from_codes(np.zeros(len(predictions), np.int64), ["leukocyte"])
    else:
        types = _string_categorical(predictions[f"pred_{task}"])
    if "pred_ctc" in predictions:
        ctc = _string_categorical(predictions["pred_ctc"])
        if CTC in ctc.categories:
            is_ctc = np.asarray(ctc.codes) == ctc.categories.get_loc(CTC)
            names = list(types.categories) + ([] if CTC in types.categories else [CTC])
            codes = np.asarray(types.codes, np.int64).copy()
            codes[is_ctc] = names.index(CTC)
            types = pd.Categorical.from_codes(codes, names)
    return types, task or "ctc"


def cell_types(predictions: pd.DataFrame) -> tuple[np.ndarray, str]:
    """One cell type per cell from a slide's predictions table, and the task it came from.

    ``CTC`` where ``pred_ctc == "CTC"``; otherwise the prediction of the finest task of
    :data:`TYPE_TASKS` present in the table (:func:`cell_types_categorical` gives the same as a
    categorical).

    Example
    -------
    >>> p = pd.DataFrame({"pred_immune5": ["T", "B", "T"], "pred_ctc": ["leukocyte", "leukocyte", "CTC"]})
    >>> cell_types(p)
    (array(['T', 'B', 'CTC'], dtype=object), 'immune5')
    """
    types, task = cell_types_categorical(predictions)
    return np.asarray(types, dtype=object), task
