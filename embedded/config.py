"""The tiny model's three configs (the pack's own config classes, scaled down) and their file metadata.

Everything keeps the SD1.x layout so the file reads like any SD1 checkpoint:
- U-Net: LDM `openaimodel` layout, Conv2d projections in the transformers, fixed head count, eps
  prediction; two levels (latent 8x8 -> 4x4) with attention at both, context = the CLIP width;
- VAE: AutoencoderKL kl-f8, 4 latent channels (so 64x64 images give 8x8x4 latents, like SD's
  512 -> 64); four levels as SD's, narrower, one ResnetBlock per level;
  (widths 32/64/64/64: the 8x8 latent needs three halvings, not SD's width);
- CLIP: the ViT-L/14 text tower's design (quick-GELU, causal, 77 positions, the real 49408-token BPE
  vocabulary, no projection), 64 wide and 4 layers. The token table (49408 x 64) is a third of
  the file; only the ~40 words of the captions get trained, the rest stay at their init.
Budget: all weights in fp16 under 20 MB, which is what fixed the widths (see README.md).

`python -m diffusion_anatomy.embedded.config` (or `python embedded/config.py`) prints the sizes.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch

from ..checkpoint.detect import CONFIG_METADATA_KEY, FAMILY_METADATA_KEY
from ..clip.encoder import TextEncoderConfig, TowerSpec
from ..clip.model import CLIPTextConfig
from ..clip.tokenizer import SD1_CHUNKS
from ..unet.config import UNetConfig
from ..vae.config import VAEConfig

VAE_CONFIG_METADATA_KEY = "diffusion_anatomy.vae_config"
CLIP_CONFIG_METADATA_KEY = "diffusion_anatomy.clip_config"
FAMILY = "sd15"  # conditioning and key layout are SD1's (checkpoint.detect.family_of agrees)

CLIP = CLIPTextConfig(width=64, layers=4, heads=4, activation="quick_gelu")  # vocab 49408, 77 positions
UNET = UNetConfig(
    model_channels=64,
    channel_mult=(1, 2),
    num_res_blocks=1,
    transformer_depth=(1, 1),
    transformer_depth_middle=1,
    context_dim=CLIP.width,
    num_heads=4,  # heads 16 wide at level 0, 32 at level 1
)
# scale_factor is a placeholder until training measures it (1 / std of the latents, train.py)
VAE = VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, scale_factor=1.0)
IMAGE_SIZE = 64


@dataclass(frozen=True)
class TinyConfig:
    """The three configs of one embedded model."""

    unet: UNetConfig = UNET
    vae: VAEConfig = VAE
    clip: CLIPTextConfig = CLIP

    @property
    def text_encoder(self) -> TextEncoderConfig:
        """SD1's text-encoder policy (last layer, final-layer-normed, EOS padding) on the tiny tower."""
        return TextEncoderConfig((
            ("l", TowerSpec(self.clip, SD1_CHUNKS, layer=-1, norm_hidden=True,
                            checkpoint_prefix="cond_stage_model.transformer.", openclip_layout=False)),
        ))


TINY = TinyConfig()


def _tuples(fields: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def to_metadata(config: TinyConfig) -> dict[str, str]:
    """safetensors metadata: the U-Net under the key the checkpoint reader already reads, plus VAE and CLIP."""
    return {
        CONFIG_METADATA_KEY: config.unet.to_json(),
        FAMILY_METADATA_KEY: FAMILY,
        VAE_CONFIG_METADATA_KEY: json.dumps(dataclasses.asdict(config.vae), sort_keys=True),
        CLIP_CONFIG_METADATA_KEY: json.dumps(dataclasses.asdict(config.clip), sort_keys=True),
    }


def from_metadata(metadata: dict[str, str]) -> TinyConfig:
    """The inverse of `to_metadata`; unknown fields raise (a newer file needs newer code)."""
    return TinyConfig(
        unet=UNetConfig.from_json(metadata[CONFIG_METADATA_KEY]),
        vae=VAEConfig(**_tuples(json.loads(metadata[VAE_CONFIG_METADATA_KEY]))),
        clip=CLIPTextConfig(**_tuples(json.loads(metadata[CLIP_CONFIG_METADATA_KEY]))),
    )


def build(config: TinyConfig = TINY):
    """(UNetModel, AutoencoderKL, TextEncoder) with torch's default init, float32."""
    from ..clip.encoder import TextEncoder
    from ..unet.model import UNetModel
    from ..vae.model import AutoencoderKL

    return UNetModel(config.unet), AutoencoderKL(config.vae), TextEncoder(config.text_encoder)


def parameter_counts(config: TinyConfig = TINY) -> dict[str, int]:
    """Parameters of each part, counted on the meta device (no memory)."""
    with torch.device("meta"):
        parts = build(config)
    return {name: sum(p.numel() for p in m.parameters()) for name, m in zip(("unet", "vae", "clip"), parts)}


def report(config: TinyConfig = TINY) -> str:
    counts = parameter_counts(config)
    lines = [f"{name:>5}: {n / 1e6:6.2f} M parameters, {2 * n / 2**20:6.2f} MiB fp16" for name, n in counts.items()]
    total = sum(counts.values())
    embedding = config.clip.vocab_size * config.clip.width
    lines.append(f"total: {total / 1e6:6.2f} M parameters, {2 * total / 2**20:6.2f} MiB fp16 "
                 f"(CLIP token table {embedding / 1e6:.2f} M of it)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
