"""The cross-attention and U-Net-levels views over HTTP: the bundled workflows run as shipped on the embedded
model and write pictures of the sizes their layouts give; bad input gets an error naming the input, and
the server keeps serving."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_server import ComfyError
from diffusion_anatomy.anatomy import draw
from diffusion_anatomy.anatomy import levels as lv

pytestmark = pytest.mark.server

API = Path(__file__).resolve().parents[2] / "workflows" / "api"


def load(name: str) -> dict:
    return json.loads((API / f"{name}.json").read_text())


def node(graph: dict, class_type: str) -> dict:
    return next(n for n in graph.values() if n["class_type"] == class_type)


def picture(server, graph: dict) -> np.ndarray:
    (path,) = server.output_files(server.run(graph))
    return np.asarray(Image.open(path).convert("RGB"))


def test_cross_attention_workflow_draws_the_picture_and_one_panel_per_word(server):
    img = picture(server, load("anatomy_cross_attention"))
    # "a large red circle at the top left on a blue background": 12 words + the picture = 13 panels, 6 to a
    # row (3 rows); each panel the 64x64 picture enlarged to 192 (draw.fit), a caption line under it,
    # 6-pixel gaps (draw.grid), a title line in the font 2 points larger
    gap, panel = 6, 192
    width = 6 * panel + 7 * gap
    height = draw.line_height(draw.FONT_SIZE + 2) + gap + 3 * (panel + draw.line_height(draw.FONT_SIZE)) + 4 * gap
    assert img.shape == (height, width, 3)
    assert img.std() > 10


def test_unet_levels_workflow_draws_the_u(server):
    img = picture(server, load("anatomy_unet_levels"))
    # the embedded U-Net (2 levels, 1 ResBlock each) on an 8x8 latent: 4 input blocks, the middle block, 3 output
    # blocks seen = 8 panels in 2 sizes (8x8, 4x4) + the middle row; the final picture at 2 panels' width
    levels = 8
    width = (lv.PANEL + 12) * levels + 12 + 2 * lv.PANEL + 12
    cell_h = lv.PANEL + 2 * draw.line_height(draw.FONT_SIZE - 2) + 12
    height = draw.line_height(draw.FONT_SIZE + 2) + 12 + cell_h * 3
    assert img.shape == (height, width, 3)


def expect_error(server, graph: dict, *fragments: str) -> None:
    with pytest.raises(ComfyError) as err:
        server.run(graph)
    for fragment in fragments:
        assert fragment.lower() in str(err.value).lower(), str(err.value)


def test_bad_input_names_the_input_and_the_server_keeps_serving(server):
    graph = load("anatomy_cross_attention")
    node(graph, "DiffusionAnatomyCrossAttentionView")["inputs"]["words"] = "circle, zebra"
    expect_error(server, graph, "DiffusionAnatomyCrossAttentionView", "words", "'zebra' not in the prompt", "circle")

    graph = load("anatomy_cross_attention")
    node(graph, "PrimitiveStringMultiline")["inputs"]["value"] = " "
    expect_error(server, graph, "text", "empty")

    # the view given another prompt than the sampling's: 80 words need two 77-token chunks (154 tokens),
    # the sampled conditioning had one (77); the error names both lengths (it raised NameError once)
    graph = load("anatomy_cross_attention")
    node(graph, "DiffusionAnatomyCrossAttentionView")["inputs"]["text"] = " ".join(["circle"] * 80)
    expect_error(server, graph, "DiffusionAnatomyCrossAttentionView", "154 tokens long", "conditioning had 77", "prompt used for sampling")

    graph = load("anatomy_unet_levels")
    node(graph, "DiffusionAnatomyUNetLevelsCapture")["inputs"]["step"] = 25
    expect_error(server, graph, "step: 25 is out of range", "20 steps")

    graph = load("anatomy_unet_levels")
    node(graph, "DiffusionAnatomyUNetLevelsCapture")["inputs"]["step"] = 19  # the last step: fine
    assert picture(server, graph).shape[2] == 3
