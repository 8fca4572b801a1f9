"""The bundled workflows as a user meets them, in ComfyUI's own frontend in headless Chromium: the
template browser lists them with thumbnails under human titles, they open with no missing nodes and
nodes sized to their widgets, the editor turns each into the bundled API graph, and Image to Image,
picked in the template browser of a fresh ComfyUI, runs and shows its picture with no manual step."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import VIEWS, artifacts_dir, assert_none_covered, overlapping
from thumbnails import SIDE as THUMBNAIL_SIDE
from ui_workflow import IMAGE_ROOM, slug

pytestmark = pytest.mark.server

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
UI = sorted(WORKFLOWS.glob("*.json"))
CATEGORY = "Diffusion Anatomy"  # locales/en/main.json names the pack's template category
SLACK = 2  # px: sizes are stored rounded


def canonical(graph: dict, ui_id) -> list:
    """(class, inputs) of each node, links as UI node ids, numbers as floats (JS has one number type)."""
    def value(v):
        if isinstance(v, list):
            return [int(ui_id(v[0])), v[1]]
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    return sorted((n["class_type"], json.dumps({k: value(v) for k, v in n["inputs"].items()}, sort_keys=True))
                  for n in graph.values())


def open_bundled(page, title: str) -> dict:
    wf = json.loads((WORKFLOWS / f"{title}.json").read_text())
    page.load_workflow(wf, title)
    return wf


def test_a_missing_node_type_is_reported(page):
    # the checks below can fail: an unknown type is listed and the frontend says so (a dialog or an alert)
    clean = json.loads((WORKFLOWS / "Text to Image.json").read_text())
    wf = json.loads(json.dumps(clean))
    wf["nodes"][0]["type"] = "NoSuchNodeAnywhere"
    page.discard()  # the next test starts on a freshly loaded app
    page.load_workflow(wf)
    assert page.missing_node_types() == ["NoSuchNodeAnywhere"]
    page.wait_for_notice("NoSuchNodeAnywhere")
    # leave no broken workflow behind: the newest frontend keeps it (and its "issues found" warning) across a reload
    page.close_dialogs()
    page.load_workflow(clean)
    assert page.missing_node_types() == []


def test_template_browser_shows_the_workflows_with_thumbnails_and_titles(page, frontend):
    cards = page.open_templates(CATEGORY)
    page.screenshot(artifacts_dir() / frontend.name / "templates.png")
    assert sorted(c["title"] for c in cards) == sorted(p.stem for p in UI)
    for card in cards:
        assert " " in card["title"] and "_" not in card["title"], card  # a title, not a file name
        # our 384x384 JPEG, not the frontend's 224x224 default-template.png it shows when one is missing
        assert "default-template" not in card["image"]["src"], card
        assert (card["image"]["width"], card["image"]["height"]) == (THUMBNAIL_SIDE, THUMBNAIL_SIDE), card
    assert page.pack_errors() == []


@pytest.mark.parametrize("path", UI, ids=[p.stem for p in UI])
def test_bundled_workflow_opens_with_fitting_nodes_and_is_the_api_graph(page, frontend, path):
    wf = open_bundled(page, path.stem)
    nodes = page.nodes()
    assert sorted(n["type"] for n in nodes) == sorted(n["type"] for n in wf["nodes"])
    assert page.missing_node_types() == [] and page.notices() == []
    assert any(n["type"] == "Note" for n in nodes) and page.evaluate("app.graph._groups.length") >= 3
    for n in nodes:  # every widget visible, and no node much larger than its widgets need
        if n["type"] == "Note":
            continue
        (w, h), (min_w, min_h) = n["size"], n["min_size"]
        room = IMAGE_ROOM if n["type"] in ("SaveImage", "PreviewImage") else 0
        assert min_w - SLACK <= w and min_h - SLACK <= h <= min_h + room + SLACK, n
    # the editor's graph is the bundled API graph: same nodes, links and values
    prompt = page.evaluate("app.graphToPrompt().then(p => p.output)")
    api = json.loads((WORKFLOWS / "api" / f"{slug(path.stem)}.json").read_text())
    ids = {nid: i + 1 for i, nid in enumerate(api)}  # UI node ids number the API nodes in file order
    assert canonical(prompt, int) == canonical(api, ids.__getitem__)
    page.screenshot(artifacts_dir() / frontend.name / f"{path.stem}.png")
    assert page.pack_errors() == []


def test_image_to_image_runs_from_the_template_browser(page, frontend):
    """A fresh ComfyUI, no file copied: pick the template, queue it, its picture shows in Save Image."""
    server = frontend.server
    assert not (server.work / "input" / "example.png").exists()  # the picture comes from the pack's node
    page.open_templates(CATEGORY)
    page.evaluate("document.querySelector('[data-testid=\"template-workflow-Image to Image\"]').click()")
    page.wait_for("!document.querySelector('[role=dialog]')"
                  " && app.graph._nodes.some(n => n.type === 'DiffusionAnatomyExamplePicture')", 180, "the template to open")
    assert page.missing_node_types() == []
    outputs = page.wait_for_execution(server, page.queue())
    save = next(n for n in page.nodes() if n["type"] == "SaveImage")
    (written,) = server.output_files({str(save["id"]): outputs[str(save["id"])]})
    (shown,) = page.node_image_urls(save["id"])
    assert f"filename={written.name}" in shown
    # the picture the node shows is the file the server wrote
    fetched = page.evaluate(f"fetch({json.dumps(shown)}).then(r => r.arrayBuffer()).then(b => b.byteLength)")
    assert fetched == written.stat().st_size
    assert np.asarray(Image.open(written).convert("RGB")).shape == (64, 64, 3)
    page.screenshot(artifacts_dir() / frontend.name / "image_to_image.png")
    assert page.pack_errors() == []


def test_overlap_check_can_fail():
    assert overlapping({1: [0, 0, 100, 100], 2: [50, 90, 80, 200], 3: [100, 0, 200, 50], 4: [50, 196, 80, 260]}) == [(1, 2)]


RUN = [p for p in UI if p.stem != "Anatomy Tour"]  # test_anatomy_tour.py runs the tour and makes the same check


@pytest.mark.parametrize("path", RUN, ids=[p.stem for p in RUN])
def test_bundled_workflow_runs_and_no_node_covers_another(page, frontend, path):
    """After the run every node that shows pictures shows them, the views have grown to theirs, and no
    two nodes' rectangles overlap (as drawn: the Vue renderer's elements, or the canvas nodes)."""
    open_bundled(page, path.stem)
    assert overlapping(page.node_rects()) == []
    outputs = page.wait_for_execution(frontend.server, page.queue(), timeout=900)
    nodes = {n["id"]: n for n in page.nodes()}
    for node_id, out in outputs.items():
        if out.get("images"):
            urls = page.node_image_urls(int(node_id))
            assert any(f"filename={out['images'][0]['filename']}" in u for u in urls), (nodes[int(node_id)]["type"], urls)
    views = [i for i, n in nodes.items() if n["type"] in VIEWS]
    assert all(outputs[str(i)]["images"] for i in views)  # each view's picture, shown in its node above
    page.wait_for(f"{json.dumps(views)}.every(i => window.DiffusionAnatomy.fitted[i])", 60, "the views sized to their pictures")
    page.wait_settled()
    rects = page.node_rects()
    page.screenshot(artifacts_dir() / frontend.name / f"{path.stem} after run.png")
    assert page.pack_errors() == []
    assert_none_covered(page, rects)  # the nodes that grew made room
