"""The cohort report: one self-contained HTML file (``results/cohort/report.html``) that collaborators
open offline in any browser.

Sections (:data:`SECTIONS`, in this order; each is a ``<section id="...">`` with an ``<h2>``):

=================  =====================================================================================
summary            run summary, notes (skipped slides, slides with no cells, missing inputs), provenance
                   (git commit, software versions, command line), wall time per stage summed from the
                   Snakemake benchmark TSVs, the configuration as YAML
qc                 per slide: a thumbnail (at most 256 px wide) and a full-resolution detail crop, false
                   colour (DAPI blue, CK red, VIM green, CD45 grey) with the segmentation outlines of
                   labels.zarr; cell counts; per channel the median of the cells' mean raw intensity, flagged
                   when more than 3 robust z from the cohort (:func:`~hemoprofile.report.qc.intensity_qc`)
composition        predicted cell-type composition per patient (fractions of leukocytes, stacked bars) and
                   a table with counts and CTCs per 1000 leukocytes
classifiers        per cell classifier task: held-out test accuracy, balanced accuracy, macro F1, per-class
                   precision/recall, confusion matrix (classifier metrics JSON)
latent             the embedding's cohort figures (latent maps) and clustering metrics
latent_conditions  the latent clusters by condition: a heatmap of log2 enrichment per cluster and
                   condition, the table (cells, normalised shares, Fisher / chi-square and patient
                   tests, BH-adjusted; carrier patients) and a gallery of each cluster's medoids
rare_events        a gallery of the top CTC candidates (by ``p_ctc_CTC``) and of CTC–leukocyte clusters,
                   image crops with score, slide and cell id
interaction        RMSE of the contacts-per-window regressors on held-out patients (mean, VAE latent,
                   CNN, segmentation count) with patient-bootstrap CIs, and a predicted vs true scatter
ctc_review         the CTC candidate threshold chosen on held-out patients (its false candidates per
                   million and recall on the test patients), the reliability diagram of the calibrated CTC
                   probability, and per patient: candidates, reviewed CTCs, CTCs per million leukocytes
                   with Garwood 95 % intervals (files of rules calibrate_ctc and ctc_table)
patients           patient-level predictions with probabilities, cross-validated metrics per stage with
                   95% confidence intervals, per-model metrics, confusion matrices, out-of-fold predictions,
                   the patient table's key columns and its column glossary
importances        top feature importances per stage of the patient model (bar charts and a table)
=================  =====================================================================================

Self-contained rule: the file holds everything it shows. Styles are inline, figures are PNGs (rendered
by matplotlib's Agg canvas, or read from the workflow's figure files) embedded as base64 ``data:`` URIs,
and the only script is a small inline one that makes tables sortable. No external script, style sheet,
font, image or link is referenced, so the report renders the same on a laptop without network, as a mail
attachment or from an archive years later. Slide images are 256-colour palette PNGs and cell crops are
stored at their pixel size and enlarged by the browser (``image-rendering: pixelated``): the 12-slide
demo's report is about 2.5 MB: 0.1 MB of QC images per slide, 1 MB of latent maps.

Missing inputs never stop the report: a section whose inputs are missing or unreadable shows
"not available: <why>", and the notes in the summary list what was skipped. Inputs that exist but
contradict each other (a predictions table whose rows are not the cells') are reported the same way.
The file is written atomically: a failed build leaves no report (and an older report untouched).

Entry points: :func:`collect_provenance`, then :func:`build_report` with a :class:`ReportInputs`.

Modules: :mod:`~hemoprofile.report.build` (:data:`SECTIONS`, the page skeleton, :func:`build_report`),
:mod:`~hemoprofile.report.inputs` (:class:`ReportInputs`; reading each slide once into summaries),
:mod:`~hemoprofile.report.readers` (reading input files into a value or why not),
:mod:`~hemoprofile.report.provenance` (git commit, versions), :mod:`~hemoprofile.report.html` (escaping,
number formatting, tables, embedded images and figures), :mod:`~hemoprofile.report.images` (slide
thumbnails, detail and cell crops, outlines), :mod:`~hemoprofile.report.qc` (intensity QC: robust z),
:mod:`~hemoprofile.report.sections` (one module per section); the page's style sheet and script are
``static/report.css`` and ``static/report.js``, inlined into the page when it is built. Imports no other
stage (it reads their files) and no torch.

Example
-------
>>> [section_id for section_id, _ in SECTIONS]
['summary', 'qc', 'composition', 'classifiers', 'latent', 'latent_conditions', 'rare_events', 'interaction',
 'ctc_review', 'patients', 'importances']
"""

from hemoprofile.report.build import SECTIONS, build_report
from hemoprofile.report.inputs import ReportInputs
from hemoprofile.report.provenance import collect_provenance

__all__ = ["SECTIONS", "ReportInputs", "build_report", "collect_provenance"]
