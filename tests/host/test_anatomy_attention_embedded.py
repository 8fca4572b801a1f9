"""Cross-attention per word on models that know what they draw: the embedded model through the pack's
loader and U-Net, and the pack's U-Net against core's on the random SD1.5 checkpoint.

Where the shape word looks: 24 fixed prompts of the embedded model's data with one seed each (those of
tests/pure/test_embedded_draws.py), 20 Euler steps, CFG 5, sampled through ComfyUI with the MODEL of
Cross-Attention Capture. The shape word's map (the sum of its tokens' attention over heads, layers and
steps, enlarged bilinearly from the 8x8 latent to the 64x64 picture) is measured by its mass above its
minimum in each of the five named regions (support.shapes.REGIONS; each is a quarter of the picture,
so a flat or random map gives each about 0.25). "Most of its mass in the named region" is read as: the
named region holds more of it than any other region. The model itself puts the shape in the named
region 57 of 60 times (README model card); the maps are required to point there in at least 80%.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusion_anatomy.embedded import data as ed
from support import shapes

pytestmark = pytest.mark.host

CAPTIONS = [shapes.caption((c.shape, c.colour, c.size, c.position, c.background))
            for c in ed.sample_captions(24, torch.Generator().manual_seed(2026))]
SEEDS = list(range(100, 100 + len(CAPTIONS)))
RATE = 0.8


def run(comfy, model, clip, text, seed, steps=20, size=64):
    import comfy.sample

    from diffusion_anatomy.nodes import model_nodes

    (positive,) = model_nodes.CLIPTextEncode().encode(clip, text)
    (negative,) = model_nodes.CLIPTextEncode().encode(clip, "")
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", steps)
    latent = torch.zeros(1, 4, size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample_custom(model, noise, 5.0, comfy.samplers.sampler_object("euler"), sigmas, positive, negative,
                                      latent, seed=seed, disable_pbar=True)


def region_masses(heat: torch.Tensor) -> dict[str, float]:
    from diffusion_anatomy.anatomy import attention_maps as am

    big = F.interpolate(heat[None, None].float(), size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    return {name: am.region_mass(big, box) for name, box in shapes.REGIONS.items()}


def test_the_shape_words_heatmap_points_at_the_named_region(comfy):
    from diffusion_anatomy.embedded import LOADER_NAME
    from diffusion_anatomy.nodes import anatomy_attention_nodes as nodes
    from diffusion_anatomy.nodes import model_nodes

    model, clip, _vae = model_nodes.CheckpointLoader().load(LOADER_NAME, "auto")
    patched, maps = nodes.CrossAttentionCapture().capture(model)
    named, shares, opposite = [], [], []
    flip = {"top left": "bottom right", "bottom right": "top left", "top right": "bottom left", "bottom left": "top right", "centre": "top left"}
    for cap, seed in zip(CAPTIONS, SEEDS):
        run(comfy, patched, clip, cap.text, seed)
        assert maps.calls == 7 * 20  # the tiny U-Net's 7 transformers (2 down, 1 middle, 4 up) at each of 20 steps
        words, _ = nodes.words_of_prompt(clip, cap.text)
        shape = next(w for w in words if w.text == cap.shape)
        masses = region_masses(maps.sums[0][list(shape.positions)].sum(0))
        best = max(masses, key=masses.get)
        named.append(best == cap.position)
        opposite.append(best == flip[cap.position])
        shares.append(masses[cap.position])
        print(f"{cap.text}: named-region share {masses[cap.position]:.2f}, largest in {best}")
    rate = sum(named) / len(named)
    print(f"named region holds the most: {sum(named)}/{len(named)} = {rate:.0%}; mean share {sum(shares) / len(shares):.2f} "
          f"(a flat map: 0.25); more than half in the named region: {sum(s > 0.5 for s in shares)}/{len(shares)}")
    assert rate >= RATE
    assert sum(shares) / len(shares) >= 0.4  # well above a flat map's 0.25
    assert sum(opposite) <= 2  # the measure can fail: the opposite region almost never wins


def test_core_and_pack_unets_give_the_same_maps_on_sd15(comfy, sd15, monkeypatch):
    """The random SD1.5 checkpoint loaded by core's loader and by the pack's, sampled 2 Euler steps at 128x128 with
    the same noise through Cross-Attention Capture: the same maps. Both U-Nets run the same float32 maths in
    another order (tests/host/test_parity_unet.py: ~1e-6 relative per forward); the maps are sums of softmaxes of
    those activations, so 1e-4 relative to the largest value leaves room for the rounding, while a wrong layer,
    a missed layer (1/16 of the sum) or the unconditional half (a different prompt) is far larger."""
    import folder_paths

    from diffusion_anatomy.nodes import anatomy_attention_nodes as nodes
    from diffusion_anatomy.nodes import model_nodes
    from support.checkpoints import FIXTURES

    monkeypatch.setattr(folder_paths, "get_full_path", lambda kind, name: str(FIXTURES / name))
    results = []
    for loader in ("core", "pack"):
        if loader == "core":
            model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(str(FIXTURES / sd15), output_vae=False, output_clip=True)
        else:
            model, clip, _vae = model_nodes.CheckpointLoader().load(sd15, "auto")
        patched, maps = nodes.CrossAttentionCapture().capture(model)
        run(comfy, patched, clip, "a photograph of an astronaut riding a horse", seed=0, steps=2, size=128)
        assert maps.calls == 16 * 2
        results.append(maps.sums.clone())
        del model, clip, patched
    core, pack = results
    error = ((core - pack).abs().max() / core.abs().max()).item()
    print(f"maps, pack vs core: max relative difference {error:.2e}")
    assert error < 1e-4
