"""Section ``classifiers``: per cell classifier task, held-out test accuracy, balanced accuracy, macro F1,
per-class precision/recall and the confusion matrix (from the classifier metrics JSON)."""

from __future__ import annotations

import pandas as pd

from hemoprofile.report.html import confusion_table, data_table, esc, not_available
from hemoprofile.report.inputs import ReportContext
from hemoprofile.report.readers import try_read_json


def render(ctx: ReportContext) -> str:
    metrics = ctx.inputs.classifier_metrics or {}
    if not metrics:
        return not_available("no classifier metrics given (the classify stage has not run)")
    rows, details, problems = [], [], []
    for task, path in metrics.items():
        data, why = try_read_json(path, f"metrics of task {task}")
        if data is None:
            problems.append(why)
            ctx.notes.add(f"classifier {task}: {why}")
            continue
        split_name = "test" if isinstance(data.get("test"), dict) else "validation"
        block = data.get(split_name) or {}
        split = data.get("split", {})
        groups = split.get(f"{split_name}_groups") or []
        rows.append({"task": task, "classes": ", ".join(map(str, data.get("classes", block.get("classes", [])))),
                     "evaluated on": split_name, "held-out patients": ", ".join(map(str, groups)) or "–",
                     "cells": block.get("n"), "accuracy": block.get("accuracy"),
                     "balanced accuracy": block.get("balanced_accuracy"), "macro F1": block.get("macro_f1"),
                     "model": data.get("model_id", "")})
        classes = block.get("classes") or data.get("classes") or []
        per_class = block.get("per_class") or {}
        pc = pd.DataFrame([{"class": c, **{k: per_class[c].get(k) for k in ("precision", "recall", "f1", "support")}}
                           for c in classes if c in per_class])
        cm = (confusion_table(block["confusion_matrix"], classes) if "confusion_matrix" in block
              else not_available("no confusion matrix in the metrics"))
        details.append(f"<h3>{esc(task)}</h3><div class=\"row\"><div><h4>Confusion matrix ({esc(split_name)}, "
                       f"cells)</h4>{cm}</div><div><h4>Per class</h4>"
                       f"{data_table(pc) if len(pc) else not_available('no per-class metrics')}</div></div>")
    if not rows:
        return not_available("; ".join(problems))
    intro = ("<p>Cell classifiers are evaluated on the cells of held-out patients (none of their cells was "
             "used in training or model selection). Balanced accuracy and macro F1 weigh rare classes "
             "(CTCs) like common ones.</p>")
    missing = "".join(not_available(p) for p in problems)
    return intro + data_table(pd.DataFrame(rows)) + missing + "".join(details)
