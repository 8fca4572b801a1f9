"""The anatomy tour as a user meets it in a real browser: opened in ComfyUI's frontend (headless
Chromium), queued with the frontend's Queue action; the Denoising Steps Recorder's live strip arrives
while the sampler runs, and each of the seven views then shows its picture in its own node, sized to it
(at most web/anatomy.js's bounded preview)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from browser import VIEWS, artifacts_dir, assert_none_covered

pytestmark = pytest.mark.server

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
MARGIN = 10  # web/anatomy.js: px around the picture inside the node
RECORDER = "DiffusionAnatomyDenoisingStepsRecorder"


def test_anatomy_tour_runs_in_the_browser_and_shows_every_view(page, frontend):
    server = frontend.server
    wf = json.loads((WORKFLOWS / "Anatomy Tour.json").read_text())
    page.load_workflow(wf, "anatomy_tour")
    nodes = page.nodes()
    assert sorted(n["type"] for n in nodes) == sorted(n["type"] for n in wf["nodes"])
    assert page.missing_node_types() == []
    views = [n for n in nodes if n["type"] in VIEWS]
    assert {n["type"] for n in views} == VIEWS
    (recorder,) = [n for n in nodes if n["type"] == RECORDER]

    # new seeds and widths, so that nothing comes from the server's cache of an earlier run of the same graph
    page.evaluate("""app.graph._nodes.forEach(n => (n.widgets || []).forEach(w => {
        if (w.name === "seed") w.value = 1000 + (Date.now() % 100000);
        if (n.type === "DiffusionAnatomyTokens" && w.name === "text") w.value = w.value + " ";
        if (n.type === "DiffusionAnatomyPlotSigmas" && w.name === "width") w.value = w.value + 8; }))""")
    prompt_id = page.queue()
    # the live strip: previews for the recorder's node arrive while the prompt is still running
    counts = []
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        count = page.evaluate(f"(window.DiffusionAnatomy?.livePreviews?.[{recorder['id']}]) || 0")
        done = bool(server.get(f"/history/{prompt_id}"))
        counts.append((count, done))
        if done or count >= 3:
            break
        time.sleep(0.5)
    assert any(c >= 2 and not d for c, d in counts), f"no live strip updates seen during the run: {counts[-5:]}"

    outputs = page.wait_for_execution(server, prompt_id, timeout=900)
    for view in views:  # each view's own picture (the file the server wrote for that node) is shown in its node
        (item,) = outputs[str(view["id"])]["images"]
        urls = page.node_image_urls(view["id"])
        assert any(f"filename={item['filename']}" in u for u in urls), (view["type"], urls)
        width, height, scale = page.wait_for(f"window.DiffusionAnatomy.fitted[{view['id']}]", 30, f"{view['type']} sized to its picture")
        size = next(n for n in page.nodes() if n["id"] == view["id"])["size"]
        assert size[0] >= width * scale + 2 * MARGIN - 1, (view["type"], size, width, scale)
    page.wait_settled()  # the last fits and (Vue renderer) the pictures' loads
    page.screenshot(artifacts_dir() / frontend.name / "anatomy_tour.png")
    rects = page.node_rects()
    assert page.pack_errors() == []
    assert_none_covered(page, rects)  # the nodes that grew made room
