"""Random SD1.5 ControlNet and T2I-Adapter files, built from ComfyUI's own classes (no download).

- `sd15_random_controlnet(host, seed)`: `comfy.cldm.cldm.ControlNet` at SD1.5's shapes (the U-Net's
  encoder, a hint encoder for RGB pictures, zero convolutions), the key layout ComfyUI's
  `load_controlnet` reads (bare `zero_convs.0.0.weight`, ...), fp16, seeded random values;
- `sd15_random_t2i_adapter(host, seed)`: `comfy.t2i_adapter.adapter.Adapter` as the SD1.5 "full"
  T2I-Adapters are (RGB in, pixel-unshuffle by 8, widths 320/640/1280/1280, two blocks a level).

Both live in `<repo>/.cache/fixtures/controlnet/` (a folder the test server lists as ComfyUI's
`controlnet` folder) as links into the shared fixture cache, keyed by recipe (`checkpoints.cached_random_checkpoint`). Values as `checkpoints.random_tensor`: variance 1/fan_in,
so the zero convolutions (random, not zero here) give residuals of the size of the activations and
the control visibly changes what the U-Net predicts.
"""
from __future__ import annotations

from pathlib import Path

import torch

from support.checkpoints import FIXTURES, cached_random_checkpoint, comfy_unet_kwargs

CONTROLNETS = FIXTURES / "controlnet"


def _written(path: Path, module_on_meta, seed: int) -> Path:
    return cached_random_checkpoint(path, module_on_meta().state_dict(), seed, torch.float16)


def sd15_random_controlnet(host, seed: int = 0) -> Path:
    """The cached random SD1.5 ControlNet (RGB hint, fp16, ~720 MB), generated on first use."""
    def build():
        import comfy.cldm.cldm
        from diffusion_anatomy.unet import SD15

        with torch.device("meta"):
            return comfy.cldm.cldm.ControlNet(**comfy_unet_kwargs(SD15), hint_channels=3, device="meta")

    return _written(CONTROLNETS / f"sd15_random_controlnet_{seed}.safetensors", build, seed)


def sd15_random_t2i_adapter(host, seed: int = 0) -> Path:
    """The cached random SD1.5 T2I-Adapter (RGB, fp16), generated on first use."""
    def build():
        import comfy.t2i_adapter.adapter

        with torch.device("meta"):
            return comfy.t2i_adapter.adapter.Adapter(cin=3 * 8 * 8, channels=[320, 640, 1280, 1280], nums_rb=2,
                                                     ksize=1, sk=True, use_conv=False, xl=False)

    return _written(CONTROLNETS / f"sd15_random_t2i_adapter_{seed}.safetensors", build, seed)
