"""Every bundled workflow: API ones queue on a real server and produce their images; UI ones open
in the editor (checked against /object_info: node types, links, widget values)."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_server import PACK_FOLDER
from thumbnails import compose, saved_pictures, thumbnail_path
from ui_workflow import slug
from diffusion_anatomy.embedded import LOADER_NAME as EMBEDDED_NAME
from diffusion_anatomy.embedded import judge
from support import shapes
from support.graphs import positive_prompt

pytestmark = pytest.mark.server

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
API = sorted((WORKFLOWS / "api").glob("*.json"))
UI = sorted(WORKFLOWS.glob("*.json"))  # named by their titles, e.g. "Text to Image.json" for api/text_to_image.json
VIRTUAL = {"Note", "MarkdownNote"}  # frontend-only nodes: explanations, never sent to the server
FAST = {"steps": 3, "width": 64, "height": 64}  # CPU-sized versions of graphs made for a full-size checkpoint


def uses_embedded_model(graph: dict) -> bool:
    return any(n["inputs"].get("ckpt_name") == EMBEDDED_NAME for n in graph.values())


def fast_version(graph: dict, ckpt: str | None) -> dict:
    graph = json.loads(json.dumps(graph))
    for node in graph.values():
        if node["class_type"] == "DiffusionAnatomyPlotSigmas":
            continue  # a plot's size is not a model's size
        for key, value in FAST.items():
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                node["inputs"][key] = value
        if "ckpt_name" in node["inputs"]:
            node["inputs"]["ckpt_name"] = ckpt
    return graph


def test_there_are_bundled_workflows():
    names = {p.stem for p in API}
    assert {"text_to_image", "image_to_image", "sampler_comparison", "pack_sampler_in_core_samplercustom"} <= names
    assert {slug(p.stem) for p in UI} == names  # each graph in both formats
    for p in UI:  # the template browser's thumbnail: a JPEG of the same stem
        assert p.with_suffix(".jpg").is_file(), f"{p.name} has no thumbnail {p.stem}.jpg (generate/thumbnails.py)"
        assert Image.open(p.with_suffix(".jpg")).format == "JPEG"
    # the pack's own graphs draw with the embedded model out of the box (core's loader cannot read it)
    for p in API:
        graph = json.loads(p.read_text())
        assert uses_embedded_model(graph) == ("DiffusionAnatomyCheckpointLoader" in {n["class_type"] for n in graph.values()}), p.name


RUN = [p for p in API if not p.stem.startswith("anatomy_")]  # the anatomy graphs run in test_anatomy_workflows.py


@pytest.mark.parametrize("path", RUN, ids=[p.stem for p in RUN])
def test_api_workflow_runs_and_writes_its_images(server, request, path):
    """Graphs with the embedded model are queued exactly as bundled (20 steps, 64x64: seconds on a
    CPU) and their pictures must show the prompt; the others get the random SD1.5-layout fixture at 3 steps
    (`sd15_small`, made only when such a graph is bundled)."""
    bundled = json.loads(path.read_text())
    if uses_embedded_model(bundled):
        graph = bundled
    else:  # a checkpoint is made only for a graph that loads one (sigma_plot loads none)
        needs_ckpt = any("ckpt_name" in n["inputs"] for n in bundled.values())
        graph = fast_version(bundled, request.getfixturevalue("sd15_small") if needs_ckpt else None)
    outputs = server.run(graph, timeout=1800)  # the Sampler Lab solves its ODE reference first: minutes on a busy CPU
    saves = [nid for nid, n in graph.items() if n["class_type"] == "SaveImage"]
    files = server.saved_files(outputs)
    assert len(files) == len(saves)
    if graph is bundled:  # the committed thumbnail shows this run's pictures (JPEG: a few levels off)
        fresh = np.asarray(compose(saved_pictures(server, graph, outputs))).astype(np.int16)
        shipped = np.asarray(Image.open(thumbnail_path(path)).convert("RGB")).astype(np.int16)
        assert np.abs(fresh - shipped).mean() < 3.0, f"{thumbnail_path(path).name} is stale: run generate/thumbnails.py {path.stem}"
    images = {f.name.rsplit("_", 2)[0]: np.asarray(Image.open(f).convert("RGB")).astype(np.int16) for f in files}
    for img in images.values():
        assert img.ndim == 3 and img.std() > 1
    # anatomy views: tests/server/test_anatomy_workflows.py; the lab saves a grid and a plot: tests/server/test_sampler_lab.py
    if uses_embedded_model(graph) and not path.stem.startswith("anatomy_") and path.stem != "sampler_lab":
        cap = shapes.parse(positive_prompt(graph))
        for name, img in images.items():  # every picture right in all five attributes, as the judge reads it
            verdict = judge.judge_rgb(torch.from_numpy(img)[None])[0]
            assert judge.correct(verdict, cap)["all"], f"{path.stem}/{name}: {verdict.as_dict()} for {cap.text!r}"
    if path.stem == "sampler_comparison":
        # DDIM with eta 0 is Euler in sigma space: the same picture, to the rounding of the PNG
        assert np.abs(images["compare_ddim"] - images["compare_euler"]).max() <= 1
        assert set(images) == {"compare_euler", "compare_dpmpp_2m", "compare_ddim", "compare_uni_pc", "compare_lms"}


FRONTEND_ONLY = ("Note", "MarkdownNote")  # the editor's own text nodes (the anatomy workflows' notes); never sent to the server


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
    notes = [n for n in wf["nodes"] if n["type"] in VIRTUAL]
    assert notes and all(n["widgets_values"][0].strip() for n in notes), f"{path.name}: no notes"
    assert wf["groups"], f"{path.name}: no groups"
    wf["nodes"] = [n for n in wf["nodes"] if n["type"] not in VIRTUAL]
    for node in wf["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            assert node["widgets_values"] and isinstance(node["widgets_values"][0], str)
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
    for node in wf["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        required = info[node["type"]]["input"].get("required", {})
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        for name, s in required.items():
            if not widget_count(s):
                assert name in linked, f"{path.name}: {node['type']}.{name} is not connected"


def test_templates_browser_lists_the_ui_workflows(server):
    listed = server.get("/workflow_templates")
    assert sorted(listed.get(PACK_FOLDER, [])) == sorted(p.stem for p in UI)  # not api/*.json
    for p in UI[:1]:  # the frontend fetches <stem>.json and its thumbnail <stem>.jpg
        served = server.get(f"/api/workflow_templates/{PACK_FOLDER}/{quote(p.name)}")
        assert served == json.loads(p.read_text())
        assert server.get(f"/api/workflow_templates/{PACK_FOLDER}/{quote(p.stem)}.jpg") == p.with_suffix(".jpg").read_bytes()
