"""A headless Chromium for tests (Debian's ``chromium`` and ``chromium-driver`` through selenium); skips when absent."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from typing import Iterator

import pytest

#: Flags that keep Chromium off every network and away from the user's profile.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required", "--window-size=1400,1600",
)


@contextlib.contextmanager
def headless_chromium() -> Iterator[object]:
    """A selenium WebDriver on a fresh headless Chromium profile; skips the test with the reason when one cannot start."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_exe = shutil.which("chromedriver")
    if browser is None or driver_exe is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver packages (.ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="latentdub-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        try:
            driver = webdriver.Chrome(service=Service(driver_exe), options=options)
        except Exception as exc:  # a browser that cannot start here is a missing tool, not a failed test
            pytest.skip(f"headless chromium did not start ({type(exc).__name__}: {str(exc).splitlines()[0]})")
        try:
            yield driver
        finally:
            driver.quit()
