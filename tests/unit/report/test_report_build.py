"""hemoprofile.report.build: the self-contained cohort report, built from fabricated inputs
(tests/helpers/report_fixtures.py: real extract outputs of tiny slides, fabricated predictions, metrics
and patient-level files): every section, its "not available" notes, self-containment, atomic writes."""

import base64
import dataclasses
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from helpers import report_fixtures

from hemoprofile.report import build
from hemoprofile.report.build import SECTIONS, build_report
from hemoprofile.report.inputs import ReportInputs

SECTION_IDS = [sid for sid, _ in SECTIONS]


class _Sections(HTMLParser):
    """Section ids in document order, each section's text, and every img src / link href / script src."""

    def __init__(self):
        super().__init__()
        self.order, self.text, self.h2 = [], {}, {}
        self.current = None
        self.images, self.refs = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.current = attrs.get("id")
            self.order.append(self.current)
            self.text[self.current] = ""
        if tag == "h2" and self.current:
            self.h2[self.current] = True
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for name in ("src", "href", "action", "poster", "data"):
            if name in attrs and tag != "img":
                self.refs.append((tag, name, attrs[name]))

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.current:
            self.text[self.current] += data


def parse(path) -> _Sections:
    parser = _Sections()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def full_inputs(tmp_path_factory) -> ReportInputs:
    return report_fixtures.make_report_inputs(tmp_path_factory.mktemp("cohort"), empty_slide=True,
                                              skipped_slide=True)


