"""The help pages as a user meets them: select a node of the pack, press the selection toolbox's Info
button, and the frontend shows the node's page from web/docs/ (1.32: in the node library's help panel;
1.58: in the right side panel's Info tab), with the picture a view draws."""
from __future__ import annotations

import json
from pathlib import Path

import node_docs
import pytest
from PIL import Image

from browser import artifacts_dir

pytestmark = pytest.mark.server

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def title_of(node_id: str) -> str:
    """The page's heading (its first '# ' line)."""
    text = (node_docs.DOCS / f"{node_id}.md").read_text()
    return next(line[2:] for line in text.splitlines() if line.startswith("# "))


def test_the_frontend_shows_each_nodes_help_page(page, frontend):
    wf = json.loads((WORKFLOWS / "Anatomy Tour.json").read_text())
    page.load_workflow(wf, "help")
    pictures = node_docs.view_pictures()
    shown = {}
    for node in wf["nodes"]:
        kind = node["type"]
        if not kind.startswith("DiffusionAnatomy") or kind in shown:
            continue
        title = title_of(kind)
        page.evaluate(f"""(() => {{ const n = app.graph.getNodeById({node['id']}); app.canvas.deselectAll?.();
            app.canvas.selectNode(n); app.canvas.centerOnNode(n); app.canvas.setDirty(true, true); return true; }})()""")
        page.wait_for("!!document.querySelector('[data-testid=info-button]')", 60, "the selection toolbox's Info button")
        page.evaluate("document.querySelector('[data-testid=info-button]').click()")
        shown[kind] = page.wait_for(f"""(() => {{
            const h = [...document.querySelectorAll('h1')].find(h => h.innerText.trim() === {json.dumps(title)});
            if (!h) return null;
            const panel = h.parentElement;
            const img = panel.querySelector('img[src*="/docs/images/"]');
            if ({json.dumps(kind in pictures)} && !(img && img.complete && img.naturalWidth)) return null;
            return {{text: panel.innerText, img: img ? [img.src, img.naturalWidth, img.naturalHeight] : null}}; }})()""",
                                    60, f"the help page of {kind}")
    assert {k for k in shown if k in pictures} == set(pictures)  # the tour holds all seven views
    for kind, seen in shown.items():
        page_text = (node_docs.DOCS / f"{kind}.md").read_text()
        description = page_text.split("\n\n")[2]  # generated line, heading, then the description
        assert " ".join(description.split()[:8]) in " ".join(seen["text"].split()), kind
        assert "Inputs" in seen["text"] and "Outputs" in seen["text"], kind
        if kind in pictures:
            src, width, height = seen["img"]
            assert src.endswith(f"/extensions/{node_docs.PACK_FOLDER}/docs/images/{pictures[kind]}.png"), src
            with Image.open(node_docs.IMAGES / f"{pictures[kind]}.png") as im:
                assert (width, height) == im.size, kind
    page.screenshot(artifacts_dir() / frontend.name / "node_help.png")
    assert page.pack_errors() == []
