"""Headless Chromium for the browser tests (label page, floor dashboard): one place for the flags.

``require_browser()`` skips the calling test module when Chromium, chromedriver or selenium is
missing (apt: chromium chromium-driver); ``headless_chrome`` starts a driver with a private profile.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# quiet, offline, reproducible: no sandbox (containers), no GPU, no background traffic
BASE_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def require_browser() -> None:
    """Skip the whole calling module unless a real headless browser can run here."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        have = False
    else:
        have = True
    if not (have and Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(
            "needs chromium, chromedriver (apt: chromium chromium-driver) and selenium", allow_module_level=True
        )


def headless_chrome(profile: Path, window: str, extra: Iterable[str] = (), script_timeout_s: float = 30):
    """A selenium Chrome driver on the system Chromium; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (*BASE_FLAGS, f"--window-size={window}", *extra):
        opts.add_argument(a)
    opts.add_argument(f"--user-data-dir={profile}")
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(30)
    d.set_script_timeout(script_timeout_s)
    return d
