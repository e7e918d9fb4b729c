"""Rare events at real frequencies: how many CTCs and look-alikes a slide holds, which frames get them,
and how a frame turns its share into cells.

Why look-alikes: an HDSCA-style assay looks for a few CTCs per million nucleated cells, and what makes
that hard is not the leukocytes but the rare events that resemble a CTC in one or two channels. Every
slide (control slides too) gets five kinds, each at its own rate per million nucleated cells
(``synthetic.lookalikes``; defaults :data:`LOOKALIKE_DEFAULTS`):

- ``CK_debris`` (truth ``cell_type`` ``CK_debris``): a CK-bright fragment with no nucleus or a tiny
  one; passes a CK gate, fails (or barely passes) a DAPI rule.
- ``apoptotic`` (``cell_type`` ``apoptotic``): a fragmented, CK-positive dying cell with condensed
  nuclear fragments; passes CK+ CD45- DAPI+ gates.
- ``CK_CD45_overlap`` (a leukocyte type): a leukocyte with a CK+ fragment lying over it (CK+ CD45+);
  passes a CK rule, fails the CD45 rule.
- ``dim_CD45`` (a leukocyte type): CD45 at 5-25% of its type's; fails the CD45 rule, and a dim-CD45
  granulocyte or monocyte (VIM-high) resembles an EMT-like CTC (CK-low, VIM-high).
- ``large_leukocyte`` (``monocyte``): a CTC-sized monocyte (radius ~14 px); fools a size rule.

Design, and why it breaks little: the ``cell_type`` column keeps saying what a classifier should call
the event, and a separate ``lookalike`` column of truth_cells.parquet names the kind. Leukocyte
look-alikes (``CK_CD45_overlap``, ``dim_CD45``, ``large_leukocyte``) are leukocytes of an existing
type, so every immune task and every consumer of :data:`~hemoprofile.vocabulary.LEUKOCYTE_TYPES` is
unchanged and still right. Only the two events that are not typeable cells get new types
(:data:`~hemoprofile.vocabulary.ARTEFACT_TYPES`, lineage ``artefact``): no immune task names them (they
drop out of immune training and metrics) and the ``ctc`` task maps them to its negative class, so a CTC
classifier trained on truth learns to reject them. Leukocyte look-alikes replace drawn leukocytes (the
cell count stays); artefacts come on top of the frame's cells.

Default rates are order-of-magnitude choices, not measured frequencies. The mark is the reviewer's
workload of a published pipeline, about 24 candidates per million cells after the algorithm (Schwab et
al. 2024, arXiv 2410.02988): the events a CK gate can pass (``CK_debris`` with a nucleus remnant,
``apoptotic``, ``CK_CD45_overlap``: about 160 per million by default) are set several times above it,
so that a plain gate gives too many candidates and a classifier has to cut them, as the published
pipeline does; ``dim_CD45`` (300) is the most frequent because staining variation makes CD45-dim
leukocytes far commoner than CK+ objects; ``large_leukocyte`` (100) is about 1 in 1,000 monocytes
(monocytes are ~10% of the cells).

Not modelled: megakaryocytes proper (huge, polylobed, CD45-dim; the ``large_leukocyte`` stands in for
CTC-sized CD45+ cells), CTC-platelet aggregates, and a cohort mixing real-rate and enriched slides (an
enriched training cohort and a real-rate evaluation cohort are two configs; ``ctc_enrichment``).

CTC heterogeneity is drawn per CTC (:func:`hemoprofile.simulate.cells.draw_cell`) and recorded in
``ctc_subtype``: ``CK_high``, ``EMT`` (CK-low VIM-high, the condition's ``emt_fraction``), ``small``
(leukocyte-sized, ``small_fraction``); CTCs in CTC-leukocyte clusters share a ``cluster_id``.

Determinism: a slide's counts (CTCs first, then each kind in the order of :data:`LOOKALIKE_KINDS`) and
the frames that receive them are drawn from the slide's own generator in the parent process before any
frame is rendered (:func:`slide_event_counts`); a frame receives its counts and draws everything else
from its own generator, so any number of worker processes gives the same slide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

#: The look-alike kinds, in the order their counts are drawn.
LOOKALIKE_KINDS = ("CK_debris", "apoptotic", "CK_CD45_overlap", "dim_CD45", "large_leukocyte")
#: Default rate of each look-alike kind, per million nucleated cells (module docstring: why).
LOOKALIKE_DEFAULTS = {"CK_debris": 100.0, "apoptotic": 30.0, "CK_CD45_overlap": 30.0, "dim_CD45": 300.0,
                      "large_leukocyte": 100.0}
#: Look-alike kinds that are extra events (not leukocytes): their ``cell_type`` is the kind.
ARTEFACT_KINDS = ("CK_debris", "apoptotic")
#: CD45 of a ``dim_CD45`` leukocyte: its drawn level times a uniform factor in this range.
DIM_CD45_FACTOR = (0.05, 0.25)
PER_MILLION = 1e6


def read_lookalike_rates(value: Mapping | None) -> dict[str, float]:
    """The ``synthetic.lookalikes`` section as kind -> rate per million nucleated cells, defaults filled.

    Raises ValueError naming an unknown kind or a rate that is negative or not finite.

    Example
    -------
    >>> read_lookalike_rates({"CK_debris": 5})["CK_debris"], read_lookalike_rates(None)["dim_CD45"]
    (5.0, 300.0)
    """
    value = dict(value or {})
    unknown = sorted(set(value) - set(LOOKALIKE_KINDS))
    if unknown:
        raise ValueError(f"synthetic.lookalikes: unknown kind(s) {unknown}; allowed: {', '.join(LOOKALIKE_KINDS)}")
    rates = dict(LOOKALIKE_DEFAULTS)
    for kind, rate in value.items():
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise ValueError(f"synthetic.lookalikes.{kind}: {rate!r} is not a number (per million cells)") from None
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"synthetic.lookalikes.{kind}: {rate!r} must be a finite rate >= 0 per million cells")
        rates[kind] = rate
    return rates


def slide_event_counts(rng: np.random.Generator, n_cells: float, n_frames: int, ctc_per_million: float,
                       lookalike_rates: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Each event's count per frame on one slide: ``CTC`` and every look-alike kind.

    A slide's count of each event is Poisson(rate x ``n_cells`` / 1e6) and its events fall on frames
    uniformly at random, both drawn from ``rng`` (the slide's generator), CTCs first, then the kinds in
    :data:`LOOKALIKE_KINDS` order. ``n_cells`` is the slide's expected nucleated cells (cells per frame
    x frames).

    Returns
    -------
    dict event -> int64 array of length ``n_frames``.

    Example
    -------
    >>> counts = slide_event_counts(np.random.default_rng(0), 3e6, 4, 2.0, {"CK_debris": 100.0})
    >>> sorted(counts), counts["CTC"].shape
    (['CK_debris', 'CTC'], (4,))
    """
    counts = {}
    for event, rate in (("CTC", ctc_per_million), *((k, lookalike_rates[k]) for k in LOOKALIKE_KINDS
                                                    if k in lookalike_rates)):
        n = int(rng.poisson(float(rate) * n_cells / PER_MILLION))
        counts[event] = np.bincount(rng.integers(0, n_frames, n), minlength=n_frames).astype(np.int64)
    return counts


