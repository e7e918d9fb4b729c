"""Put this checkout's src/ first on sys.path, so a job imports the package from the same checkout as
the workflow, also inside cluster conda environments (envs/*.yaml) that do not install hemoprofile.

Snakemake adds the script folder to sys.path and sets ``__file__`` to the real script path, so
``import package_path`` works from every script here."""

import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
