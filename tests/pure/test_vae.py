"""Pure tests of the VAE room: LDM state-dict names, attention maths, the posterior, latent scaling,
and seamless tiling (tiled == untiled up to float32 rounding; naive tiling is far outside that bound)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffusion_anatomy.vae import config as vc
from diffusion_anatomy.vae.model import AttnBlock, AutoencoderKL, DiagonalGaussian, attention
from diffusion_anatomy.vae.tiled import decode_tiled, encode_tiled

SMALL = vc.VAEConfig(ch=32, ch_mult=(1, 2, 4), num_res_blocks=1)  # f = 4, widths 32/64/128
U32 = 2.0**-24  # float32 unit roundoff


def random_vae(cfg: vc.VAEConfig, seed: int = 0) -> AutoencoderKL:
    """torch's default (seeded) init, plus random GroupNorm affines so that path is exercised too."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(cfg).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return vae


def rounding_bound(module: torch.nn.Module) -> float:
    """Relative error two float32 evaluations of the same network may differ by when they sum in
    different orders (tile crops vs the whole map, other GEMM blockings, GroupNorm statistics as
    float64 sums vs torch's): each conv output carries about sqrt(fan_in) * u of relative rounding
    (random-walk accumulation), and L layers in sequence add at most L of those (linear bound)."""
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    fan_in = max(m.in_channels * m.kernel_size[0] * m.kernel_size[1] for m in convs)
    return len(convs) * math.sqrt(fan_in) * U32


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def small():
    return random_vae(SMALL)


@pytest.fixture(scope="module")
def image_and_latent(small):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 48, 40, generator=g) * 2 - 1  # batch 2, not square, not a multiple of the tiles
    with torch.no_grad():
        return image, small.encode(image)


def test_state_dict_uses_ldm_first_stage_names():
    sd = AutoencoderKL(vc.SD).state_dict()
    shapes = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.0.norm1.weight": (128,),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
        "encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "encoder.conv_out.weight": (8, 512, 3, 3),
        "quant_conv.weight": (8, 8, 1, 1),
        "post_quant_conv.weight": (4, 4, 1, 1),
        "decoder.conv_in.weight": (512, 4, 3, 3),
        "decoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "decoder.norm_out.bias": (128,),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(".attn." in k or "temb" in k for k in sd), "no empty per-level attention / timestep weights"
    assert "encoder.down.3.downsample.conv.weight" not in sd and "decoder.up.0.upsample.conv.weight" not in sd
    # KL-f8 in the LDM checkpoints: 248 first_stage_model tensors (attention q/k/v/proj_out as 1x1 convs)
    assert len(sd) == 248
    AutoencoderKL(vc.SD).load_state_dict(sd, strict=True)


def test_presets():
    assert vc.SD.downscale == 8 and vc.SD.scale_factor == 0.18215 and vc.SDXL.scale_factor == 0.13025
    assert vc.SDXL.ch_mult == vc.SD.ch_mult and vc.PRESETS["sdxl"] is vc.SDXL
    with pytest.raises(AssertionError):
        vc.VAEConfig(ch=24)  # 24 channels do not split into 32 groups


def test_latent_scaling_is_the_latent_format():
    z = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    cfg = vc.VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, scale_factor=0.5, shift_factor=0.25)
    vae = AutoencoderKL(cfg).double()
    torch.testing.assert_close(vae.to_latent(z), (z - 0.25) * 0.5, rtol=0, atol=0)
    torch.testing.assert_close(vae.from_latent(vae.to_latent(z)), z, rtol=1e-15, atol=1e-15)


def test_attention_is_single_head_softmax_over_pixels():
    torch.manual_seed(0)
    block = AttnBlock(64).double()
    x = torch.randn(2, 64, 5, 3, dtype=torch.float64)
    h = F.group_norm(x, 32, block.norm.weight, block.norm.bias, 1e-6)
    q, k, v = (f(h).flatten(2) for f in (block.q, block.k, block.v))  # [b, c, n]
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(64), dim=-1)
    out = torch.einsum("bij,bcj->bci", w, v).reshape(x.shape)
    expected = x + block.proj_out(out)
    torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)


def test_attention_in_query_chunks_is_exact():
    q, k, v = torch.randn(3, 2, 1, 15, 8, dtype=torch.float64).unbind(0)
    whole = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attention(q, k, v, max_scores=4 * 15), whole, rtol=1e-14, atol=1e-14)  # 4 rows a chunk
    torch.testing.assert_close(attention(q, k, v, max_scores=1), whole, rtol=1e-14, atol=1e-14)  # 1 row a chunk


