"""The U-Net on its own: structure of the presets, maths of its parts, precision behaviour.

Parity with ComfyUI's U-Net on the same weights is in tests/host/test_parity_unet.py; here only
what follows from the definitions (closed forms, invariances) on small random models.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from diffusion_anatomy.unet import SD15, SD21, SD21_V, SDXL, UNetConfig, UNetModel
from diffusion_anatomy.unet.attention import attention
from diffusion_anatomy.unet.blocks import GroupNorm32, timestep_embedding

TINY = UNetConfig(model_channels=32, channel_mult=(1, 2), transformer_depth=(1, 1), context_dim=24, num_heads=2)
TINY_XL = dataclasses.replace(
    TINY, transformer_depth=(0, 2), num_heads=None, head_dim=16, use_linear_in_transformer=True, adm_in_channels=12
)


def random_model(config: UNetConfig, seed: int = 0) -> UNetModel:
    torch.manual_seed(seed)
    model = UNetModel(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a dropped bias or scale would show
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(-0.1, 0.1).add_(1.0 if name.endswith("weight") else 0.0)
    return model


def inputs(config: UNetConfig, batch=2, size=(8, 8), seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, *size, generator=g)
    t = torch.rand(batch, generator=g) * 999
    context = torch.randn(batch, 5, config.context_dim, generator=g)
    y = torch.randn(batch, config.adm_in_channels, generator=g) if config.adm_in_channels else None
    return x, t, context, y


def meta(config):
    with torch.device("meta"):
        return UNetModel(config)


@pytest.mark.parametrize("config, blocks", [(SD15, 12), (SD21, 12), (SDXL, 9)])
def test_presets_have_the_ldm_block_layout(config, blocks):
    model = meta(config)
    # levels x (num_res_blocks + Downsample) - last Downsample + the input conv
    assert len(model.input_blocks) == blocks == len(model.output_blocks)
    tops = {k.split(".")[0] for k in model.state_dict()}
    expected = {"time_embed", "input_blocks", "middle_block", "output_blocks", "out"}
    assert tops == (expected | {"label_emb"} if config.adm_in_channels else expected)


def test_sdxl_has_no_attention_at_level_zero_and_ten_deep_transformers():
    sd = meta(SDXL).state_dict()
    assert not any(k.startswith(("input_blocks.1.1.", "input_blocks.2.1.")) for k in sd)
    assert "input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight" in sd
    assert "input_blocks.7.1.transformer_blocks.10.attn2.to_k.weight" not in sd
    assert sd["input_blocks.7.1.transformer_blocks.0.attn2.to_k.weight"].shape == (1280, 2048)
    assert sd["label_emb.0.0.weight"].shape == (1280, 2816)


def test_head_splits_of_the_presets():
    assert [SD15.heads(c) for c in (320, 640, 1280)] == [(8, 40), (8, 80), (8, 160)]
    assert [SD21.heads(c) for c in (320, 640, 1280)] == [(5, 64), (10, 64), (20, 64)]
    assert SD21_V.prediction == "v" and dataclasses.replace(SD21_V, prediction="eps") == SD21
    with pytest.raises(AssertionError):
        UNetConfig(num_heads=8, head_dim=64)


def test_config_json_round_trip():
    for config in (SD15, SD21_V, SDXL, TINY_XL):
        assert UNetConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown UNetConfig fields"):
        UNetConfig.from_json('{"model_channels": 64, "colour": "red"}')


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 1.0, 999.0, 500.25])
    emb = timestep_embedding(t, 6)
    freqs = [10000 ** (-i / 3) for i in range(3)]
    expected = [[math.cos(s * f) for f in freqs] + [math.sin(s * f) for f in freqs] for s in t.tolist()]
    torch.testing.assert_close(emb, torch.tensor(expected), atol=1e-4, rtol=0)
    assert timestep_embedding(t, 7).shape == (4, 7)  # odd widths pad one zero column
    # half-precision timesteps are upcast: 999 survives (fp16 spacing there is 0.5, not the issue),
    # and the result is float32 whatever comes in
    assert timestep_embedding(t.half(), 6).dtype == torch.float32


def test_attention_is_softmax_qk_v_per_head():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3 * 4, generator=g, dtype=torch.float64) for n in (5, 7, 7))
    out = attention(q, k, v, heads=3)
    for h in range(3):
        s = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 2.0, dim=-1)
        torch.testing.assert_close(out[..., s], weights @ v[..., s])


@pytest.mark.parametrize("config", [TINY, TINY_XL], ids=["sd-like", "sdxl-like"])
def test_forward_shape_and_batch_independence(config):
    """Each sample is denoised on its own: a wrong reshape that mixes batch and heads fails this."""
    model = random_model(config)
    x, t, context, y = inputs(config, batch=3)
    with torch.no_grad():
        together = model(x, t, context, y)
        alone = [model(x[i : i + 1], t[i : i + 1], context[i : i + 1], None if y is None else y[i : i + 1]) for i in range(3)]
    assert together.shape == x.shape
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_odd_latent_sizes_follow_the_skips():
    model = random_model(dataclasses.replace(TINY, channel_mult=(1, 1, 2), transformer_depth=(0, 1, 1)))
    x, t, context, y = inputs(model.config, size=(9, 11))
    with torch.no_grad():
        assert model(x, t, context).shape == x.shape


def test_vector_conditioning_is_required_exactly_for_sdxl():
    model = random_model(TINY_XL)
    x, t, context, y = inputs(TINY_XL)
    with torch.no_grad():
        changed = model(x, t, context, y + 1)
        assert (changed - model(x, t, context, y)).abs().max() > 1e-3
    with pytest.raises(AssertionError):
        model(x, t, context)


@pytest.mark.parametrize("config", [TINY, TINY_XL], ids=["sd1-like", "sdxl-like"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_close_to_float32(dtype, config):
    model = random_model(config)
    x, t, context, y = inputs(config)
    with torch.no_grad():
        reference = model(x, t, context, y)
        out = model.to(dtype)(x, t, context, y)
    assert out.dtype == x.dtype  # the output comes back in the input's dtype
    # bf16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4%), fp16 11 bits; a few dozen layers deep
    # the error should stay within a few steps, far from an overflow or a lost timestep
    tolerance = {torch.bfloat16: 0.05, torch.float16: 0.01}[dtype]
    assert ((out - reference).abs().max() / reference.abs().max()).item() < tolerance


def test_groupnorm32_is_exact_where_half_precision_statistics_overflow():
    """Values around 300: their squares (9e4) exceed fp16's maximum 65504; the norm upcasts first."""
    norm = GroupNorm32(32, 64)
    x = 300 + torch.randn(2, 64, 4, 4, dtype=torch.float64)
    out = norm.half()(x.half())
    reference = torch.nn.functional.group_norm(x.half().double(), 32, eps=norm.eps)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), reference, atol=2e-2, rtol=0)


