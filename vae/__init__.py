"""AutoencoderKL (the SD VAE) with LDM module names, tiled encode/decode; pure torch.

`encode` gives and `decode` takes UNSCALED latents (as ComfyUI's VAE); `to_latent`/`from_latent`
apply the preset's scale factor (ComfyUI does that in the model's latent format).
`encode_tiled`/`decode_tiled` are seamless: image-wide GroupNorm statistics, see `tiled.py`.
"""
from .config import PRESETS, SD, SDXL, VAEConfig
from .model import AutoencoderKL, DiagonalGaussian
from .tiled import decode_tiled, encode_tiled

__all__ = ["AutoencoderKL", "DiagonalGaussian", "VAEConfig", "PRESETS", "SD", "SDXL", "decode_tiled", "encode_tiled"]
