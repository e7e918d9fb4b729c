"""Classification tasks: which class each cell type belongs to, per task (no torch: cheap to import).

:mod:`hemoprofile.classify` re-exports every name here; the workflow's rule files and
:mod:`hemoprofile.aggregate` import this module so that parsing the Snakefile does not load torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LEUKOCYTE_TYPES = ("CD4_T", "CD8_T", "B", "NK", "granulocyte", "monocyte")
LINEAGE_OF = {"CD4_T": "lymphoid", "CD8_T": "lymphoid", "B": "lymphoid", "NK": "lymphoid",
              "granulocyte": "myeloid", "monocyte": "myeloid"}

#: Task -> {cell type or label -> class}; the class order of a task is the order of first appearance.
TASKS: dict[str, dict[str, str]] = {
    "lineage": dict(LINEAGE_OF),
    "immune5": {"CD4_T": "T", "CD8_T": "T", "B": "B", "NK": "NK", "granulocyte": "granulocyte",
                "monocyte": "monocyte"},
    "immune6": {t: t for t in LEUKOCYTE_TYPES},
    "ctc": {**{t: "leukocyte" for t in LEUKOCYTE_TYPES}, "CTC": "CTC"},
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
