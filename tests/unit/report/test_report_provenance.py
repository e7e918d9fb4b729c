"""hemoprofile.report.provenance: the git commit, uncommitted changes and software versions of a run."""

import subprocess

import numpy as np

from hemoprofile.report.provenance import collect_provenance


def test_provenance_records_the_git_commit_and_uncommitted_changes(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org",
                               *args], check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (repo / "a.txt").write_text("one")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    prov = collect_provenance(repo, command="snakemake all")
    assert prov["git_commit"] == git("rev-parse", "HEAD") and len(prov["git_commit"]) == 40
    assert prov["git_dirty"] is False
    assert prov["command"] == "snakemake all"
    assert {"numpy", "torch", "cellpose", "snakemake", "scikit-learn", "xgboost", "catboost", "zarr"} <= set(
        prov["versions"])
    assert prov["versions"]["numpy"] == np.__version__
    assert prov["hostname"] and prov["platform"] and prov["date"]
    (repo / "untracked.txt").write_text("results are untracked")
    assert collect_provenance(repo)["git_dirty"] is False
    (repo / "a.txt").write_text("two")
    assert collect_provenance(repo)["git_dirty"] is True
    plain = tmp_path / "plain"
    plain.mkdir()
    assert collect_provenance(plain)["git_commit"] is None
    assert collect_provenance(plain)["git_dirty"] is None