@pytest.fixture(scope="module")
def full_report(full_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    return out, build_report(full_inputs, out)


def test_every_section_is_present_in_order_with_its_content(full_report):
    path, result = full_report
    doc = parse(path)
    assert doc.order == SECTION_IDS == result["sections"]
    assert all(doc.h2.get(sid) for sid in SECTION_IDS)
    for sid in SECTION_IDS:
        if sid == "qc":  # only the card of the slide without outputs (S6)
            assert doc.text[sid].count("not available") == 1 and "no outputs for this slide" in doc.text[sid]
        else:
            assert "not available" not in doc.text[sid], (sid, doc.text[sid][:400])
    assert result["bytes"] == path.stat().st_size and result["seconds"] > 0
    text = doc.text
    assert report_fixtures.GIT_COMMIT in text["summary"]
    assert "segment" in text["summary"] and "0:00:45" in text["summary"]  # 5 x 2.5 + 5 x 0.5 + 30 s
    assert "S1" in text["qc"] and "18 cells" in text["qc"]
    assert "% granulocyte" in text["composition"] and "P3" in text["composition"]
    assert "immune5" in text["classifiers"] and "0.953" in text["classifiers"]
    assert "Clustering metrics" in text["latent"] and "0.210" in text["latent"]
    assert "Medoids" in text["latent_conditions"] and "disease_a" in text["latent_conditions"]
    assert "p = 0.970" in text["rare_events"] and "CTC–leukocyte clusters" in text["rare_events"]
    assert "4 clusters of touching cells" in text["rare_events"]
    assert "0.800 [0.700, 0.900]" in text["patients"] and "predicted_state" in text["patients"]
    assert "ctc_per_1000" in text["importances"] and "what ctc_per_1000 means" in text["importances"]
    assert "CNN on the window" in text["interaction"] and "0.500" in text["interaction"]
    assert "ridge on the VAE latents" in text["interaction"] and "1.000" in text["interaction"]


def test_summary_lists_slides_without_cells_and_without_outputs(full_report):
    path, result = full_report
    summary = parse(path).text["summary"]
    assert "0 cells: 1 of 6 slides (S5)" in summary
    assert "no outputs (skipped or failed): 1 of 6 slides (S6)" in summary
    assert any("S5" in n for n in result["notes"]) and any("S6" in n for n in result["notes"])


def test_the_report_references_nothing_outside_itself(full_report):
    path, _ = full_report
    text = path.read_text(encoding="utf-8")
    doc = parse(path)
    for needle in ("http://", "https://", 'src="//', "src='//", "<link", "@import", "url("):
        assert needle not in text, needle
    assert not [r for r in doc.refs if not r[2].startswith("#")], doc.refs  # only in-page links
    assert re.findall(r"<script\b[^>]*>", text) == ["<script>"]  # one inline script, no src
    assert len(doc.images) >= 4 * 2 + 4 + 2  # thumbnails + details, crops, figures
    for src in doc.images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


# Per section: how to take its inputs away, and the text that must then explain it.
DEGRADE = {
    "summary": (dict(provenance={}, benchmarks_dir=None, config={}), "no provenance was recorded"),
    "qc": ("no_slides", "no slide has a readable cells.parquet"),
    "composition": ("no_predictions", "no slide has predictions.parquet"),
    "classifiers": (dict(classifier_metrics={}), "no classifier metrics given"),
    "latent": (dict(embedding_figures={}, embedding_metrics=None), "no embedding metrics given"),
    "latent_conditions": (dict(clusters_by_condition=None), "no clusters-by-condition table given"),
    "rare_events": ("no_predictions", "the ctc classifier task was not run"),
    "ctc_review": (dict(ctc_table=None, ctc_calibration=None), "no CTC review table given"),
    "patients": (dict(patients=None, patient_columns=None, patient_metrics=None, patient_oof=None,
                      patient_predictions=None), "none of the patient-level outputs exists"),
    "importances": (dict(patient_importances="/nonexistent/importances.parquet"), "does not exist"),
    "interaction": (dict(interaction_metrics=None, interaction_predictions=None), "no interaction metrics given"),
}


def _degraded(inputs: ReportInputs, how) -> ReportInputs:
    if how == "no_slides":
        return dataclasses.replace(inputs, slides={})
    if how == "no_predictions":
        slides = {s: {k: v for k, v in p.items() if k != "predictions"} for s, p in inputs.slides.items()}
        return dataclasses.replace(inputs, slides=slides, patients=None)
    return dataclasses.replace(inputs, **how)


@pytest.mark.parametrize("section", SECTION_IDS)
def test_each_section_says_not_available_when_its_inputs_are_missing(full_inputs, tmp_path, section):
    how, why = DEGRADE[section]
    out = tmp_path / "report.html"
    build_report(_degraded(full_inputs, how), out)
    doc = parse(out)
    assert doc.order == SECTION_IDS
    assert "not available" in doc.text[section] and why in doc.text[section], doc.text[section][:600]


def test_a_report_with_no_inputs_at_all_still_renders(tmp_path):
    inputs = ReportInputs(config={}, samples=pd.DataFrame(columns=["slide", "patient", "condition"]), slides={})
    out = tmp_path / "cohort" / "report.html"
    result = build_report(inputs, out)
    doc = parse(out)
    assert doc.order == SECTION_IDS == result["sections"]
    for sid in SECTION_IDS:
        assert "not available" in doc.text[sid], sid


def test_a_failed_build_leaves_no_report_and_keeps_an_older_one(full_inputs, tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("section failed")

    monkeypatch.setitem(build._BUILDERS, "importances", broken)
    out = tmp_path / "report.html"
    with pytest.raises(RuntimeError, match="section failed"):
        build_report(full_inputs, out)
    assert list(tmp_path.iterdir()) == []

    out.write_text("the previous report")

    class FullDisk:  # writes a little, then fails, like a file system running full mid-report
        def __init__(self, handle):
            self.handle = handle

        def write(self, text):
            self.handle.write(text[:100])
            raise OSError("disk full")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setitem(build._BUILDERS, "importances", lambda ctx: "<p>fine</p>")
    real_open = open

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return FullDisk(handle) if "w" in mode and ".tmp-" in str(path) else handle

    monkeypatch.setattr("builtins.open", open_on_a_full_disk)
    with pytest.raises(OSError, match="disk full"):
        build_report(full_inputs, out)
    monkeypatch.undo()
    assert out.read_text() == "the previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


@pytest.fixture(scope="module")
def outlier_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("outlier")
    inputs = report_fixtures.make_report_inputs(root, intensity_scale={"S2": 3.0})
    build_report(inputs, root / "report.html")
    return parse(root / "report.html"), (root / "report.html").read_text(encoding="utf-8")


def _qc_rows(html_text):
    qc = html_text[html_text.index('<section id="qc">'):html_text.index('<section id="composition">')]
    return re.findall(r'<tr(?: class="(\w+)")?><td>(S\d)</td>', qc)


def test_qc_flags_the_slide_whose_intensities_are_off_and_only_it(outlier_report, full_report):
    doc, text = outlier_report
    assert "1 slide(s) flagged" in doc.text["qc"] and "S2" in doc.text["qc"]
    assert dict((slide, cls) for cls, slide in _qc_rows(text)) == {"S1": "", "S2": "flagged", "S3": "", "S4": ""}
    assert "intensity QC flag: 1 of 4 slides (S2)" in doc.text["summary"]

    clean = full_report[0].read_text(encoding="utf-8")
    assert all(cls == "" for cls, _ in _qc_rows(clean))
    assert "No slide has a channel median more than 3 robust z" in parse(full_report[0]).text["qc"]


def test_an_unreadable_table_is_noted_with_the_reason_and_the_rest_still_renders(full_inputs, tmp_path):
    broken = tmp_path / "cells.parquet"
    broken.write_bytes(b"not a parquet file")
    slides = {s: dict(p) for s, p in full_inputs.slides.items()}
    slides["S2"]["cells"] = str(broken)
    slides["S3"].pop("predictions")
    out = tmp_path / "report.html"
    build_report(dataclasses.replace(full_inputs, slides=slides), out)
    doc = parse(out)
    assert doc.order == SECTION_IDS
    summary = doc.text["summary"]
    assert f"slide S2: cells table {broken} is not readable" in summary
    assert "no predictions.parquet: 1 of 6 slides (S3)" in summary
    assert "P1" in doc.text["composition"] and "p = 0.970" in doc.text["rare_events"]


def test_synthetic_truth_is_shown_beside_the_patient_predictions(full_inputs, tmp_path):
    truth = tmp_path / "truth_cells.parquet"
    pd.DataFrame({"patient": ["P1", "P1", "P2"], "condition": ["control", "control", "disease_b"]}).to_parquet(truth)
    out = tmp_path / "report.html"
    build_report(dataclasses.replace(full_inputs, truth_cells=str(truth)), out)
    patients = parse(out).text["patients"]
    assert "condition (simulated truth)" in patients and "disease_b" in patients
    assert "condition (simulated truth)" not in parse_full_report_text(full_inputs, tmp_path)


def parse_full_report_text(inputs, tmp_path):
    out = tmp_path / "plain.html"
    build_report(inputs, out)
    return parse(out).text["patients"]
