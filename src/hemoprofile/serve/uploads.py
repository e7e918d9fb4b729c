"""Upload safety: limits, relative upload paths, streamed writes and zip extraction that cannot escape
the job's folder or fill the disk.

Every check raises :class:`UploadRejected` with a message meant for the person uploading (the page shows
it as it is). Nothing here knows the web framework, so each rule is tested on its own.

Rules
-----
* A path inside an upload (a folder upload's relative path, a zip entry name) must be relative, use
  ``/`` between parts, and have no empty, ``.`` or ``..`` part, no drive letter and no control
  character (zip-slip); zip entries that are symbolic links are rejected as well.
* A job holds at most ``max_files`` files and ``max_unpacked_bytes`` bytes once unpacked, and one request
  body (a file or a zip) at most ``max_upload_bytes``. A zip is checked against the limits from its
  directory *before* anything is extracted, and again on the bytes actually written while extracting
  (a zip's directory can lie about sizes).
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: Bytes read and written per step while streaming a body or a zip entry.
CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UploadRejected(ValueError):
    """An upload broke a rule; the message says which, in words for the person uploading."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """Upload limits of one job.

    Attributes
    ----------
    max_upload_bytes : one request body (one file of a folder upload, or one zip).
    max_unpacked_bytes : all of a job's files together, after unpacking a zip.
    max_files : files in a job (a zip's entries included).
    """

    max_upload_bytes: int = 2 * 1024**3
    max_unpacked_bytes: int = 4 * 1024**3
    max_files: int = 100_000

    def describe(self) -> str:
        return (f"at most {mebibytes(self.max_upload_bytes)} per upload, {mebibytes(self.max_unpacked_bytes)} "
                f"unpacked and {self.max_files:,} files per patient")


def mebibytes(n: int) -> str:
    """``n`` bytes in words (MiB or GiB)."""
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def safe_relative_path(name: str) -> PurePosixPath:
    """``name`` as a safe relative path, or :class:`UploadRejected` naming it.

    Example
    -------
    >>> str(safe_relative_path("patient7/cells/a.jpg"))
    'patient7/cells/a.jpg'
    >>> safe_relative_path("../etc/passwd")
    Traceback (most recent call last):
    ...
    hemoprofile.serve.uploads.UploadRejected: '../etc/passwd': '..' in a path is not allowed (it could write outside the upload folder)
    """
    shown = repr(name[:200])
    if not name or _CONTROL.search(name):
        raise UploadRejected(f"{shown}: empty path or control character in a file name")
    if "\\" in name:
        raise UploadRejected(f"{shown}: backslash in a path is not allowed (use '/')")
    if name.startswith("/") or _DRIVE.match(name):
        raise UploadRejected(f"{shown}: absolute paths are not allowed")
    parts = name.split("/")
    if parts and parts[-1] == "":  # a folder entry "a/b/" keeps its trailing slash
        parts = parts[:-1]
    if any(p == ".." for p in parts):
        raise UploadRejected(f"{shown}: '..' in a path is not allowed (it could write outside the upload folder)")
    if not parts or any(p in ("", ".") for p in parts):
        raise UploadRejected(f"{shown}: empty or '.' part in a path")
    return PurePosixPath(*parts)


def _inside(root: Path, relative: PurePosixPath) -> Path:
    """``root / relative``, checked to resolve inside ``root`` (a second guard behind the name rules)."""
    root = root.resolve()
    target = (root / Path(*relative.parts)).resolve()
    if root not in target.parents:
        raise UploadRejected(f"{str(relative)!r}: resolves outside the upload folder")
    return target


class JobBudget:
    """What one job may still store: bytes and files, charged as they are written."""

    def __init__(self, limits: UploadLimits):
        self.limits = limits
        self.bytes = 0
        self.files = 0

    def add_file(self, name: str) -> None:
        if self.files + 1 > self.limits.max_files:
            raise UploadRejected(f"{name}: more than {self.limits.max_files:,} files in one upload "
                                 "(the limit per patient; split the upload or ask for a higher --max-files)", 413)
        self.files += 1

    def add_bytes(self, n: int, name: str) -> None:
        if self.bytes + n > self.limits.max_unpacked_bytes:
            raise UploadRejected(f"{name}: the upload is over the limit of {mebibytes(self.limits.max_unpacked_bytes)} "
                                 "for one patient's images", 413)
        self.bytes += n


async def write_stream(chunks: AsyncIterator[bytes], target: Path, max_bytes: int, name: str,
                       budget: JobBudget | None = None) -> int:
    """Write an async stream of byte chunks to ``target``, stopping at ``max_bytes`` (and the job budget).

    A stream over a limit leaves no file behind. Returns the bytes written.
    """
    written = charged = 0
    if target.exists():
        raise UploadRejected(f"{name!r}: a file of that name is already in the upload")
    try:
        # plain blocking writes of local chunks of at most a few MiB: quicker than a thread hop each
        with open(target, "xb") as out:  # noqa: ASYNC230
            async for chunk in chunks:
                written += len(chunk)
                if written > max_bytes:
                    raise UploadRejected(f"{name}: over the upload limit of {mebibytes(max_bytes)}", 413)
                if budget is not None:
                    budget.add_bytes(len(chunk), name)
                    charged += len(chunk)
                out.write(chunk)
    except FileExistsError:  # another request wrote the same name between the check and the open
        raise UploadRejected(f"{name!r}: a file of that name is already in the upload") from None
    except BaseException:
        target.unlink(missing_ok=True)
        if budget is not None:  # a refused or broken upload leaves nothing behind, on disk or in the budget
            budget.bytes -= charged
        raise
    return written


def _is_link(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_ISLNK(mode)


def check_zip(path: Path, budget: JobBudget) -> list[zipfile.ZipInfo]:
    """The file entries of the zip at ``path`` once every rule holds (from its directory, nothing extracted).

    Raises :class:`UploadRejected` for a file that is not a zip, an unsafe or linked entry, or an archive
    whose declared contents break the job's file count or size limits.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UploadRejected(f"{path.name}: not a readable zip file ({err})") from err
    with archive:
        infos = archive.infolist()
    files = []
    declared = 0
    seen = set()
    for info in infos:
        relative = safe_relative_path(info.filename)
        if _is_link(info):
            raise UploadRejected(f"{info.filename!r}: links in a zip are not allowed")
        if info.is_dir():
            continue
        if str(relative).lower() in seen:
            raise UploadRejected(f"{info.filename!r}: appears twice in the zip")
        seen.add(str(relative).lower())
        files.append(info)
        declared += info.file_size
    if budget.files + len(files) > budget.limits.max_files:
        raise UploadRejected(f"{path.name}: {len(files):,} files, over the limit of {budget.limits.max_files:,} "
                             "per patient", 413)
    if budget.bytes + declared > budget.limits.max_unpacked_bytes:
        raise UploadRejected(f"{path.name}: unpacks to {mebibytes(declared)}, over the limit of "
                             f"{mebibytes(budget.limits.max_unpacked_bytes)} per patient", 413)
    return files


def extract_zip(path: Path, destination: Path, budget: JobBudget) -> list[PurePosixPath]:
    """Extract the zip at ``path`` under ``destination`` after :func:`check_zip`, counting the bytes
    actually written against each entry's declared size and the job's budget; returns the relative paths.

    Entries are written one chunk at a time, so a lying directory cannot unpack more than the limit.
    Encrypted entries are rejected (the message names them).
    """
    entries = check_zip(path, budget)
    written_paths = []
    with zipfile.ZipFile(path) as archive:
        for info in entries:
            relative = safe_relative_path(info.filename)
            target = _inside(destination, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            budget.add_file(info.filename)
            if info.flag_bits & 0x1:
                raise UploadRejected(f"{info.filename!r}: encrypted zip entries cannot be read")
            n = 0
            try:
                with archive.open(info) as source, open(target, "xb") as out:
                    while chunk := source.read(CHUNK):
                        n += len(chunk)
                        if n > info.file_size:
                            raise UploadRejected(f"{info.filename!r}: unpacks to more bytes than the zip "
                                                 "declares (a damaged or malicious zip)")
                        budget.add_bytes(len(chunk), info.filename)
                        out.write(chunk)
            except FileExistsError:
                raise UploadRejected(f"{info.filename!r}: a file of that name is already in the upload") from None
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
                target.unlink(missing_ok=True)
                raise UploadRejected(f"{info.filename!r}: cannot be unpacked ({err})") from err
            written_paths.append(relative)
    return written_paths


def upload_target(root: Path, name: str) -> Path:
    """Where a folder upload's file ``name`` goes under ``root`` (checked, parents made)."""
    relative = safe_relative_path(name)
    target = _inside(root, relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise UploadRejected(f"{name!r}: a file of that name is already in the upload")
    return target


def remove_tree(path: Path) -> None:
    """Remove a job folder (no error when already gone)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):  # pragma: no cover - only when the OS refuses
        raise OSError(f"could not remove {path}")
