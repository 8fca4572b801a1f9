"""The latent: what the U-Net works on. Stable Diffusion's VAE turns a 3x512x512 picture into a
4x64x64 latent (8 times smaller each side, about 48 times fewer numbers) and back (Rombach et al.
2022, arXiv 2112.10752, sec. 3)."""
from __future__ import annotations

import torch
from einops import einsum
from PIL import Image

from . import draw


def latent_to_rgb(latent: torch.Tensor, factors: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A linear guess of the picture from the latent [C, H, W]: rgb = factors^T latent + bias, mapped to 0..1
    as ComfyUI's latent preview does ((v + 1) / 2). factors: [C, 3] (ComfyUI's `latent_rgb_factors`)."""
    rgb = einsum(latent.float(), factors.float(), "c h w, c k -> h w k")
    if bias is not None:
        rgb = rgb + bias.float()
    return ((rgb + 1) / 2).clamp(0, 1)


def channels_view(latent: torch.Tensor, rgb_preview: Image.Image | None, decoded: Image.Image | None,
                  min_side: int = 128) -> Image.Image:
    """Each channel of one latent [C, H, W] as a grey picture (its own min black, max white, the range
    written under it), beside the linear RGB preview and the VAE's decode."""
    c, h, w = latent.shape
    pictures, captions = [], []
    for k in range(c):
        lo, hi = float(latent[k].min()), float(latent[k].max())
        pictures.append(draw.upscale(draw.grey(latent[k], lo, hi), min_side))
        captions.append(f"channel {k}\n{lo:.2f} .. {hi:.2f}")
    if rgb_preview is not None:
        pictures.append(draw.upscale(rgb_preview, min_side))
        captions.append("latent -> RGB\n(linear preview)")
    title = f"The latent: {c}x{h}x{w}"
    if decoded is not None:
        pictures.append(decoded if min(decoded.size) >= min_side else draw.upscale(decoded, min_side))
        captions.append(f"VAE decode\n3x{decoded.height}x{decoded.width}")
        title += f" becomes 3x{decoded.height}x{decoded.width} through the VAE decoder"
    return draw.strip(pictures, captions, title=title)
