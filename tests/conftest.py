"""Shared test set-up: tests/ on sys.path, so test folders can import the shared helpers here
(helpers.tiny_workflow, helpers.slide_writers)."""

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