def make_lookalikes(rng, cells: list, counts: Mapping[str, int], draw_cell) -> list:
    """Turn a frame's share of look-alikes into cells, in place and appended; return ``cells``.

    ``cells`` are the frame's drawn cells (CTCs and leukocytes; CTC-leukocyte partners not yet chosen).
    Leukocyte look-alikes take distinct leukocytes chosen at random (fewer if the frame has fewer):
    ``large_leukocyte`` redraws its leukocyte as a CTC-sized monocyte, ``dim_CD45`` scales its CD45 by
    :data:`DIM_CD45_FACTOR`, ``CK_CD45_overlap`` marks it for a CK+ fragment (added at rendering).
    Artefact kinds are drawn as new events and appended. ``draw_cell(rng, cell_type, model_name=...)``
    draws a cell (:func:`hemoprofile.simulate.cells.draw_cell`).
    """
    wanted = [k for k in ("large_leukocyte", "dim_CD45", "CK_CD45_overlap") for _ in range(int(counts.get(k, 0)))]
    leukocytes = [i for i, c in enumerate(cells) if c.cell_type != "CTC"]
    if wanted and leukocytes:
        chosen = rng.choice(len(leukocytes), size=min(len(wanted), len(leukocytes)), replace=False)
        for kind, k in zip(wanted, chosen):
            i = leukocytes[int(k)]
            if kind == "large_leukocyte":
                cells[i] = draw_cell(rng, "monocyte", model_name="large_leukocyte")
            elif kind == "dim_CD45":
                cells[i].levels["CD45"] *= rng.uniform(*DIM_CD45_FACTOR)
            else:
                cells[i].ck_fragment = True
            cells[i].lookalike = kind
    for kind in ARTEFACT_KINDS:
        for _ in range(int(counts.get(kind, 0))):
            cell = draw_cell(rng, kind)
            cell.lookalike = kind
            cells.append(cell)
    return cells
