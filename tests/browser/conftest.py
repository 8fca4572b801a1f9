"""Real-browser tests: headless Chromium (harness/browser.py) on real ComfyUI servers.

Every browser test runs once per frontend (fixture `frontend`, ids below): the frontend package
the host pins (1.32.9) and the newest one (hostenv.NEWEST_FRONTEND, fetched by host/install_frontend.sh
and served with --front-end-root), the latter with its Vue node renderer ("Nodes 2.0", setting
Comfy.VueNodes.Enabled) off and on. pytest groups the tests by frontend; the two 1.58 variants share one
server, so the browser tests start two servers of their own and one Chromium, all ended as soon as the
last browser test is done (pytest_runtest_teardown below), so that nothing of theirs runs beside the
rest of the suite.
Their servers run torch on one thread: the browser shares the two cores, and torch's threads spin
waiting for a core that Chromium holds (measured: the embedded U-Net 15 ms a call on one thread,
110-170 ms on two beside a busy process; the Sampler Lab workflow 552 s on two threads, 48 s on one;
tests/browser 7 min 22 s in all).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hostenv
import pytest

from browser import Browser


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


HERE = Path(__file__).resolve().parent
_finish = []  # what ends with the last browser test: their servers' and Chromium's stop (each safe to call twice)


@pytest.hookimpl(trylast=True)  # after pytest's own teardown of the test's fixtures (the page's uses Chromium)
def pytest_runtest_teardown(item, nextitem):
    """After the last browser test of the run, stop their servers and Chromium (the session fixtures' own
    teardown at the end of the run then finds them stopped)."""
    items = item.session.items
    rest = items[items.index(nextitem):] if nextitem is not None else []
    if not any(HERE in Path(i.path).parents for i in rest):
        while _finish:
            _finish.pop()()


def browser_server(tmp_path_factory, name: str, **options):
    from conftest import start_server

    srv = start_server(tmp_path_factory.mktemp(name), threads=1, **options)
    _finish.append(srv.stop)
    return srv


@pytest.fixture(scope="session")
def pinned_frontend_server(tmp_path_factory):
    """A real ComfyUI that serves the pinned frontend, for the browser tests."""
    srv = browser_server(tmp_path_factory, "comfy-pinned-frontend")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def newest_frontend_server(tmp_path_factory):
    """A second real ComfyUI that serves the newest frontend (--front-end-root), for the browser tests."""
    root = hostenv.frontend_root()
    if not (root / "index.html").is_file():  # fail, never skip: the frontend is part of what is tested
        pytest.fail(f"no ComfyUI frontend {hostenv.NEWEST_FRONTEND} at {root}: run host/install_frontend.sh")
    srv = browser_server(tmp_path_factory, "comfy-newest-frontend", front_end_root=root)
    yield srv
    srv.stop()


@pytest.fixture(scope="session", params=list(FRONTENDS))
def frontend(request) -> Frontend:
    """The frontend this test runs on (one of FRONTENDS; see the module docstring)."""
    version, vue = FRONTENDS[request.param]
    server = request.getfixturevalue("pinned_frontend_server" if version == PINNED else "newest_frontend_server")
    return Frontend(request.param, version, vue, server)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the run; each test opens the app afresh with `page`."""
    with Browser.start() as b:
        _finish.append(b.close)
        yield b


@pytest.fixture
def page(browser, frontend):
    """ComfyUI's frontend `frontend`, ready, with no dialog or alert open; its console recorded from
    here. The page is reloaded only when the frontend changes or a notice stays (Browser.reuse_app)."""
    browser.reuse_app(frontend.server.url, frontend.settings)
    # what web/anatomy.js records (previews received, views sized) starts empty for each test
    browser.evaluate("window.DiffusionAnatomy && (window.DiffusionAnatomy.previewsWhile = {}, window.DiffusionAnatomy.fitted = {}); true")
    assert browser.evaluate("window.__COMFYUI_FRONTEND_VERSION__") == frontend.version
    yield browser
    browser.close_dialogs()
