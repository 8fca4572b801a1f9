"""Real-browser tests: headless Chromium (tests/support/browser.py) on real ComfyUI servers.

Every browser test runs once per frontend (fixture `frontend`, ids below): the frontend package
the host pins (1.32.9, served by the suite's `server`) and the newest one (hostenv.NEWEST_FRONTEND,
fetched by host/install_frontend.sh and served by a second server with --front-end-root), the latter
with its Vue node renderer ("Nodes 2.0", setting Comfy.VueNodes.Enabled) off and on. pytest groups
the tests by frontend; the two 1.58 variants share one server, so a run starts two servers in all.
"""
from __future__ import annotations

from dataclasses import dataclass

import hostenv
import pytest

from support.browser import Browser


@dataclass(frozen=True)
class Frontend:
    """One frontend as the tests meet it: `name` (the test id), the package `version`, whether the Vue
    node renderer is on, and the `server` that serves it (queue and read results there)."""

    name: str
    version: str
    vue: bool
    server: object  # host/comfy_server.py ComfyServer

    @property
    def settings(self) -> dict:
        """The user settings every visit starts with (Browser.open_app)."""
        return {"Comfy.VueNodes.Enabled": self.vue} if self.version != PINNED else {}


PINNED = "1.32.9"  # host/constraints.txt: comfyui-frontend-package
FRONTENDS = {  # id -> (package version, Vue node renderer on)
    "1.32": (PINNED, False),
    "1.58": (hostenv.NEWEST_FRONTEND, False),
    "1.58-vue": (hostenv.NEWEST_FRONTEND, True),
}


@pytest.fixture(scope="session")
def newest_frontend_server(tmp_path_factory):
    """A second real ComfyUI that serves the newest frontend (--front-end-root), for the run."""
    from conftest import start_server

    root = hostenv.frontend_root()
    if not (root / "index.html").is_file():  # fail, never skip: the frontend is part of what is tested
        pytest.fail(f"no ComfyUI frontend {hostenv.NEWEST_FRONTEND} at {root}: run host/install_frontend.sh")
    srv = start_server(tmp_path_factory.mktemp("comfy-newest-frontend"), front_end_root=root)
    yield srv
    srv.stop()


@pytest.fixture(scope="session", params=list(FRONTENDS))
def frontend(request) -> Frontend:
    """The frontend this test runs on (one of FRONTENDS; see the module docstring)."""
    version, vue = FRONTENDS[request.param]
    server = request.getfixturevalue("server" if version == PINNED else "newest_frontend_server")
    return Frontend(request.param, version, vue, server)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the run; each test opens the app afresh with `page`."""
    with Browser.start() as b:
        yield b


@pytest.fixture
def page(browser, frontend):
    """ComfyUI's frontend `frontend`, ready, with no dialog or alert open; its console recorded from
    here. The page is reloaded only when the frontend changes or a notice stays (Browser.reuse_app)."""
    browser.reuse_app(frontend.server.url, frontend.settings)
    assert browser.evaluate("window.__COMFYUI_FRONTEND_VERSION__") == frontend.version
    yield browser
    browser.close_dialogs()
