"""Bad input over HTTP: each answer says what is wrong and where, and the next prompt runs normally."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from comfy_server import ComfyError
from diffusion_anatomy.embedded import LOADER_NAME as TINY
from diffusion_anatomy.embedded import WEIGHTS as TINY_WEIGHTS
from diffusion_anatomy.samplers import REGISTRY
from support.checkpoints import sd15_lora
from support.graphs import image, pack_graph
from support.hostile import markers, prove_payload_is_live, write_hostile

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


def test_wrong_type_between_nodes(server, sd15_small):
    graph = fast(sd15_small)
    graph["denoise"]["inputs"]["model"] = ["ckpt", 1]  # a CLIP where a MODEL belongs
    expect_error(server, graph, "denoise", "DiffusionAnatomyUNetDenoise", "mismatch")
    then_a_good_prompt_runs(server, sd15_small)


@pytest.mark.parametrize("steps", [0, -3])
def test_zero_or_negative_steps(server, sd15_small, steps):
    graph = fast(sd15_small)
    graph["sigmas"]["inputs"]["steps"] = steps
    expect_error(server, graph, "sigmas", "steps", "smaller than min")
    then_a_good_prompt_runs(server, sd15_small)


def test_out_of_range_value(server, sd15_small):
    graph = fast(sd15_small)
    graph["denoise"]["inputs"]["cfg"] = 1000.0
    expect_error(server, graph, "denoise", "cfg", "bigger than max")
    then_a_good_prompt_runs(server, sd15_small)


def test_missing_checkpoint_file(server, sd15_small):
    graph = fast("no_such_model.safetensors")
    expect_error(server, graph, "ckpt_name", "no_such_model.safetensors", "not in list")
    then_a_good_prompt_runs(server, sd15_small)


def test_empty_schedule_reaches_the_denoise_node(server, sd15_small):
    graph = fast(sd15_small)
    graph["sigmas"]["inputs"]["denoise"] = 0.0  # a valid widget value that yields no steps
    expect_error(server, graph, "DiffusionAnatomyUNetDenoise", "at least 2 sigmas")
    then_a_good_prompt_runs(server, sd15_small)


def test_latent_of_another_model_family(server, sd15_small):
    """A saved 16-channel (SD3-style) latent loaded into an SD1.5 graph. (An *empty* latent of another
    family would be silently reshaped by ComfyUI's fix_empty_latent_channels, as core does.)"""
    from safetensors.torch import save_file

    save_file({"latent_tensor": torch.ones(1, 16, 8, 8), "latent_format_version_0": torch.tensor([])},
              str(server.work / "input" / "sd3_style.latent"))
    graph = fast(sd15_small)
    graph["latent"] = {"class_type": "LoadLatent", "inputs": {"latent": "sd3_style.latent"}}
    expect_error(server, graph, "DiffusionAnatomyUNetDenoise", "16 channels", "4-channel")
    then_a_good_prompt_runs(server, sd15_small)


def test_nan_producing_model_names_sampler_and_step(server, sd15_small):
    lora = sd15_lora("nan_lora", nan=True)
    graph = fast(sd15_small)
    graph["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["ckpt", 0], "lora_name": lora.name, "strength_model": 1.0}}
    graph["denoise"]["inputs"]["model"] = ["lora", 0]
    expect_error(server, graph, "DiffusionAnatomyUNetDenoise", "Euler", "step 0", "NaN")
    then_a_good_prompt_runs(server, sd15_small)


# --------------------------------------------------------------------------- the embedded model: fast prompts

SEEDS = itertools.count(100)  # a new seed each time: ComfyUI would answer a repeated prompt from its cache


def tiny(steps: int = 2, **changes) -> dict:
    return pack_graph(TINY, "euler", "karras", steps=steps, seed=next(SEEDS), **changes)


def then_a_tiny_prompt_runs(server):
    assert image(server, tiny()).shape == (64, 64, 3)


@pytest.mark.parametrize("cfg", [math.nan, math.inf])
def test_non_finite_cfg_is_refused_naming_cfg(server, cfg):
    expect_error(server, tiny(cfg=cfg), "cfg", str(cfg))
    then_a_tiny_prompt_runs(server)


@pytest.mark.parametrize("weight, shown", [("1e309", "inf"), ("nan", "nan")])
def test_non_finite_prompt_weight_is_refused_naming_the_weight(server, weight, shown):
    graph = tiny()
    graph["pos"]["inputs"]["text"] = f"a ({'red'}:{weight}) circle"
    expect_error(server, graph, "DiffusionAnatomyCLIPTextEncode", f"prompt weight {shown}", "red")
    then_a_tiny_prompt_runs(server)


# --------------------------------------------------------------------------- hostile checkpoint files

HOSTILE = ["truncated", "huge_header", "huge_tensor_claim", "shape_lies", *(f"pickle_protocol_{p}" for p in range(6)),
           "torch_zip", "random_tensors", "unet_junk_shapes"]


@pytest.fixture(scope="module")
def hostile(server):
    folder = server.work / "models" / "checkpoints" / "hostile"
    return folder, write_hostile(folder, TINY_WEIGHTS)


def loading_instead(graph: dict, ckpt_name: str) -> dict:
    """The graph with its model from `ckpt_name` through a second loader node. The good loader stays in the
    graph, unused: ComfyUI keeps cached outputs of the nodes a prompt names, so the next good prompt does not
    load the model again (seconds per case on this shared CPU)."""
    graph = {k: {**v, "inputs": {n: (["bad_ckpt", x[1]] if isinstance(x, list) and x[0] == "ckpt" else x)
                                 for n, x in v["inputs"].items()}} for k, v in graph.items()}
    graph["bad_ckpt"] = {**graph["ckpt"], "inputs": {**graph["ckpt"]["inputs"], "ckpt_name": ckpt_name}}
    return graph


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_checkpoint_file_gives_a_clear_error(server, hostile, name):
    folder, cases = hostile
    assert sorted(cases) == sorted(HOSTILE)
    path, fragments = cases[name]
    graph = loading_instead(tiny(), f"hostile/{path.name}")
    expect_error(server, graph, "DiffusionAnatomyCheckpointLoader", path.name, *fragments)
    assert markers(folder) == []  # no pickle payload ran
    then_a_tiny_prompt_runs(server)


def test_the_pickle_payloads_are_live_and_none_ran(server, hostile, tmp_path):
    """The payload does create its marker when unpickled (here, on our own copy); the server never did."""
    assert prove_payload_is_live(tmp_path)
    assert markers(hostile[0]) == []


# --------------------------------------------------------------------------- every sampler node at its widgets' extremes

def widget_extremes(server, class_type: str, end: str) -> dict:
    """The node's widgets at their minimum (or maximum), as the server describes them: numbers at min/max,
    booleans False/True, lists at their first/last choice."""
    spec = server.get(f"/object_info/{class_type}")[class_type]["input"]["required"]
    values = {}
    for name, (kind, *rest) in spec.items():
        options = rest[0] if rest else {}
        if isinstance(kind, list):
            values[name] = kind[0 if end == "min" else -1]
        elif kind == "BOOLEAN":
            values[name] = end == "max"
        else:
            values[name] = options[end]
    return values


@pytest.mark.parametrize("end", ["min", "max"])
@pytest.mark.parametrize("sampler_id", list(REGISTRY))
def test_sampler_widgets_at_their_extremes_finish_or_name_the_option(server, sampler_id, end):
    """6 steps, embedded model, 64x64: a finite result (U-Net Denoise refuses NaN/inf latents) or an error
    that names one of the node's options with its value."""
    class_type = f"DiffusionAnatomySampler_{sampler_id}"
    values = widget_extremes(server, class_type, end)
    graph = tiny(steps=6)
    graph["sampler"] = {"class_type": class_type, "inputs": values}
    try:
        picture = image(server, graph)
    except ComfyError as error:
        named = [name for name in values if f"{name}=" in str(error)]
        assert named, f"{values}: {error}"
        then_a_tiny_prompt_runs(server)
    else:
        assert picture.shape == (64, 64, 3)
