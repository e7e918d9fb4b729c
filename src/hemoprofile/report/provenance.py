"""Provenance of a run: the git commit (and whether the checkout had uncommitted changes), software
versions from the installed distributions' metadata, platform, host, date and command line."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Sequence

#: Distributions whose versions the provenance records (name shown -> distributions to try).
PROVENANCE_PACKAGES = {
    "hemoprofile": ("hemoprofile",), "numpy": ("numpy",), "pandas": ("pandas",), "torch": ("torch",),
    "cellpose": ("cellpose",), "snakemake": ("snakemake",), "scikit-learn": ("scikit-learn",),
    "xgboost": ("xgboost", "xgboost-cpu"), "catboost": ("catboost",), "imbalanced-learn": ("imbalanced-learn",),
    "zarr": ("zarr",), "matplotlib": ("matplotlib",),
}


def _git(repo_dir, *args) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def package_version(distributions: Sequence[str]) -> str | None:
    """The version of the first of ``distributions`` that is installed (None: none is)."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def collect_provenance(repo_dir: str | os.PathLike = ".", *, command: str | None = None,
                       started: str | None = None, finished: str | None = None) -> dict:
    """What produced a run: git commit (and whether the checkout had uncommitted changes), software
    versions, platform, host, date and command line.

    Versions come from the installed distributions' metadata (importing torch just to ask would
    take seconds). ``git_commit`` is None outside a git checkout; ``git_dirty`` counts tracked files
    only (results and caches are untracked).

    Parameters
    ----------
    repo_dir : the checkout of hemoprofile that ran.
    command : the command line (default: this process's ``sys.argv``).
    started, finished : when the run started and finished (ISO 8601), when the caller knows.

    Returns
    -------
    dict with ``git_commit``, ``git_dirty``, ``versions`` (name -> version or None), ``python``,
    ``platform``, ``hostname``, ``date``, ``command``, ``started``, ``finished``.
    """
    commit = _git(repo_dir, "rev-parse", "HEAD")
    status = _git(repo_dir, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "versions": {name: package_version(dists) for name, dists in PROVENANCE_PACKAGES.items()},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command if command is not None else shlex.join(sys.argv),
        "started": started,
        "finished": finished,
    }
