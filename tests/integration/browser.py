"""A real headless Chromium for the browser tests: Debian's ``chromium`` driven through its
``chromium-driver`` (Selenium WebDriver), one browser per test session.

``.ci/run`` installs both packages; without a chromium binary the browser tests skip with the
reason. The fixtures are registered in ``conftest.py``; screenshots go to ``screenshots_dir``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
DRIVERS = ("chromedriver", "chromium-driver")
WINDOW = (1280, 1000)


def find_binary(env: str, names: tuple[str, ...]) -> str | None:
    """``$env`` if set, else the first of ``names`` on PATH (Debian: /usr/bin/chromium and
    /usr/bin/chromedriver)."""
    path = os.environ.get(env)
    if path:
        return path if os.access(path, os.X_OK) else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium WebDriver, started for the session and quit at its end."""
    chromium = find_binary("CHROMIUM_BIN", BROWSERS)
    if chromium is None:
        pytest.skip("no chromium binary found (apt-get install chromium chromium-driver)")
    driver_path = find_binary("CHROMEDRIVER_BIN", DRIVERS)
    if driver_path is None:
        pytest.skip("no chromedriver found next to chromium (apt-get install chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--mute-audio",
        "--autoplay-policy=no-user-gesture-required",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def screenshots_dir(tmp_path_factory) -> Path:
    """Where the browser tests save a screenshot of each state (``$GENMEDIA_SCREENSHOTS`` or a
    session temp dir)."""
    path = Path(os.environ.get("GENMEDIA_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def screenshot(browser, screenshots_dir) -> Callable[[str], Path]:
    """``screenshot(name)`` saves the page as ``<screenshots_dir>/<name>.png``."""

    def take(name: str) -> Path:
        path = screenshots_dir / f"{name}.png"
        browser.save_screenshot(str(path))
        return path

    return take
