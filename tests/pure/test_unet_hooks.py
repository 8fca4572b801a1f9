"""The U-Net's hook points on small random models: interrupt, chunked attention, patches, control.

Parity of the same patches with ComfyUI's U-Net is in tests/host/test_parity_unet_hooks.py and,
through core's patch nodes over HTTP, in tests/server/test_model_patches.py; here only what
follows from the definitions in `unet/hooks.py`.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from diffusion_anatomy.unet import attention as attention_module
from diffusion_anatomy.unet.attention import attention
from pure.test_unet import TINY, TINY_XL, inputs, random_model


class Stop(Exception):
    pass


def raising_after(k: int):
    """A callable that raises `Stop` on its k-th call, and counts every call."""
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == k:
            raise Stop(k)

    return interrupt, calls


def blocks(model) -> int:
    return len(model.input_blocks) + 1 + len(model.output_blocks)


@torch.no_grad()
def test_interrupt_is_called_before_every_block_and_does_not_change_the_output():
    model = random_model(TINY)
    x, t, context, _ = inputs(TINY)
    interrupt, calls = raising_after(10**9)
    assert torch.equal(model(x, t, context, interrupt=interrupt), model(x, t, context))
    assert len(calls) == blocks(model)  # 8x8 latent: no attention is chunked, one call per block


@pytest.mark.parametrize("k", [1, 4, 9])
@torch.no_grad()
def test_a_raising_interrupt_stops_the_forward_at_once(k):
    model = random_model(TINY)
    x, t, context, _ = inputs(TINY)
    interrupt, calls = raising_after(k)
    with pytest.raises(Stop):
        model(x, t, context, interrupt=interrupt)
    assert len(calls) == k  # nothing ran after the raise: the exception propagated from that call


def test_chunked_attention_equals_one_call_and_checks_the_interrupt_each_chunk(monkeypatch):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 300, 4 * 8, generator=g)
    k, v = torch.randn(2, 2, 77, 4 * 8, generator=g).unbind(0)
    whole = attention(q, k, v, heads=4)
    monkeypatch.setattr(attention_module, "CHUNK_PAIRS", 77 * 64)  # 64 queries a chunk
    interrupt, calls = raising_after(10**9)
    chunked = attention(q, k, v, heads=4, interrupt=interrupt)
    assert len(calls) == math.ceil(300 / 64)
    # each query row is its own softmax: only the kernel's blocking can differ, float32 rounding
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_chunked_self_attention_in_the_model_stops_within_a_block(monkeypatch):
    """With tiny chunks the 8x8 self-attention (64 tokens) is 8 chunks: the interrupt runs inside blocks."""
    model = random_model(TINY)
    x, t, context, _ = inputs(TINY)
    monkeypatch.setattr(attention_module, "CHUNK_PAIRS", 8 * 64)
    interrupt, calls = raising_after(10**9)
    with torch.no_grad():
        chunked, whole = model(x, t, context, interrupt=interrupt), model(x, t, context)
    assert len(calls) > blocks(model) + 8
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_sd15_level_zero_at_512_pixels_is_one_attention_call():
    """The chunking threshold leaves everyday sizes alone: 64x64 latent = 4096 tokens, 4096^2 pairs."""
    assert 4096 * 4096 <= attention_module.CHUNK_PAIRS < 4096 * 4096 * 4
