"""A headless Debian chromium driven by Selenium through Debian's chromedriver (nothing
downloaded at run time). Without them, tests that need a browser skip and say what to
install."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import pytest

CHROMIUM = os.environ.get("REFSAMPLER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = os.environ.get("REFSAMPLER_CHROMEDRIVER") or shutil.which("chromedriver") or ""
INSTALL = "apt-get install chromium chromium-driver (Debian), for the playground's browser tests"

# Chromium on a closed network: no background connections, no first-run work.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
)


def missing() -> str | None:
    """Why there is no browser here (None: there is one)."""
    if not os.path.exists(CHROMIUM) or not DRIVER or not os.path.exists(DRIVER):
        return f"no chromium/chromedriver: {INSTALL}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'refsampler[test]')"
    return None


def chromium(width: int = 1280, height: int = 1000, *, phone: bool = False) -> Any:
    """A new headless chromium session (the caller quits it). With ``phone``, a mobile
    screen of ``width`` CSS pixels (headless windows are at least 500 wide), where the
    page's viewport meta tag applies."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--window-size={width},{height}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    if phone:
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    return driver


def wait(predicate: Any, timeout: float = 30.0, every: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; return it (fail the test on timeout)."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(every)
