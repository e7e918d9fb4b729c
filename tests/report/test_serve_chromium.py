"""``hemoprofile serve`` in a real browser: the server runs as its own process on a free port, headless
Chromium (driven over the DevTools pipe, tests/helpers/cdp_pipe.py) opens the page, picks a patient folder
in the folder input exactly as a user does (16 PBC fixture crops plus an empty .jpg, a text file and a
macOS resource-fork file), waits for the result, and the test checks the counts and the prediction on the
page against the truth and the server's own answer, downloads the per-cell CSV by clicking its link, and
takes a screenshot. Stopping the server removes its upload folder.

Chromium as in test_report_chromium.py: in CI (CI=true) a missing browser is installed with apt-get and
the test fails if that is impossible; elsewhere it is skipped with the reason. About 40 s on the
2-core VM (training the small patient model and starting the server with torch are most of it): marked slow.

``HEMOPROFILE_SERVE_SCREENSHOT=docs/serve_page.png`` also writes the screenshot there (the README's).
"""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from helpers import serve_cohort
from helpers.cdp_pipe import Chromium

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SRC = Path(__file__).resolve().parents[2] / "src"


def _find_browser():
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


@pytest.fixture(scope="module")
def chromium_path():
    browser = _find_browser()
    if browser is None and os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
            subprocess.run("apt-get update && apt-get install -y chromium", shell=True, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
        browser = _find_browser()
        if browser is None:
            pytest.fail("serve browser test NOT RUN: no Chromium, and `apt-get install -y chromium` did not "
                        "provide one (CI must run it: run CI as root on a Debian/Ubuntu image)", pytrace=False)
    if browser is None:
        pytest.skip(f"serve browser test NOT RUN: none of {', '.join(BROWSERS)} is installed "
                    "(apt-get install chromium); CI runs it")
    return browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    results = serve_cohort.write_trained_cohort(root / "results")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "TMPDIR": str(root)}
    with open(root / "server.log", "w+") as log:
        process = subprocess.Popen([sys.executable, "-m", "hemoprofile.cli", "serve", "--results", str(results),
                                    "--port", str(port), "--device", "cpu", "--threads", "1", "--gallery", "8"],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{base}/api/info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.time() > deadline:
                log.seek(0)
                process.kill()
                pytest.fail(f"hemoprofile serve did not start: {log.read()[-3000:]}")
            time.sleep(0.3)
        yield {"base": base, "process": process, "log": log, "root": root}
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_upload_a_folder_in_the_browser_and_read_the_result(chromium_path, server, tmp_path):
    patient = serve_cohort.patient_folder(tmp_path)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser = Chromium(chromium_path, width=1280, height=1000)
    try:
        for domain in ("Page", "Runtime", "Log"):
            browser.page(f"{domain}.enable")
        browser.page("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 1000, "deviceScaleFactor": 1,
                                                            "mobile": False})
        browser.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        browser.page("Page.navigate", {"url": server["base"] + "/"})
        assert browser.wait_for("!!document.body && document.body.dataset.state === 'ready'", timeout=30)

        # the user picks the patient's folder in the folder input
        document = browser.page("DOM.getDocument")
        node = browser.page("DOM.querySelector", {"nodeId": document["root"]["nodeId"], "selector": "#folder-input"})
        browser.page("DOM.setFileInputFiles", {"nodeId": node["nodeId"], "files": [str(patient)]})
        state = browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && "
                                 "document.body.dataset.state", timeout=120)
        assert state == "done", browser.evaluate("document.getElementById('error').textContent")

        shown = browser.evaluate("""JSON.stringify({
            counts: Object.fromEntries(Array.from(document.querySelectorAll('#counts tbody tr'))
                      .map(tr => [tr.dataset.type, Number(tr.dataset.count)])),
            predicted: document.getElementById('predicted-state').textContent,
            pDisease: Number(document.getElementById('predicted-state').dataset.pDisease),
            predictionRows: document.querySelectorAll('#prediction-table tbody tr').length,
            performance: document.querySelector('#prediction-table tbody tr td:last-child').textContent,
            badFiles: Array.from(document.querySelectorAll('#bad-files tbody tr td:first-child')).map(td => td.textContent),
            bars: document.querySelectorAll('#chart svg rect').length,
            thumbnails: document.querySelectorAll('#gallery img').length,
            summary: document.getElementById('summary').textContent,
            href: document.getElementById('download-cells').getAttribute('href')})""")
        shown = json.loads(shown)

        truth = pd.Series(serve_cohort.fixture_labels()).value_counts().to_dict()
        assert shown["counts"] == {t: truth.get(t, 0) for t in serve_cohort.PBC8}  # 2 of each of 8 types
        assert shown["summary"].startswith("16 cell(s) classified from 19 file(s); 3 file(s) could not be used")
        assert sorted(shown["badFiles"]) == ["patient_upload/._BNE_722116.jpg", "patient_upload/empty.jpg",
                                             "patient_upload/notes.txt"]
        assert shown["bars"] == 8 and shown["thumbnails"] == 16
        assert re.search(r"balanced accuracy \d\.\d\d \(95 % CI \d\.\d\d–\d\.\d\d\), ROC AUC", shown["performance"])

        # what the page shows is what the server computed for this job
        job = re.fullmatch(r"/api/jobs/([A-Za-z0-9_-]+)/cells\.csv", shown["href"]).group(1)
        result = httpx.get(f"{server['base']}/api/jobs/{job}").json()["result"]
        assert shown["predicted"] == result["prediction"]["predicted_state"]
        assert shown["pDisease"] == pytest.approx(result["prediction"]["p_disease"], abs=1e-4)
        assert shown["predictionRows"] == 1 + 2 + 3  # disease, 2 subtypes, 3 final states
        assert shown["counts"] == {c["type"]: c["count"] for c in result["composition"]}

        # the CSV download, by clicking its link
        browser.evaluate("document.getElementById('download-cells').click()")
        csv_path = downloads / "hemoprofile_cells.csv"
        deadline = time.time() + 30
        while not csv_path.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert csv_path.exists(), list(downloads.iterdir())
        cells = pd.read_csv(csv_path)
        assert len(cells) == 16 and cells["predicted_type"].value_counts().to_dict() == truth
        assert set(cells["path"].str.removeprefix("patient_upload/")) == set(serve_cohort.fixture_labels())

        shot = browser.page("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        png = base64.b64decode(shot["data"])
        (tmp_path / "page.png").write_bytes(png)
        from matplotlib import image as mpimg

        pixels = mpimg.imread(tmp_path / "page.png")[..., :3]
        assert pixels.shape[1] == 1280 and pixels.std() > 0.05
        assert len(np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)) > 200
        if os.environ.get("HEMOPROFILE_SERVE_SCREENSHOT"):  # the README's picture: 256 colours keep it small
            from PIL import Image

            with Image.open(tmp_path / "page.png") as image:
                image.convert("RGB").quantize(256).save(os.environ["HEMOPROFILE_SERVE_SCREENSHOT"], optimize=True)
        assert browser.console_problems() == []
    finally:
        browser.close()

    # stopping the server removes its upload folder
    uploads = re.search(r"uploads in (\S+)", Path(server["log"].name).read_text()).group(1)
    assert Path(uploads).is_dir()
    server["process"].send_signal(signal.SIGINT)
    assert server["process"].wait(timeout=30) in (0, -signal.SIGINT)  # uvicorn re-raises the signal after shutdown
    assert not Path(uploads).exists()
