"""Classification metrics: accuracy, balanced accuracy, macro F1, per-class scores, the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix.

    Balanced accuracy is the mean recall over classes present in ``y_true``; macro F1 averages over the
    classes present in ``y_true`` or ``y_pred``. The confusion matrix has true classes in rows.

    Example
    -------
    >>> m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
    >>> m["accuracy"], m["confusion_matrix"]
    (0.75, [[1, 1], [0, 2]])
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = len(classes)
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k) if len(y_true) else np.zeros((k, k), int)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    in_f1 = present | (predicted > 0)
    n = int(cm.sum())
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1[in_f1].mean()) if in_f1.any() else float("nan"),
        "per_class": {
            str(c): {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                     "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "classes": [str(c) for c in classes],
        "confusion_matrix": cm.astype(int).tolist(),
    }


def format_confusion(metrics: dict) -> str:
    """The confusion matrix of :func:`classification_metrics` as aligned text (true classes in rows)."""
    classes = metrics["classes"]
    width = max(6, *(len(c) for c in classes))
    lines = ["true \\ pred".ljust(width) + " " + " ".join(c[:width].rjust(width) for c in classes)]
    for c, row in zip(classes, metrics["confusion_matrix"]):
        lines.append(c.ljust(width) + " " + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
