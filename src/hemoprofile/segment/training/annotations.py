"""Annotated images from a lab's own folders: the data of fine-tuning (:mod:`~hemoprofile.segment.training.finetune`).

A folder holds image / mask pairs in either layout (both may be mixed; subfolders are not read):

- Cellpose GUI: ``<name>.<ext>`` + ``<name>_seg.npy`` (the dict the GUI saves; its ``masks`` are read,
  and the image is found by the dict's ``filename`` in this folder, else as ``<name>.<ext>``);
- mask files: ``<name>.<ext>`` + ``<name>_masks.<ext>`` (or ``<name>_cp_masks.<ext>``, what the GUI's
  "save masks" writes), with ``ext`` one of tif, tiff, png.

Masks are instance label images: 0 background, one integer id per cell. Images are

- 2-D (a nuclear stain), or RGB(A) with the colour last (their mean is the nuclear stain), both made into
  the ``[nucleus, zeros]`` network input by :func:`hemoprofile.segment.input.cellpose_input`;
- or multi-channel (channel first), which needs the folder's ``annotation.json`` to name the channels:
  ``{"channels": ["DAPI", "CK", ...]}`` (prepared as the pipeline prepares a slide, under the
  ``segment`` section's channel choice), or, as ``hemoprofile export-for-annotation`` writes,
  ``{"channels": ["cytoplasm", "nucleus"], "prepared": true}``: the image already is the network input
  and is used as it is.

Every problem is a ``ValueError`` naming the file: an image without masks, masks without an image, two
mask files for one image, empty masks, masks that are not instance labels (float, negative, binary or
class masks), and masks whose shape differs from the image's.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemoprofile.segment.input import cellpose_input

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
#: Name endings of mask files (before the suffix), longest first.
MASK_ENDINGS = ("_cp_masks", "_masks")
SEG_NPY = "_seg.npy"
#: Files of Cellpose's outputs that are neither images nor masks.
IGNORED_ENDINGS = ("_flows", "_cellprob", "_outlines", "_cp_output")
#: The folder description file (channel names; whether the images already are network inputs).
FOLDER_DESCRIPTION = "annotation.json"


@dataclass
class AnnotatedImage:
    """One annotated image: its name, files, network input (2, y, x) float32 and instance labels (y, x) int32."""

    name: str
    image_file: Path
    masks_file: Path
    image: np.ndarray
    labels: np.ndarray


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read_image_file(path: Path) -> np.ndarray:
    import tifffile
    from skimage.io import imread

    try:
        return np.asarray(tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else imread(path))
    except Exception as err:
        raise ValueError(f"{path}: cannot be read as an image ({err})") from err


def read_seg_npy(path: str | os.PathLike) -> dict:
    """The dict of a Cellpose GUI ``_seg.npy`` file (needs its ``masks``)."""
    path = Path(path)
    try:
        record = np.load(path, allow_pickle=True).item()
    except Exception as err:
        raise ValueError(f"{path}: not a Cellpose _seg.npy file ({err})") from err
    if not isinstance(record, dict) or "masks" not in record:
        raise ValueError(f"{path}: not a Cellpose _seg.npy file (no 'masks' entry)")
    return record


def check_instance_masks(masks: np.ndarray, path: str | os.PathLike, image_shape: Sequence[int] | None = None,
                         image_path: str | os.PathLike | None = None) -> np.ndarray:
    """Return ``masks`` as int32 instance labels, or raise a ``ValueError`` naming ``path`` and the problem."""
    from scipy import ndimage as ndi

    masks = np.asarray(masks)
    if masks.ndim != 2:
        raise ValueError(f"{path}: masks must be a 2-D label image, got shape {masks.shape}")
    if image_shape is not None and tuple(masks.shape) != tuple(image_shape):
        raise ValueError(f"{path}: masks of shape {masks.shape} do not match the image {image_path} of shape "
                         f"{tuple(image_shape)}")
    if masks.dtype.kind == "f" or masks.dtype.kind not in "iub":
        raise ValueError(f"{path}: masks are {masks.dtype}, not instance labels (an integer image: 0 background, "
                         "one id per cell); save the masks as integer labels")
    if masks.min(initial=0) < 0:
        raise ValueError(f"{path}: masks hold negative values; instance labels are 0 (background) and 1..N")
    ids = np.unique(masks)
    ids = ids[ids > 0]
    if ids.size == 0:
        raise ValueError(f"{path}: masks are empty (no cell); draw the cells or remove the image from the folder")
    _, n_regions = ndi.label(masks > 0)
    if (ids.size == 1 and n_regions > 1) or n_regions > 2 * ids.size:
        raise ValueError(f"{path}: not instance labels: {ids.size} value(s) ({', '.join(map(str, ids[:4]))}) over "
                         f"{n_regions} separate regions, as in a binary or class mask (e.g. 0/255); each cell needs "
                         "its own id (0 background, 1..N)")
    return masks.astype(np.int32)


def _folder_description(folder: Path) -> dict:
    path = folder / FOLDER_DESCRIPTION
    if not path.is_file():
        return {}
    try:
        description = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if "channels" in description and not isinstance(description["channels"], list):
        raise ValueError(f"{path}: 'channels' must be a list of channel names")
    return description


def _network_input(image: np.ndarray, path: Path, description: Mapping, segment_cfg: Mapping | None) -> np.ndarray:
    """The (2, y, x) network input of an annotated image (see the module doc)."""
    channels = description.get("channels")
    if description.get("prepared"):
        image = np.asarray(image, np.float32)
        if image.ndim == 2:
            return np.stack([image, np.zeros_like(image)])
        if image.ndim == 3 and image.shape[0] == 2:
            return np.ascontiguousarray(image)
        raise ValueError(f"{path}: {FOLDER_DESCRIPTION} says the images are network inputs, but this one has shape "
                         f"{image.shape} (expected (y, x) or (2, y, x))")
    if image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] > 4 and not channels:
        image = image[..., :3].mean(axis=-1).astype(image.dtype)  # RGB(A): the colours' mean is the stain
    if image.ndim == 2:
        return cellpose_input(image, None, segment_cfg, source=str(path))
    if not channels:
        raise ValueError(f"{path}: a multi-channel image of shape {image.shape}; name its channels in "
                         f"{path.parent / FOLDER_DESCRIPTION} ({{\"channels\": [\"DAPI\", \"CK\", ...]}}, channel axis first)")
    if image.ndim != 3 or image.shape[0] != len(channels):
        raise ValueError(f"{path}: shape {image.shape} does not have the {len(channels)} channels {channels} named in "
                         f"{path.parent / FOLDER_DESCRIPTION} on its first axis")
    return cellpose_input(image, channels, segment_cfg, source=str(path))


def find_annotation_pairs(folder: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(image file, mask file) pairs of a folder, sorted by image name (see the module doc for the rules)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"annotation folder {folder} not found")
    images, masks = {}, {}
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.name.endswith(SEG_NPY):
            masks.setdefault(path.name[: -len(SEG_NPY)], []).append(path)
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = path.stem
        ending = next((e for e in MASK_ENDINGS if stem.endswith(e)), None)
        if ending:
            masks.setdefault(stem[: -len(ending)], []).append(path)
        elif not stem.endswith(IGNORED_ENDINGS):
            if stem in images:
                raise ValueError(f"{path}: two images named {stem!r} ({images[stem].name} and {path.name}); "
                                 "keep one")
            images[stem] = path
    # A _seg.npy names its image; a renamed image is found through it.
    for stem, files in list(masks.items()):
        if stem not in images and len(files) == 1 and files[0].name.endswith(SEG_NPY):
            named = folder / Path(str(read_seg_npy(files[0]).get("filename", ""))).name
            if named.is_file() and named.suffix.lower() in IMAGE_SUFFIXES and named.stem not in masks:
                images[stem] = named
    pairs = []
    for stem, files in sorted(masks.items()):
        if len(files) > 1:
            raise ValueError(f"{folder}: {' and '.join(f.name for f in files)} both annotate {stem!r}; keep one "
                             "(the Cellpose GUI saves _seg.npy)")
        if stem not in images:
            raise ValueError(f"{files[0]}: masks without an image (expected {stem}.tif, .tiff or .png beside it)")
        pairs.append((images[stem], files[0]))
    annotated = {image for image, _ in pairs}
    for stem, image in sorted(images.items()):
        if image not in annotated:
            raise ValueError(f"{image}: image without masks (expected {stem}_seg.npy from the Cellpose GUI, or "
                             f"{stem}_masks.tif / .png); annotate it or remove it from the folder")
    if not pairs:
        raise ValueError(f"annotation folder {folder} holds no image / mask pairs (<name>.tif + <name>_seg.npy or "
                         "<name>_masks.tif)")
    return pairs


def read_annotation_folder(folder: str | os.PathLike, segment_cfg: Mapping | None = None) -> list[AnnotatedImage]:
    """Read a folder's annotated images as network inputs and instance labels (see the module doc)."""
    folder = Path(folder)
    description = _folder_description(folder)
    out = []
    for image_file, masks_file in find_annotation_pairs(folder):
        raw = _read_image_file(image_file)
        network = _network_input(raw, image_file, description, segment_cfg)
        if masks_file.name.endswith(SEG_NPY):
            masks = read_seg_npy(masks_file)["masks"]
        else:
            masks = _read_image_file(masks_file)
        labels = check_instance_masks(masks, masks_file, network.shape[1:], image_file)
        out.append(AnnotatedImage(image_file.stem, image_file, masks_file, network, labels))
    return out


