"""The bundled anatomy workflows run as shipped on a real server and write pictures of the sizes their
layouts give; bad input to the views is refused with a message naming the input, and the server keeps serving."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_server import ComfyError

pytestmark = pytest.mark.server

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
ANATOMY = sorted((WORKFLOWS / "api").glob("anatomy_*.json"))
VIEWS = {"DiffusionAnatomyTokens", "DiffusionAnatomyForwardDiffusion", "DiffusionAnatomyDenoisingSteps",
         "DiffusionAnatomyLatentChannels", "DiffusionAnatomyPlotSigmas", "DiffusionAnatomyCrossAttentionView",
         "DiffusionAnatomyUNetLevelsView"}  # the seven views: each shows its picture in its node


def expected_size(prefix: str, width: int, height: int) -> bool:
    """The size each saved picture must have. The embedded model draws 64x64; the views upscale each
    picture to at least 128 (steps: 96) pixels and add labels around them."""
    rules = {
        "anatomy_picture": lambda w, h: (w, h) == (64, 64),
        "anatomy_reverse_from_t": lambda w, h: (w, h) == (64, 64),
        "anatomy_explorer": lambda w, h: (w, h) == (64, 64),  # the recorded run's picture (the panel shows the rest)
        "anatomy_explorer_a": lambda w, h: (w, h) == (64, 64),
        "anatomy_explorer_b": lambda w, h: (w, h) == (64, 64),
        "anatomy_forward": lambda w, h: w >= 7 * 128 and 128 + 40 <= h <= 128 + 160,  # x0 and 6 timesteps, 3 caption lines
        "anatomy_denoising_steps": lambda w, h: w >= 10 * 96 and h >= 3 * 96,  # 10 columns; x_t, x0 and noise rows
        "anatomy_latent_channels": lambda w, h: w >= 6 * 128 and h >= 128,  # 4 channels, RGB preview, decode
        "anatomy_sigmas": lambda w, h: (w, h) == (640, 360),
        "anatomy_tokens": lambda w, h: h >= 15 * 18,  # BOS + 12 words + EOS + padding line, ~24 px a row
        "anatomy_cross_attention": lambda w, h: w >= 6 * 192 and h >= 3 * 192,  # picture + 12 words, 6 panels of 192 a row (exact: test_anatomy_attention.py)
        "anatomy_unet_levels": lambda w, h: w >= 8 * 96 and h >= 3 * 96,  # 8 blocks of the embedded U-Net in 3 rows (exact: test_anatomy_attention.py)
    }
    return rules[prefix](width, height)


def test_every_view_has_a_bundled_workflow_and_the_tour_has_them_all():
    names = {p.stem for p in ANATOMY}
    assert {"anatomy_tokens", "anatomy_forward_diffusion", "anatomy_denoising_steps", "anatomy_latent_channels",
            "anatomy_sigma_plot", "anatomy_tour"} <= names
    tour = json.loads((WORKFLOWS / "api/anatomy_tour.json").read_text())
    assert VIEWS <= {n["class_type"] for n in tour.values()}
    from ui_workflow import title_of

    for p in ANATOMY:
        ui = json.loads((WORKFLOWS / f"{title_of(p)}.json").read_text())
        assert ui["groups"] and any(n["type"] == "Note" for n in ui["nodes"]), f"{p.name}: no groups or notes"


@pytest.mark.parametrize("path", ANATOMY, ids=[p.stem for p in ANATOMY])
def test_anatomy_workflow_runs_as_shipped(server, path):
    graph = json.loads(path.read_text())
    outputs = server.run(graph)
    saves = {nid: n["inputs"]["filename_prefix"] for nid, n in graph.items() if n["class_type"] == "SaveImage"}
    files = server.saved_files(outputs)
    assert len(files) == len(saves)
    for f in files:
        prefix = f.name.rsplit("_", 2)[0]
        img = np.asarray(Image.open(f).convert("RGB"))
        assert expected_size(prefix, img.shape[1], img.shape[0]), f"{path.stem}: {f.name} is {img.shape[1]}x{img.shape[0]}"
        assert img.std() > 5
    # each view also shows its picture inside its node
    shown = {nid for nid, n in graph.items() if n["class_type"] in VIEWS and outputs.get(nid, {}).get("images")}
    assert shown == {nid for nid, n in graph.items() if n["class_type"] in VIEWS}


def tiny_graph(**view) -> dict:
    return {
        "ckpt": {"class_type": "DiffusionAnatomyCheckpointLoader", "inputs": {"ckpt_name": "DiffusionAnatomy/tiny_shapes_sd1.safetensors", "prediction": "auto"}},
        "latent": {"class_type": "DiffusionAnatomyEmptyLatent", "inputs": {"model": ["ckpt", 0], "width": 64, "height": 64, "batch_size": 1}},
        **view,
    }


@pytest.mark.parametrize("view, message", [
    ({"class_type": "DiffusionAnatomyForwardDiffusion", "inputs": {"model": ["ckpt", 0], "vae": ["ckpt", 2], "seed": 0, "count": 3,
                                                                     "timesteps": "0, 1200", "chosen_t": 500, "steps": 4, "latent": ["latent", 0]}},
     "timestep 1200 is out of range"),
    ({"class_type": "DiffusionAnatomyTokens", "inputs": {"clip": ["ckpt", 1], "text": "   ", "show_padding": False}}, "text is empty"),
    ({"class_type": "DiffusionAnatomyLatentChannels", "inputs": {"samples": ["sd3", 0], "model": ["ckpt", 0], "vae": ["ckpt", 2]}},
     "samples has shape \\(1, 16, 8, 8\\)"),
])
def test_bad_input_names_the_input_and_the_server_keeps_serving(server, view, message):
    graph = tiny_graph(view=view, sd3={"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}})
    with pytest.raises(ComfyError, match=message):
        server.run(graph)
    ok = tiny_graph(view={"class_type": "DiffusionAnatomyTokens", "inputs": {"clip": ["ckpt", 1], "text": "a red circle", "show_padding": False}})
    assert server.run(ok)["view"]["images"]
