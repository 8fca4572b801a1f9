"""The anatomy tour as a user meets it in a real browser: opened in ComfyUI's frontend (headless
Chromium), queued with the frontend's Queue action; the Denoising Steps Recorder's live strip arrives
while the sampler runs, and each of the seven views then shows its picture in its own node, sized to it
(at most web/anatomy.js's bounded preview)."""
from __future__ import annotations

import json
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
    outputs = page.wait_for_execution(server, prompt_id, timeout=900)
    # the live strip: the recorder's previews arrived while the sampler (the U-Net Denoise it feeds) was running,
    # read from the order of the socket's messages (polling would miss a run that ends between two polls)
    (sampler,) = page.evaluate(f"""(() => {{ const r = app.graph.getNodeById({recorder['id']});
        const out = r.outputs.find(o => o.type === "SAMPLER");
        return out.links.map(l => (app.graph.links.get?.(l) ?? app.graph.links[l]).target_id); }})()""")
    while_ = page.wait_for(f"window.DiffusionAnatomy.previewsWhile[{recorder['id']}]", 30, "the recorder's previews")
    assert sum(str(n) == str(sampler) for n in while_) >= 2, f"previews while the sampler ran: {while_}"
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
