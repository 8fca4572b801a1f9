"""VAE configuration: a frozen dataclass with named presets (nanoGPT's `GPTConfig` idea).

The numbers are those of the LDM `first_stage_config` (CompVis/stable-diffusion
`configs/stable-diffusion/v1-inference.yaml`, `ddconfig`) and of SDXL's `sd_xl_base.yaml`; both use
the same AutoencoderKL shapes and differ only in the latent scale factor (0.18215 vs 0.13025).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VAEConfig:
    """Shapes of an AutoencoderKL (Rombach et al. 2022, arXiv:2112.10752, appendix G).

    ch: channels after `conv_in`; level i has `ch * ch_mult[i]` channels.
    ch_mult: one entry per resolution level; every level but the last halves the resolution,
        so the spatial factor is 2 ** (len(ch_mult) - 1) (8 for SD).
    num_res_blocks: ResnetBlocks per encoder level (the decoder has one more per level).
    z_channels: channels the encoder emits per moment (it emits 2 * z_channels: mean and logvar).
    embed_dim: latent channels after `quant_conv` (4 for SD/SDXL).
    scale_factor, shift_factor: latent format, `to_latent(z) = (z - shift) * scale`, chosen so
        latents of the training images have unit variance (arXiv:2112.10752, sec. 4.3.2).
    in_channels, out_ch: image channels (RGB).
    norm_groups: GroupNorm groups (32 in every LDM autoencoder); eps is 1e-6 there.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    scale_factor: float = 0.18215
    shift_factor: float = 0.0
    in_channels: int = 3
    out_ch: int = 3
    norm_groups: int = 32

    def __post_init__(self):
        widths = [self.ch * m for m in self.ch_mult]
        assert all(w % self.norm_groups == 0 for w in widths), "every level width must split into norm_groups"
        assert self.num_res_blocks >= 1 and len(self.ch_mult) >= 1
        assert self.scale_factor > 0

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel along each side (8 for SD)."""
        return 2 ** (len(self.ch_mult) - 1)


SD = VAEConfig()
"""SD1.x / SD2.x VAE (kl-f8), latent scale 0.18215."""

SDXL = VAEConfig(scale_factor=0.13025)
"""SDXL VAE: same shapes as SD, latent scale 0.13025."""

PRESETS = {"sd": SD, "sdxl": SDXL}
