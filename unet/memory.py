"""How much activation memory one U-Net call needs, estimated before running it.

Measured: peak resident-memory growth of one `UNetModel.forward` on a CPU (fp32, two threads, no
grad), in a fresh process per point, minus the resident size after the model and inputs were built
(the script: bench/memory.py; numbers in its docstring). Per latent pixel and sample the growth is
linear in area, with slopes of 8.96 kB for the embedded tiny U-Net (model_channels 64) and 25.0 kB
for SD1.5 (model_channels 320): 35.0 and 19.5 fp32 values per latent pixel per model channel.
The formula takes the larger (so SD1.x/2.x/XL are overestimated by up to 1.8x: a refusal means
"certainly does not fit", never "might not") and the larger intercept (158 MiB, SD1.5's):

    bytes = 160 MiB + 35 * model_channels * (H/8) * (W/8) * batch * dtype_bytes

where batch counts the CFG pair (ComfyUI runs cond and uncond as one batch). Attention adds nothing
that grows faster: `scaled_dot_product_attention` does not hold the score matrix on CPU, and the
U-Net attends in query chunks of at most 2^24 pairs above that size (unet/attention.py).
"""
from __future__ import annotations

from .config import UNetConfig

VALUES_PER_CHANNEL_PIXEL = 35.0
FIXED_BYTES = 160 * 2**20


def activation_bytes(config: UNetConfig, batch: int, latent_height: int, latent_width: int, dtype_bytes: int = 4) -> int:
    """Estimated peak activation memory (bytes) of one forward over a [batch, C, latent_height, latent_width] latent."""
    per_pixel = VALUES_PER_CHANNEL_PIXEL * config.model_channels * dtype_bytes
    return int(FIXED_BYTES + per_pixel * batch * latent_height * latent_width)
