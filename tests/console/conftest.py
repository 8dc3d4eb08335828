"""What the console tier's modules share: one Chromium per module."""
from __future__ import annotations

import shutil

import pytest

from playwright.sync_api import sync_playwright


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium")
        yield chromium
        chromium.close()
