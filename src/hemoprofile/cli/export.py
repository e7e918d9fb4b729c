"""``hemoprofile export-h5ad``: slide result folders -> one AnnData ``.h5ad`` (as the workflow's export rules)."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """\
examples:
  hemoprofile export-h5ad results/P01_S1 -o P01_S1.h5ad
  hemoprofile export-h5ad results/P0* -o cohort.h5ad --sheet results/synthetic/samples.tsv
"""

SHEET_FIELDS = ("patient", "condition", "batch")


def add_export_h5ad_parser(subparsers) -> None:
    """Add the ``export-h5ad`` subcommand to the ``hemoprofile`` command line (an argparse subparsers
    object; :mod:`hemoprofile.cli.main` lists this function in its ``SUBCOMMANDS``)."""
    parser = subparsers.add_parser(
        "export-h5ad",
        help="write slides' cells (+ predictions, embedding) as one AnnData .h5ad for scanpy",
        description="Write the cells of each SLIDE_DIR (cells.parquet, and predictions.parquet / embedding.parquet "
                    "where present) into one AnnData file, chunk by chunk. The slide name is the folder's name.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("slide_dirs", type=Path, nargs="+", metavar="SLIDE_DIR")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .h5ad to write")
    parser.add_argument("--sheet", type=Path, default=None,
                        help="sample sheet (TSV with a slide column): its patient, condition and batch become obs columns")
    parser.add_argument("--chunk-rows", type=int, default=65536, help="rows read and written at a time (default 65536)")
    parser.add_argument("--compression", choices=("gzip", "lzf", "none"), default="gzip",
                        help="HDF5 compression (default gzip)")
    parser.set_defaults(func=run_export_h5ad)


def _sheet_fields(path: Path | None, slides: list[str]) -> dict[str, dict[str, str]]:
    if path is None:
        return {s: {} for s in slides}
    import pandas as pd

    if not path.exists():
        raise FileNotFoundError(f"sample sheet not found: {path}")
    sheet = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
    if "slide" not in sheet.columns:
        raise ValueError(f"{path}: no 'slide' column; has {list(sheet.columns)}")
    sheet = sheet.set_index("slide")
    missing = [s for s in slides if s not in sheet.index]
    if missing:
        raise ValueError(f"{path}: no row for slide(s) {missing}")
    fields = [c for c in SHEET_FIELDS if c in sheet.columns]
    return {s: {c: sheet.at[s, c] for c in fields if sheet.at[s, c]} for s in slides}


def run_export_h5ad(args) -> int:
    """Run ``export-h5ad`` from parsed arguments; print a summary line; return the exit status 0."""
    from hemoprofile.export import SlideInputs, write_cells_h5ad

    slides = [d.resolve().name for d in args.slide_dirs]
    sheet = _sheet_fields(args.sheet, slides)
    inputs = []
    for folder, slide in zip(args.slide_dirs, slides):
        optional = {name: folder / f"{name}.parquet" for name in ("predictions", "embedding")}
        inputs.append(SlideInputs(slide, folder / "cells.parquet",
                                  **{k: (p if p.exists() else None) for k, p in optional.items()}, sheet=sheet[slide]))
    summary = write_cells_h5ad(inputs, args.output, chunk_rows=args.chunk_rows,
                               compression=None if args.compression == "none" else args.compression)
    print(f"{args.output}: {summary['n_obs']} cells x {summary['n_vars']} features from {len(slides)} slide(s); "
          f"obsm {', '.join(summary['obsm']) or 'none'}")
    return 0
