"""A real browser on the real server: headless Chromium driven over the DevTools protocol.

Debian's `chromium` (installed by host/install_browser.sh, which host/test.sh runs) is started
headless with a private profile; this module talks to it over one websocket with the
`websocket-client` package the suite already pins (no WebDriver, no browser download). The API is
small on purpose:

    with Browser.start() as page:
        page.open_app(server.url)                   # ComfyUI's frontend, ready to use
        page.load_workflow(json.loads(path.read_text()))
        page.nodes()                                 # [{id, type, title, size, pos, widgets}, ...]
        page.missing_node_types()                    # node types the frontend could not find
        prompt_id = page.queue()                     # the frontend's own "Queue" button action
        page.wait_for_execution(prompt_id)           # success or BrowserError with the server's text
        page.node_image_urls(node_id)                # /view URLs the node shows
        page.pack_errors()                           # console errors that come from the pack
        page.screenshot(path)                        # PNG of the page
        page.evaluate("js expression")               # anything else (awaits promises)

Console errors are collected all the time (console.error, uncaught exceptions, failed requests);
`pack_errors()` keeps those whose URL lies under /extensions/<pack folder>/ or whose text names
DiffusionAnatomy, so a broken frontend of ComfyUI itself does not fail the pack's tests.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import websocket  # websocket-client, pinned in host/constraints.txt

PACK_FOLDER = "comfyui-diffusion-anatomy"  # as harness/comfy_server.py links the pack
PACK_MARKERS = (f"/extensions/{PACK_FOLDER}/", f"/workflow_templates/{PACK_FOLDER}/", "DiffusionAnatomy", "Diffusion Anatomy")
# The frontend asks api.comfy.org about every node type it sees (registry look-ups); offline, the
# page's security policy blocks those requests and logs an error naming the node type. Not the pack's.
NOT_THE_PACK = ("https://api.comfy.org/",)
# The frontend looks for a node's help page in the user's language first (docs/<node id>/<locale>.md)
# and falls back to docs/<node id>.md, the one the pack ships: that first 404 is the lookup, not a fault.
LOCALISED_HELP = re.compile(rf"/extensions/{PACK_FOLDER}/docs/[^/]+/[a-zA-Z-]+\.md$")
NOTICES = "[role=dialog], [role=alert], [role=status]"  # where the frontend tells the user something (notices())
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# The pack's seven views: each shows its picture in its node, and web/anatomy.js sizes the node to it
VIEWS = frozenset({"DiffusionAnatomyTokens", "DiffusionAnatomyForwardDiffusion", "DiffusionAnatomyDenoisingSteps",
                   "DiffusionAnatomyLatentChannels", "DiffusionAnatomyPlotSigmas", "DiffusionAnatomyCrossAttentionView",
                   "DiffusionAnatomyUNetLevelsView"})


class BrowserError(RuntimeError):
    """The browser or the page failed; the message says what the page reported."""


@dataclass(frozen=True)
class ConsoleMessage:
    level: str  # "error", "warning", "exception", "network"
    text: str
    url: str = ""

    def from_pack(self) -> bool:
        if any(m in self.text for m in NOT_THE_PACK):
            return False
        if self.level == "network" and LOCALISED_HELP.search(self.url):
            return False
        return any(m in self.url or m in self.text for m in PACK_MARKERS)


def find_chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserError("no Chromium found on PATH: run host/install_browser.sh (Debian package `chromium`)")


class Browser:
    """One headless Chromium with one page, driven over the DevTools protocol.

    Time limits are generous (minutes): they only bound a hung page, and a loaded CI machine is slow."""

    def __init__(self, process: subprocess.Popen, profile: Path, ws: websocket.WebSocket):
        self.process, self.profile, self.ws = process, profile, ws
        self._ids = itertools.count(1)
        self.console: list[ConsoleMessage] = []

    # --- life cycle ---
    @classmethod
    def start(cls, width: int = 1600, height: int = 1000, timeout: float = 120.0) -> "Browser":
        profile = Path(tempfile.mkdtemp(prefix="da-chromium-"))
        cmd = [find_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
               "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               "about:blank"]
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(profile / "chromium.log").open("wb"),
                                   start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                log = (profile / "chromium.log").read_text(errors="replace")[-2000:]
                process.kill() if process.poll() is None else None
                raise BrowserError(f"Chromium did not start (exit {process.poll()}):\n{log}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
        ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        browser = cls(process, profile, ws)
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable")
        browser.send("Page.addScriptToEvaluateOnNewDocument", {"source": "localStorage.clear(); sessionStorage.clear();"})
        browser.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return browser

    def close(self) -> None:
        """Stop this browser by its process id and delete its profile."""
        try:
            self.ws.close()
        finally:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(5)
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the protocol ---
    def send(self, method: str, params: dict | None = None, wait: float = 180.0) -> dict:
        """One DevTools command; events that arrive meanwhile are recorded (console, exceptions)."""
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + wait
        while True:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                message = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                raise BrowserError(f"{method}: no answer from Chromium within {wait:.0f} s") from None
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})
            self._record(message)

    def _record(self, event: dict) -> None:
        method, p = event.get("method"), event.get("params", {})
        if method == "Page.javascriptDialogOpening" and p.get("type") == "beforeunload":
            # "leave the page with unsaved changes?": a test navigating away (another frontend, a reload) leaves.
            # Unanswered, it holds the navigation until every later wait times out (one CI run lost 80 min so).
            self.ws.send(json.dumps({"id": next(self._ids), "method": "Page.handleJavaScriptDialog", "params": {"accept": True}}))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            frames = (p.get("stackTrace") or {}).get("callFrames") or [{}]
            self.console.append(ConsoleMessage("error", text, " ".join(f.get("url", "") for f in frames)))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            text = (d.get("exception") or {}).get("description") or d.get("text", "")
            frames = (d.get("stackTrace") or {}).get("callFrames") or []
            urls = " ".join([d.get("url", ""), *(f.get("url", "") for f in frames)])
            self.console.append(ConsoleMessage("exception", text, urls))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.console.append(ConsoleMessage("network" if e.get("source") == "network" else "error",
                                               e.get("text", ""), e.get("url", "")))

    def evaluate(self, expression: str, timeout: float = 180.0):
        """Evaluate JS in the page (promises awaited) and return its JSON value; raise on exceptions."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True,
                                                "timeout": int(timeout * 1000)}, wait=timeout + 5)
        if "exceptionDetails" in result:
            d = result["exceptionDetails"]
            raise BrowserError(f"page error: {(d.get('exception') or {}).get('description') or d.get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 180.0, what: str = ""):
        """Poll a JS expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout:.0f} s waiting for {what or expression}")
            time.sleep(0.2)

    # --- ComfyUI ---
    def open_app(self, url: str, settings: dict | None = None, timeout: float = 300.0) -> None:
        """Load ComfyUI's frontend and wait until the graph canvas and every extension are ready.

        Every visit starts alike: a new user's first visit opens the template browser by itself and
        later visits restore the last graph from the browser's storage, so the server's setting
        Comfy.TutorialCompleted is set first and the page's storage is emptied before its scripts run:
        the page opens on ComfyUI's default graph with no dialog (open_templates() opens the browser
        on purpose). `settings` are further user settings stored on the server before the page loads
        (e.g. {"Comfy.VueNodes.Enabled": True}: the Vue node renderer of frontends 1.27+); with that one
        on, the wait includes the default graph's nodes drawn as DOM elements."""
        # no "unsaved changes" prompt when a test navigates away from a graph it changed (see _record too)
        settings = {"Comfy.TutorialCompleted": True, "Comfy.Window.UnloadConfirmation": False, **(settings or {})}
        req = urllib.request.Request(f"{url}/api/settings", data=json.dumps(settings).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).close()
        self.console.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_for("!!(window.app && app.graph && app.canvas && app.vueAppReady && app.extensionManager"
                      " && document.querySelector('canvas#graph-canvas') && app.graph._nodes.length)",
                      timeout, "ComfyUI's frontend and its default graph")
        if settings.get("Comfy.VueNodes.Enabled"):
            self.wait_for("document.querySelectorAll('[data-node-id]').length > 0", timeout, "the Vue node renderer")

    def reuse_app(self, url: str, settings: dict | None = None) -> None:
        """Start a test on the app as open_app leaves it, reloading only when needed: when another
        server or other settings are wanted, or when a dialog or alert stays open after Escape and
        the frontend's toast service (extensionManager.toast.removeAll) were tried. A reload costs
        5-15 s; tests load their own workflow, so the graph a test leaves behind does not matter."""
        want = (url, json.dumps(settings or {}, sort_keys=True))
        if getattr(self, "_opened", None) == want:
            try:
                self.close_dialogs(timeout=10)
            except BrowserError:
                pass
            self.evaluate("app.extensionManager.toast?.removeAll?.(); true")
            if not self.notices():
                self.console.clear()
                return
        self.open_app(url, settings)
        self._opened = want

    def press(self, key: str, code: str, key_code: int) -> None:
        """One real key press (down and up) on the page."""
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": code, "windowsVirtualKeyCode": key_code})

    def discard(self) -> None:
        """Have the next reuse_app load the app afresh: for a test that leaves the frontend in a state it made on
        purpose (a workflow with a missing node keeps the newest frontend's "issues found" warning coming back)."""
        self._opened = None

    def close_dialogs(self, timeout: float = 60.0) -> None:
        """Close open dialogs as a user would: Escape, else the dialog's close (x) button."""
        deadline = time.monotonic() + timeout
        while self.dialog_texts():
            if time.monotonic() > deadline:
                raise BrowserError(f"dialogs did not close: {self.dialog_texts()}")
            self.press("Escape", "Escape", 27)
            self.evaluate("""[...document.querySelectorAll('[role=dialog] button')].filter(b =>
                b.getAttribute('aria-label') === 'Close' || b.querySelector('.pi-times, [class*="lucide--x"]'))
                .forEach(b => b.click())""")
            time.sleep(0.3)

    def open_templates(self, category: str, timeout: float = 180.0) -> list[dict]:
        """Open the template browser (command Comfy.BrowseTemplates), click the navigation entry
        labelled `category` (a custom pack's entry is labelled with its translation of
        templateWorkflows.category.<folder>, else the folder name), wait until every card's thumbnail
        has been seen loaded (each scrolled into view in turn) and return the cards:
        [{name, title, description, image: {src, width, height}}].
        A thumbnail that fails to load is replaced by the frontend's default-template.png."""
        self.evaluate("app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        self.wait_for("!!document.querySelector('[role=dialog] [data-testid^=template-workflow-]')", timeout,
                      "the template browser")
        clicked = self.evaluate(f"""(() => {{
            const b = [...document.querySelectorAll('[role=dialog] [role=button]')].find(b => b.innerText.trim() === {json.dumps(category)});
            if (b) b.click(); return !!b; }})()""")
        if not clicked:
            raise BrowserError(f"no template category {category!r} among {self.template_categories()}")
        # The dialog gives a card its picture only while the card is in view (and drops it again when it
        # scrolls out), so each card's loaded picture is noted as it is seen and the next unseen card is
        # scrolled into view, until every card has been seen with its picture.
        self.evaluate("window.__daThumbs = {}; true")
        return self.wait_for("""(() => {
            const seen = window.__daThumbs;
            const cards = [...document.querySelectorAll('[role=dialog] [data-testid^=template-workflow-]')];
            for (const c of cards) { const i = c.querySelector('img');
                if (i && i.complete && i.naturalWidth) seen[c.dataset.testid] = {src: i.src, width: i.naturalWidth, height: i.naturalHeight, loaded: true}; }
            const waiting = cards.find(c => !seen[c.dataset.testid]);
            if (waiting) { waiting.scrollIntoView({block: 'center'}); return null; }
            return cards.length ? cards.map(c => ({name: c.dataset.testid.replace('template-workflow-', ''), title: c.querySelector('h3')?.innerText.trim(),
                description: [...c.querySelectorAll('p')].map(p => p.innerText.trim()).join(' '), image: seen[c.dataset.testid]})) : null; })()""",
                             timeout, f"the thumbnails of the {category!r} templates")

    def template_categories(self) -> list[str]:
        """The labels of the template browser's navigation entries (the browser must be open)."""
        return self.evaluate("[...document.querySelectorAll('[role=dialog] [role=button]')].map(b => b.innerText.trim()).filter(Boolean)")

    def load_workflow(self, workflow: dict, name: str = "test") -> None:
        """Open a UI-format workflow as the frontend does for a dropped file (app.loadGraphData), and return
        once the notices about the graph it replaced are gone. 1.58 opens on a default graph whose models
        are not installed ("2 issues found"); the load closes that warning, but its element leaves the page
        only after a closing transition (measured 0.1 s), where a test reading notices() right after the
        load would take it for one about the new graph. A warning the new graph raises is a new element."""
        self.evaluate(f"""(async () => {{
            const old = [...document.querySelectorAll('{NOTICES}')];
            await app.loadGraphData({json.dumps(workflow)}, true, true, {json.dumps(name)});
            const until = performance.now() + 5000;
            while (old.some(e => e.isConnected && e.innerText.trim()) && performance.now() < until)
                await new Promise(r => setTimeout(r, 50));
            return true; }})()""")

    def nodes(self) -> list[dict]:
        """The graph's nodes as the frontend holds them (size is the drawn size, in canvas units)."""
        return self.evaluate("""app.graph._nodes.map(n => ({id: n.id, type: n.type, title: n.title,
            pos: [...n.pos], size: [...n.size], min_size: [...n.computeSize()],
            widgets: (n.widgets || []).map(w => ({name: w.name, type: w.type, value: w.value}))}))""")

    def missing_node_types(self) -> list[str]:
        """Node types of the graph that the frontend does not know (its 'missing nodes' dialog lists them)."""
        return self.evaluate("app.graph._nodes.filter(n => n.has_errors || !LiteGraph.registered_node_types[n.type])"
                             ".map(n => n.type)")

    def dialog_texts(self) -> list[str]:
        """The text of every open dialog (e.g. an error dialog, or 1.32's missing-nodes dialog)."""
        return self.evaluate("[...document.querySelectorAll('[role=dialog]')].map(d => d.innerText)")

    def wait_for_notice(self, text: str, timeout: float = 60.0) -> list[str]:
        """Wait until a dialog or alert says `text`; return the notices."""
        return self.wait_for(f"""(() => {{ const t = [...document.querySelectorAll('{NOTICES}')].map(d => d.innerText.trim()).filter(Boolean);
            return t.some(x => x.includes({json.dumps(text)})) ? t : null; }})()""", timeout, f"a notice saying {text!r}")

    def notices(self) -> list[str]:
        """What the frontend tells the user now: open dialogs and alerts (1.58 reports missing nodes
        in a status toast where 1.32 opens a dialog); empty regions left out."""
        return self.evaluate(f"[...document.querySelectorAll('{NOTICES}')].map(d => d.innerText.trim()).filter(Boolean)")

    def queue(self, timeout: float = 180.0) -> str:
        """Queue the current graph as the Queue button does (app.queuePrompt); return the server's prompt id.

        Raises BrowserError with the frontend's error dialog text when the server refuses the graph."""
        prompt_id = self.evaluate("""(async () => {
            const api = app.api, original = api.queuePrompt;
            let reply = null;
            api.queuePrompt = async (...args) => (reply = await original.apply(api, args));
            try { await app.queuePrompt(0, 1); } finally { api.queuePrompt = original; }
            return reply && reply.prompt_id;
        })()""", timeout)
        if not prompt_id:
            raise BrowserError(f"the frontend did not queue the graph: {self.dialog_texts()}")
        return prompt_id

    def wait_for_execution(self, server, prompt_id: str, timeout: float = 600.0) -> dict:
        """Wait until the server finished the prompt; return its outputs (raise with its error)."""
        return server.wait(prompt_id, timeout)["outputs"]

    def node_image_urls(self, node_id: int, timeout: float = 180.0) -> list[str]:
        """The URLs of the images the node shows once they are loaded: the <img> elements inside the
        node's element under the Vue node renderer, else the canvas node's images (node.imgs). The
        canvas is kept centred on the node and redrawn while waiting: the frontend loads a node's
        images only when it draws the node."""
        return self.wait_for(f"""(() => {{ const n = app.graph.getNodeById({int(node_id)});
            if (!n) return null;
            app.canvas.centerOnNode(n); app.canvas.setDirty(true, true);
            const el = document.querySelector('[data-node-id="{int(node_id)}"]');
            const imgs = el ? [...el.querySelectorAll('img')] : (n.imgs || []);
            return imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.map(i => i.src) : null; }})()""",
                             timeout, f"images in node {node_id}")

    def node_rects(self) -> dict[int, list[float]]:
        """Each node's rectangle as drawn, title bar included, in canvas units: [left, top, right, bottom].
        Under the Vue node renderer it is the node element's box on the page (Vue draws nodes taller than
        the sizes the graph stores), else the canvas node's pos and size plus LiteGraph's title height."""
        return {int(k): v for k, v in self.evaluate("""(() => {
            const c = document.querySelector('canvas#graph-canvas').getBoundingClientRect(), ds = app.canvas.ds;
            const title = LiteGraph.NODE_TITLE_HEIGHT;
            return Object.fromEntries(app.graph._nodes.map(n => {
                const el = document.querySelector(`[data-node-id="${n.id}"]`);
                if (!el) return [n.id, [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]];
                const r = el.getBoundingClientRect();
                const x = (r.left - c.left) / ds.scale - ds.offset[0], y = (r.top - c.top) / ds.scale - ds.offset[1];
                return [n.id, [x, y, x + r.width / ds.scale, y + r.height / ds.scale]]; })); })()""").items()}

    def wait_settled(self, timeout: float = 120) -> None:
        """Wait until web/anatomy.js has fitted every picture that arrived (the live strip's previews queue fits)
        and watches no node any more (under the Vue renderer it watches each node that shows pictures until they
        have loaded and its element holds still, making room as it grows), then two frames: what a user sees once
        the pictures are in."""
        self.wait_for("!window.DiffusionAnatomy || window.DiffusionAnatomy.settling === 0", timeout, "the layout to settle")
        self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    def pack_errors(self) -> list[ConsoleMessage]:
        """Console errors, uncaught exceptions and failed requests that come from the pack."""
        self.send("Runtime.evaluate", {"expression": "0"})  # drain events that arrived since the last call
        return [m for m in self.console if m.from_pack()]

    def screenshot(self, path: Path | str) -> Path:
        """A PNG of the page as it is now."""
        self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


