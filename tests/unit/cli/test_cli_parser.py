"""The ``hemoprofile`` command line's own surface: ``--version`` and every subcommand's help with examples."""

import argparse

import pytest

from hemoprofile import __version__
from hemoprofile.cli import build_parser, main
from hemoprofile.cli.main import SUBCOMMANDS


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"hemoprofile {__version__}"


def test_every_subcommand_is_registered():
    assert set(_subparsers(build_parser())) == set(SUBCOMMANDS)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_help_has_an_example(name, capsys):
    sub = _subparsers(build_parser())[name]
    assert sub.epilog and f"hemoprofile {name}" in sub.epilog, f"{name}: give its parser an epilog with an example"
    # raw formatting keeps the example's lines as written
    assert issubclass(sub.formatter_class, argparse.RawDescriptionHelpFormatter), name
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    example = next(line.strip() for line in sub.epilog.splitlines() if line.strip().startswith(f"hemoprofile {name}"))
    assert example in help_text


def test_classify_and_segment_default_to_the_bundled_models():
    parser = build_parser()
    assert str(parser.parse_args(["classify", "crops", "--out", "p.csv"]).model) == "bundled:pbc8_cellnet96"
    assert parser.parse_args(["segment", "in", "out"]).model == "bundled:hemoprofile_cellpose"
