"""Test helpers: shared-asset lookup that skips locally and fails in CI (POSTER_FER_REQUIRE_SHARED=1)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from poster_fer.assets import ENV_VAR, shared_path

# The library's default is ../shared beside the working directory; the suite pins it to ../shared beside this
# checkout so it runs from any directory (and CLI subprocesses inherit it).
os.environ.setdefault(ENV_VAR, str(Path(__file__).resolve().parents[2] / "shared"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _require() -> bool:
    return os.environ.get("POSTER_FER_REQUIRE_SHARED", "") not in ("", "0", "false", "False")


# Why each kind of development asset cannot ship in the package (a newcomer's skip says it): where the package's
# own copy is the same thing (YuNet, a one-face portrait) the tests use that instead.
WHY_NOT_SHIPPED = {
    "data": "FER2013 / FER+ (Kaggle's and Microsoft's terms: not redistributable)",
    "parity": "official-parity fixtures (from the authors' code and checkpoints)",
    "weights": "third-party pretrained weights (their licences do not allow shipping)",
    "samples": "a second person's photo (checks that need two different faces)",
}


def need_shared(*parts: str) -> Path:
    """Return a shared asset's path; skip when absent (saying why it cannot ship), or fail when CI requires the
    assets."""
    path = shared_path(*parts)
    if not path.exists():
        why = WHY_NOT_SHIPPED.get(parts[0], "a development asset")
        msg = f"shared asset missing: {path} (set POSTER_FER_SHARED): {why}"
        if _require():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def shared():
    """Fixture form of :func:`need_shared`."""
    return need_shared


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny models: they gain nothing from threads, and on a busy 2-core machine
    2-thread OpenMP regions wait on the other core for every op (a tiny forward pass goes from ~0.02 s to
    seconds). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``; the setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def browser_paths() -> tuple[str, str]:
    """Paths of Chromium and its WebDriver for the browser tests; skip when absent, or fail when CI requires them
    (.ci/run installs Debian's chromium and chromium-driver)."""
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing = "the selenium package (pip install -e '.[dev]')"
    else:
        missing = None if chromium and driver else "chromium and chromium-driver (apt-get install chromium " \
            "chromium-driver)"
    if missing:
        if _require():
            pytest.fail(f"browser tests need {missing}")
        pytest.skip(f"browser tests need {missing}")
    return chromium, driver


def headless_chromium(profile: Path, *extra_args: str, logging: bool = False, page_load_timeout: float = 60,
                      script_timeout: float | None = None) -> Any:
    """A headless Chromium WebDriver for the browser tests, offline (no Selenium Manager lookups, no background
    networking) with its own profile folder; ``extra_args`` add switches (a fake camera, autoplay), ``logging``
    records the network (Chrome's performance log). The caller quits it. Skips (or fails on CI) without a browser."""
    chromium, chromedriver = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={profile}", *extra_args):
        opts.add_argument(arg)
    if logging:
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for browsers or drivers online
        driver = webdriver.Chrome(options=opts, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(page_load_timeout)
    if script_timeout is not None:
        driver.set_script_timeout(script_timeout)
    return driver
