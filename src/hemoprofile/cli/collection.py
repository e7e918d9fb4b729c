"""``hemoprofile ingest-collection``: a folder of labelled single-cell crops -> cells.parquet + patches.zarr."""

from __future__ import annotations

import argparse
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
    parser.set_defaults(func=run_ingest_collection)


def run_ingest_collection(args) -> int:
    """Run ``ingest-collection`` from parsed arguments; print a summary line; return the exit status 0."""
    from hemoprofile.ingest.collection import ingest_collection

    out_dir = Path(args.out_dir)
    summary = ingest_collection(
        args.folder, out_dir / "cells.parquet", out_dir / "patches.zarr", args.patch_size, args.dtype,
        name=args.name, keep_aspect=not args.stretch,
        channel_names=args.channel_names.split(",") if args.channel_names else None, limit=args.limit,
        progress=None,
    )
    print(f"{summary['name']}: {summary['n_cells']} crops of {len(summary['labels'])} labels -> {out_dir} "
          f"({summary['seconds']:.1f} s)")
    return 0
