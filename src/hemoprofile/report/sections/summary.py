"""Section ``summary``: run summary, the notes (skipped slides, slides with no cells, missing inputs),
provenance (git commit, software versions, command line), wall time per stage summed from the
Snakemake benchmark TSVs, and the configuration as YAML. Built last: it lists the notes the other
sections add."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from hemoprofile.report.html import data_table, esc, kv_table, not_available
from hemoprofile.report.inputs import ReportContext
from hemoprofile.report.readers import have, why_missing


def _benchmark_table(benchmarks_dir) -> tuple[pd.DataFrame | None, str | None]:
    """Per stage: jobs, summed, mean and longest wall time (s), peak RSS (MB) of the benchmark TSVs."""
    if not have(benchmarks_dir):
        return None, why_missing(benchmarks_dir, "benchmarks folder")
    root = Path(benchmarks_dir)
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        stage = path.stem if path.parent == root else path.parent.relative_to(root).as_posix()
        try:
            bench = pd.read_csv(path, sep="\t")
        except Exception:  # an empty or truncated file from a killed job
            continue
        if bench.empty:
            continue
        seconds = pd.to_numeric(bench.iloc[:, 0], errors="coerce").mean()  # repeats: one job's mean
        rss = pd.to_numeric(bench["max_rss"], errors="coerce").max() if "max_rss" in bench else np.nan
        rows.append({"stage": stage, "s": seconds, "rss": rss})
    if not rows:
        return None, f"no benchmark TSVs under {benchmarks_dir}"
    frame = pd.DataFrame(rows)
    table = frame.groupby("stage").agg(jobs=("s", "size"), total_s=("s", "sum"), mean_s=("s", "mean"),
                                       max_s=("s", "max"), peak_rss_mb=("rss", "max"))
    table = table.sort_values("total_s", ascending=False).reset_index()
    total = pd.DataFrame([{"stage": "all stages", "jobs": int(table["jobs"].sum()), "total_s": table["total_s"].sum(),
                           "mean_s": np.nan, "max_s": table["max_s"].max(), "peak_rss_mb": table["peak_rss_mb"].max()}])
    table = pd.concat([table, total], ignore_index=True)
    table["total (h:m:s)"] = [str(datetime.timedelta(seconds=round(float(s)))) for s in table["total_s"]]
    return table.rename(columns={"total_s": "total s", "mean_s": "mean s", "max_s": "longest s",
                                 "peak_rss_mb": "peak RSS MB"}), None


def _config_yaml(config: Mapping) -> str:
    import yaml

    try:
        return yaml.safe_dump(config, sort_keys=False, allow_unicode=True, default_flow_style=False)
    except yaml.YAMLError:  # objects yaml cannot represent: go through JSON's string fallback
        return yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False, allow_unicode=True)


def render(ctx: ReportContext) -> str:
    inputs = ctx.inputs
    slides = ctx.slides
    patients = {s.patient for s in slides}
    conditions = pd.Series([s.condition for s in {s.patient: s for s in slides}.values()]).value_counts()
    n_cells = sum(s.n_cells or 0 for s in slides)
    n_ctc = [s.n_ctc for s in slides if s.n_ctc is not None]
    facts = [("slides in the sample sheet", len(inputs.samples)),
             ("slides with cells", len(ctx.with_cells)),
             ("patients", len(patients)),
             ("patients per condition", ", ".join(f"{k}: {v}" for k, v in conditions.items()) or "–"),
             ("cells segmented", n_cells),
             ("cells predicted CTC", sum(n_ctc) if n_ctc else None)]
    parts = ["<h3>Run</h3>", kv_table(facts)]
    notes = ctx.notes.lines()
    parts.append("<h3>Notes: skipped slides and missing inputs</h3>")
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    else:
        parts.append("<p>None: every slide has cells and every input of the report exists.</p>")

    prov = inputs.provenance or {}
    parts.append("<h3>Provenance</h3>")
    if not prov:
        parts.append(not_available("no provenance was recorded for this run"))
    else:
        commit = prov.get("git_commit") or "not a git checkout"
        if prov.get("git_dirty"):
            commit += " (with uncommitted changes)"
        parts.append(kv_table([("git commit", commit), ("command", prov.get("command") or "–"),
                               ("started", prov.get("started") or "–"), ("finished", prov.get("finished") or "–"),
                               ("report date", prov.get("date") or "–"), ("host", prov.get("hostname") or "–"),
                               ("platform", prov.get("platform") or "–"), ("python", prov.get("python") or "–")]))
        versions = prov.get("versions") or {}
        if versions:
            parts.append("<h4>Software versions</h4>" + kv_table(
                [(k, v if v else "not installed") for k, v in versions.items()]))

    parts.append("<h3>Wall time per stage</h3>")
    bench, why = _benchmark_table(inputs.benchmarks_dir)
    if bench is None:
        parts.append(not_available(why))
    else:
        parts.append("<p>From Snakemake's benchmark files: each job's wall time, summed per stage (jobs may have "
                     "run in parallel, so the sum exceeds the elapsed time of the run).</p>")
        parts.append(data_table(bench, sortable=False,
                                row_class=lambda r: "total" if r["stage"] == "all stages" else ""))
    parts.append("<h3>Configuration</h3>")
    if inputs.config:
        parts.append("<details><summary>The run's configuration (YAML)</summary>"
                     f"<pre>{esc(_config_yaml(inputs.config))}</pre></details>")
    else:
        parts.append(not_available("no configuration was given"))
    return "".join(parts)