def test_posterior_sample_statistics_and_determinism():
    mean = torch.tensor([0.5, -1.0, 2.0, 0.0]).view(1, 4, 1, 1).expand(1, 4, 64, 64)
    logvar = torch.tensor([0.0, -2.0, 1.0, -50.0]).view(1, 4, 1, 1).expand(1, 4, 64, 64)  # -50 clamps to -30
    q = DiagonalGaussian(torch.cat([mean, logvar], 1))
    s = q.sample(torch.Generator().manual_seed(3))
    torch.testing.assert_close(s, q.sample(torch.Generator().manual_seed(3)), rtol=0, atol=0)
    n = 64 * 64
    std = torch.exp(0.5 * logvar.clamp(-30, 20))[0, :, 0, 0]
    emp_mean, emp_std = s.mean((0, 2, 3)), s.std((0, 2, 3))
    # sample mean within 5 standard errors (std/sqrt(n)); sample std within 5 of its standard error std/sqrt(2n)
    assert ((emp_mean - mean[0, :, 0, 0]).abs() <= 5 * std / math.sqrt(n) + 1e-12).all()
    assert ((emp_std - std).abs() <= 5 * std / math.sqrt(2 * n) + 1e-12).all()
    assert std[3].item() == pytest.approx(math.exp(-15))


def test_encode_mode_and_sample(small, image_and_latent):
    image, z = image_and_latent
    with torch.no_grad():
        q = small.posterior(image)
        torch.testing.assert_close(z, q.mean, rtol=0, atol=0)
        s1 = small.encode(image, torch.Generator().manual_seed(5))
    torch.testing.assert_close(s1, q.sample(torch.Generator().manual_seed(5)), rtol=0, atol=0)
    assert z.shape == (2, 4, 12, 10)
    with pytest.raises(ValueError, match="multiples of 4"):
        small.encode(image[..., :, :38])


def test_bfloat16_tiled_decode(small, image_and_latent):
    """bf16 runs through the tiled path (dtype kept). Bound: kernels accumulate in float32, so the
    error is dominated by rounding every layer's output to bf16, u = 2^-9 each, over L layers."""
    _, z = image_and_latent
    with torch.no_grad():
        ref = small.decode(z)
    half = random_vae(SMALL).to(torch.bfloat16)
    out = decode_tiled(half, z.to(torch.bfloat16), tile=24)
    assert out.dtype == torch.bfloat16
    n_layers = sum(isinstance(m, torch.nn.Conv2d) for m in small.decoder.modules())
    assert rel_err(out.float(), ref) <= n_layers * 2.0**-9


@pytest.mark.parametrize("tile,granularity", [(16, "level"), (24, "block")])  # 3x3 and 2x2 tiles
def test_tiled_decode_equals_untiled(small, image_and_latent, granularity, tile):
    _, z = image_and_latent
    with torch.no_grad():
        ref = small.decode(z)
    out = decode_tiled(small, z, tile=tile, granularity=granularity)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= rounding_bound(small.decoder)


@pytest.mark.parametrize("tile,granularity", [(16, "block"), (24, "level")])
def test_tiled_encode_equals_untiled(small, image_and_latent, granularity, tile):
    image, z = image_and_latent
    out = encode_tiled(small, image, tile=tile, granularity=granularity)
    assert rel_err(out, z) <= rounding_bound(small.encoder)
    with torch.no_grad():
        sampled = small.encode(image, torch.Generator().manual_seed(9))
    tiled_sample = encode_tiled(small, image, tile=tile, granularity=granularity, generator=torch.Generator().manual_seed(9))
    assert rel_err(tiled_sample, sampled) <= rounding_bound(small.encoder)


def test_naive_tiles_are_far_outside_the_bound(small, image_and_latent):
    """The tolerance above can fail: tiles decoded on their own (ample halo, but GroupNorm statistics
    of the tile, what any independent-tile scheme does) miss it by orders of magnitude."""
    _, z = image_and_latent
    f, tile, halo = SMALL.downscale, 4, 4  # latent pixels
    with torch.no_grad():
        ref = small.decode(z)
        out = torch.empty_like(ref)
        for top in range(0, z.shape[-2], tile):
            for left in range(0, z.shape[-1], tile):
                t0, l0 = max(0, top - halo), max(0, left - halo)
                y = small.decode(z[..., t0:top + tile + halo, l0:left + tile + halo])
                out[..., top * f:(top + tile) * f, left * f:(left + tile) * f] = \
                    y[..., (top - t0) * f:(top - t0 + tile) * f, (left - l0) * f:(left - l0 + tile) * f]
    assert rel_err(out, ref) > 100 * rounding_bound(small.decoder)


def test_bad_granularity(small, image_and_latent):
    with pytest.raises(ValueError, match="granularity"):
        decode_tiled(small, image_and_latent[1], granularity="pixel")
