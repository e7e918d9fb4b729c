"""The ``hemoprofile`` command line: the parser and the entry point.

Subcommands register themselves in :data:`SUBCOMMANDS` (name -> function adding its parser); each
parser sets ``func`` to the function that runs it. Parsers import nothing heavy, so ``hemoprofile
COMMAND --help`` answers at once; each command imports its stage (and torch, where it needs it) when
it runs. Add a subcommand by writing ``add_<name>_parser`` in a module of this package and listing it
here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from hemoprofile import __version__
from hemoprofile.cli.annotation import ANNOTATION_SUBCOMMANDS
from hemoprofile.cli.classify import add_classify_parser, add_train_classifier_parser
from hemoprofile.cli.collection import add_ingest_collection_parser
from hemoprofile.cli.export import add_export_h5ad_parser
from hemoprofile.cli.segment import add_segment_parser
from hemoprofile.cli.serve import add_serve_parser

#: Subcommand name -> function that adds its parser to the subparsers object.
SUBCOMMANDS: dict[str, Callable] = {
    "segment": add_segment_parser,
    "ingest-collection": add_ingest_collection_parser,
    "train-classifier": add_train_classifier_parser,
    "classify": add_classify_parser,
    "serve": add_serve_parser,
    **ANNOTATION_SUBCOMMANDS,
    "export-h5ad": add_export_h5ad_parser,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hemoprofile", description="Morphological profiling of blood cells.")
    parser.add_argument("--version", action="version", version=f"hemoprofile {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (device, model, thresholds)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS.values():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hemoprofile`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"hemoprofile {args.command}: error: {err}", file=sys.stderr)
        return 1
