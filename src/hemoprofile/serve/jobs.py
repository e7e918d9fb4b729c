"""Jobs: one per uploaded patient, each with an unguessable id, its own temporary folder and its own result.

A job's id (:func:`secrets.token_urlsafe`, 192 random bits) is the only key to its files and result: the
server lists no jobs, and an unknown id gets the same answer as an expired one. The uploaded images live
in ``<root>/<random folder>/upload`` and are deleted as soon as the cells are classified (or the job
fails); the result (counts, prediction, gallery thumbnails, the per-cell table) stays in memory until the
job is deleted, expires (``keep_seconds``) or the server stops, which removes ``root`` altogether.

Jobs run one at a time on a worker thread, in the order they were started (the classifier is shared;
one job at a time keeps memory bounded and results apart).
"""

from __future__ import annotations

import logging
import queue
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hemoprofile.serve.uploads import (
    JobBudget,
    UploadLimits,
    UploadRejected,
    extract_zip,
    remove_tree,
)

log = logging.getLogger(__name__)

RECEIVING, QUEUED, RUNNING, DONE, FAILED = "receiving", "queued", "running", "done", "failed"


@dataclass
class Job:
    id: str
    folder: Path
    budget: JobBudget
    created: float = field(default_factory=time.time)
    state: str = RECEIVING
    message: str = "waiting for images"
    done: int = 0
    total: int = 0
    result: dict | None = None
    cells_csv: str | None = None
    zips: list[Path] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def upload(self) -> Path:
        return self.folder / "upload"

    def status(self) -> dict:
        out = {"job": self.id, "state": self.state, "message": self.message, "done": self.done, "total": self.total,
               "files_received": self.budget.files, "bytes_received": self.budget.bytes}
        if self.state == DONE:
            out["result"] = self.result
        return out


class JobStore:
    """The server's jobs, their folders under one temporary root, and the worker that runs them.

    Parameters
    ----------
    analyzer : an :class:`~hemoprofile.serve.analysis.Analyzer` (or anything with ``classify`` and
        ``predict``).
    limits : upload limits per job.
    max_jobs : jobs held at once (receiving, waiting, running or finished and not yet expired).
    keep_seconds : a job and its result are forgotten this long after it was created.
    root : parent of the job folders (default: a new temporary folder, removed by :meth:`close`).
    """

    def __init__(self, analyzer, limits: UploadLimits | None = None, max_jobs: int = 16,
                 keep_seconds: float = 3600.0, root: Path | None = None):
        self.analyzer = analyzer
        self.limits = limits or UploadLimits()
        self.max_jobs = int(max_jobs)
        self.keep_seconds = float(keep_seconds)
        self.root = Path(tempfile.mkdtemp(prefix="hemoprofile-serve-", dir=root))
        self.root.chmod(0o700)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._closed = threading.Event()
        self._worker = threading.Thread(target=self._work, name="hemoprofile-serve-worker", daemon=True)
        self._worker.start()

    # --- jobs -------------------------------------------------------------------------------------------

    def create(self) -> Job:
        self.expire()
        with self._lock:
            if self._closed.is_set():
                raise UploadRejected("the server is shutting down", 503)
            if len(self._jobs) >= self.max_jobs:
                raise UploadRejected(f"the server already holds {self.max_jobs} jobs; try again later", 503)
            job_id = secrets.token_urlsafe(24)
            folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.root))
            job = Job(id=job_id, folder=folder, budget=JobBudget(self.limits))
            job.upload.mkdir()
            self._jobs[job_id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None (unknown, expired or deleted: the same answer)."""
        self.expire()
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and secrets.compare_digest(job.id, job_id) else None

    def start(self, job: Job) -> None:
        with job.lock:
            if job.state != RECEIVING:
                raise UploadRejected(f"job already {job.state}", 409)
            if job.budget.files == 0 and not job.zips:
                raise UploadRejected("no images were uploaded")
            job.state, job.message = QUEUED, "waiting for the classifier"
        self._queue.put(job)

    def delete(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        remove_tree(job.folder)
        return True

    def expire(self) -> None:
        now = time.time()
        with self._lock:
            old = [j for j in self._jobs.values() if now - j.created > self.keep_seconds and j.state != RUNNING]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            remove_tree(job.folder)

    def close(self) -> None:
        """Stop the worker and remove every job's folder (the server's shutdown)."""
        self._closed.set()
        self._queue.put(None)
        self._worker.join(timeout=30)
        with self._lock:
            self._jobs.clear()
        remove_tree(self.root)

    # --- the worker ----------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None or self._closed.is_set():
                return
            try:
                self._run(job)
            except Exception as err:  # one failed job must not stop the server
                log.exception("job failed")
                job.state, job.message = FAILED, str(err) if isinstance(err, (UploadRejected, ValueError)) else \
                    f"the analysis failed ({type(err).__name__}: {err})"
            finally:
                remove_tree(job.upload)
                for z in job.zips:
                    z.unlink(missing_ok=True)

    def _run(self, job: Job) -> None:
        job.state, job.message = RUNNING, "unpacking"
        for z in job.zips:
            extract_zip(z, job.upload, job.budget)
            z.unlink(missing_ok=True)
        files = sorted(p for p in job.upload.rglob("*") if p.is_file())
        job.total = len(files)
        if not files:
            raise UploadRejected("the upload holds no files")

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total
            job.message = f"classified {done:,} of {total:,} files"

        job.message = f"classifying {len(files):,} files"
        cells = self.analyzer.classify(job.upload, files, progress, should_stop=self._closed.is_set)
        remove_tree(job.upload)  # the images are not needed once classified
        job.message = "predicting"
        result = self.analyzer.predict(cells)
        job.cells_csv = cells.to_frame().to_csv(index=False)
        job.result = result
        job.state = DONE
        job.message = (f"{result['n_cells']:,} cells classified" +
                       (f"; {len(result['bad_files'])} file(s) could not be used" if result["bad_files"] else ""))
