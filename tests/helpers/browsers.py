"""Finding Chromium for the browser tests: in CI (CI=true) a missing browser is installed with apt-get and
the test fails if that is impossible; elsewhere it is skipped with the reason (as
tests/report/test_report_chromium.py and test_serve_chromium.py do with their own copies)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def chromium_or_skip(what: str) -> str:
    """The Chromium executable, or skip (fail in CI) naming ``what`` test was not run."""
    browser = find_browser()
    if browser is None and os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
            subprocess.run("apt-get update && apt-get install -y chromium", shell=True, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
        browser = find_browser()
        if browser is None:
            pytest.fail(f"{what} browser test NOT RUN: no Chromium, and `apt-get install -y chromium` did not "
                        "provide one (CI must run it: run CI as root on a Debian/Ubuntu image)", pytrace=False)
    if browser is None:
        pytest.skip(f"{what} browser test NOT RUN: none of {', '.join(BROWSERS)} is installed "
                    "(apt-get install chromium); CI runs it")
    return browser
