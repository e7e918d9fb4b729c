"""The web app: one self-contained page and a small JSON API over :class:`~hemoprofile.serve.jobs.JobStore`.

API (every job route needs the job's id; an unknown id is a 404 whatever the reason)::

    GET    /                          the page (static/index.html, app.js, style.css; nothing external)
    GET    /api/info                  the served models, the cross-validated performance and the limits
    POST   /api/jobs                  a new job -> {"job": id}
    PUT    /api/jobs/{id}/files/{relative path}   one image, the raw bytes as the body (folder upload)
    PUT    /api/jobs/{id}/zip         a zip of images, the raw bytes as the body (one per job)
    POST   /api/jobs/{id}/start       classify and predict (runs in the background)
    GET    /api/jobs/{id}             state, progress and, when done, the result
    GET    /api/jobs/{id}/cells.csv   one row per classified image (path, predicted type, probabilities)
    GET    /api/jobs/{id}/summary.csv counts, fractions and the prediction
    DELETE /api/jobs/{id}             forget the job and its result

Bodies are streamed straight into the job's folder with a byte count, so an upload over the limit stops
at the limit (HTTP 413 with the limit in words) and leaves nothing behind. Responses carry a strict
Content-Security-Policy (``'self'`` only, images also as ``data:``): the page can load nothing from
elsewhere and send nothing elsewhere.
"""

from __future__ import annotations

import csv
import io
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from hemoprofile.serve.jobs import DONE, RECEIVING, Job, JobStore
from hemoprofile.serve.uploads import (
    UploadRejected,
    mebibytes,
    upload_target,
    write_stream,
)

STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def _static(name: str) -> bytes:
    return resources.files("hemoprofile.serve").joinpath("static", name).read_bytes()


