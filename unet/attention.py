"""The SpatialTransformer of latent diffusion: self-attention, cross-attention to the text, GEGLU MLP.

Rombach et al. (2022), "High-Resolution Image Synthesis with Latent Diffusion Models",
arXiv:2112.10752, Sec. 3.3; module names as CompVis `ldm/modules/attention.py` so checkpoint keys
(`transformer_blocks.0.attn2.to_k.weight`, `ff.net.0.proj.weight`, ...) load as they are.
GEGLU: Shazeer (2020), "GLU Variants Improve Transformer", arXiv:2002.05202.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import hooks
from .blocks import GroupNorm32


# Above this many query-key pairs per (batch x head) the queries are attended in chunks, each
# chunk of at most this many pairs. 2^24 = 4096 x 4096: SD1.5 at 512x512 (64x64 latent, 4096
# tokens at level 0) stays one call, so sizes people use every day pay nothing. One chunk at the
# limit costs about 4 * 2^24 * head_dim * heads * batch flops (q k^T and attn v): at SD1.5's
# level 0 (8 heads of 40, batch 2) 4e10, a fraction of a second on two CPU cores, which is how
# often `interrupt` is checked when a huge latent (a 1024x1024 latent is 1M tokens) attends.
CHUNK_PAIRS = 2**24


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              interrupt: Callable[[], None] | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over `heads` heads; [b, n, heads*d] in and out.

    The one attention of the network. `scaled_dot_product_attention` accumulates the softmax in
    fp32 for fp16/bf16 inputs (flash / memory-efficient kernels), so no manual upcast is needed:
    that upcast is what SD2.x needed with the naive `q @ k.T` in half precision.
    Each query row is its own softmax, so attending the queries in chunks (above `CHUNK_PAIRS`)
    gives the same numbers; `interrupt` (a callable that raises to stop) runs before each chunk.
    """
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    queries, keys = q.shape[-2], k.shape[-2]
    if queries * keys <= CHUNK_PAIRS:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        step = max(1, CHUNK_PAIRS // keys)
        for start in range(0, queries, step):
            if interrupt is not None:
                interrupt()
            out[:, :, start:start + step] = F.scaled_dot_product_attention(q[:, :, start:start + step], k, v)
    return rearrange(out, "b h n d -> b n (h d)")


class CrossAttention(nn.Module):
    """Multi-head attention of `x` to `context` (to itself when no context is given)."""

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Identity())  # [1] was Dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, value: torch.Tensor | None = None,
                interrupt: Callable[[], None] | None = None) -> torch.Tensor:
        """Keys from `context`, values from `value` (default: the context; a patch may set them apart)."""
        context = x if context is None else context
        value = context if value is None else value
        out = attention(self.to_q(x), self.to_k(context), self.to_v(value), self.heads, interrupt)
        return self.to_out(out)


class GEGLU(nn.Module):
    """x W + b split in two halves: value * GELU(gate)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Identity(), nn.Linear(mult * dim, dim))  # [1] was Dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer layer: self-attention, cross-attention to the context, feed-forward.

    `options` are ComfyUI's `transformer_options` (see `unet/hooks.py`): with attention patches or
    replacements in it the layer runs them where ComfyUI's `BasicTransformerBlock` does; without,
    it is the plain layer.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, head_dim, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, options: dict | None = None,
                interrupt: Callable[[], None] | None = None) -> torch.Tensor:
        if options and (options.get("patches") or options.get("patches_replace")):
            return self._forward_patched(x, context, options, interrupt)
        x = x + self.attn1(self.norm1(x), interrupt=interrupt)
        x = x + self.attn2(self.norm2(x), context, interrupt=interrupt)
        return x + self.ff(self.norm3(x))

    def _forward_patched(self, x, context, options: dict, interrupt) -> torch.Tensor:
        patches = options.get("patches") or {}
        extra = hooks.patch_arguments(options, self.attn1.heads, self.attn1.to_q.out_features // self.attn1.heads)
        x = x + hooks.attend(self.attn1, "attn1", self.norm1(x), None, options, extra, interrupt)
        for patch in patches.get("middle_patch", ()):
            x = patch(x, extra)
        x = x + hooks.attend(self.attn2, "attn2", self.norm2(x), context, options, extra, interrupt)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Feature map -> sequence of h*w tokens -> `depth` transformer layers -> feature map, plus skip."""

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int, context_dim: int, use_linear: bool):
        super().__init__()
        assert channels == heads * head_dim, "the transformer keeps the channel width"
        self.use_linear = use_linear
        self.norm = GroupNorm32(32, channels, eps=1e-6)
        # SD1.x projects with 1x1 convolutions, SD2.x/SDXL with Linear: the same map, other weight shapes
        project = (lambda: nn.Linear(channels, channels)) if use_linear else (lambda: nn.Conv2d(channels, channels, 1))
        self.proj_in = project()
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, head_dim, context_dim) for _ in range(depth)
        )
        self.proj_out = project()

    def forward(self, x: torch.Tensor, context: torch.Tensor, options: dict | None = None,
                interrupt: Callable[[], None] | None = None) -> torch.Tensor:
        options = {} if options is None else options
        options["activations_shape"] = list(x.shape)  # what ComfyUI's SpatialTransformer tells the patches
        height, width = x.shape[-2:]
        h = self.norm(x)
        if not self.use_linear:
            h = self.proj_in(h)
        h = rearrange(h, "b c h w -> b (h w) c")
        if self.use_linear:
            h = self.proj_in(h)
        for index, block in enumerate(self.transformer_blocks):
            options["block_index"] = index
            h = block(h, context, options, interrupt)
        if self.use_linear:
            h = self.proj_out(h)
        h = rearrange(h, "b (h w) c -> b c h w", h=height, w=width)
        if not self.use_linear:
            h = self.proj_out(h)
        return x + h
