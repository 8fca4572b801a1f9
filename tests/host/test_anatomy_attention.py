"""Cross-attention per word and U-Net levels captured through ComfyUI's model patches, in-process.

On the random full-size SD1.5 checkpoint (fixture `sd15`) loaded by core's loader: sampling with the
capture patches gives the latent it gives without them, within float32 rounding (the replacement
computes the same attention with SDPA; core may use another kernel on this machine, hence not
bit-identity), the maps have the shape and count DAAM's definition gives, and the level shapes are
those `anatomy.levels.level_shapes` derives from the SD1.5 preset.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host

SIZE = 128  # pixels: SD1.5 at 16x16 latents (every level still 2x2 or more), so a step costs ~1/16 of 512 on a CPU
STEPS = 3
PROMPT = "a photograph of an astronaut riding a horse"


@pytest.fixture(scope="module")
def core_sd15(comfy, sd15):
    from support.checkpoints import FIXTURES

    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(str(FIXTURES / sd15), output_vae=False, output_clip=True)
    return model, clip


def encode(clip, text):
    tokens = clip.tokenize(text)
    return clip.encode_from_tokens_scheduled(tokens)


def sample(comfy, model, clip, steps=STEPS, size=SIZE, sampler="euler", cfg=5.0):
    import comfy.sample

    positive, negative = encode(clip, PROMPT), encode(clip, "")
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", steps)
    latent = torch.zeros(1, 4, size // 8, size // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object(sampler), sigmas, positive, negative,
                                      latent, seed=0, disable_pbar=True)


def test_cross_attention_capture_leaves_sampling_unchanged_and_sums_every_layer(comfy, core_sd15):
    from diffusion_anatomy.nodes.anatomy_attention_nodes import CrossAttentionCapture

    model, clip = core_sd15
    plain = sample(comfy, model, clip)
    patched, maps = CrossAttentionCapture().capture(model)
    captured = sample(comfy, patched, clip)
    error = ((captured - plain).abs().max() / plain.abs().max()).item()
    print(f"relative difference with capture: {error:.2e}")
    assert error < 1e-5
    # SD1.5 has 16 transformers (6 down, 1 middle, 9 up), one cross-attention each; euler: one model call per step
    assert maps.calls == 16 * STEPS and len(maps.sigmas) == STEPS
    assert maps.sums.shape == (1, 77, SIZE // 8, SIZE // 8)
    # every layer's attention is a distribution over the 77 tokens at each position: the sums add up to the calls
    assert torch.allclose(maps.sums.sum(dim=1), torch.full((1, SIZE // 8, SIZE // 8), float(maps.calls)), rtol=1e-4)
    # a second sampling run starts from zero (ON_PRE_RUN resets the sum)
    sample(comfy, patched, clip)
    assert maps.calls == 16 * STEPS


def test_views_draw_on_core_models(comfy, core_sd15):
    """Both views run on core's U-Net and CLIP: the words are the prompt's, the level shapes are the preset's."""
    from diffusion_anatomy.anatomy import levels as lv
    from diffusion_anatomy.nodes import anatomy_attention_nodes as nodes
    from diffusion_anatomy.unet import SD15

    model, clip = core_sd15
    patched, maps = nodes.CrossAttentionCapture().capture(model)
    patched, levels = nodes.UNetLevelsCapture().capture(patched, step=1)
    sample(comfy, patched, clip, steps=2)
    picture = torch.rand(1, SIZE, SIZE, 3)
    shown = nodes.CrossAttentionView().view(maps, picture, clip, PROMPT, "astronaut, horse")
    (image,) = shown["result"]
    assert len(shown["ui"]["images"]) == image.shape[0]  # the picture is shown in the node too
    assert image.shape[0] == 1 and image.shape[-1] == 3 and image.shape[2] >= 3 * 192  # picture + 2 words
    assert [(x.name, x.shape) for x in levels.levels()] == [(x.name, x.shape) for x in lv.level_shapes(SD15, SIZE // 8, SIZE // 8)]
    (u,) = nodes.UNetLevelsView().view(levels, picture, "pca_rgb")["result"]
    assert u.shape[2] == (lv.PANEL + 12) * 24 + 12 + 2 * lv.PANEL + 12
    with pytest.raises(ValueError, match="words: 'zebra' not in the prompt"):
        nodes.CrossAttentionView().view(maps, picture, clip, PROMPT, "zebra")
    with pytest.raises(ValueError, match="step: 5 is out of range"):
        sample(comfy, nodes.UNetLevelsCapture().capture(model, step=5)[0], clip, steps=2)
