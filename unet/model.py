"""The latent-diffusion U-Net denoiser, SD1.x / SD2.x / SDXL, with the original LDM module names.

Rombach et al. (2022), arXiv:2112.10752 (LDM, SD1/SD2); Podell et al. (2023), arXiv:2307.01952
(SDXL: three levels, deep transformers, a vector conditioning `y` added to the time embedding).
The modules are named as in CompVis/Stability `openaimodel.py` (`time_embed`, `label_emb`,
`input_blocks.N.M`, `middle_block`, `output_blocks`, `out`), so the `model.diffusion_model.*`
tensors of a checkpoint load with a strict `load_state_dict`, as labml's and tinygrad's do.

    x ──conv──┬─[ResBlock(+Transformer)] x num_res_blocks, Downsample ── per level ──┐  (skips kept)
              │                                                                 middle_block
    out ◄─────┴─[cat(skip), ResBlock(+Transformer)] x (num_res_blocks+1), Upsample ◄─┘
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from . import hooks
from .attention import SpatialTransformer
from .blocks import Downsample, GroupNorm32, ResBlock, Upsample, timestep_embedding
from .config import UNetConfig


class TimestepEmbedSequential(nn.Sequential):
    """One `input_blocks.N` / `output_blocks.N` entry: each layer takes what it needs."""

    def forward(self, x, emb, context, skip_size=None, options: hooks.Options | None = None, interrupt=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, options, interrupt)
                if options is not None and "transformer_index" in options:
                    options["transformer_index"] += 1
            elif isinstance(layer, Upsample):
                x = layer(x, skip_size)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """eps (or v) = UNetModel(config)(x, timesteps, context, y): the network in a diffusion model.

    x: [b, in_channels, h, w] noisy latent; timesteps: [b] DDPM timesteps (0..999, may be
    fractional); context: [b, tokens, context_dim] text embeddings; y: [b, adm_in_channels]
    (SDXL only). Returns [b, out_channels, h, w] in x's dtype.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        base = c.model_channels
        emb_dim = 4 * base

        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if c.adm_in_channels is not None:
            # SDXL's "sequential" class embedding: an MLP of y added to the time embedding
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(c.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            )

        def transformer(channels: int, depth: int) -> SpatialTransformer:
            heads, head_dim = c.heads(channels)
            return SpatialTransformer(channels, heads, head_dim, depth, c.context_dim, c.use_linear_in_transformer)

        # Encoder: every block's output is kept as a skip for the decoder.
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(c.in_channels, base, 3, padding=1))])
        skip_channels = [base]
        ch = base
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * base)]
                ch = mult * base
                if c.transformer_depth[level]:
                    layers.append(transformer(ch, c.transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim), transformer(ch, c.transformer_depth_middle), ResBlock(ch, emb_dim)
        )

        # Decoder: one more ResBlock per level than the encoder, each eating one skip.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mult * base)]
                ch = mult * base
                if c.transformer_depth[level]:
                    layers.append(transformer(ch, c.transformer_depth[level]))
                if level != 0 and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        assert not skip_channels

        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(base, c.out_channels, 3, padding=1))

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        control: hooks.Control | None = None,
        transformer_options: hooks.Options | None = None,
        interrupt: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """`control` (ControlNet residuals) and `transformer_options` (patches): see `unet/hooks.py`.

        `interrupt`, a callable that raises to stop, runs before every block and every attention
        chunk, so a forward at a huge size can be stopped within a fraction of a block.
        """
        assert (y is not None) == (self.config.adm_in_channels is not None), "y if and only if adm_in_channels"
        check = interrupt or _no_interrupt
        # one dict per call: the fields below are written into it as the forward goes (as ComfyUI's U-Net
        # does), the caller's dict stays as it was
        options = dict(transformer_options or {}, original_shape=list(x.shape), transformer_index=0)
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        for patch in options.get("patches", {}).get("emb_patch", ()):
            emb = patch(emb, self.config.model_channels, options)
        if y is not None:
            emb = emb + self.label_emb(y.to(dtype))

        h, context = x.to(dtype), context.to(dtype)
        skips = []
        for index, block in enumerate(self.input_blocks):
            check()
            options["block"] = ("input", index)
            h = block(h, emb, context, options=options, interrupt=interrupt)
            h = hooks.add_control(h, control, "input")
            h = hooks.run_patches(h, options, "input_block_patch")
            skips.append(h)
            h = hooks.run_patches(h, options, "input_block_patch_after_skip")
        check()
        options["block"] = ("middle", 0)
        h = self.middle_block(h, emb, context, options=options, interrupt=interrupt)
        h = hooks.add_control(h, control, "middle")
        for index, block in enumerate(self.output_blocks):
            check()
            options["block"] = ("output", index)
            skip = hooks.add_control(skips.pop(), control, "output")
            h, skip = hooks.run_output_block_patches(h, skip, options)
            h = torch.cat([h, skip], dim=1)
            # an Upsample at the end of this block resizes to the next skip it will meet
            h = block(h, emb, context, skips[-1].shape[-2:] if skips else None, options, interrupt)
        return self.out(h).to(x.dtype)


def _no_interrupt() -> None:
    pass
