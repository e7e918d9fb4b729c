"""``hemoprofile serve``: the parser (epilog, defaults), the Host names it accepts, and clear errors for
a results folder without a trained cohort."""

import subprocess
import sys

import pytest

from hemoprofile.cli.main import build_parser, main
from hemoprofile.serve.server import allowed_host_names


def test_parser_defaults_bind_to_this_machine_only():
    args = build_parser().parse_args(["serve", "--results", "r"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.allowed_host is None
    assert args.max_upload_mb == 2048 and args.max_unpacked_mb == 4096 and args.max_files == 100_000
    assert allowed_host_names(args.host, args.allowed_host) == ("127.0.0.1", "localhost", "::1", "[::1]")
    assert allowed_host_names("0.0.0.0", ["lab.example.org"]) == ("lab.example.org",)


def test_help_has_examples():
    out = subprocess.run([sys.executable, "-m", "hemoprofile.cli", "serve", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "examples:" in out and "hemoprofile serve --results results_collections" in out


def test_missing_cohort_is_a_clear_error(tmp_path, capsys):
    assert main(["serve", "--results", str(tmp_path), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "hemoprofile serve: error:" in err and "patient_model.pkl" in err


@pytest.mark.parametrize("option", [["--max-files", "0"], ["--max-upload-mb", "-1"]])
def test_bad_limits_are_refused(tmp_path, capsys, option):
    assert main(["serve", "--results", str(tmp_path), *option]) == 1
    assert "must be positive" in capsys.readouterr().err
