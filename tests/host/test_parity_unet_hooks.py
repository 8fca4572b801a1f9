"""Every hook point of our U-Net against ComfyUI's `openaimodel.UNetModel`, same weights, same hooks.

A patch at each of ComfyUI's patch points (each one changes the numbers and logs the fields it was
called with), replacements of attn1 and attn2 under both key forms, and ControlNet residuals for
input, middle and output: the two U-Nets must call the patches in the same order with the same
fields and give the same output. Tolerance as tests/host/test_parity_unet.py (float32 rounding,
~1e-6 observed; 1e-4 bound), since both then run the same maths.
"""
from __future__ import annotations

import copy

import torch
from einops import rearrange

from diffusion_anatomy.unet import UNetConfig, UNetModel
from support import checkpoints

# two transformer layers at level 1 and in the middle, so `block_index` and the 3-part keys matter
CONFIG = UNetConfig(model_channels=32, channel_mult=(1, 2), transformer_depth=(1, 2), transformer_depth_middle=2,
                    context_dim=24, num_heads=2)
TOLERANCE = 1e-4


def models(comfy):
    with torch.device("meta"):
        ours = UNetModel(CONFIG)
    ours.load_state_dict(checkpoints.fill_random(ours.state_dict(), 3), strict=True, assign=True)
    core = checkpoints.comfy_unet(comfy, CONFIG)
    core.load_state_dict(ours.state_dict(), strict=True, assign=True)
    return ours.eval(), core.eval()


def plain_attention(q, k, v, heads, scale=1.0):
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    weights = (scale * q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    return rearrange(weights @ v, "b h n d -> b n (h d)")


def logging_options(log: list) -> dict:
    """transformer_options with one patch at every point; each logs what it saw and nudges the numbers."""
    def fields(o):
        return (o.get("block"), o.get("block_index"), o.get("transformer_index"),
                tuple(o.get("activations_shape", ())), tuple(o["original_shape"]), tuple(o["cond_or_uncond"]))

    def block_patch(name, factor):
        def patch(h, options):
            log.append((name, fields(options), tuple(h.shape)))
            return h * factor
        return patch

    def output_block_patch(h, skip, options):
        log.append(("output_block_patch", fields(options), tuple(h.shape), tuple(skip.shape)))
        return h * 0.97, skip * 1.03

    def emb_patch(emb, model_channels, options):
        log.append(("emb_patch", model_channels, tuple(options["original_shape"])))
        return emb * 1.05

    def attn_patch(name):
        def patch(n, context, value, extra):
            log.append((name, fields(extra), extra["n_heads"], extra["dim_head"], tuple(context.shape)))
            return n * 1.02, context * 0.9, value * 1.1  # keys and values set apart: both paths must honour it
        return patch

    def output_patch(name):
        def patch(n, extra):
            log.append((name, fields(extra)))
            return n * 0.95
        return patch

    def middle_patch(x, extra):
        log.append(("middle_patch", fields(extra)))
        return x + 0.01

    def replace(name, scale):
        def attend(q, k, v, extra):
            log.append((name, fields(extra), tuple(q.shape), tuple(k.shape)))
            return plain_attention(q, k, v, extra["n_heads"], scale)
        return attend

    return {
        "cond_or_uncond": [1, 0],
        "sigmas": torch.tensor([3.0, 3.0]),
        "patches": {
            "emb_patch": [emb_patch],
            "input_block_patch": [block_patch("input_block_patch", 1.01)],
            "input_block_patch_after_skip": [block_patch("input_block_patch_after_skip", 0.99)],
            "output_block_patch": [output_block_patch],
            "attn1_patch": [attn_patch("attn1_patch")],
            "attn2_patch": [attn_patch("attn2_patch")],
            "attn1_output_patch": [output_patch("attn1_output_patch")],
            "attn2_output_patch": [output_patch("attn2_output_patch")],
            "middle_patch": [middle_patch],
        },
        "patches_replace": {
            # PAG's and SAG's form: (block, id, layer); a 2-part key covers every layer of the block
            "attn1": {("middle", 0, 1): replace("attn1 replace", 0.5), ("output", 3): replace("attn1 replace", 2.0)},
            "attn2": {("input", 4): replace("attn2 replace", 3.0), ("input", 4, 1): replace("attn2 replace 4.1", 0.3)},
        },
    }


def control_residuals(shapes: dict, seed: int) -> dict:
    """ControlNet-like residuals for every input/output block and the middle; one input slot left None."""
    g = torch.Generator().manual_seed(seed)
    control = {name: [0.1 * torch.randn(s, generator=g) for s in shapes[name]] for name in ("input", "middle", "output")}
    control["input"][3] = None
    return control


def test_patches_replacements_and_control_as_comfyui_runs_them(comfy):
    ours, core = models(comfy)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([700.0, 20.0])
    context = torch.randn(2, 7, CONFIG.context_dim, generator=g)

    shapes_log = []
    with torch.no_grad():
        plain = ours(x, t, context)
        ours(x, t, context, transformer_options={"patches": {"input_block_patch": [
            lambda h, o: shapes_log.append(tuple(h.shape)) or h]}})
    # ComfyUI pops residuals from the end of each list: the last entry meets input block 0
    shapes = {"input": shapes_log[::-1], "middle": [shapes_log[-1]], "output": shapes_log}
    control = control_residuals(shapes, seed=5)

    log_ours, log_core = [], []
    with torch.no_grad():
        out_ours = ours(x, t, context, control=copy.deepcopy(control), transformer_options=logging_options(log_ours))
        out_core = core(x, t, context, control=copy.deepcopy(control), transformer_options=logging_options(log_core))

    assert log_ours == log_core
    names = {entry[0] for entry in log_core}
    assert names >= {"emb_patch", "input_block_patch", "input_block_patch_after_skip", "output_block_patch",
                     "attn1_patch", "attn2_patch", "attn1_output_patch", "attn2_output_patch", "middle_patch",
                     "attn1 replace", "attn2 replace", "attn2 replace 4.1"}
    error = ((out_ours - out_core).abs().max() / out_core.abs().max()).item()
    change = ((out_core - plain).abs().max() / plain.abs().max()).item()
    print(f"hooks: max relative error {error:.2e}, hooks change the output by {change:.2e}")
    assert error <= TOLERANCE and change > 100 * TOLERANCE


def test_no_hooks_is_the_plain_forward(comfy):
    """ComfyUI always passes some options (cond_or_uncond, sigmas...): without patches nothing changes."""
    ours, _ = models(comfy)
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, CONFIG.context_dim, generator=g)
    t = torch.tensor([500.0, 5.0])
    options = {"cond_or_uncond": [0, 1], "sigmas": torch.ones(2), "patches": {}, "patches_replace": {}}
    with torch.no_grad():
        assert torch.equal(ours(x, t, context, control={"input": [], "output": []}, transformer_options=options),
                           ours(x, t, context))
    assert options == {"cond_or_uncond": [0, 1], "sigmas": options["sigmas"], "patches": {}, "patches_replace": {}}
