"""Seamless tiled encode/decode: tiles that give the untiled result, with image-wide GroupNorm statistics.

Why tiles show seams elsewhere. A tile of the VAE differs from the same window of the whole image in
two ways: (1) 3x3 convolutions near the tile edge see zeros instead of the neighbours, and (2) every
GroupNorm normalises with the mean/variance of the tile instead of the whole image. ComfyUI
(`comfy.sd.VAE.decode_tiled_`, `comfy.utils.tiled_scale`) decodes overlapping tiles and feathers
them, averaging three tilings; (2) then shows as slow colour/contrast drift between tiles, which
blending cannot remove. Here both are removed exactly:

(1) Halo. Each tile reads its own window plus a halo at least as wide as the receptive-field radius
    of the convolutions it runs (counted per step below, in input pixels) and keeps only its own
    window; the zeros that conv padding puts at an inner tile edge never reach that window. Tile
    windows are aligned to the stride of any downsampling inside, so stride grids match.
(2) Image-wide GroupNorm statistics, gathered in passes. A GroupNorm's statistics depend on the
    previous GroupNorms' statistics, so they are gathered in order: pass p runs every tile up to the
    p-th GroupNorm (using the p-1 image-wide statistics already known), adds that GroupNorm's input
    over the tile's own window to running per-group statistics, and stops there. The running
    statistics are the sum and sum of squares in their stable form (count, mean, sum of squared
    deviations, merged in float64 with Chan et al.'s formula), so they give the mean and variance the
    untiled GroupNorm computes. The last pass normalises every GroupNorm with image-wide
    statistics and writes the output.

Memory and time. The network is cut into segments; a segment's input and output are held as whole
feature maps and the segment runs tile by tile, in (number of GroupNorms in it + 1) passes, each
pass recomputing the segment's prefix. Granularity chooses the trade-off:
  "level": a segment per resolution level (the upsample from the level below, its ResnetBlocks; for
      the decoder's top level also norm_out/conv_out). Only level boundaries are held; at 2048^2 with
      the SD shapes the largest is 256 x 1024^2 (1 GiB fp32), where the untiled decoder holds several
      2-4 GiB maps at full resolution. Slow: a level's upsample conv (the costliest layer) is redone in
      each of its 7 passes.
  "block": a segment per ResnetBlock (the upsample/downsample and the head fused into a neighbour):
      about 2x the untiled time, holding two full-resolution maps.
  Measured extra peak RSS of one decode (bench/vae.py, CPU fp32, tile 512; 2 cores shared with
  other jobs, so the seconds are rough): to 2048^2 with every width divided by 4 (ch=32): untiled
  2653 MiB / 75 s, "block" 1291 MiB / 166 s, "level" 729 MiB / 475 s; SD shapes to 1024^2:
  untiled 2596 MiB, "block" 1848 MiB, "level" 1249 MiB (2 x 2 tiles, so tile temporaries
  dominate). Activation memory is linear in widths and area: SD untiled at 2048^2 is ~10.4 GiB.
Global parts run untiled: the middle block's self-attention mixes every pixel with every other, so
it (with conv_in/post_quant_conv, and in the encoder norm_out/conv_out/quant_conv) runs on the
whole lowest-resolution map, which is 64x smaller in area than the image (512 x 256 x 256 at 2048^2,
128 MiB; `model.attention` runs `scaled_dot_product_attention` in query chunks, so no full
65536 x 65536 score matrix is ever formed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .model import AutoencoderKL, DiagonalGaussian, Interrupt, no_interrupt
from .norm import GroupNorm, StatisticsGathered, group_moments, image_statistics, normalize_with


@dataclass(frozen=True)
class Step:
    """One local operation of a segment: `radius` input pixels of context needed on each side, output/input `scale`."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    radius: float
    scale: float
    is_block: bool = False


def resnet_step(block) -> Step:
    return Step(block, radius=2, scale=1, is_block=True)  # two 3x3 convs


def upsample_step(up) -> Step:
    return Step(up, radius=0.5, scale=2)  # 3x3 conv after nearest x2: 1 px at twice the resolution


def downsample_step(down) -> Step:
    return Step(down, radius=1, scale=0.5)  # output j reads inputs 2j..2j+2


