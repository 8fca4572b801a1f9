"""Real-browser tests: headless Chromium (harness/browser.py) on the real server fixture."""
from __future__ import annotations

import pytest

from browser import Browser


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the run; each test opens the app afresh with `page`."""
    with Browser.start() as b:
        yield b


@pytest.fixture
def page(browser, server):
    """ComfyUI's frontend, loaded and ready, on the server fixture; its console recorded from here."""
    browser.open_app(server.url)
    yield browser
    browser.close_dialogs()