def read_annotation_folders(folders: Sequence[str | os.PathLike],
                            segment_cfg: Mapping | None = None) -> tuple[list[AnnotatedImage], dict]:
    """Read several folders; return the images (names made unique as ``<folder>/<name>``) and a record of
    the data: folders, file count, each file's SHA-256 and one digest over them all."""
    if not folders:
        raise ValueError("no annotation folders given")
    items, files = [], []
    for folder in folders:
        for item in read_annotation_folder(folder, segment_cfg):
            item.name = f"{Path(folder).name}/{item.name}"
            items.append(item)
            files.append({"image": str(item.image_file), "masks": str(item.masks_file),
                          "image_sha256": file_sha256(item.image_file), "masks_sha256": file_sha256(item.masks_file)})
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        for i, item in enumerate(items):
            item.name = f"{i:04d}:{item.name}"
    digest = hashlib.sha256("".join(f["image_sha256"] + f["masks_sha256"] for f in files).encode()).hexdigest()
    record = {"folders": [str(Path(f)) for f in folders], "n_images": len(items), "n_files": 2 * len(items),
              "n_objects": int(sum(item.labels.max() for item in items)), "sha256": digest, "files": files}
    return items, record


def split_annotations(names: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of image positions into (train, validation): ``round(fraction x n)`` held out, at least
    one of each when there are two or more images (none held out for one image)."""
    n = len(names)
    if n < 2 or fraction <= 0:
        return list(range(n)), []
    n_val = min(n - 1, max(1, round(fraction * n)))
    order = sorted(range(n), key=lambda i: names[i])
    perm = np.random.default_rng(seed).permutation(n)
    val = sorted(order[i] for i in perm[:n_val])
    return [i for i in range(n) if i not in set(val)], val
