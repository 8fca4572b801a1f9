"""The pack loads in a real ComfyUI server: nodes listed, web files served, a graph runs over HTTP."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from comfy_server import PACK_FOLDER, ComfyError

pytestmark = pytest.mark.server


def pack_nodes(object_info: dict) -> dict:
    return {k: v for k, v in object_info.items() if k.startswith("DiffusionAnatomy")}


def test_every_pack_node_is_listed_with_description_and_category(server):

    ours = pack_nodes(server.get("/object_info"))
    assert "DiffusionAnatomyPlotSigmas" in ours and "DiffusionAnatomySamplerSelect" in ours
    for node_id, info in ours.items():
        assert info["python_module"].startswith("custom_nodes."), node_id
        assert info["category"].split("/")[0] == "Diffusion Anatomy", node_id
        assert len(info["description"]) > 20, node_id
        assert info["display_name"].endswith(" (Diffusion Anatomy)"), f"{node_id}: {info['display_name']!r}"
        for name, spec in {**info["input"].get("required", {}), **info["input"].get("optional", {})}.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_web_extension_is_served(server):
    listed = server.get("/extensions")
    path = f"/extensions/{PACK_FOLDER}/diffusion_anatomy.js"
    assert path in listed
    js = server.get(path)
    assert b"registerExtension" in js


def test_sigma_plot_graph_runs_over_http(server):
    """Two schedules overlaid: each in its colour, each line falling from left to right (sigma descends)."""
    from diffusion_anatomy.anatomy.draw import PALETTE

    graph = {
        "1": {"class_type": "KarrasScheduler", "inputs": {"steps": 9, "sigma_max": 14.6, "sigma_min": 0.03, "rho": 7.0}},
        "4": {"class_type": "ExponentialScheduler", "inputs": {"steps": 9, "sigma_max": 14.6, "sigma_min": 0.03}},
        "2": {"class_type": "DiffusionAnatomyPlotSigmas", "inputs": {"sigmas": ["1", 0], "sigmas_2": ["4", 0], "width": 640, "height": 360,
                                                                    "log_sigma": True, "labels": "karras, exponential"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "plot"}},
    }
    files = server.saved_files(server.run(graph))
    assert len(files) == 1
    pixels = np.asarray(Image.open(files[0]).convert("RGB")).astype(np.int16)
    assert pixels.shape == (360, 640, 3)
    ink = (pixels.sum(-1) < 100).sum(0)
    frame_right = np.flatnonzero(ink > 0.5 * pixels.shape[0])[-1]  # the plot's right edge; the legend sits beyond it
    for colour in PALETTE[:2]:
        mask = np.abs(pixels - np.array(colour)).sum(-1) < 30
        mask[:, frame_right:] = False
        cols = np.flatnonzero(mask.any(0))
        assert len(cols) > 250, f"{colour}: the line spans only {len(cols)} columns"
        tops = [np.flatnonzero(mask[:, c])[0] for c in cols[::10]]
        assert all(b >= a - 3 for a, b in zip(tops, tops[1:])), f"{colour}: sigma does not fall from left to right"


def test_bad_input_is_reported_and_server_keeps_serving(server):
    bad = {
        "1": {"class_type": "KarrasScheduler", "inputs": {"steps": 5, "sigma_max": 14.6, "sigma_min": 0.03, "rho": 7.0}},
        "2": {"class_type": "DiffusionAnatomyPlotSigmas", "inputs": {"sigmas": ["1", 0], "width": 8, "height": 128}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bad"}},
    }
    with pytest.raises(ComfyError, match="width"):
        server.run(bad)
    bad["2"]["inputs"]["width"] = 320
    bad["2"]["inputs"]["height"] = 200
    assert len(server.saved_files(server.run(bad))) == 1


def test_readme_lists_every_hand_written_node(server):
    """Generated nodes (one per sampler/schedule) are covered by the README's generated tables."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for node_id, info in pack_nodes(server.get("/object_info")).items():
        if node_id.startswith("DiffusionAnatomySampler_"):
            title = info["display_name"].removesuffix(" (Diffusion Anatomy)")  # the table names the document's sampler
            assert f"| {title} | `{node_id.split('_', 1)[1]}` |" in readme, node_id
        elif node_id.startswith("DiffusionAnatomySchedule_"):
            assert f"| `{node_id.split('_', 1)[1]}` |" in readme, node_id
        else:
            assert f"| {info['display_name']} |" in readme, f"README's node table lacks {info['display_name']}"
