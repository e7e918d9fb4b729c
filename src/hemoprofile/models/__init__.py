"""The models that ship with the package, and the one place a configured model becomes a file.

Bundled models live in this package as package data (declared in ``pyproject.toml``), so a wheel or an
editable install finds them from any working directory through :mod:`importlib.resources`:

- ``bundled:hemoprofile_cellpose``: ``segmentation/hemoprofile_cellpose.pt`` (+ its ``.pt.json`` sidecar,
  training metrics and DSB split), the project's Cellpose 3 model; the default of ``segment.model`` and
  of ``hemoprofile segment --backend cellpose``.
- ``bundled:pbc8_cellnet96``: ``classifiers/pbc8_cellnet96.pt``, the 8-class PBC blood smear classifier;
  the default of ``hemoprofile classify`` (usable in ``classify.models`` too).

Each model's card is the ``README.md`` beside its file.

A model value in the config or on the command line is either ``bundled:<name>`` (one of the names
above) or a path; a relative path is relative to the current working directory. :func:`resolve_model`
maps either to an existing file, or raises ``FileNotFoundError`` naming what was asked for and where it
was looked for. Resolution is by name, so the workflow keeps the short name in its parameters (which do
not change when the checkout moves) and passes the resolved file as a rule input (so replacing the
model's file reruns what used it).

This module imports only the standard library (the CLI parsers and the Snakefile use it).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

#: Prefix of a bundled model's name in the config and on the command line.
BUNDLED_PREFIX = "bundled:"

#: Bundled model name -> its file, relative to this package.
BUNDLED_MODELS: dict[str, str] = {
    "hemoprofile_cellpose": "segmentation/hemoprofile_cellpose.pt",
    "pbc8_cellnet96": "classifiers/pbc8_cellnet96.pt",
}

#: The default model of ``segment.model`` (backend cellpose) and of ``hemoprofile segment --backend cellpose``.
DEFAULT_SEGMENTATION_MODEL = BUNDLED_PREFIX + "hemoprofile_cellpose"
#: The default model of ``hemoprofile classify``.
DEFAULT_CLASSIFIER_MODEL = BUNDLED_PREFIX + "pbc8_cellnet96"


def is_bundled(value: str | os.PathLike) -> bool:
    """True when ``value`` names a bundled model (``bundled:<name>``), whether or not the name exists.

    >>> is_bundled("bundled:hemoprofile_cellpose"), is_bundled("models/x.pt")
    (True, False)
    """
    return str(value).startswith(BUNDLED_PREFIX)


def bundled_model_path(name: str) -> Path:
    """The file of the bundled model ``name`` (with or without the ``bundled:`` prefix).

    Raises
    ------
    FileNotFoundError for an unknown name (listing the known ones), or when the package's copy of the
    file is missing (an installation built without its package data).
    """
    key = str(name)[len(BUNDLED_PREFIX):] if is_bundled(name) else str(name)
    if key not in BUNDLED_MODELS:
        known = ", ".join(BUNDLED_PREFIX + k for k in BUNDLED_MODELS)
        raise FileNotFoundError(f"no bundled model named {BUNDLED_PREFIX + key!r}; bundled models: {known}")
    resource = resources.files(__name__).joinpath(BUNDLED_MODELS[key])
    if not isinstance(resource, Path):
        # A model file and its sidecar must sit side by side on disk (the loaders open both by path).
        raise FileNotFoundError(f"bundled model {BUNDLED_PREFIX + key} is inside an archive ({resource}); install "
                                "hemoprofile unpacked (pip install, not a zipped import)")
    if not resource.is_file():
        raise FileNotFoundError(f"bundled model {BUNDLED_PREFIX + key}: file {resource} is missing from the "
                                "installed package (was it built without its package data?)")
    return resource


def resolve_model(value: str | os.PathLike, what: str = "model") -> Path:
    """The file a model value names: a bundled model's (``bundled:<name>``) or the path itself.

    Parameters
    ----------
    value : ``bundled:<name>`` or a path to a model file (relative paths: to the working directory).
    what : what the value configures (``segment.model``, ``--model``), for the error message.

    Returns
    -------
    The model file, an existing path (absolute for a bundled model; as given otherwise).

    Raises
    ------
    FileNotFoundError naming the value, the path it was resolved to and the bundled names.

    Example
    -------
    >>> resolve_model("bundled:hemoprofile_cellpose").name
    'hemoprofile_cellpose.pt'
    """
    if is_bundled(value):
        try:
            return bundled_model_path(str(value))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{what}: {err}") from None
    path = Path(value)
    if not path.is_file():
        where = f"'{value}'" if path.is_absolute() else f"'{value}' (looked for {Path.cwd() / path})"
        known = ", ".join(BUNDLED_PREFIX + k for k in BUNDLED_MODELS)
        kind = "is a folder, not a model file" if path.is_dir() else "not found"
        raise FileNotFoundError(f"{what}: model file {where} {kind}; give an existing model file or a bundled "
                                f"model ({known})")
    return path
