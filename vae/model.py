"""AutoencoderKL, the Stable Diffusion VAE (Rombach et al. 2022, arXiv:2112.10752), pure torch.

Module names are the LDM checkpoint's `first_stage_model.*` names with the prefix stripped
(`encoder.down.0.block.0.norm1.weight`, `decoder.mid.attn_1.q.weight`, `quant_conv.weight`, ...),
so the VAE part of an SD/SDXL checkpoint loads with a plain strict `load_state_dict`. Reference
code read: CompVis/stable-diffusion `ldm/modules/diffusionmodules/model.py` and ComfyUI's copy;
the attention blocks here use `scaled_dot_product_attention` (single head, scale 1/sqrt(C), the
same maths as the reference's bmm/softmax). Not kept from the reference: the empty per-level `attn`
lists (the KL-f8 configs have no attention below the middle, so they hold no weights), timestep
embeddings, dropout and the unused `resolution` argument.

Interrupt: `encode`/`decode` (and the tiled versions) take `interrupt`, a plain callable that raises to
stop (ComfyUI's `throw_exception_if_processing_interrupted`, passed in by `nodes/`). It runs before every
ResnetBlock, up/downsample and attention block, and before each query chunk of the middle attention,
so a decode at a huge size stops within one block (or one attention chunk), not at its end.

Latent convention: `encode` returns and `decode` takes UNSCALED latents z, as ComfyUI's VAE does
(`comfy.sd.VAE.encode/decode`; ComfyUI multiplies by the scale factor only where the latent enters
the diffusion model, `latent_format.process_in`). `to_latent(z) = (z - shift) * scale` gives the
diffusion-space latent, `from_latent` undoes it.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import VAEConfig
from .norm import GroupNorm


def Normalize(channels: int, groups: int = 32) -> GroupNorm:
    return GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """x + conv2(silu(norm2(conv1(silu(norm1(x)))))), with a 1x1 `nin_shortcut` when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32):
        super().__init__()
        self.norm1 = Normalize(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in-place SiLU on the fresh GroupNorm outputs and in-place residual add on the fresh conv
        # output: one full-size map fewer alive at a time (inference module, like ComfyUI's)
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(x if self.nin_shortcut is None else self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, q/k/v/proj_out as 1x1 convs (LDM names)."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = Normalize(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, interrupt: Interrupt | None = None) -> torch.Tensor:
        h = self.norm(x)
        height = h.shape[-2]
        # contiguous: with a strided head dim torch's CPU SDPA falls back to the math kernel and
        # materialises the (hw)^2 score matrix (16 GiB for a 2048^2 image's 256^2 latent)
        q, k, v = (rearrange(f(h), "b c h w -> b 1 (h w) c").contiguous() for f in (self.q, self.k, self.v))
        out = attention(q, k, v, interrupt=interrupt)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=height)
        return self.proj_out(out).add_(x)


Interrupt = Callable[[], None]


def no_interrupt() -> None:
    pass


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, max_scores: int = 2**26,
              interrupt: Interrupt | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v via `scaled_dot_product_attention`, in query chunks of at most
    `max_scores` query-key pairs: exact (softmax is per query row) and bounded even where a backend
    falls back to materialising the scores (head dim 512 is beyond some fused kernels).
    `interrupt` runs before each chunk (a 1024^2 latent's attention is 16384 chunks)."""
    n_q, n_k = q.shape[-2], k.shape[-2]
    if n_q * n_k <= max_scores:
        return F.scaled_dot_product_attention(q, k, v)
    check = interrupt or no_interrupt
    rows = max(1, max_scores // n_k)
    out = q.new_empty(q.shape)
    for i in range(0, n_q, rows):
        check()
        out[..., i:i + rows, :] = F.scaled_dot_product_attention(q[..., i:i + rows, :], k, v)
    return out


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one zero row/column at the bottom/right (the LDM asymmetric pad)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    """The lowest-resolution stage: ResnetBlock, global self-attention, ResnetBlock."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor, interrupt: Interrupt | None = None) -> torch.Tensor:
        check = interrupt or no_interrupt
        check()
        h = self.block_1(x)
        check()
        h = self.attn_1(h, interrupt)
        check()
        return self.block_2(h)


class Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks) and an optional `downsample`/`upsample`."""

    def __init__(self, blocks: list[ResnetBlock], downsample: nn.Module | None = None, upsample: nn.Module | None = None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if downsample is not None:
            self.downsample = downsample
        if upsample is not None:
            self.upsample = upsample


class Encoder(nn.Module):
    """image [B,3,H,W] -> moments [B, 2*z_channels, H/f, W/f] (f = 2**(levels-1))."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        g, widths = cfg.norm_groups, [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        width_in = cfg.ch
        for level, width in enumerate(widths):
            blocks = [ResnetBlock(width_in if i == 0 else width, width, g) for i in range(cfg.num_res_blocks)]
            last = level == len(widths) - 1
            self.down.append(Level(blocks, downsample=None if last else Downsample(width)))
            width_in = width
        self.mid = Mid(width_in, g)
        self.norm_out = Normalize(width_in, g)
        self.conv_out = nn.Conv2d(width_in, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, interrupt: Interrupt | None = None) -> torch.Tensor:
        check = interrupt or no_interrupt
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                check()
                h = block(h)
            if hasattr(level, "downsample"):
                check()
                h = level.downsample(h)
        h = self.mid(h, interrupt)
        check()
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


class Decoder(nn.Module):
    """z [B, z_channels, h, w] -> image [B,3,h*f,w*f]. `up[i]` is level i (index 0 = full resolution),
    built and run from the lowest resolution up, as in the LDM checkpoints."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        g, widths = cfg.norm_groups, [cfg.ch * m for m in cfg.ch_mult]
        width_in = widths[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, width_in, 3, padding=1)
        self.mid = Mid(width_in, g)
        up = []
        for level in reversed(range(len(widths))):
            width = widths[level]
            blocks = [ResnetBlock(width_in if i == 0 else width, width, g) for i in range(cfg.num_res_blocks + 1)]
            up.insert(0, Level(blocks, upsample=Upsample(width) if level != 0 else None))
            width_in = width
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(width_in, g)
        self.conv_out = nn.Conv2d(width_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor, interrupt: Interrupt | None = None) -> torch.Tensor:
        check = interrupt or no_interrupt
        h = self.mid(self.conv_in(z), interrupt)
        for level in reversed(self.up):
            for block in level.block:
                check()
                h = block(h)
            if hasattr(level, "upsample"):
                check()
                h = level.upsample(h)
        check()
        return self.conv_out(F.silu(self.norm_out(h), inplace=True))


class DiagonalGaussian:
    """q(z|x) = N(mean, exp(logvar)) from the encoder's moments; logvar clamped to [-30, 20] as in LDM."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps


class AutoencoderKL(nn.Module):
    """The KL-regularised autoencoder: `encoder` -> `quant_conv` -> q(z|x); z -> `post_quant_conv` -> `decoder`.

    encode(image in [-1, 1]) -> unscaled latent z (the posterior mean, or a sample with `generator`);
    decode(z) -> image in about [-1, 1] (not clamped). `to_latent`/`from_latent` apply the latent
    scale/shift of the config. Tiled versions: `vae.tiled.encode_tiled` / `decode_tiled`.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def posterior(self, image: torch.Tensor, interrupt: Interrupt | None = None) -> DiagonalGaussian:
        f = self.cfg.downscale
        if image.shape[-2] % f or image.shape[-1] % f:
            raise ValueError(f"image height and width must be multiples of {f}, got {tuple(image.shape[-2:])}")
        return DiagonalGaussian(self.quant_conv(self.encoder(image, interrupt)))

    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None, interrupt: Interrupt | None = None) -> torch.Tensor:
        q = self.posterior(image, interrupt)
        return q.mode() if generator is None else q.sample(generator)

    def decode(self, z: torch.Tensor, interrupt: Interrupt | None = None) -> torch.Tensor:
        """`interrupt`: a callable that raises to stop, run between blocks (see the module doc)."""
        return self.decoder(self.post_quant_conv(z), interrupt)

    def to_latent(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latent -> diffusion latent, (z - shift) * scale (ComfyUI: `latent_format.process_in`)."""
        return (z - self.cfg.shift_factor) * self.cfg.scale_factor

    def from_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Diffusion latent -> VAE latent, latent / scale + shift (ComfyUI: `latent_format.process_out`)."""
        return latent / self.cfg.scale_factor + self.cfg.shift_factor
