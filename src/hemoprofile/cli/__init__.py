"""The ``hemoprofile`` command line (:mod:`~hemoprofile.cli.main`): one module per command family
(:mod:`~hemoprofile.cli.segment`, :mod:`~hemoprofile.cli.collection`, :mod:`~hemoprofile.cli.classify`)."""

from hemoprofile.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
