"""The upload-and-predict app through FastAPI's TestClient, with the bundled pbc8 classifier and a patient
model trained on generated count tables: results, unusable files, limits, zip-slip, job isolation,
concurrent jobs, temporary folders, headers. About 20 s (torch and the patient model load once)."""

import re
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import serve_cohort

from hemoprofile.serve.analysis import Analyzer, ModelFiles
from hemoprofile.serve.app import create_app
from hemoprofile.serve.jobs import JobStore
from hemoprofile.serve.uploads import UploadLimits

STATIC = Path(__file__).resolve().parents[3] / "src" / "hemoprofile" / "serve" / "static"
HOST = {"host": "127.0.0.1"}


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    results = serve_cohort.write_trained_cohort(tmp_path_factory.mktemp("cohort") / "results")
    return Analyzer(ModelFiles.from_results(results), device="cpu", threads=1, gallery_per_type=5)


@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    return serve_cohort.patient_folder(tmp_path_factory.mktemp("patient"))


def make_client(analyzer, tmp_path, **limits):
    store = JobStore(analyzer, UploadLimits(**limits) if limits else UploadLimits(), root=tmp_path)
    client = TestClient(create_app(store, allowed_hosts=("127.0.0.1", "testserver")), base_url="http://127.0.0.1")
    return store, client


def upload_folder(client, folder, only=None):
    job = client.post("/api/jobs").json()["job"]
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (only is None or only(path)):
            rel = f"{folder.name}/{path.relative_to(folder).as_posix()}"
            r = client.put(f"/api/jobs/{job}/files/{quote(rel)}", content=path.read_bytes())
            assert r.status_code == 200, r.text
    return job


