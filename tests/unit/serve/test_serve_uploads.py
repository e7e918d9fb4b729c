"""Upload rules on their own: safe relative paths (zip-slip), links, zip bombs (file count, declared size,
a directory that lies about sizes) and streamed writes that stop at the limit."""

import asyncio
import stat
import struct
import zipfile

import pytest

from hemoprofile.serve.uploads import (
    JobBudget,
    UploadLimits,
    UploadRejected,
    check_zip,
    extract_zip,
    safe_relative_path,
    upload_target,
    write_stream,
)


@pytest.mark.parametrize("name", ["../evil.jpg", "a/../../evil.jpg", "a/..", "/etc/passwd", "C:/x.jpg", "c:x.jpg",
                                  "a\\..\\b.jpg", "", "a//b.jpg", "./a.jpg", "a/\x00.jpg"])
def test_unsafe_paths_are_rejected(name):
    with pytest.raises(UploadRejected):
        safe_relative_path(name)


@pytest.mark.parametrize("name", ["a.jpg", "patient 7/cells/x.JPG", "a..b.jpg", "dir/"])
def test_safe_paths_pass(name):
    assert str(safe_relative_path(name)) == name.rstrip("/")


def _zip(path, entries, links=()):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
        for name, target in links:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def _nothing_outside(tmp_path, dest):
    """Every file under tmp_path is the zip itself or under dest."""
    return all(p.suffix == ".zip" or dest in p.parents for p in tmp_path.rglob("*") if p.is_file())


@pytest.mark.parametrize("bad", ["../evil.jpg", "ok/../../evil.jpg", "/abs/evil.jpg", "C:/evil.jpg"])
def test_zip_slip_is_rejected_before_anything_is_written(tmp_path, bad):
    archive = _zip(tmp_path / "up.zip", [("good.jpg", b"x" * 10), (bad, b"evil")])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UploadRejected, match="not allowed"):
        extract_zip(archive, dest, JobBudget(UploadLimits()))
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.jpg").exists() and _nothing_outside(tmp_path, dest)


def test_zip_links_are_rejected(tmp_path):
    archive = _zip(tmp_path / "up.zip", [("good.jpg", b"x")], links=[("link.jpg", "/etc/passwd")])
    with pytest.raises(UploadRejected, match="links"):
        extract_zip(archive, tmp_path / "dest", JobBudget(UploadLimits()))
    assert not (tmp_path / "dest" / "link.jpg").exists()


def test_zip_bomb_by_size_is_rejected_from_the_directory(tmp_path):
    # 8 MiB of zeros compresses to a few KiB: the declared size is what counts
    archive = _zip(tmp_path / "bomb.zip", [("zeros.jpg", bytes(8 * 1024**2))])
    assert archive.stat().st_size < 100_000
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UploadRejected, match="unpacks to 8.0 MiB, over the limit of 1.0 MiB") as err:
        extract_zip(archive, dest, JobBudget(UploadLimits(max_unpacked_bytes=1024**2)))
    assert err.value.status == 413
    assert list(dest.iterdir()) == []


def test_zip_bomb_by_file_count_is_rejected(tmp_path):
    archive = _zip(tmp_path / "many.zip", [(f"{i}.jpg", b"x") for i in range(30)])
    with pytest.raises(UploadRejected, match="30 files, over the limit of 20"):
        check_zip(archive, JobBudget(UploadLimits(max_files=20)))


def test_zip_that_lies_about_sizes_writes_no_more_than_it_declares(tmp_path):
    archive = _zip(tmp_path / "liar.zip", [("big.jpg", bytes(4 * 1024**2))])
    data = bytearray(archive.read_bytes())
    # declare 100 bytes in both the local header (offset 22) and the central directory (offset 24)
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    data[local + 22:local + 26] = struct.pack("<I", 100)
    data[central + 24:central + 28] = struct.pack("<I", 100)
    archive.write_bytes(bytes(data))
    budget = JobBudget(UploadLimits(max_unpacked_bytes=1024**2))
    assert [i.file_size for i in check_zip(archive, budget)] == [100]  # the directory passes the check
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UploadRejected):
        extract_zip(archive, dest, budget)
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) <= 100


def test_budget_counts_across_zip_and_files(tmp_path):
    budget = JobBudget(UploadLimits(max_files=3))
    budget.add_file("a.jpg")
    budget.add_file("b.jpg")
    archive = _zip(tmp_path / "two.zip", [("c.jpg", b"x"), ("d.jpg", b"y")])
    with pytest.raises(UploadRejected, match="over the limit of 3"):
        check_zip(archive, budget)


def test_not_a_zip_is_named(tmp_path):
    fake = tmp_path / "photo.zip"
    fake.write_bytes(b"\xff\xd8\xff not a zip")
    with pytest.raises(UploadRejected, match="photo.zip: not a readable zip file"):
        check_zip(fake, JobBudget(UploadLimits()))


async def _chunks(n, size):
    for _ in range(n):
        yield bytes(size)


def test_stream_stops_at_the_limit_and_leaves_nothing(tmp_path):
    target = tmp_path / "big.jpg"
    with pytest.raises(UploadRejected, match="over the upload limit of 1.0 MiB") as err:
        asyncio.run(write_stream(_chunks(20, 100_000), target, 1024**2, "big.jpg"))
    assert err.value.status == 413 and not target.exists()
    assert asyncio.run(write_stream(_chunks(3, 1000), tmp_path / "ok.jpg", 1024**2, "ok.jpg")) == 3000


def test_upload_target_stays_inside_and_refuses_duplicates(tmp_path):
    target = upload_target(tmp_path, "sub/dir/a.jpg")
    assert target == (tmp_path / "sub" / "dir" / "a.jpg").resolve()
    target.write_bytes(b"x")
    with pytest.raises(UploadRejected, match="already"):
        upload_target(tmp_path, "sub/dir/a.jpg")
    (tmp_path / "out").symlink_to("/tmp")
    with pytest.raises(UploadRejected, match="outside"):
        upload_target(tmp_path, "out/x.jpg")
