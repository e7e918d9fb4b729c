"""A wheel built from the repository installs into a fresh virtual environment and runs
``hemoprofile segment`` (the bundled Cellpose model) and ``hemoprofile classify`` (the bundled PBC
model) on fixtures copied to a temporary folder, from a directory outside the checkout: schemas, report
assets and models travel as package data, nothing is found relative to the source tree or the working
directory.

The wheel is built from a clean copy of the repository's files (tracked and not ignored, as in the
working tree; no ``*.egg-info``, no ``build/``): a stale ``SOURCES.txt`` of an editable install would
otherwise put files in the wheel that ``pyproject.toml`` does not declare. The wheel's file list must
hold every non-Python file of the package (schemas, report assets, models, their cards), so dropping a
package-data declaration fails here.

No network: the wheel is built with ``--no-build-isolation`` and installed with ``--no-deps
--no-index``; its third-party dependencies come from the project's environment through a ``.pth`` line.
``.pth`` files inside that added directory are not processed, so the project's editable install of
hemoprofile stays invisible: the test checks that the package is imported from the new venv.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


def run(*args, cwd=None) -> str:
    # PYTHONPATH (a developer's src/ checkout, say) would hide the installed wheel from the fresh venv
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def repository_files() -> list[str]:
    """The repository's files as git sees them: tracked, plus new ones that .gitignore does not exclude."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("this test copies the repository's files with git (git ls-files); run it in a git checkout")
    listed = run("git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=REPO)
    return sorted({name for name in listed.split("\0") if name and (REPO / name).is_file()})


def clean_copy(destination: Path) -> list[str]:
    """Copy the repository's files (working-tree contents) to ``destination``; return their names."""
    names = repository_files()
    for name in names:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return names


@pytest.mark.slow
def test_wheel_runs_segment_and_classify_from_another_directory(tmp_path):
    source = tmp_path / "source"
    names = clean_copy(source)
    assert not list(source.rglob("*.egg-info")), "the copy must not carry build metadata"
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source)
    wheels = list(dist.glob("hemoprofile-*.whl"))
    assert len(wheels) == 1

    # every non-Python file of the package is package data: declared in pyproject.toml, so in the wheel
    in_wheel = set(zipfile.ZipFile(wheels[0]).namelist())
    data = [n.removeprefix("src/") for n in names if n.startswith("src/hemoprofile/") and not n.endswith(".py")]
    expected_kinds = ("config/schemas/config.schema.yaml", "report/static/report.css",
                      "models/segmentation/hemoprofile_cellpose.pt", "models/segmentation/hemoprofile_cellpose.pt.json",
                      "models/classifiers/pbc8_cellnet96.pt", "models/segmentation/README.md")
    assert all(f"hemoprofile/{kind}" in data for kind in expected_kinds), data
    missing = sorted(set(data) - in_wheel)
    assert not missing, f"package files missing from the wheel (declare them in pyproject's package-data): {missing}"

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    new_site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    Path(new_site, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheels[0])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(python, "-c", "import hemoprofile, importlib.resources as r; print(hemoprofile.__file__); "
                "print(sorted(p.name for p in r.files('hemoprofile.config').joinpath('schemas').iterdir())); "
                "from hemoprofile.models import resolve_model; print(resolve_model('bundled:hemoprofile_cellpose')); "
                "print(resolve_model('bundled:pbc8_cellnet96'))", cwd=elsewhere)
    lines = where.splitlines()
    assert all(line.startswith(new_site) for line in (lines[0], lines[2], lines[3])), where
    assert "config.schema.yaml" in lines[1]
    cli = venv / "bin" / "hemoprofile"

    # fixtures copied out of the checkout, so nothing beside them can stand in for package data
    images = tmp_path / "fixtures" / "images"
    shutil.copytree(FIXTURES / "dsb2018" / "images", images)
    pbc = tmp_path / "fixtures" / "pbc"
    shutil.copytree(FIXTURES / "pbc", pbc)

    run(cli, "segment", images, "labels", "--backend", "classical", cwd=elsewhere)
    assert len(list((elsewhere / "labels").glob("*.tif"))) == len(list(images.iterdir()))

    # the bundled Cellpose model (the default --model), one image at a fixed diameter to stay quick
    one = tmp_path / "fixtures" / "one_image"
    one.mkdir()
    shutil.copy(sorted(images.iterdir())[0], one)
    out = run(cli, "segment", one, "cellpose_labels", "--backend", "cellpose", "--device", "cpu", "--diameter", "12",
              cwd=elsewhere)
    assert "1 segmented, 0 failed" in out, out
    assert len(list((elsewhere / "cellpose_labels").glob("*.tif"))) == 1

    # the bundled PBC classifier (the default --model)
    out = run(cli, "classify", pbc, "--out", "pred.csv", "--device", "cpu", cwd=elsewhere)
    assert "accuracy" in out
    assert len((elsewhere / "pred.csv").read_text().splitlines()) == 1 + 16
