"""The page: :data:`SECTIONS` in order, each built by its module in :mod:`hemoprofile.report.sections`,
inside the page skeleton (header with the table of contents, the inline style sheet and script read from
``report/static/``), written atomically by :func:`build_report`.
"""

from __future__ import annotations

import datetime
import importlib.resources
import os
import time
from collections.abc import Callable

from hemoprofile import io
from hemoprofile.report.html import esc
from hemoprofile.report.inputs import ReportContext, ReportInputs
from hemoprofile.report.provenance import package_version
from hemoprofile.report.sections import (
    classifiers,
    composition,
    ctc_review,
    importances,
    interaction,
    latent,
    latent_conditions,
    patients,
    qc,
    rare_events,
    summary,
)

#: Report sections: (id, title), in the order they appear.
SECTIONS: list[tuple[str, str]] = [
    ("summary", "Run summary and provenance"),
    ("qc", "Slide quality control"),
    ("composition", "Cell-type composition per patient"),
    ("classifiers", "Cell classifiers"),
    ("latent", "Latent space"),
    ("latent_conditions", "Latent clusters by condition"),
    ("rare_events", "Rare events: CTC candidates and CTC–leukocyte clusters"),
    ("interaction", "Interaction: cell–cell contacts per window"),
    ("ctc_review", "CTC review: threshold, calibration and reviewed counts"),
    ("patients", "Patient-level predictions"),
    ("importances", "Feature importances of the patient model"),
]

#: Section id -> its builder, in the order they run.
_BUILDERS: dict[str, Callable[[ReportContext], str]] = {
    "qc": qc.render,
    "composition": composition.render,
    "classifiers": classifiers.render,
    "latent": latent.render,
    "latent_conditions": latent_conditions.render,
    "rare_events": rare_events.render,
    "interaction": interaction.render,
    "ctc_review": ctc_review.render,
    "patients": patients.render,
    "importances": importances.render,
    "summary": summary.render,   # last: it lists the notes the other sections add
}


def _static(name: str) -> str:
    """A file of ``report/static/`` (the style sheet, the script), inlined into the page."""
    return importlib.resources.files("hemoprofile.report").joinpath("static", name).read_text(encoding="utf-8")


def build_report(inputs: ReportInputs, out_path: str | os.PathLike,
                 progress: Callable[[str], object] | None = None) -> dict:
    """Write the cohort report (one self-contained HTML file) atomically.

    Parameters
    ----------
    inputs : what to report (missing parts become "not available" notes).
    out_path : the HTML file to write (``results/cohort/report.html``).
    progress : receives progress lines (None: silent).

    Returns
    -------
    dict: ``sections`` (ids in order), ``bytes`` (file size), ``seconds`` (build time), ``notes``
    (the summary's notes: skipped slides, missing inputs).
    """
    started = time.perf_counter()
    say = progress or (lambda _m: None)
    ctx = ReportContext(inputs, say)
    bodies = {}
    for section_id, builder in _BUILDERS.items():
        t0 = time.perf_counter()
        bodies[section_id] = builder(ctx)
        say(f"section {section_id}: {len(bodies[section_id]) / 1e6:.2f} MB in {time.perf_counter() - t0:.1f} s")
    prov = inputs.provenance or {}
    commit = (prov.get("git_commit") or "")[:10]
    meta = " · ".join(x for x in (
        f"{len(ctx.slides)} slides", f"{len({s.patient for s in ctx.slides})} patients",
        f"generated {prov.get('date') or datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"commit {commit}{'+' if prov.get('git_dirty') else ''}" if commit else "") if x)
    toc = "".join(f'<li><a href="#{sid}">{esc(title)}</a></li>' for sid, title in SECTIONS)
    pieces = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>hemoprofile cohort report</title><style>\n{_static('report.css')}</style></head><body>"
        f'<header><h1>hemoprofile cohort report</h1><p class="meta">{esc(meta)}</p>'
        f'<nav id="toc"><ol>{toc}</ol></nav></header><main>',
        *(f'<section id="{sid}"><h2>{esc(title)}</h2>{bodies[sid]}</section>' for sid, title in SECTIONS),
        f"</main><footer>hemoprofile {esc(package_version(('hemoprofile',)) or '')} · self-contained report: "
        f"no external resources.</footer><script>\n{_static('report.js')}</script></body></html>\n",
    ]
    with io.atomic_output(out_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for piece in pieces:
                handle.write(piece)
    size = os.path.getsize(out_path)
    seconds = time.perf_counter() - started
    say(f"wrote {out_path}: {size / 1e6:.2f} MB in {seconds:.1f} s")
    return {"sections": [sid for sid, _ in SECTIONS], "bytes": size, "seconds": seconds,
            "notes": ctx.notes.lines()}
