"""Core's model-patch nodes and ControlNet / T2I-Adapter on the pack's MODEL give what they give on core's.

Over HTTP, a random SD1.5-layout checkpoint loaded once by the pack's loader and once by core's
CheckpointLoaderSimple (for the patches the small one, `sd15_small`: SD1.5's widths, heads and context, every block
kind, two levels; a patch reaches each block through the same `transformer_options`, so full depth adds blocks of
kinds already checked at sixteen times the cost; for ControlNet and T2I-Adapter the full one, whose residuals need
all twelve input blocks), the same graph otherwise: loader -> patch node -> core SamplerCustom
(euler, 3 steps, cfg 5, 128x128 pictures = 16x16 latents) -> SaveLatent, both chains in one prompt. The patches reach the
U-Net through `transformer_options` (attention patches and replacements, block patches) and the
control through `control`; the pack's U-Net honours both (unet/hooks.py).

Measure: max |pack - core| / max |core| over the latent. Without patches the two models differ by
float32 rounding (~1e-6: the same maths in another order, tests/host/test_parity_unet.py); a patch
applied in the wrong place, with wrong fields or not at all moves the latent by the patch's own
effect. Bound 1e-3 (the issue's); each patch must move core's latent by at least ten times that
(`EFFECT`), else equality would prove nothing.
"""
from __future__ import annotations

import pytest
from safetensors.torch import load_file

from support.graphs import NEGATIVE, PROMPT

pytestmark = pytest.mark.server

SIZE, STEPS, SEED, CFG = 128, 3, 7, 5.0
TOLERANCE = 1e-3
EFFECT = 10 * TOLERANCE

# core's patch nodes and their inputs (besides the model); chosen to act at a 16x16 latent
PATCHES = {
    "FreeU": {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2},  # output_block_patch
    "FreeU_V2": {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2},  # output_block_patch
    "PerturbedAttentionGuidance": {"scale": 3.0},  # attn1 replacement ("middle", 0), extra U-Net call  # attn1 replacement ("middle", 0), extra U-Net call
    "SelfAttentionGuidance": {"scale": 0.5, "blur_sigma": 2.0},  # attn1 replacement ("middle", 0, 0) reading cond_or_uncond
    "TomePatchModel": {"ratio": 0.5},  # attn1_patch + attn1_output_patch reading original_shape
    # attn1_patch + attn1_output_patch: 8x8-token tiles of the 16x16 level; swap_size 1 = no random tiling
    "HyperTile": {"tile_size": 64, "swap_size": 1, "max_depth": 0, "scale_depth": False},
}


def loader(kind: str, ckpt: str) -> dict:
    if kind == "pack":
        return {"class_type": "DiffusionAnatomyCheckpointLoader", "inputs": {"ckpt_name": ckpt, "prediction": "auto"}}
    return {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}


KINDS = ("core", "pack")


def graph(ckpt: str, patch: str | None = None, control: str | None = None) -> dict:
    """For core's loader and the pack's, side by side in one prompt: loader -> [patch] -> SamplerCustom -> SaveLatent,
    with [ControlNetApplyAdvanced] on the conditioning. The loaders and text encoders keep their node ids and inputs
    from test to test, so ComfyUI's cache holds both models between prompts and only the patched part runs again
    (loading the 2 GB checkpoint twice per prompt was most of each test's time)."""
    g = {"latent": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
         "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}}
    if control is not None:
        g["hint"] = {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1, "color": 0x8040C0}}
        g["cnet"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": control}}
    for kind in KINDS:
        model = [f"ckpt_{kind}", 0]
        g[f"ckpt_{kind}"] = loader(kind, ckpt)
        g[f"pos_{kind}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": [f"ckpt_{kind}", 1], "text": PROMPT}}
        g[f"neg_{kind}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": [f"ckpt_{kind}", 1], "text": NEGATIVE}}
        if patch is not None:
            g[f"patch_{kind}"] = {"class_type": patch, "inputs": {"model": model, **PATCHES[patch]}}
            model = [f"patch_{kind}", 0]
        positive, negative = [f"pos_{kind}", 0], [f"neg_{kind}", 0]
        if control is not None:
            g[f"apply_{kind}"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
                "positive": positive, "negative": negative, "control_net": ["cnet", 0], "image": ["hint", 0],
                "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}}
            positive, negative = [f"apply_{kind}", 0], [f"apply_{kind}", 1]
        g[f"sigmas_{kind}"] = {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": "normal", "steps": STEPS, "denoise": 1.0}}
        g[f"denoise_{kind}"] = {"class_type": "SamplerCustom", "inputs": {
            "model": model, "positive": positive, "negative": negative, "latent_image": ["latent", 0],
            "sampler": ["sampler", 0], "sigmas": [f"sigmas_{kind}", 0], "cfg": CFG, "noise_seed": SEED, "add_noise": True}}
        g[f"save_{kind}"] = {"class_type": "SaveLatent", "inputs": {
            "samples": [f"denoise_{kind}", 0], "filename_prefix": f"patches/{kind}_{patch or control or 'plain'}"}}
    return g


def latents(server, g: dict) -> tuple:
    """(core's latent, the pack's) from one run of `graph`."""
    outputs = server.run(g)
    files = {kind: server.output_files({k: v for k, v in outputs.items() if k == f"save_{kind}"}, kind="latents")
             for kind in KINDS}
    return tuple(load_file(str(files[kind][0]))["latent_tensor"].float() for kind in KINDS)


def relative(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def unpatched(server, ckpt: str):
    """Core's latent without patch or control, and the pack's; the two differ by rounding only."""
    core, pack = latents(server, graph(ckpt))
    print(f"{ckpt} with no patch: pack vs core {relative(pack, core):.1e}")
    assert relative(pack, core) <= TOLERANCE
    return core


@pytest.fixture(scope="module")
def plain_small(server, sd15_small):
    return unpatched(server, sd15_small)


@pytest.fixture(scope="module")
def plain(server, sd15):
    return unpatched(server, sd15)


@pytest.mark.parametrize("patch", list(PATCHES))
def test_core_patch_node_on_the_packs_model(server, sd15_small, plain_small, patch):
    core, pack = latents(server, graph(sd15_small, patch=patch))
    difference, effect = relative(pack, core), relative(core, plain_small)
    print(f"{patch}: pack vs core {difference:.1e}, patch effect on core {effect:.1e}")  # shown with -rP
    assert effect >= EFFECT, f"{patch} does not change core's latent at this size: the comparison proves nothing"
    assert difference <= TOLERANCE


@pytest.fixture(scope="module")
def control_files(comfy):
    from support.controlnets import sd15_random_controlnet, sd15_random_t2i_adapter

    return {"ControlNet": sd15_random_controlnet(comfy).name, "T2I-Adapter": sd15_random_t2i_adapter(comfy).name}


@pytest.mark.parametrize("kind", ["ControlNet", "T2I-Adapter"])
def test_controlnet_on_the_packs_model(server, sd15, plain, control_files, kind):
    """Core's ControlNetApplyAdvanced with a random ControlNet / T2I-Adapter built from ComfyUI's classes.

    The control module is core's in both graphs and sees the same inputs, so its residuals agree to
    rounding and the same bound holds; a residual added at the wrong block (or dropped) moves the
    latent by the control's effect."""
    core, pack = latents(server, graph(sd15, control=control_files[kind]))
    difference, effect = relative(pack, core), relative(core, plain)
    print(f"{kind}: pack vs core {difference:.1e}, control effect on core {effect:.1e}")
    assert effect >= EFFECT, f"the {kind} does not change core's latent: the comparison proves nothing"
    assert difference <= TOLERANCE
