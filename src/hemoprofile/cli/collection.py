"""``hemoprofile ingest-collection``: a folder of labelled single-cell crops -> cells.parquet + patches.zarr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

INGEST_COLLECTION_EXAMPLES = """\
examples:
  hemoprofile ingest-collection pbc/ pbc_ingested/ --patch-size 96
      images/<class>/*.jpg (+ labels.csv) -> pbc_ingested/cells.parquet and pbc_ingested/patches.zarr
  hemoprofile ingest-collection crops/ out/ --stretch --dtype uint16 --limit 500
      the first 500 crops, stretched to square, stored as uint16
"""


def add_ingest_collection_parser(subparsers) -> None:
    """Add the ``ingest-collection`` subcommand to the ``hemoprofile`` command line (an argparse
    subparsers object; :mod:`hemoprofile.cli.main` lists this function in its ``SUBCOMMANDS``)."""
    parser = subparsers.add_parser(
        "ingest-collection",
        help="turn a folder of labelled single-cell crops into cells.parquet + patches.zarr",
        description="Ingest FOLDER (images/<class>/*.jpg|png|tif, optional labels.csv with path,label[,subtype,"
                    "patient,group]) into OUT_DIR/cells.parquet and OUT_DIR/patches.zarr (row i = patch i).",
        epilog=INGEST_COLLECTION_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", type=Path, metavar="FOLDER")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--patch-size", type=int, default=64, help="patch edge P in pixels (default 64)")
    parser.add_argument("--dtype", choices=("uint8", "uint16", "float16"), default="uint8",
                        help="patch dtype (default uint8)")
    parser.add_argument("--name", default=None, help="collection name stored as 'slide' (default: the folder's name)")
    parser.add_argument("--stretch", action="store_true",
                        help="stretch crops to P x P (default: keep the aspect ratio, pad with edge pixels)")
    parser.add_argument("--channel-names", default=None, help="comma-separated channel names (default R,G,B / gray)")
    parser.add_argument("--limit", type=int, default=None, help="ingest only the first N crops")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when any file was skipped (default: skip, list in OUT_DIR/qc.csv, "
                             "summarise, exit 0)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary, not one line per bad file")
    parser.set_defaults(func=run_ingest_collection)


def run_ingest_collection(args) -> int:
    """Run ``ingest-collection`` from parsed arguments: one message per skipped or converted file, a
    summary line, and the QC table in ``OUT_DIR/qc.csv``. Returns 0, or 1 with ``--strict`` when a
    file was skipped; a folder none of whose files can be used raises ValueError (status 1 from main)."""
    from hemoprofile.ingest.collection import ingest_collection

    out_dir = Path(args.out_dir)
    summary = ingest_collection(
        args.folder, out_dir / "cells.parquet", out_dir / "patches.zarr", args.patch_size, args.dtype,
        name=args.name, keep_aspect=not args.stretch,
        channel_names=args.channel_names.split(",") if args.channel_names else None, limit=args.limit,
        out_qc=out_dir / "qc.csv", progress=None if getattr(args, "quiet", False) else _bad_files_only,
    )
    print(f"{summary['summary']} -> {out_dir}")
    if getattr(args, "strict", False) and summary["n_skipped"]:
        print(f"hemoprofile ingest-collection: --strict: {summary['n_skipped']} file(s) skipped", file=sys.stderr)
        return 1
    return 0


def _bad_files_only(message: str) -> None:
    """Progress printer that shows the per-file messages (skipped / converted), not the crop counts."""
    if ": skipped " in message or ": converted " in message:
        print(message, flush=True)
