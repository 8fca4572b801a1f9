"""The cross-attention and U-Net-levels views over HTTP: the bundled workflows run as shipped on the embedded
model, and their pictures are read back as pictures: the panels found in them (one per word and the decoded
picture; the U's feature maps by depth), the decoded picture the view was given shown as it is; bad input gets
an error naming the input, and the server keeps serving."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from comfy_server import ComfyError
from diffusion_anatomy.anatomy import levels as lv

pytestmark = pytest.mark.server

API = Path(__file__).resolve().parents[2] / "workflows" / "api"


def load(name: str) -> dict:
    return json.loads((API / f"{name}.json").read_text())


def node(graph: dict, class_type: str) -> dict:
    return next(n for n in graph.values() if n["class_type"] == class_type)


def picture(server, graph: dict) -> np.ndarray:
    (path,) = server.saved_files(server.run(graph))
    return np.asarray(Image.open(path).convert("RGB"))


def view_and_decoded(server, graph: dict) -> tuple[np.ndarray, np.ndarray]:
    """The view's picture and, saved beside it by an added SaveImage, the VAE Decode picture the view was given."""
    decode = next(k for k, n in graph.items() if n["class_type"] == "DiffusionAnatomyVAEDecode")
    graph = {**graph, "99": {"class_type": "SaveImage", "inputs": {"images": [decode, 0], "filename_prefix": "decoded"}}}
    files = server.saved_files(server.run(graph))
    (view,) = [f for f in files if not f.name.startswith("decoded")]
    (decoded,) = [f for f in files if f.name.startswith("decoded")]
    return np.asarray(Image.open(view).convert("RGB")).astype(int), np.asarray(Image.open(decoded).convert("RGB")).astype(int)


def solid_panels(img: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of every solid picture in a view, found in the picture itself: the regions without
    background pixels that stay after an opening by 9x9 (which removes text and the U's 1-2 pixel lines)."""
    solid = ndimage.binary_opening((img != 255).any(-1), structure=np.ones((9, 9)))
    labels, _ = ndimage.label(solid)
    return sorted((b[0].start, b[1].start, b[0].stop - b[0].start, b[1].stop - b[1].start) for b in ndimage.find_objects(labels))


def shows_enlarged(img: np.ndarray, box: tuple[int, int, int, int], small: np.ndarray) -> bool:
    """The panel at `box` is `small` enlarged by pixel repetition (draw.fit), within one 8-bit level."""
    top, left, h, w = box
    k = h // small.shape[0]
    enlarged = small.repeat(k, 0).repeat(k, 1)
    return enlarged.shape == (h, w, 3) and np.abs(img[top:top + h, left:left + w] - enlarged).max() <= 1


def test_cross_attention_workflow_draws_the_picture_and_one_panel_per_word(server):
    img, decoded = view_and_decoded(server, load("anatomy_cross_attention"))
    # "a large red circle at the top left on a blue background": 12 words, so 13 panels (the picture first), 6 to a row
    panels = solid_panels(img)
    assert len(panels) == 13, panels
    assert [sum(1 for p in panels if p[0] == top) for top in sorted({p[0] for p in panels})] == [6, 6, 1]
    assert len({(h, w) for _, _, h, w in panels}) == 1  # every panel the same size
    first = panels[0]
    assert shows_enlarged(img, first, decoded), "the first panel is not the decoded picture"
    # every word's panel is its own heatmap over the picture: none is the plain picture, and no two of the words that
    # name an attribute have the same panel (filler words may: the retrained model attends alike from "at" and "the",
    # whose panels differ by 0.2 of a level; the host tests check each map against the sum of the recorded ones)
    crops = [img[t:t + h, l:l + w] for t, l, h, w in panels]
    assert all(np.abs(c - crops[0]).mean() > 5 for c in crops[1:])
    words = "a large red circle at the top left on a blue background".split()
    named = [crop for word, crop in zip(words, crops[1:]) if word in {"large", "red", "circle", "top", "left", "blue", "background"}]
    assert all(np.abs(a - b).mean() > 0.5 for i, a in enumerate(named) for b in named[i + 1:])


def test_unet_levels_workflow_draws_the_u(server):
    img, decoded = view_and_decoded(server, load("anatomy_unet_levels"))
    panels = solid_panels(img)
    (picture,) = [p for p in panels if p[2] >= 2 * lv.PANEL]  # the final picture, 2 panels wide
    assert shows_enlarged(img, picture, decoded), "the top right panel is not the decoded picture"
    levels = [p for p in panels if p is not picture]
    # the embedded U-Net (2 levels, 1 ResBlock each) on an 8x8 latent: 4 input blocks, the middle block and the 3 output
    # blocks ComfyUI's block patches see: 8 feature maps, each a PANEL-wide picture with a 1-pixel frame
    assert len(levels) == 8 and {(h, w) for _, _, h, w in levels} == {(lv.PANEL + 2, lv.PANEL + 2)}
    assert picture[1] > max(left for _, left, _, _ in levels)  # the picture right of the U
    # drawn as a U: one row per depth, the bottleneck alone at the bottom, in the middle; encoder left, decoder right
    rows = sorted({top for top, _, _, _ in levels})
    assert len(rows) == 3
    (bottom,) = [p for p in levels if p[0] == rows[-1]]
    middle = bottom[1] + bottom[3] / 2
    left_side = [p for p in levels if p[1] + p[3] / 2 < middle]
    right_side = [p for p in levels if p[1] + p[3] / 2 > middle]
    assert (len(left_side), len(right_side)) == (4, 3)  # 4 input blocks down, 3 output blocks up
    for side in (left_side, right_side):  # the deeper row sits nearer the middle
        assert all(abs(a[1] - middle) > abs(b[1] - middle) for a in side for b in side if a[0] < b[0])


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
