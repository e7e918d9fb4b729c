"""Single-cell crops from disk, checked one by one: what the file is, whether it can be used as it is,
converted, or must be skipped, and why (the per-collection QC table of :mod:`hemoprofile.ingest.collection`).

Real collections hold files that are not usable crops: 0-byte files, macOS ``.DS_Store`` files saved
under an image name (the public PBC archive ships some), files cut short by a copy, images in CMYK,
palette, alpha or 16-bit modes, crops of a few pixels or of a whole slide, and the same file twice.
:func:`check_crop` reads one file and says which, without raising, so that one bad file never stops an
ingestion and none is dropped silently.

Statuses
--------
``ok``         read as it is.
``converted``  read after a conversion named in ``details`` (CMYK, palette, alpha, 16-bit, ...).
``skipped``    not used; ``problem`` says why: ``missing``, ``empty``, ``not_an_image``, ``unreadable``,
               ``truncated``, ``too_small``, ``too_large``, ``aspect``, ``duplicate`` or ``channels``
               (set by the ingestion when a crop's channels do not fit the collection's).

Pixel values come back as float32 (channel, row, column) in [0, 1] (:func:`hemoprofile.vocabulary.to_unit`:
8-bit / 255, 16-bit / 65535).
"""

from __future__ import annotations

import hashlib
import io as _io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemoprofile.vocabulary import to_unit

#: Suffixes of the crop files a collection may hold.
CROP_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
OK, CONVERTED, SKIPPED = "ok", "converted", "skipped"
#: Every ``problem`` value of a skipped crop, in the order the QC summary lists them.
PROBLEMS = ("missing", "empty", "not_an_image", "unreadable", "truncated", "too_small", "too_large", "aspect",
            "duplicate", "channels")

#: First bytes of the formats read (JPEG, PNG, BMP, TIFF little/big endian, BigTIFF).
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: PIL modes kept as they are; every other mode is converted (:func:`_convert_mode`).
_PLAIN_MODES = ("RGB", "L")


@dataclass
class CropLimits:
    """Sizes a crop must have: every side >= ``min_side`` px, the longer side <= ``max_side`` px, and
    longer / shorter side <= ``max_aspect``. A single cell at any usual magnification fits well inside
    the defaults; a whole field of view or a 1-pixel-wide strip does not."""

    min_side: int = 8
    max_side: int = 4096
    max_aspect: float = 5.0


@dataclass
class CropCheck:
    """The verdict on one file (``data`` only when status is ok or converted)."""

    path: str
    status: str
    problem: str = ""
    details: str = ""
    sha256: str = ""
    height: int = 0
    width: int = 0
    mode: str = ""
    data: np.ndarray | None = field(default=None, repr=False)

    def row(self) -> dict:
        """The QC table row (everything but the pixels)."""
        return {"path": self.path, "status": self.status, "problem": self.problem, "details": self.details,
                "sha256": self.sha256, "height": int(self.height), "width": int(self.width), "mode": self.mode}


def _describe_start(head: bytes) -> str:
    if len(head) >= 8 and head[4:8] == b"Bud1":
        return "a macOS .DS_Store file, not an image"
    if head[:5].lower() in (b"<!doc", b"<html"):
        return "an HTML page, not an image"
    return f"starts with {head[:8]!r}, not a JPEG, PNG, BMP or TIFF"


