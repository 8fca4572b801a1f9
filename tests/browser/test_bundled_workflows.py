"""The bundled workflows as a user meets them: opened in ComfyUI's own frontend in headless Chromium,
queued with the frontend's Queue action, their pictures shown in their nodes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.browser import artifacts_dir

pytestmark = pytest.mark.server

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
UI = sorted(WORKFLOWS.glob("*.json"))


def test_a_missing_node_type_is_reported(page):
    # the check below can fail: an unknown type is listed and the frontend says so in a dialog
    wf = json.loads((WORKFLOWS / "text_to_image.json").read_text())
    wf["nodes"][0]["type"] = "NoSuchNodeAnywhere"
    page.load_workflow(wf)
    assert page.missing_node_types() == ["NoSuchNodeAnywhere"]
    assert any("NoSuchNodeAnywhere" in text for text in page.dialog_texts())


@pytest.mark.parametrize("path", UI, ids=[p.stem for p in UI])
def test_bundled_workflow_opens_with_no_missing_nodes(page, path):
    wf = json.loads(path.read_text())
    page.load_workflow(wf, path.stem)
    nodes = page.nodes()
    assert sorted(n["type"] for n in nodes) == sorted(n["type"] for n in wf["nodes"])
    assert page.missing_node_types() == []
    assert page.dialog_texts() == []
    assert page.pack_errors() == []


def test_text_to_image_runs_from_the_editor(page, server):
    """Queued by the frontend: the server's picture is the one shown in the SaveImage node."""
    wf = json.loads((WORKFLOWS / "text_to_image.json").read_text())
    page.load_workflow(wf, "text_to_image")
    outputs = page.wait_for_execution(server, page.queue())
    save = next(n for n in page.nodes() if n["type"] == "SaveImage")
    (written,) = server.output_files({k: v for k, v in outputs.items() if k == str(save["id"])})
    (shown,) = page.node_image_urls(save["id"])
    assert f"filename={written.name}" in shown
    img = np.asarray(Image.open(written).convert("RGB"))
    assert img.shape == (64, 64, 3)
    page.screenshot(artifacts_dir() / "text_to_image.png")
    assert page.pack_errors() == []