def wait(client, job, timeout=120):
    r = client.post(f"/api/jobs/{job}/start")
    assert r.status_code == 200, r.text
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get(f"/api/jobs/{job}").json()
        if status["state"] in ("done", "failed"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job did not finish: {status}")


def counts(status):
    return {c["type"]: c["count"] for c in status["result"]["composition"]}


def test_folder_upload_gives_counts_bad_files_prediction_and_csv(analyzer, patient, tmp_path):
    store, client = make_client(analyzer, tmp_path)
    with client:
        job = upload_folder(client, patient)
        status = wait(client, job)
        assert status["state"] == "done", status
        result = status["result"]
        truth = pd.Series(serve_cohort.fixture_labels()).value_counts().to_dict()
        assert counts(status) == {t: truth.get(t, 0) for t in analyzer.cell_types}  # 16 crops, 2 per type
        assert result["n_cells"] == 16 and result["n_files"] == 19
        problems = {b["path"]: b["problem"] for b in result["bad_files"]}
        assert problems == {"patient_upload/empty.jpg": "empty file",
                            "patient_upload/notes.txt": problems["patient_upload/notes.txt"],
                            "patient_upload/._BNE_722116.jpg": problems["patient_upload/._BNE_722116.jpg"]}
        assert problems["patient_upload/notes.txt"].startswith("not an image file")
        assert "cannot read image" in problems["patient_upload/._BNE_722116.jpg"]
        assert "1 file" not in status["message"] and "3 file(s) could not be used" in status["message"]
        p = result["prediction"]
        assert p["predicted_state"] in ("control", "aml_mono", "aml_ery")
        assert abs(sum(s["p"] for s in p["states"]) - 1) < 1e-6
        assert set(p["features"]) == set(analyzer.patient_model.features)
        assert p["features"]["frac_monocyte"] == pytest.approx(2 / 16)
        perf = result["performance"]["stages"]
        assert set(perf) == {"disease", "subtype", "overall"} and perf["disease"]["metrics"]["roc_auc"]["ci95"]
        assert sum(len(v) for v in result["gallery"].values()) == 16
        assert all(t["src"].startswith("data:image/png;base64,") for v in result["gallery"].values() for t in v)

        cells = client.get(f"/api/jobs/{job}/cells.csv")
        assert cells.status_code == 200 and "attachment" in cells.headers["content-disposition"]
        table = pd.read_csv(pd.io.common.StringIO(cells.text))
        assert len(table) == 16 and list(table.columns[:2]) == ["path", "predicted_type"]
        assert table["predicted_type"].value_counts().to_dict() == {k: v for k, v in counts(status).items() if v}
        summary = client.get(f"/api/jobs/{job}/summary.csv").text
        assert f"prediction,predicted_state,{p['predicted_state']}" in summary
        assert "count,monocyte,2" in summary and "unusable_file,patient_upload/empty.jpg,empty file" in summary
        assert not store._jobs[job].upload.exists()  # images deleted once classified
        root = store.root
        assert root.exists()
    assert not root.exists()  # the server's shutdown removed every job folder


def test_zip_upload_matches_folder_upload(analyzer, patient, tmp_path):
    archive = serve_cohort.zip_folder(patient, tmp_path / "patient.zip")
    (tmp_path / "server").mkdir()
    _, client = make_client(analyzer, tmp_path / "server")
    with client:
        job = client.post("/api/jobs").json()["job"]
        assert client.put(f"/api/jobs/{job}/zip", content=archive.read_bytes()).status_code == 200
        status = wait(client, job)
        assert status["state"] == "done"
        assert status["result"]["n_cells"] == 16 and len(status["result"]["bad_files"]) == 3
        assert counts(status)["platelet"] == 2


def test_zip_slip_fails_the_job_and_writes_nothing_outside(analyzer, tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok.jpg", b"x")
        z.writestr("../../escaped.jpg", b"evil")
    server = tmp_path / "server"
    server.mkdir()
    _, client = make_client(analyzer, server)
    with client:
        job = client.post("/api/jobs").json()["job"]
        client.put(f"/api/jobs/{job}/zip", content=archive.read_bytes())
        status = wait(client, job)
        assert status["state"] == "failed" and "'..' in a path is not allowed" in status["message"]
        assert "../../escaped.jpg" in status["message"]
    assert not list(tmp_path.rglob("escaped.jpg"))


@pytest.mark.parametrize("path", ["%2E%2E/%2E%2E/escaped.jpg", "a/%2E%2E/%2E%2E/escaped.jpg", "%2Fetc%2Fescaped.jpg"])
def test_file_upload_paths_cannot_escape(analyzer, tmp_path, path):
    _, client = make_client(analyzer, tmp_path)
    with client:
        job = client.post("/api/jobs").json()["job"]
        r = client.put(f"/api/jobs/{job}/files/{path}", content=b"x")
        assert r.status_code == 400, r.text
        assert "not allowed" in r.json()["error"]
    assert not list(tmp_path.parent.rglob("escaped.jpg"))


def test_upload_over_the_size_limit_gets_a_clear_message(analyzer, patient, tmp_path):
    store, client = make_client(analyzer, tmp_path, max_upload_bytes=5000)
    with client:
        job = client.post("/api/jobs").json()["job"]
        big = next(p for p in sorted(patient.glob("*.jpg")) if p.stat().st_size > 5000)
        r = client.put(f"/api/jobs/{job}/files/big.jpg", content=big.read_bytes())
        assert r.status_code == 413
        assert r.json()["error"].startswith("big.jpg:") and "over the upload limit of 0.0 MiB" in r.json()["error"]
        assert not (store._jobs[job].upload / "big.jpg").exists()

        # chunked (no Content-Length): the streamed byte count stops it
        def body():
            for _ in range(10):
                yield b"x" * 1000
        r = client.put(f"/api/jobs/{job}/files/stream.jpg", content=body())
        assert r.status_code == 413 and not (store._jobs[job].upload / "stream.jpg").exists()


def test_refused_uploads_are_not_counted_and_one_zip_per_job(analyzer, tmp_path):
    store, client = make_client(analyzer, tmp_path, max_upload_bytes=3000, max_files=2)
    with client:
        job = client.post("/api/jobs").json()["job"]
        for i in range(3):  # refused uploads do not use up the job's file count or bytes
            assert client.put(f"/api/jobs/{job}/files/big{i}.jpg", content=b"x" * 4000).status_code == 413
        assert store._jobs[job].budget.files == 0 and store._jobs[job].budget.bytes == 0
        assert client.put(f"/api/jobs/{job}/files/a.jpg", content=b"x" * 100).status_code == 200
        r = client.put(f"/api/jobs/{job}/files/a.jpg", content=b"y")
        assert r.status_code == 400 and "already in the upload" in r.json()["error"]
        assert client.put(f"/api/jobs/{job}/zip", content=b"PK").status_code == 200
        r = client.put(f"/api/jobs/{job}/zip", content=b"PK")
        assert r.status_code == 409 and "one zip per patient" in r.json()["error"]


def test_image_modes_are_classified_or_listed_with_the_reason(analyzer, patient, tmp_path):
    from PIL import Image

    source = next(patient.glob("MO_*.jpg"))
    folder = tmp_path / "modes"
    folder.mkdir()
    with Image.open(source) as image:
        image.convert("L").save(folder / "grey.png")
        image.convert("RGBA").save(folder / "rgba.png")
        image.convert("CMYK").save(folder / "cmyk.jpg")
        image.convert("I;16").save(folder / "sixteen.png")
        image.resize((2, 2)).save(folder / "tiny.png")
    (folder / "truncated.jpg").write_bytes(source.read_bytes()[:200])
    files = sorted(folder.iterdir())
    cells = analyzer.classify(folder, files)
    assert sorted(cells.paths) == ["cmyk.jpg", "rgba.png"]  # alpha dropped, CMYK converted to RGB
    assert list(cells.predicted) == ["monocyte", "monocyte"]
    problems = {b["path"]: b["problem"] for b in cells.bad_files}
    assert problems["grey.png"] == "1 channel(s); the classifier needs 3 (R, G, B)"
    assert problems["sixteen.png"] == "1 channel(s); the classifier needs 3 (R, G, B)"
    assert problems["tiny.png"] == "too small (2 x 2 px)"
    assert problems["truncated.jpg"].startswith("cannot read image")


def test_too_many_files_and_total_size_are_bounded(analyzer, tmp_path):
    _, client = make_client(analyzer, tmp_path, max_files=2, max_unpacked_bytes=2500)
    with client:
        job = client.post("/api/jobs").json()["job"]
        assert client.put(f"/api/jobs/{job}/files/a.jpg", content=b"x" * 1000).status_code == 200
        assert client.put(f"/api/jobs/{job}/files/b.jpg", content=b"x" * 1000).status_code == 200
        r = client.put(f"/api/jobs/{job}/files/c.jpg", content=b"x")
        assert r.status_code == 413 and "more than 2 files" in r.json()["error"]
        job2 = client.post("/api/jobs").json()["job"]
        assert client.put(f"/api/jobs/{job2}/files/a.jpg", content=b"x" * 2000).status_code == 200
        r = client.put(f"/api/jobs/{job2}/files/b.jpg", content=b"x" * 1000)
        assert r.status_code == 413 and "over the limit of" in r.json()["error"]


def test_one_jobs_results_are_not_served_with_another_id(analyzer, patient, tmp_path):
    _, client = make_client(analyzer, tmp_path)
    with client:
        job_a = upload_folder(client, patient)
        assert wait(client, job_a)["state"] == "done"
        job_b = client.post("/api/jobs").json()["job"]
        assert len(job_a) >= 32 and len(job_b) >= 32 and job_a != job_b
        assert re.fullmatch(r"[A-Za-z0-9_-]+", job_a)
        b = client.get(f"/api/jobs/{job_b}").json()
        assert b["state"] == "receiving" and "result" not in b
        assert client.get(f"/api/jobs/{job_b}/cells.csv").status_code == 409
        for other in (job_a[:-1], job_a[:-1] + ("A" if job_a[-1] != "A" else "B"), "x" * len(job_a), ""):
            for url in (f"/api/jobs/{other}", f"/api/jobs/{other}/cells.csv", f"/api/jobs/{other}/summary.csv"):
                r = client.get(url)
                assert r.status_code in (404, 405) and "basophil" not in r.text, (url, r.text)
        assert client.get("/api/jobs").status_code in (404, 405)  # jobs are never listed
        assert client.delete(f"/api/jobs/{job_a}").status_code == 200
        assert client.get(f"/api/jobs/{job_a}").status_code == 404


def test_concurrent_uploads_do_not_mix(analyzer, patient, tmp_path):
    _, client = make_client(analyzer, tmp_path)
    groups = {"first": ("BNE_", "LY_", "SNE_"), "second": ("MO_", "ERB_")}
    statuses = {}

    def run(name):
        prefixes = groups[name]
        job = upload_folder(client, patient, only=lambda p: p.name.startswith(prefixes))
        statuses[name] = wait(client, job)

    with client:
        threads = [threading.Thread(target=run, args=(n,)) for n in groups]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    labels = serve_cohort.fixture_labels()
    for name, prefixes in groups.items():
        status = statuses[name]
        assert status["state"] == "done"
        expected = pd.Series([labels[f] for f in labels if f.startswith(prefixes)]).value_counts().to_dict()
        assert {k: v for k, v in counts(status).items() if v} == expected, name
        assert status["result"]["bad_files"] == []
    assert statuses["first"]["job"] != statuses["second"]["job"]


def test_start_without_images_and_upload_after_start_are_refused(analyzer, patient, tmp_path):
    _, client = make_client(analyzer, tmp_path)
    with client:
        job = client.post("/api/jobs").json()["job"]
        r = client.post(f"/api/jobs/{job}/start")
        assert r.status_code == 400 and "no images" in r.json()["error"]
        job = upload_folder(client, patient, only=lambda p: p.name.startswith("MO_"))
        wait(client, job)
        r = client.put(f"/api/jobs/{job}/files/late.jpg", content=b"x")
        assert r.status_code == 409 and "start a new one" in r.json()["error"]


def test_page_and_headers_keep_everything_local(analyzer, tmp_path):
    _, client = make_client(analyzer, tmp_path)
    with client:
        page = client.get("/")
        assert page.status_code == 200 and 'webkitdirectory' in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "http" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        for name in ("index.html", "app.js", "style.css"):
            text = (STATIC / name).read_text()
            urls = re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)
            assert urls in ([], ["http://www.w3.org/2000/svg"]), (name, urls)  # an SVG namespace, never fetched
            assert client.get(f"/static/{name}").status_code == 200 if name != "index.html" else True
        assert client.get("/static/../serve/app.py").status_code == 404
        info = client.get("/api/info").json()
        assert info["classifier"]["model_id"] == analyzer.classifier.model_id
        assert info["limits"]["max_files"] == 100_000
        assert client.get("/", headers={"host": "attacker.example"}).status_code == 400  # DNS rebinding


def test_results_folder_without_a_model_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="patient model not found: .*patient_model.pkl"):
        ModelFiles.from_results(tmp_path)