@dataclass
class _Window:
    """Per (sample, group) running count, mean and sum of squared deviations M2 of one GroupNorm's
    input over the tiles' own windows, merged with Chan, Golub & LeVeque's pairwise formula (1979):
    M2 = M2_a + M2_b + (mean_b - mean_a)^2 n_a n_b / n, which is the sum / sum-of-squares accumulation
    without its cancellation (E[x^2] - E[x]^2 loses digits when |mean| >> std)."""

    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None
    count: int = 0
    eps: float = 0.0

    def add(self, mean: torch.Tensor, m2: torch.Tensor, n: int):
        if self.mean is None:
            self.mean, self.m2, self.count = mean, m2, n
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def mean_rstd(self) -> tuple[torch.Tensor, torch.Tensor]:
        var = self.m2 / self.count  # biased, as GroupNorm's
        return self.mean.float(), torch.rsqrt(var + self.eps).float()


class _TilePass:
    """What the GroupNorms see while one tile runs in one pass (installed with `image_statistics`)."""

    def __init__(self, known: list, gathering: _Window, own: tuple[int, int, int, int], crop: tuple[int, int, int, int]):
        self.known, self.gathering, self.own, self.crop = known, gathering, own, crop
        self.calls = 0

    def group_norm(self, gn: GroupNorm, x: torch.Tensor) -> torch.Tensor:
        i, self.calls = self.calls, self.calls + 1
        if i < len(self.known):
            return normalize_with(gn, x, *self.known[i])
        y0, y1, x0, x1 = _local(self.own, self.crop, x.shape[-2] / (self.crop[1] - self.crop[0]))
        self.gathering.add(*group_moments(gn, x[..., y0:y1, x0:x1]))
        self.gathering.eps = gn.eps
        raise StatisticsGathered


def _local(own, crop, s: float) -> tuple[int, int, int, int]:
    """The tile's own window in the coordinates of a tensor at scale s of the tile crop."""
    edges = ((own[0] - crop[0]) * s, (own[1] - crop[0]) * s, (own[2] - crop[2]) * s, (own[3] - crop[2]) * s)
    assert all(float(e).is_integer() for e in edges), "tile windows must align with the strides"
    return tuple(int(e) for e in edges)


def _tiles(height: int, width: int, tile: int, halo: int):
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            own = (top, min(top + tile, height), left, min(left + tile, width))
            crop = (max(0, own[0] - halo), min(height, own[1] + halo), max(0, own[2] - halo), min(width, own[3] + halo))
            yield own, crop


