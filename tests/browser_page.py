"""The headless-Chromium page of the browser tests (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def chromium_page(viewport: dict) -> Iterator:
    """A fixture body: yields a Playwright page of `viewport` (skips without chromium or Playwright); its
    JavaScript errors are collected in `page.errors` and fail the test at the end."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        pg = browser.new_context(viewport=viewport).new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.errors = errors
        yield pg
        browser.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
