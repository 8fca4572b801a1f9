"""How much activation memory one VAE decode needs, estimated before running it.

Measured: peak resident-memory growth of one `AutoencoderKL.decode` on a CPU (fp32, two threads,
no grad), a fresh process per point (bench/memory.py). The embedded tiny VAE (ch 32) grows by
65 / 217 / 676 MiB at 256^2 / 512^2 / 1024^2 images (batch 1): 612 B per image pixel at the large
end, 4.8 fp32 maps of `ch` channels at full resolution (the decoder's top level holds its input,
the upsample output and a ResnetBlock's temporaries); SD's VAE (ch 128) 218 MiB at 256^2 and, from
vae/tiled.py's measurement, ~10.4 GiB at 2048^2: 5.2 maps. With a margin over both:

    untiled bytes = 64 MiB + 5.5 * ch * H * W * batch * dtype_bytes

Tiled ("level" granularity, vae/tiled.py) holds the largest level boundary (the second level's
width at a quarter of the area), the output image twice, and one tile's untiled temporaries (a tile
plus its halo, about 1.5x the tile side); measured 729 MiB for the tiny VAE at 2048^2 (tile 512) where
this gives 812 MiB, and 1249 MiB for SD's at 1024^2 where it gives 1928 MiB:

    tiled bytes = 64 MiB + (ch * ch_mult[1] / 4 + 6) * H * W * batch * dtype_bytes
                         + 5.5 * ch * min(1.5 * tile, H) * min(1.5 * tile, W) * dtype_bytes
"""
from __future__ import annotations

from .config import VAEConfig

MAPS = 5.5
FIXED_BYTES = 64 * 2**20


def decode_bytes(cfg: VAEConfig, batch: int, height: int, width: int, dtype_bytes: int = 4) -> int:
    """Estimated peak activation memory (bytes) of an untiled decode to [batch, 3, height, width]."""
    return int(FIXED_BYTES + MAPS * cfg.ch * height * width * batch * dtype_bytes)


def decode_tiled_bytes(cfg: VAEConfig, batch: int, height: int, width: int, tile: int = 512, dtype_bytes: int = 4) -> int:
    """Estimated peak activation memory (bytes) of `decode_tiled(..., granularity="level")`."""
    second = cfg.ch * (cfg.ch_mult[1] if len(cfg.ch_mult) > 1 else cfg.ch_mult[0])
    held = (second / 4 + 6) * height * width * batch
    one_tile = MAPS * cfg.ch * min(1.5 * tile, height) * min(1.5 * tile, width)
    return int(FIXED_BYTES + (held + one_tile) * dtype_bytes)