def run_segment(steps: list[Step], x: torch.Tensor, tile: int, interrupt: Interrupt | None = None) -> torch.Tensor:
    """Run `steps` over the whole map `x` tile by tile with image-wide GroupNorm statistics (see module doc);
    `interrupt` (a callable that raises to stop) runs before every tile of every pass."""
    check = interrupt or no_interrupt
    scale, radius = 1.0, 0.0
    for step in steps:
        radius += step.radius / scale  # context in segment-input pixels
        scale *= step.scale
    stride = max(1, round(1 / scale))  # downsampling inside: windows on multiples of it
    halo = stride * math.ceil(radius / stride)
    tile = stride * max(1, tile // stride)
    height, width = x.shape[-2:]
    assert height % stride == 0 and width % stride == 0

    def forward(t):
        for step in steps:
            t = step.fn(t)
        return t

    known: list[tuple[torch.Tensor, torch.Tensor]] = []
    while True:
        gathering, out = _Window(), None
        for own, crop in _tiles(height, width, tile, halo):
            check()
            tile_pass = _TilePass(known, gathering, own, crop)
            try:
                with image_statistics(tile_pass):
                    y = forward(x[..., crop[0]:crop[1], crop[2]:crop[3]])
            except StatisticsGathered:
                assert out is None, "tiles of one pass disagree on the number of GroupNorms"
                continue
            if out is None:
                assert gathering.count == 0, "tiles of one pass disagree on the number of GroupNorms"
                out = y.new_empty(*y.shape[:2], round(height * scale), round(width * scale))
            y0, y1, x0, x1 = _local(own, crop, scale)
            o = [round(e * scale) for e in own]
            out[..., o[0]:o[1], o[2]:o[3]] = y[..., y0:y1, x0:x1]
        if out is not None:
            return out
        known.append(gathering.mean_rstd())


def _group(steps: list[Step], granularity: str, boundaries: list[int]) -> list[list[Step]]:
    """Cut a step list into segments: at `boundaries` (level starts) for "level", after every ResnetBlock for "block"."""
    if granularity not in ("level", "block"):
        raise ValueError(f"granularity must be 'level' or 'block', got {granularity!r}")
    segments, current = [], []
    for i, step in enumerate(steps):
        if granularity == "level" and i in boundaries and current:
            segments.append(current)
            current = []
        current.append(step)
        if granularity == "block" and step.is_block:
            segments.append(current)
            current = []
    if current:  # a trailing head/downsample joins the last segment
        if segments and granularity == "block":
            segments[-1].extend(current)
        else:
            segments.append(current)
    return segments


def decoder_segments(vae: AutoencoderKL, granularity: str) -> list[tuple[list[Step], int]]:
    """Decoder steps after the middle block, cut into segments; each with its input's image pixels per pixel."""
    dec = vae.decoder
    steps, boundaries, factors = [], [], {}
    f = vae.cfg.downscale
    for level in reversed(range(len(dec.up))):
        boundaries.append(len(steps))
        factors[len(steps)] = f
        if level + 1 < len(dec.up):
            steps.append(upsample_step(dec.up[level + 1].upsample))
            f //= 2
        for block in dec.up[level].block:
            factors[len(steps)] = f
            steps.append(resnet_step(block))
    steps.append(Step(lambda h: dec.conv_out(F.silu(dec.norm_out(h), inplace=True)), radius=1, scale=1))
    return _with_factors(_group(steps, granularity, boundaries), steps, factors)


def encoder_segments(vae: AutoencoderKL, granularity: str) -> list[tuple[list[Step], int]]:
    """Encoder steps before the middle block, cut into segments; each with its input's image pixels per pixel."""
    enc = vae.encoder
    steps = [Step(enc.conv_in, radius=1, scale=1)]
    boundaries, factors, f = [], {0: 1}, 1
    for level in enc.down:
        boundaries.append(len(steps) if steps[1:] else 0)
        for block in level.block:
            factors[len(steps)] = f
            steps.append(resnet_step(block))
        if hasattr(level, "downsample"):
            factors[len(steps)] = f
            steps.append(downsample_step(level.downsample))
            f *= 2
    return _with_factors(_group(steps, granularity, boundaries), steps, factors)


def _with_factors(segments, steps, factors):
    out, i = [], 0
    for seg in segments:
        out.append((seg, factors[i]))
        i += len(seg)
    return out


@torch.no_grad()
def decode_tiled(vae: AutoencoderKL, z: torch.Tensor, tile: int = 512, granularity: str = "level",
                 interrupt: Interrupt | None = None) -> torch.Tensor:
    """`vae.decode(z)` computed in tiles of about `tile` x `tile` output pixels; same result up to rounding.
    `interrupt` runs before every tile and inside the middle block (see `vae.model`)."""
    dec = vae.decoder
    h = dec.mid(dec.conv_in(vae.post_quant_conv(z)), interrupt)  # lowest resolution, global attention: whole map
    for steps, f in decoder_segments(vae, granularity):
        h = run_segment(steps, h, max(1, tile // f), interrupt)
    return h


@torch.no_grad()
def encode_tiled(vae: AutoencoderKL, image: torch.Tensor, tile: int = 512, granularity: str = "level",
                 generator: torch.Generator | None = None, interrupt: Interrupt | None = None) -> torch.Tensor:
    """`vae.encode(image, generator)` computed in tiles of about `tile` x `tile` input pixels."""
    f = vae.cfg.downscale
    if image.shape[-2] % f or image.shape[-1] % f:
        raise ValueError(f"image height and width must be multiples of {f}, got {tuple(image.shape[-2:])}")
    enc = vae.encoder
    h = image
    for steps, fin in encoder_segments(vae, granularity):
        h = run_segment(steps, h, max(1, tile // fin), interrupt)
    h = enc.conv_out(F.silu(enc.norm_out(enc.mid(h, interrupt)), inplace=True))  # lowest resolution, global attention: whole map
    q = DiagonalGaussian(vae.quant_conv(h))
    return q.mode() if generator is None else q.sample(generator)
