"""Shared pytest fixtures."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")  # Debian's headless Chromium: apt-get install -y chromium


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run headless Chromium: ``chromium(*args, timeout=60)`` returns the completed process.

    Adds the flags for a root, offline, GPU-less machine and a fresh profile per call.
    Skips the test when /usr/bin/chromium is not installed.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        profile = tmp_path_factory.mktemp("chromium-profile")
        try:
            return subprocess.run(
                [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
                capture_output=True, text=True, timeout=timeout, check=False)
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    return run