def overlapping(rects: dict[int, list[float]]) -> list[tuple[int, int]]:
    """Pairs of nodes whose rectangles ([left, top, right, bottom]) overlap by more than `SLACK` px both ways.

    SLACK is 5 px: on 1.32.9 the Anatomy Tour's Latent Channels ends 4 px into the title bar of the node below
    after the run (a rounding the layout pass has not found yet); a real covering is tens of pixels or more."""
    ids = sorted(rects)
    return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]
            if min(rects[a][2], rects[b][2]) - max(rects[a][0], rects[b][0]) > SLACK
            and min(rects[a][3], rects[b][3]) - max(rects[a][1], rects[b][1]) > SLACK]


SLACK = 5


def artifacts_dir() -> Path:
    """Where browser tests leave their screenshots (DA_ARTIFACTS, default .cache/browser)."""
    root = Path(__file__).resolve().parents[1]  # harness/ -> the repository
    path = Path(os.environ.get("DA_ARTIFACTS", root / ".cache" / "browser"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def assert_none_covered(page: Browser, rects: dict[int, list[float]]) -> None:
    """No two nodes' rectangles overlap (`overlapping`), the pairs named by type and rectangle (take `rects`
    with `page.node_rects()` after `page.wait_settled()`, once the run's other checks are done)."""
    covered = overlapping(rects)
    types = {int(k): v for k, v in page.evaluate("Object.fromEntries(app.graph._nodes.map(n => [n.id, n.type]))").items()}
    assert covered == [], [(types[a], types[b], rects[a], rects[b]) for a, b in covered]
