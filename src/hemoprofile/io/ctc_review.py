"""The CTC review's files: a slide's candidates (``candidates.parquet``, written by
:mod:`hemoprofile.classify.candidates`) and a reviewer's decisions on them, the CSV the review page
exports (``reviews/<slide>.csv``), read back and checked.

Columns: ``slide``, ``cell_id``, ``decision`` (one of :data:`DECISIONS`), and optionally ``note``,
``reviewer`` and ``time`` (ISO 8601). One row per reviewed cell; candidates the reviewer left
undecided are simply absent. Every error names the file and the offending rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hemoprofile.io.atomic import atomic_output

#: Allowed decisions, as the page writes them.
DECISIONS = ("CTC", "not_CTC", "unsure")

#: Columns of the exported CSV, in order.
REVIEW_COLUMNS = ("slide", "cell_id", "decision", "note", "reviewer", "time")

_SPELLINGS = {"ctc": "CTC", "not_ctc": "not_CTC", "not ctc": "not_CTC", "not-ctc": "not_CTC", "unsure": "unsure"}


def _rows(mask: np.ndarray, limit: int = 5) -> str:
    """CSV line numbers (header = line 1) of the flagged rows, the first few."""
    lines = (np.flatnonzero(mask) + 2).tolist()
    return ", ".join(map(str, lines[:limit])) + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


def read_review(path: str | os.PathLike, slide: str, cell_ids: Iterable[int] | None = None) -> pd.DataFrame:
    """Read and check one slide's review CSV.

    Parameters
    ----------
    path : the CSV (:data:`REVIEW_COLUMNS`; ``note``, ``reviewer``, ``time`` optional).
    slide : the slide it must be about (every row's ``slide``).
    cell_ids : the slide's cell ids (e.g. cells.parquet's); None: not checked.

    Returns
    -------
    table with ``slide``, ``cell_id`` (int64), ``decision`` (normalised to :data:`DECISIONS`), ``note``,
    ``reviewer``, ``time`` (strings, empty when absent).

    Raises
    ------
    ValueError naming ``path``: unreadable file, a missing column, another slide, a cell id that is not
    an integer or not on the slide, an unknown decision, or a cell reviewed twice.

    Example
    -------
    >>> read_review("reviews/P01_S1.csv", "P01_S1")  # doctest: +SKIP
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise ValueError(f"review file {path}: not a readable CSV ({err})") from err
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("slide", "cell_id", "decision") if c not in table.columns]
    if missing:
        raise ValueError(f"review file {path}: missing column(s) {missing}; it has {list(table.columns)} "
                         f"(the review page exports {', '.join(REVIEW_COLUMNS)})")
    other = table["slide"].str.strip() != str(slide)
    if other.any():
        raise ValueError(f"review file {path}: rows {_rows(other.to_numpy())} are about slide(s) "
                         f"{sorted(set(table.loc[other, 'slide']))[:5]}, not {slide}")
    ids = pd.to_numeric(table["cell_id"].str.strip(), errors="coerce")
    bad = ids.isna() | (ids != ids.round())
    if bad.any():
        raise ValueError(f"review file {path}: cell_id is not an integer on line(s) {_rows(bad.to_numpy())}")
    decision = table["decision"].str.strip().str.lower().map(_SPELLINGS)
    unknown = decision.isna()
    if unknown.any():
        values = sorted(set(table.loc[unknown, "decision"]))[:5]
        raise ValueError(f"review file {path}: unknown decision(s) {values} on line(s) {_rows(unknown.to_numpy())}; "
                         f"allowed: {', '.join(DECISIONS)}")
    out = pd.DataFrame({"slide": str(slide), "cell_id": ids.to_numpy(np.int64), "decision": decision.to_numpy(object)})
    twice = out["cell_id"].duplicated(keep=False).to_numpy()
    if twice.any():
        raise ValueError(f"review file {path}: cell(s) {sorted(set(out.loc[twice, 'cell_id'].tolist()))[:5]} reviewed "
                         f"more than once (lines {_rows(twice)}); keep one decision per cell")
    if cell_ids is not None:
        known = np.isin(out["cell_id"].to_numpy(), np.asarray(list(cell_ids) if not isinstance(cell_ids, np.ndarray)
                                                              else cell_ids, np.int64))
        if not known.all():
            raise ValueError(f"review file {path}: unknown cell id(s) {out.loc[~known, 'cell_id'].tolist()[:5]} on "
                             f"line(s) {_rows(~known)}: not cells of slide {slide} (was it reviewed on another run?)")
    for column in ("note", "reviewer", "time"):
        out[column] = table[column].to_numpy(object) if column in table else ""
    return out


def review_counts(review: pd.DataFrame | None, candidate_ids: Iterable[int]) -> dict[str, int]:
    """Counts of one slide's review against its candidates: ``reviewed``, ``reviewed_ctc``,
    ``reviewed_not_ctc``, ``unsure``, ``unreviewed`` (candidates without a decision) and
    ``reviewed_outside`` (decisions on cells that are not current candidates, e.g. after a threshold
    change; their decisions still count).

    Example
    -------
    >>> r = pd.DataFrame({"cell_id": [1, 2, 9], "decision": ["CTC", "not_CTC", "CTC"]})
    >>> review_counts(r, [1, 2, 3])["unreviewed"], review_counts(r, [1, 2, 3])["reviewed_ctc"]
    (1, 2)
    """
    candidates = np.asarray(list(candidate_ids), np.int64)
    if review is None:
        return {"reviewed": 0, "reviewed_ctc": 0, "reviewed_not_ctc": 0, "unsure": 0,
                "unreviewed": len(candidates), "reviewed_outside": 0}
    ids = review["cell_id"].to_numpy(np.int64)
    decision = review["decision"].to_numpy(object)
    return {"reviewed": len(review), "reviewed_ctc": int((decision == "CTC").sum()),
            "reviewed_not_ctc": int((decision == "not_CTC").sum()), "unsure": int((decision == "unsure").sum()),
            "unreviewed": int((~np.isin(candidates, ids)).sum()), "reviewed_outside": int((~np.isin(ids, candidates)).sum())}


def write_candidates(table: pd.DataFrame, path: str | os.PathLike, **metadata) -> None:
    """Write a candidate table atomically with ``metadata`` (threshold, its source) in the schema."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[b"hemoprofile"] = json.dumps(metadata, default=float).encode()
    with atomic_output(path) as tmp:
        pq.write_table(arrow.replace_schema_metadata(meta), tmp)


def read_candidates(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a candidates.parquet (only ``columns`` when given) with an error naming the file."""
    try:
        return pq.read_table(path, columns=columns).to_pandas()
    except Exception as err:  # pyarrow raises several types for a missing or broken file
        raise ValueError(f"{path}: not a readable candidates table ({err})") from err


def candidates_metadata(path: str | os.PathLike) -> dict:
    """The ``hemoprofile`` metadata :func:`write_candidates` stored (threshold, its source)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"hemoprofile", b"{}"))
