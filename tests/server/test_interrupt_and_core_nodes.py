"""The interrupt button stops U-Net Denoise within one step; core nodes accept the pack's models."""
from __future__ import annotations

import numpy as np
import pytest

from support.graphs import core_graph, image, interrupt_at_progress, pack_graph

pytestmark = pytest.mark.server


def test_interrupt_stops_denoise_within_one_step(server, sd15):
    graph = pack_graph(sd15, "euler", "karras", steps=200, seed=3)
    events, progress, interrupted_at = interrupt_at_progress(server, graph, "denoise", 2)
    assert events[-1] == "execution_interrupted", events[-5:]
    assert interrupted_at is not None and max(progress) <= interrupted_at + 1, (interrupted_at, progress[-3:])
    assert image(server, pack_graph(sd15, "euler", "karras", steps=2, seed=3)).shape == (64, 64, 3)  # still serving


def test_core_nodes_take_the_packs_model_clip_and_vae(server, sd15):
    """Core CLIPTextEncode, KSampler and VAEDecode on the pack loader's outputs give what they give on core's loader's."""
    def ksampler_graph(loader: dict) -> dict:
        g = core_graph(sd15, "euler", "karras", steps=3, seed=21)
        g["ckpt"] = loader
        del g["sigmas"], g["sampler"]
        g["denoise"] = {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": 21, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "karras",
            "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}}
        return g

    ours = image(server, ksampler_graph({"class_type": "DiffusionAnatomyCheckpointLoader", "inputs": {"ckpt_name": sd15, "prediction": "auto"}}))
    core = image(server, ksampler_graph({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15}}))
    assert ours.std() > 10 and np.abs(ours - core).max() <= 1
