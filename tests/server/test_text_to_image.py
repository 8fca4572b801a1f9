"""Whole text-to-image graphs over HTTP on a seeded random SD1.5-layout checkpoint (fixture `sd15_small`:
SD1.5's widths, VAE and CLIP-L, a two-level U-Net; the full-depth U-Net's parity is tests/host/test_parity_unet.py).

The pack's graph (its loader, text encoder, empty latent, schedule, sampler, U-Net Denoise, VAE
decode) must give the image core's graph gives (CheckpointLoaderSimple, CLIPTextEncode,
EmptyLatentImage, BasicScheduler, KSamplerSelect, SamplerCustom, VAEDecode). Tolerance: one 8-bit
level. Both run the same maths in float32 on the same weights; the modules agree to ~1e-5
relative, which can move a pixel across a rounding boundary of the PNG's 8-bit values, no more.
"""
from __future__ import annotations

import numpy as np
import pytest

from support.graphs import core_graph, image, pack_graph

pytestmark = pytest.mark.server


@pytest.mark.parametrize("sampler,scheduler", [("euler", "karras"), ("dpmpp_2m", "normal"), ("euler_ancestral", "simple")])
def test_pack_graph_gives_core_graphs_image(server, sd15_small, sampler, scheduler):
    ours = image(server, pack_graph(sd15_small, sampler, scheduler, steps=3, seed=7))
    core = image(server, core_graph(sd15_small, sampler, scheduler, steps=3, seed=7))
    assert ours.shape == core.shape == (64, 64, 3)
    assert ours.std() > 10  # a picture with structure, so the comparison below means something
    assert np.abs(ours - core).max() <= 1, f"max pixel difference {np.abs(ours - core).max()}"


def test_seed_and_prompt_change_the_image(server, sd15_small):
    a = image(server, pack_graph(sd15_small, "euler", "karras", steps=3, seed=7))
    b = image(server, pack_graph(sd15_small, "euler", "karras", steps=3, seed=8))
    assert np.abs(a - b).mean() > 5


@pytest.mark.parametrize("sampler,options", [
    ("dpmpp_2m_sde", {"eta": 1.0, "s_noise": 1.0}),  # Brownian-tree noise, seeded like core's
    ("euler_ancestral", {"eta": 1.0, "s_noise": 1.0}),
    ("uni_pc", {}),
])
def test_pack_sampler_node_in_core_sampler_custom_gives_cores_image(server, sd15_small, sampler, options):
    ours = core_graph(sd15_small, sampler, "karras", steps=3, seed=11)
    ours["sampler"] = {"class_type": f"DiffusionAnatomySampler_{sampler}", "inputs": options}
    ours["save"]["inputs"]["filename_prefix"] = f"packsampler_{sampler}"
    a, b = image(server, ours), image(server, core_graph(sd15_small, sampler, "karras", steps=3, seed=11))
    assert a.std() > 10 and np.abs(a - b).max() <= 1, f"max pixel difference {np.abs(a - b).max()}"


def with_lora(graph: dict, lora: str, strength: float = 1.0) -> dict:
    graph["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["ckpt", 0], "lora_name": lora, "strength_model": strength}}
    for node in graph.values():
        if node["inputs"].get("model") == ["ckpt", 0] and node is not graph["lora"]:
            node["inputs"]["model"] = ["lora", 0]
    return graph


def test_core_lora_loader_patches_our_unet_as_it_patches_cores(server, sd15_small):
    from support.checkpoints import sd15_lora

    lora = sd15_lora("test_lora", seed=3, scale=0.5).name
    plain = image(server, pack_graph(sd15_small, "euler", "karras", steps=3, seed=5))
    ours = image(server, with_lora(pack_graph(sd15_small, "euler", "karras", steps=3, seed=5), lora))
    core = image(server, with_lora(core_graph(sd15_small, "euler", "karras", steps=3, seed=5), lora))
    assert np.abs(ours - plain).mean() > 2  # the LoRA reaches our U-Net's weights ...
    assert np.abs(ours - core).max() <= 1  # ... exactly as it reaches core's
