"""Bad input over HTTP: each answer says what is wrong and where, and the next prompt runs normally."""
from __future__ import annotations

import pytest
import torch

from comfy_server import ComfyError
from support.checkpoints import sd15_lora
from support.graphs import image, pack_graph

pytestmark = pytest.mark.server


def fast(ckpt: str, **changes) -> dict:
    return pack_graph(ckpt, "euler", "karras", steps=2, seed=1, **changes)


def expect_error(server, graph: dict, *fragments: str) -> str:
    with pytest.raises(ComfyError) as err:
        server.run(graph)
    message = str(err.value)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    return message


def then_a_good_prompt_runs(server, ckpt: str):
    assert image(server, fast(ckpt)).shape == (64, 64, 3)


def test_wrong_type_between_nodes(server, sd15):
    graph = fast(sd15)
    graph["denoise"]["inputs"]["model"] = ["ckpt", 1]  # a CLIP where a MODEL belongs
    expect_error(server, graph, "denoise", "DiffusionAnatomyUNetDenoise", "mismatch")
    then_a_good_prompt_runs(server, sd15)


@pytest.mark.parametrize("steps", [0, -3])
def test_zero_or_negative_steps(server, sd15, steps):
    graph = fast(sd15)
    graph["sigmas"]["inputs"]["steps"] = steps
    expect_error(server, graph, "sigmas", "steps", "smaller than min")
    then_a_good_prompt_runs(server, sd15)


def test_out_of_range_value(server, sd15):
    graph = fast(sd15)
    graph["denoise"]["inputs"]["cfg"] = 1000.0
    expect_error(server, graph, "denoise", "cfg", "bigger than max")
    then_a_good_prompt_runs(server, sd15)


def test_missing_checkpoint_file(server, sd15):
    graph = fast("no_such_model.safetensors")
    expect_error(server, graph, "ckpt_name", "no_such_model.safetensors", "not in list")
    then_a_good_prompt_runs(server, sd15)


def test_empty_schedule_reaches_the_denoise_node(server, sd15):
    graph = fast(sd15)
    graph["sigmas"]["inputs"]["denoise"] = 0.0  # a valid widget value that yields no steps
    expect_error(server, graph, "DiffusionAnatomyUNetDenoise", "at least 2 sigmas")
    then_a_good_prompt_runs(server, sd15)


def test_latent_of_another_model_family(server, sd15):
    """A saved 16-channel (SD3-style) latent loaded into an SD1.5 graph. (An *empty* latent of another
    family would be silently reshaped by ComfyUI's fix_empty_latent_channels, as core does.)"""
    from safetensors.torch import save_file

    save_file({"latent_tensor": torch.ones(1, 16, 8, 8), "latent_format_version_0": torch.tensor([])},
              str(server.work / "input" / "sd3_style.latent"))
    graph = fast(sd15)
    graph["latent"] = {"class_type": "LoadLatent", "inputs": {"latent": "sd3_style.latent"}}
    expect_error(server, graph, "DiffusionAnatomyUNetDenoise", "16 channels", "4-channel")
    then_a_good_prompt_runs(server, sd15)


def test_nan_producing_model_names_sampler_and_step(server, sd15):
    lora = sd15_lora("nan_lora", nan=True)
    graph = fast(sd15)
    graph["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["ckpt", 0], "lora_name": lora.name, "strength_model": 1.0}}
    graph["denoise"]["inputs"]["model"] = ["lora", 0]
    expect_error(server, graph, "DiffusionAnatomyUNetDenoise", "Euler", "step 0", "NaN")
    then_a_good_prompt_runs(server, sd15)