def create_app(store: JobStore, info: dict | None = None, allowed_hosts: tuple[str, ...] | None = None) -> FastAPI:
    """The FastAPI app serving ``store``'s jobs.

    Parameters
    ----------
    store : the job store (its analyzer classifies and predicts).
    info : extra facts for ``/api/info`` (default: the analyzer's ``describe()`` when it has one).
    allowed_hosts : Host header values accepted (without port); None accepts any. Serving on the loopback
        interface, the command line passes :data:`LOOPBACK_HOSTS`, so a web page elsewhere cannot reach the
        server through DNS rebinding.
    """
    @asynccontextmanager
    async def lifespan(app):
        yield
        store.close()

    app = FastAPI(title="hemoprofile serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    details = dict(info or (store.analyzer.describe() if hasattr(store.analyzer, "describe") else {}))

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = host_name(request.headers.get("host") or "")
        if allowed_hosts is not None and host not in allowed_hosts:
            response = PlainTextResponse(f"host {host!r} not allowed (start with --host/--allowed-host to serve it)", 400)
        else:
            response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(UploadRejected)
    async def rejected(request: Request, err: UploadRejected):
        return JSONResponse({"error": str(err)}, status_code=err.status)

    def job_or_404(job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise UploadRejected("no such job (unknown, finished long ago, or deleted)", 404)
        return job

    def receiving(job: Job) -> None:
        if job.state != RECEIVING:
            raise UploadRejected(f"job already {job.state}: start a new one to upload more images", 409)

    def body_limit(request: Request, name: str) -> int:
        limit = store.limits.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise UploadRejected(f"{name}: {mebibytes(int(declared))}, over the upload limit of {mebibytes(limit)}", 413)
        return limit

    @app.get("/")
    async def page():
        return Response(_static("index.html"), media_type=STATIC["index.html"])

    @app.get("/static/{name}")
    async def static(name: str):
        if name not in STATIC:
            raise UploadRejected("not found", 404)
        return Response(_static(name), media_type=STATIC[name])

    @app.get("/api/info")
    async def api_info():
        performance = None
        analyzer = store.analyzer
        if hasattr(analyzer, "metrics"):
            from hemoprofile.serve.analysis import performance_summary

            performance = performance_summary(analyzer.metrics)
        limits = store.limits
        return {**details, "performance": performance,
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_unpacked_bytes": limits.max_unpacked_bytes,
                           "max_files": limits.max_files, "text": limits.describe()}}

    @app.post("/api/jobs")
    async def new_job():
        job = store.create()
        return {"job": job.id}

    @app.put("/api/jobs/{job_id}/files/{path:path}")
    async def put_file(job_id: str, path: str, request: Request):
        job = job_or_404(job_id)
        receiving(job)
        limit = body_limit(request, path)
        target = upload_target(job.upload, path)
        job.budget.add_file(path)
        try:
            await write_stream(request.stream(), target, limit, path, job.budget)
        except BaseException:
            job.budget.files -= 1
            raise
        return {"files_received": job.budget.files, "bytes_received": job.budget.bytes}

    @app.put("/api/jobs/{job_id}/zip")
    async def put_zip(job_id: str, request: Request):
        job = job_or_404(job_id)
        receiving(job)
        if job.zips:
            raise UploadRejected("one zip per patient: this job already has one (start a new job for another patient)", 409)
        limit = body_limit(request, "zip")
        target = job.folder / "upload.zip"
        await write_stream(request.stream(), target, limit, "zip")
        job.zips.append(target)
        return {"zips_received": len(job.zips)}

    @app.post("/api/jobs/{job_id}/start")
    async def start(job_id: str):
        job = job_or_404(job_id)
        store.start(job)
        return job.status()

    @app.get("/api/jobs/{job_id}")
    async def status(job_id: str):
        return job_or_404(job_id).status()

    def finished(job_id: str) -> Job:
        job = job_or_404(job_id)
        if job.state != DONE:
            raise UploadRejected(f"job {job.state}: no result yet", 409)
        return job

    def csv_response(text: str, name: str) -> Response:
        return Response(text, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/api/jobs/{job_id}/cells.csv")
    async def cells_csv(job_id: str):
        return csv_response(finished(job_id).cells_csv or "", "hemoprofile_cells.csv")

    @app.get("/api/jobs/{job_id}/summary.csv")
    async def summary_csv(job_id: str):
        return csv_response(summary_table(finished(job_id).result), "hemoprofile_summary.csv")

    @app.delete("/api/jobs/{job_id}")
    async def delete(job_id: str):
        if not store.delete(job_id):
            raise UploadRejected("no such job (unknown, finished long ago, or deleted)", 404)
        return {"deleted": True}

    return app


def host_name(header: str) -> str:
    """The host of a Host header, without the port.

    Example
    -------
    >>> host_name("127.0.0.1:8000"), host_name("[::1]:8000"), host_name("lab.example.org")
    ('127.0.0.1', '[::1]', 'lab.example.org')
    """
    if header.startswith("["):
        return header.split("]")[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def summary_table(result: dict) -> str:
    """One upload's result as CSV rows ``section, name, value``: counts, fractions, probabilities, files
    that could not be used."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["section", "name", "value"])
    writer.writerow(["cells", "classified", result["n_cells"]])
    writer.writerow(["cells", "unusable_files", len(result["bad_files"])])
    for row in result["composition"]:
        writer.writerow(["count", row["type"], row["count"]])
    for row in result["composition"]:
        writer.writerow(["fraction", row["type"], f"{row['fraction']:.6f}"])
    prediction = result.get("prediction")
    if prediction:
        writer.writerow(["prediction", "predicted_state", prediction["predicted_state"]])
        writer.writerow(["prediction", "p_disease", f"{prediction['p_disease']:.6f}"])
        for s in prediction["states"]:
            writer.writerow(["prediction", f"p_state_{s['state']}", f"{s['p']:.6f}"])
        for s in prediction["subtypes"]:
            writer.writerow(["prediction", f"p_{s['subtype']}_given_disease", f"{s['p_given_disease']:.6f}"])
    for bad in result["bad_files"]:
        writer.writerow(["unusable_file", bad["path"], bad["problem"]])
    return buffer.getvalue()
