"""Headless Chromium for the page tests: Debian's ``chromium`` driven by Playwright.
Nothing here downloads a browser; without one, the tests skip and say why."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("FAIRSQUEEZE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-gpu"]


def screenshot_dir(default: Path) -> Path:
    """Where screenshots go: ``$FAIRSQUEEZE_SCREENSHOTS`` if set, else the test's folder."""
    folder = Path(os.environ.get("FAIRSQUEEZE_SCREENSHOTS", default))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def chromium_page(width: int = 1500, height: int = 1400):
    """A page whose console errors and uncaught exceptions are collected in ``page.errors``."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM} (install Debian's chromium package)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.errors = []
            page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            yield page
        finally:
            browser.close()
