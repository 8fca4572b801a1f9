"""Every bundled workflow: API ones queue on a real server and produce their images; UI ones open
in the editor (checked against /object_info: node types, links, widget values)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_server import PACK_FOLDER
from diffusion_anatomy.embedded import LOADER_NAME as EMBEDDED_NAME
from support import shapes
from support.graphs import positive_prompt

pytestmark = pytest.mark.server

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
API = sorted((WORKFLOWS / "api").glob("*.json"))
UI = sorted(WORKFLOWS.glob("*.json"))
FAST = {"steps": 3, "width": 64, "height": 64}  # CPU-sized versions of graphs made for a full-size checkpoint


def uses_embedded_model(graph: dict) -> bool:
    return any(n["inputs"].get("ckpt_name") == EMBEDDED_NAME for n in graph.values())


def fast_version(graph: dict, ckpt: str) -> dict:
    graph = json.loads(json.dumps(graph))
    for node in graph.values():
        for key, value in FAST.items():
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                node["inputs"][key] = value
        if "ckpt_name" in node["inputs"]:
            node["inputs"]["ckpt_name"] = ckpt
    return graph


def test_there_are_bundled_workflows():
    names = {p.stem for p in API}
    assert {"text_to_image", "image_to_image", "sampler_comparison", "core_sampler_custom_with_pack_sampler"} <= names
    assert {p.stem for p in UI} == names  # each graph in both formats
    # the pack's own graphs draw with the embedded model out of the box (core's loader cannot read it)
    for p in API:
        graph = json.loads(p.read_text())
        assert uses_embedded_model(graph) == ("DiffusionAnatomyCheckpointLoader" in {n["class_type"] for n in graph.values()}), p.name


@pytest.mark.parametrize("path", API, ids=[p.stem for p in API])
def test_api_workflow_runs_and_writes_its_images(server, sd15, path):
    """Graphs with the embedded model are queued exactly as bundled (20 steps, 64x64: seconds on a
    CPU) and their pictures must show the prompt; the others get the random SD1.5 fixture at 3 steps."""
    bundled = json.loads(path.read_text())
    graph = bundled if uses_embedded_model(bundled) else fast_version(bundled, sd15)
    for node in graph.values():  # LoadImage reads from the server's input folder
        if node["class_type"] == "LoadImage":
            shutil.copy(WORKFLOWS / "inputs" / node["inputs"]["image"],
                        server.work / "input" / node["inputs"]["image"])
    outputs = server.run(graph)
    saves = [nid for nid, n in graph.items() if n["class_type"] == "SaveImage"]
    files = server.saved_files(outputs)
    assert len(files) == len(saves)
    images = {f.name.rsplit("_", 2)[0]: np.asarray(Image.open(f).convert("RGB")).astype(np.int16) for f in files}
    for img in images.values():
        assert img.ndim == 3 and img.std() > 1
    if uses_embedded_model(graph) and not path.stem.startswith("anatomy_"):  # anatomy views: tests/server/test_anatomy_workflows.py
        cap = shapes.parse(positive_prompt(graph))
        for name, img in images.items():
            reading = shapes.read(torch.from_numpy(img), cap)
            assert reading.obeys(cap), f"{path.stem}/{name}: {reading} for {cap.text!r}"
    if path.stem == "sampler_comparison":
        # DDIM with eta 0 is Euler in sigma space: the same picture, to the rounding of the PNG
        assert np.abs(images["compare_ddim"] - images["compare_euler"]).max() <= 1
        assert set(images) == {"compare_euler", "compare_dpmpp_2m", "compare_ddim", "compare_uni_pc", "compare_lms"}


def widget_count(spec) -> int:
    kind = spec[0]
    if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
        return 2 if len(spec) > 1 and spec[1].get("control_after_generate") else 1
    return 0


@pytest.mark.parametrize("path", UI, ids=[p.stem for p in UI])
def test_ui_workflow_fits_the_node_definitions(server, path):
    info = server.get("/object_info")
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    frontend_only = ("Note", "MarkdownNote")  # notes live in the editor alone: no server node type
    for node in wf["nodes"]:
        if node["type"] in frontend_only:
            continue
        assert node["type"] in info, f"{path.name}: missing node type {node['type']}"
        spec = info[node["type"]]
        inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        order = [*spec["input_order"].get("required", []), *spec["input_order"].get("optional", [])]
        assert len(node["widgets_values"]) == sum(widget_count(inputs[n]) for n in order), node["type"]
        values = iter(node["widgets_values"])
        for name in order:
            s = inputs[name]
            if not widget_count(s):
                continue
            value = next(values)
            if isinstance(s[0], list) and name not in ("ckpt_name", "image"):  # file lists depend on the user's folders
                assert value in s[0], f"{node['type']}.{name}={value!r}"
            elif s[0] in ("INT", "FLOAT"):
                assert s[1].get("min", -np.inf) <= value <= s[1].get("max", np.inf), f"{node['type']}.{name}={value}"
            if widget_count(s) == 2:
                assert next(values) in ("fixed", "increment", "decrement", "randomize")
        for i, slot in enumerate(node.get("inputs", [])):
            assert slot["name"] in inputs
    for link_id, src, src_slot, dst, dst_slot, kind in wf["links"]:
        out_type = info[nodes[src]["type"]]["output"][src_slot]
        dst_input = nodes[dst]["inputs"][dst_slot]
        assert dst_input["link"] == link_id and link_id in nodes[src]["outputs"][src_slot]["links"]
        declared = info[nodes[dst]["type"]]["input"]
        in_type = {**declared.get("required", {}), **declared.get("optional", {})}[dst_input["name"]][0]
        assert kind == out_type == in_type, f"link {link_id}: {out_type} -> {in_type}"
    # every required non-widget input is linked: the graph opens with nothing missing
    for node in (n for n in wf["nodes"] if n["type"] not in frontend_only):
        required = info[node["type"]]["input"].get("required", {})
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        for name, s in required.items():
            if not widget_count(s):
                assert name in linked, f"{path.name}: {node['type']}.{name} is not connected"


def test_templates_browser_lists_the_ui_workflows(server):
    listed = server.get("/workflow_templates")
    assert sorted(listed.get(PACK_FOLDER, [])) == sorted(p.stem for p in UI)
    served = server.get(f"/api/workflow_templates/{PACK_FOLDER}/{UI[0].name}")
    assert served == json.loads(UI[0].read_text())
