"""What cannot fit is refused before it runs, naming size, batch, estimate and the memory available; the
pack's VAE decodes in tiles instead where only that fits (with a log line). The memory available is
ComfyUI's own reading (`model_management.get_free_memory`), set here to chosen values."""
from __future__ import annotations

import logging
import math

import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def embedded(comfy):
    from diffusion_anatomy.embedded import LOADER_NAME
    from diffusion_anatomy.nodes.model_nodes import CheckpointLoader

    return CheckpointLoader().load(LOADER_NAME, "auto")


def latent(batch=1, size=64):
    return torch.randn(batch, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))


def test_vae_switches_to_tiles_when_only_tiles_fit(embedded, monkeypatch, caplog):
    import comfy.model_management as mm

    from diffusion_anatomy.vae.memory import decode_bytes, decode_tiled_bytes

    from diffusion_anatomy.nodes.bridge import GUARD_TILE

    _, _, vae = embedded
    z = latent(size=512)  # larger than a tile and its halo: tiles hold less than the whole
    whole = vae.decode(z)
    cfg = vae.first_stage_model.cfg
    untiled, tiled = decode_bytes(cfg, 1, 512, 512), decode_tiled_bytes(cfg, 1, 512, 512, GUARD_TILE)
    assert tiled < untiled
    monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: (tiled + untiled) // 2)
    with caplog.at_level(logging.INFO):
        tiles = vae.decode(z)
    assert f"decoding 512x512, batch 1, in {GUARD_TILE}-pixel tiles" in caplog.text
    # seamless tiling: the same image up to fp32 rounding of the image-wide statistics (2e-4 seen), far below
    # one 8-bit level (1/255)
    assert tiles.shape == whole.shape and (tiles - whole).abs().max() < 1e-3


def test_vae_refuses_what_not_even_tiles_fit(embedded, monkeypatch):
    import comfy.model_management as mm

    _, _, vae = embedded
    monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: 2**20)
    with pytest.raises(MemoryError, match=r"VAE Decode: 64x64 images, batch 3, need about 0\.\d+ GiB per image .* but 0\.00 GiB available on cpu"):
        vae.decode(latent(batch=3))


def denoise(model, clip, latent_image, cfg=5.0, steps=1):

    from diffusion_anatomy.nodes.denoise_nodes import UNetDenoise
    from diffusion_anatomy.nodes.model_nodes import CLIPTextEncode
    from diffusion_anatomy.nodes.sampler_nodes import make_ksampler
    from diffusion_anatomy.samplers import REGISTRY

    (cond,) = CLIPTextEncode().encode(clip, "a red circle")
    sigmas = torch.linspace(14.6, 0.0, steps + 1)
    return UNetDenoise().denoise(model, cond, cond, latent_image, make_ksampler(REGISTRY["euler"], {}), sigmas, cfg, 0, True)


def test_unet_denoise_refuses_what_cannot_fit(embedded, monkeypatch):
    import comfy.model_management as mm

    from diffusion_anatomy.nodes.model_nodes import EmptyLatent
    from diffusion_anatomy.unet.memory import activation_bytes

    model, clip, _ = embedded
    (empty,) = EmptyLatent().generate(model, 8192, 8192, 2)
    need = activation_bytes(model.model.diffusion_model.config, 2, 1024, 1024)
    monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: need - 1)
    with pytest.raises(MemoryError, match=rf"a 8192x8192 image \(latent 1024x1024\), batch 2, needs about {need / 2**30:.2f} GiB "
                                          rf"for one U-Net call but {(need - 1) / 2**30:.2f} GiB are available on cpu"):
        denoise(model, clip, empty)


@pytest.mark.parametrize("cfg", [math.nan, math.inf, -math.inf])
def test_non_finite_cfg_is_refused_by_name(embedded, cfg):
    from diffusion_anatomy.nodes.model_nodes import EmptyLatent

    model, clip, _ = embedded
    (empty,) = EmptyLatent().generate(model, 64, 64, 1)
    with pytest.raises(ValueError, match=rf"U-Net Denoise: cfg={cfg} is not a finite number"):
        denoise(model, clip, empty, cfg=cfg)
