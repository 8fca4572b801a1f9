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


# --------------------------------------------------------------------------- patches and control

def test_a_replacement_doing_plain_attention_changes_nothing():
    """attn1/attn2 replaced by softmax(q k^T / sqrt d) v: the hooks get q, k, v as the model uses them,
    under (block, id, layer) keys or (block, id) keys for every layer of a block."""
    model = random_model(TINY_XL)  # attention at level 1 only: input blocks 4, 5, middle, output blocks 0-2
    x, t, context, y = inputs(TINY_XL)
    seen = []

    def plain(name):
        def attend(q, k, v, extra):
            seen.append((name, extra["block"], extra["block_index"]))
            q, k, v = (rearrange(z, "b n (h d) -> b h n d", h=extra["n_heads"]) for z in (q, k, v))
            assert q.shape[-1] == extra["dim_head"]
            return rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")
        return attend

    attn1_layers = [("input", 4, 1), ("middle", 0, 0), ("output", 2, 0)]
    attn2_blocks = [("input", 5), ("output", 0)]
    options = {"patches_replace": {"attn1": {key: plain("attn1") for key in attn1_layers},
                                   "attn2": {key: plain("attn2") for key in attn2_blocks}}}
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, context, y, transformer_options=options), model(x, t, context, y),
                                   rtol=1e-5, atol=1e-5)
    assert seen == [("attn1", ("input", 4), 1), ("attn2", ("input", 5), 0), ("attn2", ("input", 5), 1),
                    ("attn1", ("middle", 0), 0), ("attn2", ("output", 0), 0), ("attn2", ("output", 0), 1),
                    ("attn1", ("output", 2), 0)]


def test_block_patches_see_the_blocks_in_order():
    model = random_model(TINY)
    x, t, context, _ = inputs(TINY)
    calls = []

    def record(name):
        def patch(h, options):
            calls.append((name, options["block"]))
            return h
        return patch

    def output_patch(h, skip, options):
        calls.append(("output_block_patch", options["block"]))
        return h, skip

    options = {"patches": {"input_block_patch": [record("in")], "input_block_patch_after_skip": [record("after")],
                           "output_block_patch": [output_patch]}}
    with torch.no_grad():
        model(x, t, context, transformer_options=options)
    n_in, n_out = len(model.input_blocks), len(model.output_blocks)
    expected = [(name, ("input", i)) for i in range(n_in) for name in ("in", "after")]
    assert calls == expected + [("output_block_patch", ("output", i)) for i in range(n_out)]
    assert options == {"patches": options["patches"]}  # the caller's dict is not written to


def test_control_residuals_are_added_where_comfyui_adds_them():
    """ComfyUI pops each list from its end: control["input"][-1] meets input block 0's output, the middle
    residual the middle block's output, control["output"][-1] the skip that output block 0 takes.
    The same as patches adding them there."""
    model = random_model(TINY)
    x, t, context, _ = inputs(TINY)
    g = torch.Generator().manual_seed(3)
    first = torch.randn(2, TINY.model_channels, 8, 8, generator=g)
    middle, last_skip = torch.randn(2, 2, 2 * TINY.model_channels, 4, 4, generator=g)

    def at_input_0(h, options):
        return h + first if options["block"] == ("input", 0) else h

    def at_output_0(h, skip, options):
        return (h + middle, skip + last_skip) if options["block"] == ("output", 0) else (h, skip)

    n_in = len(model.input_blocks)
    control = {"input": [None] * (n_in - 1) + [first], "middle": [middle], "output": [None] * (n_in - 1) + [last_skip]}
    patches = {"patches": {"input_block_patch": [at_input_0], "output_block_patch": [at_output_0]}}
    with torch.no_grad():
        controlled = model(x, t, context, control=control)
        torch.testing.assert_close(controlled, model(x, t, context, transformer_options=patches), rtol=1e-6, atol=1e-6)
        assert (controlled - model(x, t, context)).abs().max() > 1e-2  # the residuals matter
    assert control == {"input": [], "middle": [], "output": []}  # consumed, as ComfyUI's U-Net consumes them