def _convert_mode(image) -> tuple[np.ndarray, str]:
    """A PIL image in a mode other than RGB / L -> (pixels as stored, what was done)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        data = np.asarray(image)
        if mode == "I":  # 32-bit signed container PIL uses for 16-bit PNGs
            data = np.clip(data, 0, 65535).astype(np.uint16)
        return data.astype(np.uint16, copy=False), f"16-bit grey ({mode}) scaled by 1/65535"
    if mode == "F":
        return np.asarray(image, np.float32), "32-bit float grey clipped to [0, 1]"
    if mode in ("LA", "La", "1"):
        return np.asarray(image.convert("L")), f"{mode} -> L" + (" (alpha dropped)" if "A" in mode or "a" in mode else "")
    if mode == "P" and "transparency" in image.info:
        return np.asarray(image.convert("RGBA").convert("RGB")), "palette with transparency -> RGB (alpha dropped)"
    what = {"RGBA": "alpha dropped", "RGBa": "alpha dropped", "P": "palette", "PA": "palette, alpha dropped",
            "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV"}.get(mode, mode)
    return np.asarray(image.convert("RGB")), f"{mode} -> RGB ({what})"


def _check_size(check: CropCheck, limits: CropLimits) -> bool:
    h, w = check.height, check.width
    if min(h, w) < limits.min_side:
        check.status, check.problem = SKIPPED, "too_small"
        check.details = f"{w} x {h} px; every side must be >= {limits.min_side} px"
    elif max(h, w) > limits.max_side:
        check.status, check.problem = SKIPPED, "too_large"
        check.details = f"{w} x {h} px; the longer side must be <= {limits.max_side} px (a single-cell crop?)"
    elif max(h, w) / min(h, w) > limits.max_aspect:
        check.status, check.problem = SKIPPED, "aspect"
        check.details = f"{w} x {h} px, aspect {max(h, w) / min(h, w):.1f}; at most {limits.max_aspect:g} allowed"
    else:
        return True
    return False


def _read_tiff(raw: bytes) -> np.ndarray:
    import tifffile

    data = np.asarray(tifffile.imread(_io.BytesIO(raw)))
    if data.ndim == 3 and data.shape[-1] <= 4 and data.shape[0] > 4:
        data = np.moveaxis(data, -1, 0)
    return data


def check_crop(path: str | os.PathLike, limits: CropLimits | None = None, name: str | None = None) -> CropCheck:
    """Read one crop file and say whether it is usable (never raises for a bad file).

    The file is read once: its bytes give the SHA-256 (for duplicate detection by the caller) and
    are decoded from memory. Sizes are checked from the header before the pixels are decoded, so a
    huge image (or a decompression bomb) is refused without being loaded.

    Parameters
    ----------
    path : the file.
    limits : sizes a crop must have (default :class:`CropLimits`).
    name : the path written into the QC row (default ``str(path)``).

    Returns
    -------
    CropCheck with ``data`` (c, y, x) float32 in [0, 1] when status is ``ok`` or ``converted``.

    Example
    -------
    >>> check_crop("does/not/exist.jpg").row()["problem"]
    'missing'
    """
    path = Path(path)
    limits = limits or CropLimits()
    check = CropCheck(str(name if name is not None else path), OK)
    if not path.is_file():
        check.status, check.problem, check.details = SKIPPED, "missing", "no such file"
        return check
    try:
        raw = path.read_bytes()
    except OSError as err:
        check.status, check.problem, check.details = SKIPPED, "unreadable", f"cannot read the file ({err})"
        return check
    if not raw:
        check.status, check.problem, check.details = SKIPPED, "empty", "0-byte file"
        return check
    check.sha256 = hashlib.sha256(raw).hexdigest()
    if not raw.startswith(_MAGIC):
        check.status, check.problem, check.details = SKIPPED, "not_an_image", _describe_start(raw[:16])
        return check
    try:
        if raw.startswith((b"II", b"MM")):
            data = _read_tiff(raw)
            check.mode = f"tiff {data.dtype}"
            if data.ndim == 2:
                data = data[None]
            if data.ndim != 3:
                check.status, check.problem = SKIPPED, "unreadable"
                check.details = f"expected a 2-D image (with channels), got shape {data.shape}"
                return check
            check.height, check.width = int(data.shape[1]), int(data.shape[2])
            if not _check_size(check, limits):
                return check
        else:
            data = _read_pil(raw, check, limits)
            if data is None:
                return check
    except Exception as err:  # noqa: BLE001 -- PIL and tifffile raise many types for broken files
        text = str(err)
        truncated = "truncated" in text.lower() or "broken data stream" in text.lower()
        check.status, check.problem = SKIPPED, "truncated" if truncated else "unreadable"
        check.details = f"cannot decode ({type(err).__name__}: {text})"
        return check
    check.data = to_unit(data)
    return check


def _read_pil(raw: bytes, check: CropCheck, limits: CropLimits) -> np.ndarray | None:
    from PIL import Image

    with Image.open(_io.BytesIO(raw)) as image:
        check.mode = image.mode
        check.width, check.height = image.size
        if not _check_size(check, limits):
            return None
        image.load()  # decodes; raises on a truncated file
        if image.mode in _PLAIN_MODES:
            data = np.asarray(image)
        else:
            data, what = _convert_mode(image)
            check.status, check.details = CONVERTED, what
    return np.moveaxis(data, -1, 0) if data.ndim == 3 else data[None]


def match_channels(check: CropCheck, n_channels: int) -> None:
    """Fit a usable crop to the collection's channel count in place: grey <-> RGB are converted
    (repeated, or the ITU-R 601 luma), any other mismatch skips the crop (problem ``channels``)."""
    data = check.data
    if data is None or data.shape[0] == n_channels:
        return
    if data.shape[0] == 1 and n_channels == 3:
        check.data = np.repeat(data, 3, axis=0)
        note = "grey -> RGB (repeated)"
    elif data.shape[0] == 3 and n_channels == 1:
        check.data = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), data, axes=1)[None]
        note = "RGB -> grey (luma)"
    else:
        check.status, check.problem, check.data = SKIPPED, "channels", None
        check.details = f"{data.shape[0]} channels, but the collection's crops have {n_channels}"
        return
    check.status = CONVERTED
    check.details = f"{check.details}; {note}" if check.details else note
