"""io.atomic_output: an output appears whole or not at all, and a killed writer's leftovers are cleared."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from hemoprofile.io import atomic_output


def test_a_failed_writer_leaves_neither_output_nor_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "out" / "image.zarr") as tmp:
            tmp.mkdir()
            (tmp / "chunk").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_complete_write_replaces_the_old_output_only_at_the_end(tmp_path):
    out = tmp_path / "cells.parquet"
    out.write_text("old")
    with atomic_output(out) as tmp:
        tmp.write_text("new")
        assert out.read_text() == "old"  # readers see the old output until the new one is whole
    assert out.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["cells.parquet"]


def test_a_killed_writer_leaves_no_output_and_the_next_write_clears_its_leftovers(tmp_path):
    out = tmp_path / "image.zarr"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from hemoprofile.io import atomic_output\n"
        "with atomic_output(sys.argv[1]) as tmp:\n"
        "    tmp.mkdir(); (tmp / 'chunk').write_bytes(b'half'); print('writing', flush=True); time.sleep(60)\n"
    ), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        os.kill(writer.pid, signal.SIGKILL)  # no exception handler runs: the temporary stays
        writer.wait(10)
    finally:
        writer.kill()
    leftover = tmp_path / f"image.zarr.tmp-{writer.pid}"
    assert not out.exists() and leftover.is_dir()
    (tmp_path / "image.zarr.tmp-pass1-99").write_text("a killed writer's own scratch file")
    (tmp_path / "image.zarr.other").write_text("not ours")
    with atomic_output(out) as tmp:
        tmp.mkdir()
        assert not leftover.exists() and not (tmp_path / "image.zarr.tmp-pass1-99").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.zarr", "image.zarr.other"]
