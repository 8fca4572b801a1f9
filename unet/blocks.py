"""The convolutional parts of the U-Net: timestep embedding, ResBlock, Downsample, Upsample.

Ho et al. (2020), "Denoising Diffusion Probabilistic Models", arXiv:2006.11239 (U-Net, sinusoidal
time embedding); Dhariwal & Nichol (2021), arXiv:2105.05233 (the `openaimodel.py` layout whose
module names the LDM checkpoints keep: `in_layers`, `emb_layers`, `out_layers`, `skip_connection`, `op`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[b] (possibly fractional) timesteps -> [b, dim] = [cos(t f_i), sin(t f_i)], f_i = max_period^(-i/half).

    Always float32, as in LDM: t up to 999 times f_0 = 1 needs more than fp16's 11 bits of mantissa.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) / half * torch.arange(half, dtype=torch.float32, device=timesteps.device))
    args = timesteps.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm in the input's dtype, its statistics accumulated in float32 (LDM's `GroupNorm32`).

    LDM casts fp16 input to float32 and back around the norm so that the mean and variance do not
    overflow. ATen's group norm kernels (CPU and CUDA) already accumulate those statistics in float32
    ("opmath") for fp16/bf16 input, so the round trip only costs two copy kernels per norm (294 of an
    SD1.5 forward on CUDA, measured in issue 12) and changes the output by at most a rounding step
    (tests/pure/test_unet.py). Weights in another dtype than the input are cast to it, as core's ops do.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if weight is not None and weight.dtype != x.dtype:
            weight, bias = weight.to(x.dtype), bias.to(x.dtype)
        return F.group_norm(x, self.num_groups, weight, bias, self.eps)


def preferred_memory_format(device: torch.device | str) -> torch.memory_format:
    """The layout the U-Net's convolution weights should have on `device`.

    channels_last on CUDA: cuDNN's fast convolutions are NHWC, and with NCHW tensors it transposes
    around every convolution (24% of an SD1.5 fp16 forward's GPU time, measured in issue 12). Weights
    in channels_last make the first convolution's output channels_last, and every later op keeps it.
    Elsewhere (CPU) contiguous NCHW, what the CPU benchmark measures as no slower (bench/unet.py).
    """
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


class ResBlock(nn.Module):
    """GN-SiLU-conv, add the projected time embedding, GN-SiLU-conv; a 1x1 conv skip when widths differ."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels),
            nn.SiLU(),
            nn.Identity(),  # dropout while training; keeps the conv at index 3 as in the checkpoints
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Halve height and width with a stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize to `size` (twice the input unless the skip it meets says otherwise), 3x3 conv.

    Taking the size of the skip connection lets latents whose sides are not multiples of 8 pass.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        size = size or (2 * x.shape[-2], 2 * x.shape[-1])
        return self.conv(F.interpolate(x, size=size, mode="nearest"))
