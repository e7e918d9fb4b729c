"""Building and running the server: models loaded, job store, app, uvicorn on the chosen interface."""

from __future__ import annotations

import atexit
from collections.abc import Callable, Sequence
from pathlib import Path

from hemoprofile.serve.uploads import UploadLimits

MIB = 1024**2


def allowed_host_names(host: str, given: Sequence[str] | None) -> tuple[str, ...] | None:
    """The Host header values to accept: ``given``; else the loopback names when bound to a loopback
    address; else any (None), since a proxy in front decides who gets through.

    Example
    -------
    >>> allowed_host_names("127.0.0.1", None)
    ('127.0.0.1', 'localhost', '::1', '[::1]')
    >>> allowed_host_names("0.0.0.0", None) is None
    True
    """
    from hemoprofile.serve.app import LOOPBACK_HOSTS

    if given:
        return tuple(given)
    return LOOPBACK_HOSTS if host in LOOPBACK_HOSTS else None


def build_server(results: Path, *, classifier: Path | None = None, patient_model: Path | None = None,
                 metrics: Path | None = None, host: str = "127.0.0.1", port: int = 8000,
                 allowed_hosts: Sequence[str] | None = None, max_upload_mb: float = 2048,
                 max_unpacked_mb: float = 4096, max_files: int = 100_000, max_jobs: int = 16,
                 keep_minutes: float = 60, gallery: int = 24, device: str = "auto", threads: int | None = None,
                 progress: Callable[[str], object] = print):
    """A ready-to-run :class:`uvicorn.Server` serving the cohort in ``results`` (models loaded)."""
    import uvicorn

    from hemoprofile.serve.analysis import Analyzer, ModelFiles
    from hemoprofile.serve.app import create_app
    from hemoprofile.serve.jobs import JobStore

    if min(max_upload_mb, max_unpacked_mb) <= 0 or max_files < 1 or max_jobs < 1:
        raise ValueError("upload limits, --max-files and --max-jobs must be positive")
    files = ModelFiles.from_results(results, classifier, patient_model, metrics)
    analyzer = Analyzer(files, device=device, threads=threads, gallery_per_type=gallery)
    limits = UploadLimits(max_upload_bytes=int(max_upload_mb * MIB), max_unpacked_bytes=int(max_unpacked_mb * MIB),
                          max_files=int(max_files))
    store = JobStore(analyzer, limits, max_jobs=max_jobs, keep_seconds=60 * keep_minutes)
    atexit.register(store.close)  # the job folders go even if the lifespan's shutdown never runs
    app = create_app(store, allowed_hosts=allowed_host_names(host, allowed_hosts))
    progress(f"hemoprofile serve: classifier {files.classifier} (id {analyzer.classifier.model_id}), patient model "
             f"{files.patient_model}, {analyzer.device.description}; uploads in {store.root}")
    progress(f"hemoprofile serve: open http://{'[' + host + ']' if ':' in host else host}:{port}/  (Ctrl+C stops)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        progress("hemoprofile serve: WARNING: listening beyond this machine; put an authenticating reverse proxy "
                 "in front (README: Upload and predict)")
    config = uvicorn.Config(app, host=host, port=int(port), log_level="warning", proxy_headers=False,
                            server_header=False, date_header=False, timeout_graceful_shutdown=5)
    return uvicorn.Server(config)
