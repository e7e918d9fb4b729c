"""Section ``interaction``: how well the number of touching cell pairs in an image window is predicted
from the VAE latents and from the pixels (a CNN), on held-out patients: RMSE with patient-bootstrap 95%
intervals beside the target's SD and the mean predictor, and scatters of predicted vs true count
(from ``<results>/cohort/interaction/metrics.json`` and ``predictions.parquet``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hemoprofile.report.html import data_table, esc, figure_uri, img, new_figure, not_available
from hemoprofile.report.inputs import ReportContext
from hemoprofile.report.readers import try_read_json, try_read_table

#: metrics.json predictor key -> (label in the report, predictions.parquet column or None).
PREDICTORS = {
    "mean": ("mean of the training folds (baseline)", "pred_mean"),
    "latent_ridge": ("ridge on the VAE latents", "pred_latent"),
    "cnn": ("CNN on the window", "pred_cnn"),
    "segmentation_count": ("count on the segmentation (no model)", "seg_contacts"),
}
#: Scatter marker colour per window kind.
KIND_COLOURS = {"cluster": "#d62728", "random": "#1f77b4"}


def scatter_figure(pred: pd.DataFrame, columns: list[tuple[str, str]]) -> str:
    """PNG data URI of one predicted-vs-true panel per (column, title), points coloured by window kind,
    with the identity line; the true counts are jittered a little so equal integers stay visible."""
    fig = new_figure(3.4 * len(columns), 3.4)
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    y = pred["target"].to_numpy(np.float64)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(y))
    top = float(np.nanmax([y.max(initial=0), *[np.nanmax(pred[c].to_numpy(np.float64), initial=0) for c, _ in columns]])) + 1
    for ax, (col, title) in zip(axes, columns):
        for kind, colour in KIND_COLOURS.items():
            sel = (pred["kind"] == kind).to_numpy()
            ax.scatter(y[sel] + jitter[sel], pred[col].to_numpy(np.float64)[sel], s=6, alpha=0.5, color=colour,
                       label=f"{kind} windows", linewidths=0)
        ax.plot([-0.5, top], [-0.5, top], color="0.4", lw=0.8, ls="--")
        ax.set_xlim(-0.5, top)
        ax.set_ylim(-0.5, top)
        ax.set_xlabel("true contacts per window")
        ax.set_ylabel("predicted (held-out patients)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7, loc="upper left")
    return figure_uri(fig)


def render(ctx: ReportContext) -> str:
    metrics, why = try_read_json(ctx.inputs.interaction_metrics, "interaction metrics")
    if metrics is None:
        return not_available(f"no interaction metrics given (interaction.enabled is off or the stage has not run; {why})")
    rows = []
    for part in ("all", "cluster", "random"):
        block = metrics.get(part) or {}
        for key, (label, _) in PREDICTORS.items():
            if isinstance(block.get(key), dict):
                lo, hi = block[key]["ci95"]
                rows.append({"windows": part, "n": block.get("n_windows"), "predictor": label,
                             "RMSE": block[key]["rmse"], "95% CI": f"{lo:.3f} – {hi:.3f}",
                             "target SD": block.get("target_sd"), "target mean": block.get("target_mean")})
    source = ", ".join(metrics.get("target_source") or []) or "?"
    intro = (f"<p>Windows of {metrics.get('window_size')} px of the preprocessed image, centred on touching-cell "
             f"clusters and at random; the target is the number of touching cell pairs whose centroids lie in the "
             f"window, counted on the <b>{esc(source)}</b> labels. Every prediction comes from a model that saw "
             f"none of the window's patient ({metrics.get('folds')} patient-grouped folds); the CNN sees the "
             f"window at {metrics.get('input_size')} px. A useful regressor's RMSE is well below the target's "
             f"SD (what predicting the mean gives). 95% intervals: patient bootstrap.</p>")
    parts = [intro, data_table(pd.DataFrame(rows))]
    pred, why = try_read_table(ctx.inputs.interaction_predictions, "interaction predictions",
                               ["kind", "target", "pred_latent", "pred_cnn", "seg_contacts"])
    if pred is None or not len(pred):
        parts.append(not_available(f"no window predictions to plot ({why or 'empty table'})"))
    else:
        columns = [("pred_latent", "ridge on the VAE latents"), ("pred_cnn", "CNN on the window")]
        if "segmentation" not in source:
            columns.append(("seg_contacts", "count on the segmentation"))
        parts.append(f'<figure>{img(scatter_figure(pred, columns), "predicted vs true contacts per window")}'
                     f"<figcaption>Predicted vs true contacts per window ({len(pred):,} windows, held-out "
                     f"patients); dashed: identity.</figcaption></figure>")
    return "".join(parts)
