"""A wheel built from the repository installs into a fresh virtual environment and runs
``hemoprofile segment`` and ``hemoprofile classify`` from a directory outside the checkout: schemas and
report assets travel as package data, nothing is found relative to the source tree or the working
directory.

The fresh venv gets the wheel with ``--no-deps``; its third-party dependencies come from the project's
environment through a ``.pth`` line (no network here). ``.pth`` files inside that added directory are not
processed, so the project's editable install of hemoprofile stays invisible: the test checks that the
package is imported from the new venv.
"""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
PBC_MODEL = REPO / "models" / "classifiers" / "pbc8_cellnet96.pt"


def run(*args, cwd=None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_wheel_runs_segment_and_classify_from_another_directory(tmp_path):
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, REPO)
    wheels = list(dist.glob("hemoprofile-*.whl"))
    assert len(wheels) == 1
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    new_site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    Path(new_site, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheels[0])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(python, "-c", "import hemoprofile, importlib.resources as r; print(hemoprofile.__file__); "
                "print(sorted(p.name for p in r.files('hemoprofile.config').joinpath('schemas').iterdir()))",
                cwd=elsewhere)
    assert where.splitlines()[0].startswith(new_site), where
    assert "config.schema.yaml" in where
    cli = venv / "bin" / "hemoprofile"

    run(cli, "segment", FIXTURES / "dsb2018" / "images", elsewhere / "labels", "--backend", "classical", cwd=elsewhere)
    labels = sorted((elsewhere / "labels").glob("*.tif"))
    assert len(labels) == len(list((FIXTURES / "dsb2018" / "images").iterdir()))

    out = run(cli, "classify", FIXTURES / "pbc", "--model", PBC_MODEL, "--out", elsewhere / "pred.csv", cwd=elsewhere)
    assert "accuracy" in out
    assert len((elsewhere / "pred.csv").read_text().splitlines()) == 1 + 16
