"""Progress and log output of workflow jobs.

Stage functions take a ``progress`` callable and know nothing of Snakemake; a workflow script builds one
with :func:`job_progress` so each message lands in the rule's log file and on the terminal (stderr), where
a user watching ``make demo`` sees it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable


def job_progress(log_path: str | os.PathLike | None, prefix: str) -> Callable[[str], None]:
    """Return a function that writes time-stamped ``prefix: message`` lines to the log and to stderr."""
    if log_path:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        # Truncate: a rerun's log should hold that run only.
        open(log_path, "w").close()

    def progress(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {prefix}: {message}"
        print(line, file=sys.stderr, flush=True)
        if log_path:
            with open(log_path, "a") as handle:
                handle.write(line + "\n")

    return progress
