"""The CTC review page in a real browser: headless Chromium (driven over the DevTools pipe,
tests/helpers/cdp_pipe.py) opens review.html from disk, the test clicks decisions with the mouse as a
reviewer does, types a note and the reviewer's name, sorts a column, clicks Export, and checks the
downloaded CSV: its rows, and that the workflow reads it back (hemoprofile.io.ctc_review) and the
patient aggregation then counts the cells marked CTC; then a fresh browser loads that CSV back into the
page. The page must request nothing but itself and write no console message.

Chromium as in test_report_chromium.py: in CI (CI=true) a missing browser is installed with apt-get and
the test fails if that is impossible; elsewhere it is skipped with the reason.
"""

import json
import time

import numpy as np
import pandas as pd
import pytest
from helpers.browsers import chromium_or_skip
from helpers.cdp_pipe import Chromium
from helpers.review_slides import write_review_slide

from hemoprofile.patients.aggregate import aggregate_patients
from hemoprofile.classify.candidates import candidate_table
from hemoprofile.io.ctc_review import read_review, write_candidates
from hemoprofile.report.review_page import write_review_page


@pytest.fixture(scope="module")
def chromium_path():
    return chromium_or_skip("review")


def _click(browser, selector):
    """A real mouse click (pressed and released) in the middle of the element ``selector``."""
    box = json.loads(browser.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
        "const r = e.getBoundingClientRect(); return JSON.stringify([r.x + r.width / 2, r.y + r.height / 2]); })()"))
    for kind in ("mousePressed", "mouseReleased"):
        browser.page("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                  "clickCount": 1})


def _type(browser, selector, text):
    _click(browser, selector)
    browser.page("Input.insertText", {"text": text})


def test_review_page_clicks_export_and_round_trip(chromium_path, tmp_path):
    paths = write_review_slide(tmp_path, n=300, n_ctc=6)
    table = candidate_table("S1", paths["cells"], paths["predictions"], 0.5, clusters_path=paths["clusters"])
    candidates = tmp_path / "S1" / "candidates.parquet"
    write_candidates(table, candidates, threshold=0.5, source="test")
    page = tmp_path / "S1" / "review.html"
    write_review_page("S1", table, paths["patches"], page, threshold={"threshold": 0.5, "source": "test"})
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    assert html.count("<img") == 6 * 5  # composite + 4 channels per candidate

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    ids = paths["ctc_ids"]
    browser = Chromium(chromium_path, width=1400, height=1000)
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.page(f"{domain}.enable")
        browser.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        browser.page("Page.navigate", {"url": page.resolve().as_uri()})
        assert browser.wait_for("document.body && document.body.dataset.reviewScript === 'ready'", timeout=30)
        assert browser.evaluate("document.querySelectorAll('#candidates tbody tr').length") == 6
        assert browser.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth === 32)")

        row = 'tr[data-cell-id="{}"] '.format
        _click(browser, row(ids[0]) + "button.d-CTC")
        _click(browser, row(ids[1]) + "button.d-not_CTC")
        _click(browser, row(ids[2]) + "button.d-unsure")
        _click(browser, row(ids[3]) + "button.d-CTC")
        _click(browser, row(ids[3]) + "button.d-CTC")  # a second click clears the decision
        _click(browser, row(ids[4]) + "button.d-not_CTC")
        _click(browser, row(ids[4]) + "button.d-CTC")  # changed mind: the last choice counts
        _type(browser, row(ids[0]) + "td.note input", 'round, "bright" CK')
        _type(browser, "#reviewer", "ana")
        assert browser.evaluate("document.body.dataset.decided") == "4"
        assert browser.evaluate(f"document.querySelector('{row(ids[0])}').dataset.decision") == "CTC"
        assert "4 of 6 decided: 2 CTC, 1 not CTC, 1 unsure" in browser.evaluate(
            "document.getElementById('progress').textContent")

        # sort by score, ascending then descending (header clicks)
        _click(browser, "#candidates thead th:nth-child(3)")
        order = browser.evaluate("Array.from(document.querySelectorAll('#candidates tbody tr')).map(t => +t.dataset.cellId)")
        assert order == ids[::-1]  # the lowest score first
        _click(browser, "#candidates thead th:nth-child(3)")
        order = browser.evaluate("Array.from(document.querySelectorAll('#candidates tbody tr')).map(t => +t.dataset.cellId)")
        assert order == ids

        _click(browser, "#export")
        csv_path = downloads / "S1.csv"
        deadline = time.time() + 30
        while not csv_path.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert csv_path.exists(), list(downloads.iterdir())
        requested = [e["params"]["request"]["url"] for e in browser.events
                     if e.get("method") == "Network.requestWillBeSent"]
        assert requested and all(u.startswith(("file:", "data:", "blob:")) for u in requested), requested
        assert browser.console_problems() == []
    finally:
        browser.close()

    exported = pd.read_csv(csv_path, dtype={"note": str}, keep_default_na=False)
    assert list(exported.columns) == ["slide", "cell_id", "decision", "note", "reviewer", "time"]
    assert exported["cell_id"].tolist() == [ids[0], ids[1], ids[2], ids[4]]  # by rank, undecided left out
    assert exported["decision"].tolist() == ["CTC", "not_CTC", "unsure", "CTC"]
    assert exported.loc[0, "note"] == 'round, "bright" CK' and set(exported["reviewer"]) == {"ana"}
    assert pd.to_datetime(exported["time"], utc=True).notna().all()

    # the workflow reads it back, and the patient table counts the 2 reviewed CTCs instead of 6 candidates
    review = read_review(csv_path, "S1", cell_ids=np.arange(1, 301))
    assert review["decision"].value_counts().to_dict() == {"CTC": 2, "not_CTC": 1, "unsure": 1}
    samples = pd.DataFrame({"slide": ["S1"], "patient": ["P1"], "condition": ["disease"]})
    files = {"cells": paths["cells"], "predictions": paths["predictions"], "candidates": str(candidates)}
    types = ["T", "granulocyte", "CTC"]
    before = aggregate_patients(samples, {"S1": files}, cell_type_names=types)[0].iloc[0]
    after = aggregate_patients(samples, {"S1": {**files, "review": str(csv_path)}}, cell_type_names=types)[0].iloc[0]
    assert (before["ctc_count"], after["ctc_count"]) == (6, 2)

    # a reviewer elsewhere (a fresh browser: no stored decisions) loads the CSV back and goes on
    carried = tmp_path / "carried.csv"
    carried.write_text(csv_path.read_text() + "S2,5,CTC,,ana,\n")  # another slide's row is skipped
    browser = Chromium(chromium_path, width=1400, height=1000)
    try:
        for domain in ("Page", "Runtime", "Log"):
            browser.page(f"{domain}.enable")
        browser.page("Page.navigate", {"url": page.resolve().as_uri()})
        assert browser.wait_for("document.body && document.body.dataset.reviewScript === 'ready'", timeout=30)
        assert browser.evaluate("document.body.dataset.decided") == "0"
        document = browser.page("DOM.getDocument")
        node = browser.page("DOM.querySelector", {"nodeId": document["root"]["nodeId"], "selector": "#load"})
        browser.page("DOM.setFileInputFiles", {"nodeId": node["nodeId"], "files": [str(carried)]})
        assert browser.wait_for("document.body.dataset.loaded", timeout=30) == "4"
        assert browser.evaluate("document.body.dataset.decided") == "4"
        assert "skipped 1" in browser.evaluate("document.getElementById('loaded').textContent")
        assert browser.evaluate(f"document.querySelector('{row(ids[4])}').dataset.decision") == "CTC"
        assert browser.evaluate(f"document.querySelector('{row(ids[0])} td.note input').value") == 'round, "bright" CK'
        assert browser.evaluate("document.getElementById('reviewer').value") == "ana"
        assert browser.console_problems() == []
    finally:
        browser.close()
