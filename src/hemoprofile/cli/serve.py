"""``hemoprofile serve``: the upload-and-predict page of a trained cohort (:mod:`hemoprofile.serve`).
The parser imports nothing heavy; FastAPI, uvicorn and torch load when the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  hemoprofile serve --results results_collections
      open http://127.0.0.1:8000 in a browser on the same machine
  hemoprofile serve --results results_collections --port 8080 --max-upload-mb 500 --max-files 20000
  hemoprofile serve --results results_collections --host 0.0.0.0 --allowed-host lab.example.org
      only behind a reverse proxy that authenticates users (README: "Upload and predict")
"""


def add_serve_parser(subparsers) -> None:
    """Add ``hemoprofile serve --results DIR`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "serve", help="start the local upload-and-predict page of a trained cohort",
        description="Start a web page where a user uploads one patient's single-cell images (a folder or a "
                    "zip) and gets the cell-type counts, a gallery per type and the patient model's "
                    "prediction with its cross-validated performance. Binds to 127.0.0.1 (this machine "
                    "only) unless --host is given.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, required=True, metavar="DIR",
                   help="the trained cohort's results folder (models/patient_model.pkl, "
                        "cohort/patient_model/metrics.json)")
    p.add_argument("--classifier", type=Path, default=None, metavar="MODEL",
                   help="cell classifier the cohort was classified with (default: the bundled pbc8 model)")
    p.add_argument("--patient-model", type=Path, default=None, metavar="PKL",
                   help="patient model (default: DIR/models/patient_model.pkl)")
    p.add_argument("--metrics", type=Path, default=None, metavar="JSON",
                   help="the patient model's metrics (default: DIR/cohort/patient_model/metrics.json)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="Host header value to accept (repeatable); default: loopback names when bound to "
                        "127.0.0.1, any otherwise")
    p.add_argument("--max-upload-mb", type=float, default=2048, help="largest single upload (file or zip), MiB (default 2048)")
    p.add_argument("--max-unpacked-mb", type=float, default=4096,
                   help="largest patient upload once unpacked, MiB (default 4096)")
    p.add_argument("--max-files", type=int, default=100_000, help="most files per patient (default 100000)")
    p.add_argument("--max-jobs", type=int, default=16, help="jobs held at once (default 16)")
    p.add_argument("--keep-minutes", type=float, default=60, help="results are forgotten after this (default 60)")
    p.add_argument("--gallery", type=int, default=24, help="thumbnails per predicted type (default 24)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the classifier (default: torch's)")
    p.set_defaults(func=serve_command)


def serve_command(args) -> int:
    """Run ``hemoprofile serve`` until interrupted."""
    from hemoprofile.serve.server import build_server

    server = build_server(
        results=args.results, classifier=args.classifier, patient_model=args.patient_model, metrics=args.metrics,
        host=args.host, port=args.port, allowed_hosts=args.allowed_host,
        max_upload_mb=args.max_upload_mb, max_unpacked_mb=args.max_unpacked_mb, max_files=args.max_files,
        max_jobs=args.max_jobs, keep_minutes=args.keep_minutes, gallery=args.gallery,
        device=args.device, threads=args.threads, progress=lambda m: print(m, flush=True))
    server.run()
    return 0
