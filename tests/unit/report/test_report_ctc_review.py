"""The report's "CTC review" section on a calibration, reliability diagram and cohort CTC table made by
hemoprofile.classify and hemoprofile.patients from a small known slide set."""

import dataclasses
import re

import pandas as pd
from helpers.review_slides import write_review_slide

from hemoprofile.report import ReportInputs, build_report
from hemoprofile.classify.calibration import calibrate_and_choose, write_calibration
from hemoprofile.classify.candidates import candidate_table
from hemoprofile.io.ctc_review import write_candidates
from hemoprofile.patients.ctc_table import ctc_cohort_table, write_ctc_table


def test_ctc_review_section_shows_threshold_curve_and_patient_rates(tmp_path):
    paths = write_review_slide(tmp_path, n=300, n_ctc=5, patches=False)
    scores = pd.read_parquet(paths["predictions"])["p_ctc_CTC"].to_numpy()
    cells = pd.DataFrame({"score": scores, "is_ctc": scores >= 0.5})
    result, curve = calibrate_and_choose(cells, cells, 10.0)
    result.update(validation_patients=["PV"], test_patients=["PT"])
    write_calibration(result, curve, tmp_path / "cal.json", tmp_path / "curve.tsv")
    write_candidates(candidate_table("S1", paths["cells"], paths["predictions"], result["threshold"]),
                     tmp_path / "cand.parquet")
    samples = pd.DataFrame({"slide": ["S1"], "patient": ["P1"], "condition": ["disease"]})
    write_ctc_table(ctc_cohort_table(samples, {"S1": {"cells": paths["cells"], "candidates": str(tmp_path / "cand.parquet")}}),
                    tmp_path / "ctc.tsv")
    inputs = ReportInputs(config={}, samples=samples, slides={}, ctc_table=str(tmp_path / "ctc.tsv"),
                          ctc_calibration=str(tmp_path / "cal.json"), ctc_calibration_curve=str(tmp_path / "curve.tsv"))
    out = tmp_path / "report.html"
    build_report(inputs, out)
    html = out.read_text()
    section = re.search(r'<section id="ctc_review">(.*?)</section>', html, re.S).group(1)
    assert "not available" not in section
    assert "5 candidates in 1 slides; 0 slide(s) reviewed; 5 CTCs counted" in section
    assert "PV" in section and "PT" in section and "reliability diagram" in section
    assert "below the held-out set" in section  # 295 cells cannot show 10 per million
    # without its inputs the section says why
    build_report(dataclasses.replace(inputs, ctc_table=None, ctc_calibration=None), out)
    assert "no CTC review table given" in out.read_text()
