"""Progress and log output of workflow jobs.

Stage functions take a ``progress`` callable and know nothing of Snakemake; a workflow script builds one
with :func:`job_progress` so each message lands in the rule's log file and on the terminal (stderr), where
a user watching ``make demo`` sees it. An error that ends the job is written to the log too, so the log
Snakemake shows for a failed job says what went wrong (e.g. which frame file is truncated).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable


def job_progress(log_path: str | os.PathLike | None, prefix: str) -> Callable[[str], None]:
    """Return a function that writes time-stamped ``prefix: message`` lines to the log and to stderr.

    With a ``log_path``, an exception that ends the process is also appended to the log (an
    ``ERROR`` line with the message, then the traceback) before Python prints it as usual.
    """
    if log_path:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        # Truncate: a rerun's log should hold that run only.
        open(log_path, "w").close()
        _log_uncaught_exceptions(log_path, prefix)

    def progress(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {prefix}: {message}"
        print(line, file=sys.stderr, flush=True)
        if log_path:
            with open(log_path, "a") as handle:
                handle.write(line + "\n")

    return progress


def _log_uncaught_exceptions(log_path: str | os.PathLike, prefix: str) -> None:
    previous = sys.excepthook

    def hook(kind, error, trace):
        try:
            with open(log_path, "a") as handle:
                handle.write(f"[{time.strftime('%H:%M:%S')}] {prefix}: ERROR {kind.__name__}: {error}\n")
                handle.writelines(traceback.format_exception(kind, error, trace))
        finally:
            previous(kind, error, trace)

    sys.excepthook = hook
