"""The anatomy tour as a user meets it in a real browser: opened in ComfyUI's frontend (headless
Chromium), queued with the frontend's Queue action; the Denoising Steps Recorder's live strip arrives
while the sampler runs, and every view then shows its picture in its own node, sized to it."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from support.browser import artifacts_dir

pytestmark = pytest.mark.server

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
VIEWS = {"DiffusionAnatomyTokens", "DiffusionAnatomyForwardDiffusion", "DiffusionAnatomyDenoisingSteps",
         "DiffusionAnatomyLatentChannels", "DiffusionAnatomyPlotSigmas"}
# attn's views return their IMAGE only; the tour saves each (its SaveImage node shows it)
SAVED_VIEWS = {"DiffusionAnatomyCrossAttentionView", "DiffusionAnatomyUNetLevelsView"}
RECORDER = "DiffusionAnatomyDenoisingStepsRecorder"


def test_anatomy_tour_runs_in_the_browser_and_shows_every_view(page, frontend):
    server = frontend.server
    wf = json.loads((WORKFLOWS / "Anatomy Tour.json").read_text())
    page.load_workflow(wf, "anatomy_tour")
    nodes = page.nodes()
    assert sorted(n["type"] for n in nodes) == sorted(n["type"] for n in wf["nodes"])
    assert page.missing_node_types() == []
    views = [n for n in nodes if n["type"] in VIEWS]
    assert len(views) >= 5
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
    for view in views:
        (item,) = outputs[str(view["id"])]["images"]
        urls = page.node_image_urls(view["id"])
        assert any(f"filename={item['filename']}" in u for u in urls), (view["type"], urls)
        fitted = page.wait_for(f"window.DiffusionAnatomy.fitted[{view['id']}]", 30, f"{view['type']} sized to its picture")
        size = next(n for n in page.nodes() if n["id"] == view["id"])["size"]
        assert size[0] >= min(fitted[0], 1100) + 19, (view["type"], size, fitted)
    links = {link[0]: link for link in wf["links"]}
    for save in (n for n in wf["nodes"] if n["type"] == "SaveImage"):
        source = next(n for n in wf["nodes"] if n["id"] == links[save["inputs"][0]["link"]][1])
        if source["type"] in SAVED_VIEWS:
            (item,) = outputs[str(save["id"])]["images"]
            assert any(f"filename={item['filename']}" in u for u in page.node_image_urls(save["id"])), source["type"]
    page.screenshot(artifacts_dir() / frontend.name / "anatomy_tour.png")
    assert page.pack_errors() == []
