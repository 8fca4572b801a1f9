"""Parity of the pack's AutoencoderKL with ComfyUI's (`comfy.sd.VAE`, which builds
`comfy.ldm.models.autoencoder.AutoencoderKL` from the state dict's shapes), at the full SD VAE shapes
(ch 128, ch_mult 1,2,4,4, 2 res blocks, z 4) with the same seeded random weights, float32, 64x64.

Tolerance. Both run the same torch convolution/GroupNorm kernels on the same shapes in the same
order; they differ only in the attention kernel (ours `scaled_dot_product_attention`, ComfyUI's
picked by its attention setting) and, for the tiled decode, in summation order inside tiles. One
layer's float32 rounding is about sqrt(fan_in) * u relative (fan_in <= 9 * 512, u = 2^-24), i.e.
4e-6, and the following layers carry it with gain about 1 (residual blocks, GroupNorm
re-standardises): ATOL_REL = 1e-5 relative to the output's max-abs for the untiled paths. The tiled
path sums differently in every conv: the linear bound over the decoder's L convolutions,
L * sqrt(fan_in) * u, is used there (as in tests/pure/test_vae.py).
"""
from __future__ import annotations

import math

import pytest
import torch

from diffusion_anatomy.vae import config as vc
from diffusion_anatomy.vae.model import AutoencoderKL
from diffusion_anatomy.vae.tiled import decode_tiled

pytestmark = pytest.mark.host
REL_TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def pair(comfy):
    torch.manual_seed(0)
    ours = AutoencoderKL(vc.SD).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "norm" in name:  # random GroupNorm affines, so that path is compared too
                p.add_(0.2 * torch.randn_like(p))
    theirs = comfy.sd.VAE(sd=ours.state_dict(), dtype=torch.float32)
    return ours, theirs


@pytest.fixture(scope="module")
def pixels():
    return torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))  # ComfyUI IMAGE: BHWC in 0..1


def test_same_state_dict_keys(pair):
    ours, theirs = pair
    assert set(ours.state_dict()) == set(theirs.first_stage_model.state_dict())
    theirs.first_stage_model.load_state_dict(ours.state_dict(), strict=True)


def test_encode_matches(pair, pixels):
    ours, theirs = pair
    z_theirs = theirs.encode(pixels)  # ComfyUI: crop to /8, 2p-1, encoder, quant_conv, posterior mode
    with torch.no_grad():
        z_ours = ours.encode(pixels.movedim(-1, 1) * 2 - 1)
    assert z_ours.shape == z_theirs.shape == (1, 4, 8, 8)
    assert rel_err(z_ours, z_theirs) <= REL_TOL


def test_decode_matches(pair):
    ours, theirs = pair
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        raw_theirs = theirs.first_stage_model.decode(z)
        raw_ours = ours.decode(z)
    assert rel_err(raw_ours, raw_theirs) <= REL_TOL
    image_theirs = theirs.decode(z)  # VAEDecode's IMAGE: clamp((x + 1) / 2), BHWC
    image_ours = ((raw_ours + 1) / 2).clamp(0, 1).movedim(1, -1)
    assert image_ours.shape == image_theirs.shape == (1, 64, 64, 3)
    assert (image_ours - image_theirs).abs().max().item() <= REL_TOL * raw_theirs.abs().max().item()


def test_tiled_decode_matches_comfy_untiled(pair):
    ours, theirs = pair
    convs = sum(isinstance(c, torch.nn.Conv2d) for c in ours.decoder.modules())
    bound = convs * math.sqrt(9 * 512) * 2.0**-24
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        raw_theirs = theirs.first_stage_model.decode(z)
    assert rel_err(decode_tiled(ours, z, tile=32, granularity="block"), raw_theirs) <= bound  # 2 x 2 tiles


@pytest.mark.parametrize("name,fmt", [("sd", "SD15"), ("sdxl", "SDXL")])
def test_latent_scale_is_comfy_latent_format(comfy, name, fmt):
    import comfy.latent_formats as lf

    cfg = vc.PRESETS[name]
    z = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    latent_format = getattr(lf, fmt)()
    vae = AutoencoderKL.__new__(AutoencoderKL)  # to_latent/from_latent only read the config
    torch.nn.Module.__init__(vae)
    vae.cfg = cfg
    torch.testing.assert_close(vae.to_latent(z), latent_format.process_in(z), rtol=1e-15, atol=0)
    torch.testing.assert_close(vae.from_latent(z), latent_format.process_out(z), rtol=1e-15, atol=0)
