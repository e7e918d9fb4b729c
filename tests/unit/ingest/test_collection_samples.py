"""Collections in the sample sheet (source: collection), the demo cohort generator, and aggregation of
collection rows with slides."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hemoprofile.config import (
    ConfigError,
    check_collection_models,
    check_sample_channels,
    config_defaults,
    read_sample_sheet,
    validate_sample_sheet,
)
from hemoprofile.ingest.demo_cohort import plan_collection_cohort, write_demo_patient
from hemoprofile.patients.aggregate import aggregate_patients, table_descriptions

PBC = Path(__file__).resolve().parents[2] / "fixtures" / "pbc"
HEADER = "slide\tpatient\tcondition\tpath\tsource\tmodality\tformat\tchannels\n"


def _sheet(tmp_path, *rows) -> Path:
    path = tmp_path / "samples.tsv"
    path.write_text(HEADER + "".join("\t".join(r) + "\n" for r in rows))
    return path


def test_a_collection_row_needs_a_folder_but_no_format_or_channels(tmp_path):
    (tmp_path / "p1").mkdir()
    (tmp_path / "s.ome.tif").write_bytes(b"x")
    sheet = read_sample_sheet(_sheet(tmp_path, ("P1", "P1", "control", str(tmp_path / "p1"), "collection", "", "", ""),
                                     ("S1", "P2", "aml", str(tmp_path / "s.ome.tif"), "", "", "ome-tiff", "R,G,B")))
    assert sheet.loc["P1", "source"] == "collection" and sheet.loc["S1", "source"] == "slide"
    cfg = config_defaults()
    check_collection_models(sheet, cfg)  # empty modality -> default 'smear', which has a model
    sheet.loc["P1", "modality"] = "deparray"
    with pytest.raises(ConfigError, match="modality 'deparray' has no classifier in collection.models"):
        check_collection_models(sheet, cfg)


def test_collection_rows_are_not_checked_for_slide_channels(tmp_path):
    (tmp_path / "p1").mkdir()
    sheet = read_sample_sheet(_sheet(tmp_path, ("P1", "P1", "control", str(tmp_path / "p1"), "collection", "", "", "")))
    check_sample_channels(sheet, config_defaults())  # DAPI etc. are not asked of crops


def test_a_missing_collection_folder_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"row 1 \(P1\): path '.*nowhere' does not exist"):
        read_sample_sheet(_sheet(tmp_path, ("P1", "P1", "control", str(tmp_path / "nowhere"), "collection", "", "", "")))
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="needs a folder of single-cell images"):
        read_sample_sheet(_sheet(tmp_path, ("P1", "P1", "control", str(tmp_path / "file.jpg"), "collection", "", "", "")))


def test_a_bad_source_value_and_a_slide_without_format_are_refused(tmp_path):
    (tmp_path / "p1").mkdir()
    with pytest.raises(ConfigError, match="column 'source': 'crops' is not allowed; allowed: slide, collection"):
        read_sample_sheet(_sheet(tmp_path, ("P1", "P1", "control", str(tmp_path / "p1"), "crops", "", "", "")))
    with pytest.raises(ConfigError, match="column 'format' is empty"):
        read_sample_sheet(_sheet(tmp_path, ("S1", "P1", "control", str(tmp_path / "p1"), "slide", "", "", "R")))
    with pytest.raises(ConfigError, match="'modality' is for source 'collection' rows only"):
        read_sample_sheet(_sheet(tmp_path, ("S1", "P1", "control", str(tmp_path / "p1"), "", "smear", "frames", "R")))


def test_demo_cohort_plan_validates_and_patients_follow_their_composition(tmp_path):
    cfg = config_defaults()["collection_demo"]
    cfg.update(cells_per_patient=60, conditions={
        "control": {"patients": 2, "composition": {"neutrophil": 0.9, "lymphocyte": 0.1}},
        "aml": {"patients": 1, "composition": {"ig": 0.5, "monocyte": 0.5}}})
    plan = plan_collection_cohort(cfg, tmp_path / "demo")
    sheet = validate_sample_sheet(plan, check_paths=False)
    assert list(sheet.index) == ["C01", "C02", "C03"] and set(sheet["source"]) == {"collection"}
    result = write_demo_patient(cfg, sheet.loc["C03"].to_dict(), 2, PBC, tmp_path / "demo/C03/images",
                                tmp_path / "demo/C03/truth.csv")
    truth = pd.read_csv(tmp_path / "demo/C03/truth.csv")
    assert len(truth) == 60 and set(truth["class"]) <= {"ig", "monocyte"}
    assert result["bad_files"] == ["zz_copy.jpg"]  # index 2: a duplicate
    files = sorted(p.name for p in (tmp_path / "demo/C03/images").iterdir())
    assert len(files) == 61 and files[-1] == "zz_copy.jpg"
    again = tmp_path / "again"
    write_demo_patient(cfg, sheet.loc["C03"].to_dict(), 2, PBC, again, tmp_path / "t2.csv")
    assert (again / "cell_00007.jpg").read_bytes() == (tmp_path / "demo/C03/images/cell_00007.jpg").read_bytes()


def _collection_files(tmp_path, name, labels, classes):
    cells = tmp_path / f"{name}_cells.parquet"
    pd.DataFrame({"slide": name, "cell_id": np.arange(1, len(labels) + 1), "path": [f"c{i}.jpg" for i in
                  range(len(labels))], "label": "", "height": 100, "width": 100}).to_parquet(cells)
    meta = {"hemoprofile": json.dumps({"models": {"collection": {"id": "x", "classes": classes}}})}
    table = pa.table({"slide": [name] * len(labels), "cell_id": np.arange(1, len(labels) + 1),
                      "pred_collection": labels}).replace_schema_metadata(meta)
    predictions = tmp_path / f"{name}_pred.parquet"
    pq.write_table(table, predictions)
    return {"cells": str(cells), "predictions": str(predictions)}


def test_collection_rows_aggregate_with_their_classifiers_classes(tmp_path):
    classes = ["ig", "lymphocyte", "monocyte", "neutrophil"]
    files = {"A": _collection_files(tmp_path, "A", ["ig", "ig", "monocyte", "neutrophil"], classes),
             "B": _collection_files(tmp_path, "B", ["neutrophil"] * 3 + ["lymphocyte"], classes)}
    samples = pd.DataFrame({"slide": ["A", "B"], "patient": ["PA", "PB"], "condition": ["aml", "control"],
                            "source": ["collection"] * 2, "modality": ["smear", "smear"]})
    table, notes = aggregate_patients(samples, files, cell_type_names=[])
    assert table["modality"].tolist() == ["smear", "smear"]
    assert [c for c in table.columns if c.startswith("frac_")] == [f"frac_{c}" for c in classes]
    assert table.set_index("patient").loc["PA", "frac_ig"] == 0.5
    assert table.set_index("patient").loc["PB", "count_monocyte"] == 0  # a class never predicted keeps its column
    assert not any("__" in c for c in table.columns)  # no morphology columns: crops have none
    assert set(table_descriptions(table)) >= set(table.columns)
    assert any("smear rows come from the 'collection' classifier" in n for n in notes)
    samples.loc[1, "patient"] = "PA"
    samples.loc[1, "condition"] = "aml"
    samples.loc[1, "source"] = "slide"
    with pytest.raises(ValueError, match="different modalities"):
        aggregate_patients(samples, files, cell_type_names=[])
