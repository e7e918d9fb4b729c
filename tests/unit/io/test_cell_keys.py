"""read_cell_keys: a cells table's cell_id and slide columns as compact arrays, read row group by row group."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hemoprofile.io.tables import read_cell_keys, read_cells


def _write(path, slides, ids, row_group_size=3):
    columns = {"cell_id": pa.array(ids, pa.int64()), "area": pa.array(np.arange(len(ids), dtype=np.int32))}
    if slides is not None:
        columns = {"slide": pa.array(slides, pa.string()), **columns}
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


def test_keys_equal_the_table_across_row_groups_and_slides(tmp_path):
    path = tmp_path / "cells.parquet"
    slides = ["S2", "S2", "S1", "S1", "S1", "S3", "S2", "S1"]  # row groups of 3: dictionaries differ per group
    ids = [5, 9, 1, 2, 3, 7, 11, 4]
    _write(path, slides, ids)
    keys = read_cell_keys(path, batch_rows=2)
    table = read_cells(path, ["slide", "cell_id"])
    assert len(keys) == 8
    assert keys.cell_ids.dtype == np.int64 and keys.cell_ids.tolist() == table["cell_id"].tolist()
    assert keys.slides(0, 8) == table["slide"].tolist()
    assert keys.slides(2, 5) == ["S1", "S1", "S1"]
    assert sorted(keys.slide_names) == ["S1", "S2", "S3"]
    assert keys.frame()["cell_id"].tolist() == ids


def test_table_without_slide_column_takes_the_folder_or_the_given_name(tmp_path):
    folder = tmp_path / "P07_S2"
    folder.mkdir()
    path = folder / "cells.parquet"
    _write(path, None, [3, 4])
    assert read_cell_keys(path).slides(0, 2) == ["P07_S2", "P07_S2"]
    assert read_cell_keys(path, default_slide="X").slides(1, 2) == ["X"]


def test_empty_table(tmp_path):
    path = tmp_path / "cells.parquet"
    _write(path, [], [])
    keys = read_cell_keys(path)
    assert len(keys) == 0 and keys.slides(0, 0) == []


@pytest.mark.parametrize("problem", ["missing", "not parquet", "no cell_id", "empty slide"])
def test_bad_tables_are_named_in_the_error(tmp_path, problem):
    path = tmp_path / "cells.parquet"
    if problem == "not parquet":
        path.write_text("slide,cell_id\nS1,1\n")
    elif problem == "no cell_id":
        pq.write_table(pa.table({"slide": ["S1"]}), path)
    elif problem == "empty slide":
        pq.write_table(pa.table({"slide": pa.array(["S1", None]), "cell_id": pa.array([1, 2], pa.int64())}), path)
    error = FileNotFoundError if problem == "missing" else ValueError
    with pytest.raises(error, match="cells.parquet"):
        read_cell_keys(path)
