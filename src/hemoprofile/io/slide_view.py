"""The viewer entry of a slide: one OME-Zarr image with its segmentation as NGFF image-labels.

The tile stage writes ``image.zarr`` and the segment stage ``labels.zarr``; each is a complete OME-Zarr
image (with a pyramid, :mod:`hemoprofile.io.pyramid`) that the later stages read. A viewer wants the
NGFF layout in which the labels live inside the image (``<image>/labels/<name>``), and a Snakemake rule
cannot write into another rule's output folder, so ``view.zarr`` is a third, tiny folder that links
the two::

    view.zarr/
        zarr.json                 image group: multiscales + omero of image.zarr
        0 -> ../image.zarr/0      one relative symlink per level (the arrays are not copied)
        1 -> ../image.zarr/1
        labels/
            zarr.json             {"ome": {"labels": ["cells"]}}
            cells/
                zarr.json         multiscales + image-label {"source": {"image": "../../"}}
                0 -> ../../../labels.zarr/0
                ...

It costs a few kilobytes. The links are relative, so the slide folder can be moved or copied whole
(``cp -r``, ``rsync -a``); to publish one slide on its own, or to an object store that has no links,
copy it with the links resolved (``cp -rL view.zarr`` / ``rsync -aL``), which makes a self-contained
OME-Zarr.
"""

from __future__ import annotations

import os
from pathlib import Path

import zarr

from hemoprofile.io.atomic import atomic_output
from hemoprofile.io.ome_zarr import NGFF_VERSION

#: Name of the segmentation under ``view.zarr/labels/``.
LABELS_NAME = "cells"


def _ome_group(path: Path, what: str) -> tuple[zarr.Group, dict]:
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr raises several types for a missing or broken store
        raise ValueError(f"{path}: not a readable zarr group ({err}); cannot link it as the {what}") from err
    ome = root.attrs.get("ome")
    if not ome or "multiscales" not in ome:
        raise ValueError(f"{path}: no OME-NGFF 'multiscales' metadata; cannot link it as the {what}")
    for d in ome["multiscales"][0]["datasets"]:
        if d["path"] not in root:
            raise ValueError(f"{path}: multiscales lists level {d['path']!r}, which is missing")
    return root, ome


def _link_levels(source: Path, ome: dict, folder: Path, final_folder: Path) -> None:
    """Symlink every level array of ``source`` into ``folder``, relative to where ``folder`` will finally be
    (``final_folder``: the same depth under a sibling name, so the links stay valid after the rename)."""
    for d in ome["multiscales"][0]["datasets"]:
        target = os.path.relpath(source.resolve() / d["path"], final_folder.resolve())
        os.symlink(target, folder / d["path"], target_is_directory=True)


def write_slide_view(
    image_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    out_path: str | os.PathLike,
    labels_name: str = LABELS_NAME,
) -> dict:
    """Write ``out_path`` (``view.zarr``): the image of ``image_path`` with ``labels_path`` as its
    NGFF image-labels ``labels/<labels_name>``, every array linked, none copied.

    Parameters
    ----------
    image_path : an OME-Zarr image (c, y, x), e.g. ``results/<slide>/image.zarr``.
    labels_path : an OME-Zarr label image (y, x) of the same slide, e.g. ``results/<slide>/labels.zarr``.
    out_path : the folder to write (atomically; replaced if present); it must sit on the same file
        system as the two inputs (the links are relative).
    labels_name : name of the labels under ``labels/``.

    Returns
    -------
    dict with ``image_levels`` and ``labels_levels`` (array shapes, level 0 first).

    Raises
    ------
    ValueError naming the file when an input is not an OME-Zarr image, the labels are not an
    ``image-label`` group, or the two differ in (y, x) size at full resolution.

    Example
    -------
    >>> write_slide_view("results/S1/image.zarr", "results/S1/labels.zarr", "results/S1/view.zarr")  # doctest: +SKIP
    """
    image_path, labels_path, out_path = Path(image_path), Path(labels_path), Path(out_path)
    image, image_ome = _ome_group(image_path, "image")
    labels, labels_ome = _ome_group(labels_path, "labels")
    if "image-label" not in labels_ome:
        raise ValueError(f"{labels_path}: not a label image (no 'image-label' metadata)")
    image_yx, labels_yx = image["0"].shape[-2:], labels["0"].shape[-2:]
    if tuple(image_yx) != tuple(labels_yx):
        raise ValueError(f"{labels_path}: labels are {tuple(labels_yx)} px but {image_path} is {tuple(image_yx)} px "
                         "(y, x); they are not of the same slide")
    if not labels_name or "/" in labels_name:
        raise ValueError(f"labels name must be a plain name, got {labels_name!r}")

    with atomic_output(out_path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs["ome"] = {k: v for k, v in image_ome.items() if k in ("version", "multiscales", "omero")}
        root.attrs["hemoprofile"] = {"view_of": {"image": os.path.relpath(image_path.resolve(), out_path.parent.resolve()),
                                                 "labels": os.path.relpath(labels_path.resolve(), out_path.parent.resolve())}}
        labels_group = root.create_group("labels")
        labels_group.attrs["ome"] = {"version": NGFF_VERSION, "labels": [labels_name]}
        cells = labels_group.create_group(labels_name)
        label_meta = {**labels_ome["image-label"], "version": NGFF_VERSION, "source": {"image": "../../"}}
        multiscales = [{**labels_ome["multiscales"][0], "name": labels_name}, *labels_ome["multiscales"][1:]]
        cells.attrs["ome"] = {"version": NGFF_VERSION, "multiscales": multiscales, "image-label": label_meta}
        _link_levels(image_path, image_ome, tmp, out_path)
        _link_levels(labels_path, labels_ome, tmp / "labels" / labels_name, out_path / "labels" / labels_name)
    return {
        "image_levels": [tuple(image[d["path"]].shape) for d in image_ome["multiscales"][0]["datasets"]],
        "labels_levels": [tuple(labels[d["path"]].shape) for d in labels_ome["multiscales"][0]["datasets"]],
    }
