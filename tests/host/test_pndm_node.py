"""PNDM through the pack's sampler node inside ComfyUI's sampling: the node hands the sampler the model's own sigma
table (its model_sampling), so on a schedule of the model's discrete sigmas ("simple") the pseudo Runge-Kutta
middles are the half timesteps' sigmas, and on another grid ("karras") the geometric middles."""
from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def embedded(comfy):
    from diffusion_anatomy.embedded import LOADER_NAME
    from diffusion_anatomy.nodes.model_nodes import CheckpointLoader

    return CheckpointLoader().load(LOADER_NAME, "auto")


def sigmas_seen(comfy, embedded, scheduler: str, steps: int):
    import comfy.sample
    import comfy.samplers

    from diffusion_anatomy.nodes.model_nodes import CLIPTextEncode
    from diffusion_anatomy.nodes.sampler_nodes import make_ksampler
    from diffusion_anatomy.samplers import REGISTRY

    model, clip, _ = embedded
    seen = []

    def wrapper(apply_model, args):  # ComfyUI's unet function wrapper: sees every model call's sigma
        seen.append(float(args["timestep"][0]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    patched = model.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    sampling = patched.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, steps)
    (cond,) = CLIPTextEncode().encode(clip, "a red circle")
    latent = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    comfy.sample.sample_custom(patched, noise, 1.0, make_ksampler(REGISTRY["pndm"], {}), sigmas, cond, cond, latent, seed=0,
                               disable_pbar=True)
    return seen, sigmas.tolist(), sampling.sigmas.tolist()


def test_pndm_node_takes_half_timesteps_on_the_model_sigmas(comfy, embedded):
    seen, sigmas, table = sigmas_seen(comfy, embedded, "simple", 10)
    t = [min(range(len(table)), key=lambda k: abs(table[k] - s)) for s in sigmas[:4]]
    assert t == [999, 899, 799, 699]  # "simple": every 100th timestep, the model's own sigmas
    mids = [table[t[k] - (t[k] - t[k + 1]) // 2] for k in range(3)]  # 949, 849, 749
    expected = [v for k in range(3) for v in (sigmas[k], mids[k], mids[k], sigmas[k + 1])]
    assert seen[:12] == pytest.approx(expected, rel=1e-6)
    assert all(abs(m - math.sqrt(a * b)) > 1e-4 * m for m, a, b in zip(mids, sigmas, sigmas[1:]))  # not the geometric ones


def test_pndm_node_takes_geometric_middles_off_the_model_sigmas(comfy, embedded):
    seen, sigmas, _ = sigmas_seen(comfy, embedded, "karras", 10)
    mids = [math.sqrt(sigmas[k] * sigmas[k + 1]) for k in range(3)]
    assert seen[:12] == pytest.approx([v for k in range(3) for v in (sigmas[k], mids[k], mids[k], sigmas[k + 1])], rel=1e-6)