def _upcast_group_norm(self, x):
    """LDM's original GroupNorm32: float32 round trip (the behaviour before issue 12)."""
    return torch.nn.functional.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                                          self.eps).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_native_group_norm_matches_the_float32_round_trip_within_one_rounding(dtype):
    """ATen accumulates half-precision statistics in float32: the only difference to the upcast version is
    where the result is rounded, so it stays within a couple of units in the last place (2^-7 relative
    for bf16, 2^-10 for fp16, times a normalised value of at most ~4 here)."""
    norm = GroupNorm32(8, 32)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = 3 + 2 * torch.randn(2, 32, 16, 16, generator=torch.Generator().manual_seed(0))
    norm = norm.to(dtype)
    native, upcast = norm(x.to(dtype)), _upcast_group_norm(norm, x.to(dtype))
    assert native.dtype == dtype
    ulp = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]
    assert (native.float() - upcast.float()).abs().max().item() <= 2 * ulp * upcast.float().abs().max().item()


def test_float32_group_norm_is_torchs_group_norm_exactly():
    norm = GroupNorm32(8, 32)
    x = torch.randn(2, 32, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(norm(x), torch.nn.GroupNorm.forward(norm, x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_native_group_norm_leaves_the_half_precision_unet_where_the_round_trip_had_it(dtype, monkeypatch):
    """The whole U-Net in half precision, new norm vs LDM's round trip, both against float32: the change
    must not add error of its own (the new error at most 1.5x the old, plus a bf16/fp16 step)."""
    model = random_model(TINY)
    x, t, context, _ = inputs(TINY)
    with torch.no_grad():
        reference = model(x, t, context)
        half = model.to(dtype)
        native = half(x, t, context)
        monkeypatch.setattr(GroupNorm32, "forward", _upcast_group_norm)
        upcast = half(x, t, context)
    scale = reference.abs().max().item()
    err_native = (native - reference).abs().max().item() / scale
    err_upcast = (upcast - reference).abs().max().item() / scale
    step = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]
    assert err_native <= 1.5 * err_upcast + step, (err_native, err_upcast)
