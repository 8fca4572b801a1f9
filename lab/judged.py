"""What a sampler draws, judged on the embedded model's world: adherence, sharpness, a Fréchet distance, ranks.

The embedded world is procedural (`embedded/data.py`): every caption has an exact render, and the judge
(`embedded/judge.py`) reads a 64x64 picture back into shape, colour, size, position and background. So a
sampler can be measured by what it draws, per model call, with intervals:

- adherence: the share of pictures the judge reads right in all five attributes, and per attribute, each
  with a 95% Wilson interval (`adherence`);
- sharpness: the steepness of the object's outline relative to its own step height (`sharpness`): 1.0 for
  a render, lower when the edge is smeared over more pixels;
- a Fréchet distance between the sampled pictures and the true renders of their captions in a fixed
  feature space (`features`, `frechet`), bias-corrected by extrapolation in 1/n, with a bootstrap sampling
  error: the analogue of FID;
- ranks that only separate samplers whose intervals do not overlap (`ranks`).

Pure torch; the judge is imported where it is used (it is the embedded model's room).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..embedded.data import Caption, render, shape_mask

ATTRIBUTES = ("shape", "colour", "size", "position", "background")

# --------------------------------------------------------------------------------------------- adherence


@dataclass(frozen=True)
class Share:
    """k of n, with its 95% Wilson interval."""
    k: int
    n: int
    lo: float
    hi: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else math.nan


def share(k: int, n: int) -> Share:
    from ..embedded.judge import wilson

    lo, hi = wilson(k, n) if n else (0.0, 1.0)
    return Share(k, n, lo, hi)


def right_flags(images: torch.Tensor, captions: Sequence[Caption]) -> list[dict[str, bool]]:
    """Per picture: attribute -> judged right, plus 'all' (right in all five). Undecidable pictures are wrong."""
    from ..embedded.judge import correct, judge

    out = []
    for verdict, caption in zip(judge(images), captions):
        flags = {a: bool(v) for a, v in correct(verdict, caption).items() if a in ATTRIBUTES}
        flags["all"] = all(flags.get(a, False) for a in ATTRIBUTES)
        out.append(flags)
    return out


def adherence(flags: Sequence[dict[str, bool]]) -> dict[str, Share]:
    """'all' and each attribute: how many pictures are right, of how many, with the Wilson interval."""
    return {a: share(sum(bool(f[a]) for f in flags), len(flags)) for a in ("all", *ATTRIBUTES)}


# --------------------------------------------------------------------------------------------- sharpness

BAND = 3  # px around the true outline where the picture's edge is looked for: the +-2 px jitter (a prompt names no jitter) and one more
MIN_STEP = 0.25  # step height (RGB distance, images in [-1, 1]) below which there is no object to measure; the world's closest colours differ by 0.85


def _grow(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Dilate a [H, W] bool mask by r pixels (Chebyshev distance)."""
    if r <= 0:
        return mask
    return F.max_pool2d(mask[None, None].float(), 2 * r + 1, stride=1, padding=r)[0, 0] > 0


def _pair_steps(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB distance between horizontal [H, W-1] and vertical [H-1, W] neighbours of a [3, H, W] picture."""
    return (image[:, :, 1:] - image[:, :, :-1]).norm(dim=0), (image[:, 1:, :] - image[:, :-1, :]).norm(dim=0)


def outline_geometry(caption: Caption, centre: tuple[float, float] | None = None):
    """(outline pair count M, band masks for horizontal and vertical pairs, inside core, outside ring) of a caption's shape.

    `centre` overrides the caption's (the node knows a prompt, not its jitter: it passes the named position)."""
    if centre is not None:
        caption = Caption(caption.shape, caption.colour, caption.size, caption.position, caption.background, centre)
    mask = shape_mask(caption)
    edge_h, edge_v = mask[:, 1:] != mask[:, :-1], mask[1:, :] != mask[:-1, :]
    outline = torch.zeros_like(mask)
    outline[:, 1:] |= edge_h
    outline[:, :-1] |= edge_h
    outline[1:, :] |= edge_v
    outline[:-1, :] |= edge_v
    band = _grow(outline, BAND)
    inside = ~_grow(~mask, BAND)
    for r in (2, 1, 0):  # a small triangle's tip erodes away first; keep some inside
        if inside.sum() >= 4:
            break
        inside = ~_grow(~mask, r) if r else mask
    outside = _grow(mask, 2 * BAND) & ~_grow(mask, BAND)
    m = int(edge_h.sum() + edge_v.sum())
    return m, band[:, 1:] & band[:, :-1], band[1:, :] & band[:-1, :], inside, outside


def sharpness(image: torch.Tensor, caption: Caption, centre: tuple[float, float] | None = None) -> float:
    """Edge steepness of the object's outline relative to its own step height; 1.0 for the true render.

    With M the number of neighbour pairs (4-neighbours) that straddle the true outline: the mean of the M
    largest neighbour differences (RGB distance) within `BAND` px of the outline, divided by the step height
    ||median colour inside - median colour outside|| of the same picture (inside: the shape eroded by BAND,
    outside: a ring BAND..2 BAND px out). On a render the M outline pairs each step by exactly that height and
    every other pair by 0, so it is 1.0; a blur spreads the step over more pairs, so the largest fall below
    it; a picture drawn a pixel or two off (the jitter) still has its edge inside the band. It measures how
    crisp the edge is, not whether the colours are right (that is adherence). Noise or ringing at the
    outline can push it above 1. NaN when the step height is below `MIN_STEP` (no object where the caption
    puts one)."""
    m, band_h, band_v, inside, outside = outline_geometry(caption, centre)
    image = image.float()
    steps_h, steps_v = _pair_steps(image)
    candidates = torch.cat([steps_h[band_h], steps_v[band_v]])
    px = image.flatten(1)
    height = float((px[:, inside.flatten()].median(dim=1).values - px[:, outside.flatten()].median(dim=1).values).norm())
    if height < MIN_STEP or m == 0:
        return math.nan
    top = candidates.topk(min(m, len(candidates))).values
    return float(top.mean()) / height


# --------------------------------------------------------------------------------------------- Fréchet distance

POOL = 4  # the feature grid: 4x4 cells of 16x16 px


def features(images: torch.Tensor) -> torch.Tensor:
    """[N, 64] fixed features of [N, 3, 64, 64] pictures in [-1, 1]: on a 4x4 grid of 16x16-px cells, each cell's
    mean RGB (48: what colour is where, so shape, size, place and both colours) and its RMS neighbour difference
    (16: how much edge is there and how steep, so blur lowers it and noise raises it).

    Why not a trained network, as FID takes Inception: Inception knows nothing of flat shapes at 64 px, and the
    embedded VAE's encoder is retrained with the model, so distances would not compare across model versions.
    These 64 numbers are fixed, cheap and say what they measure; 64 dimensions against a few hundred pictures
    keep the covariance estimate usable (FID's 2048 need tens of thousands)."""
    x = images.float()
    n, _, h, w = x.shape
    colour = F.adaptive_avg_pool2d(x, POOL).flatten(1)
    dh = (x[:, :, :, 1:] - x[:, :, :, :-1]).square().sum(1)  # [N, H, W-1]
    dv = (x[:, :, 1:, :] - x[:, :, :-1, :]).square().sum(1)  # [N, H-1, W]
    energy = F.pad(dh, (0, 1)) + F.pad(dv, (0, 0, 0, 1))  # per pixel, its right and lower neighbour
    edge = F.adaptive_avg_pool2d(energy[:, None], POOL).flatten(1).sqrt()
    return torch.cat([colour, edge], dim=1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature rows a [N, D] and b [M, D]:
    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) (Dowson & Landau 1982; FID, arXiv:1706.08500)."""
    a, b = a.double(), b.double()
    mu = (a.mean(0) - b.mean(0)).square().sum()
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    root = _sqrt_psd(sa)
    cross = torch.linalg.eigvalsh(root @ sb @ root).clamp_min(0).sqrt().sum()
    return float(mu + sa.trace() + sb.trace() - 2 * cross)


@dataclass(frozen=True)
class Distance:
    """A Fréchet distance (extrapolated to infinitely many pictures), its bootstrap standard error and
    95% percentile interval, and the number of pictures."""
    value: float
    error: float
    lo: float
    hi: float
    n: int


BOOTSTRAP = 100
MIN_PICTURES = 128  # 2x the feature dimension: with fewer the covariances are singular and the 1/n extrapolation fails


def frechet_unbiased(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator, sizes: int = 4, subsets: int = 2) -> float:
    """The Fréchet distance at infinitely many pictures: FD on random subsets of n = N/2 ... N pairs, fitted as
    FD(n) = FD_inf + k / n, FD_inf the intercept (Chong & Forsyth, arXiv:1911.07023: the plain estimate's bias
    is linear in 1/n; measured here, two sets of renders of the same 200 captions read 0.019 plain, 0.002-0.019
    extrapolated, with a bootstrap error of about 0.01)."""
    n_all = len(a)
    x, y = [], []
    for k in range(sizes):
        n = int(n_all * (0.5 + 0.5 * k / (sizes - 1)))
        for _ in range(subsets if n < n_all else 1):
            pick = torch.randperm(n_all, generator=generator)[:n]
            x.append(1.0 / n)
            y.append(frechet(a[pick], b[pick]))
    design = torch.stack([torch.ones(len(x), dtype=torch.float64), torch.tensor(x, dtype=torch.float64)], dim=1)
    return float(torch.linalg.lstsq(design, torch.tensor(y, dtype=torch.float64)[:, None]).solution[0, 0])


def frechet_bootstrap(a: torch.Tensor, b: torch.Tensor, resamples: int = BOOTSTRAP, seed: int = 0) -> Distance:
    """`frechet_unbiased(a, b)` with its sampling error: the rows are resampled with replacement as pairs (row i of
    a is the picture of the caption whose render is row i of b), `resamples` times; the error is their standard
    deviation. Needs `MIN_PICTURES` pairs."""
    if len(a) != len(b) or len(a) < MIN_PICTURES:
        raise ValueError(f"Fréchet distance: needs at least {MIN_PICTURES} paired pictures (got {len(a)} and {len(b)})")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(resamples):
        pick = torch.randint(len(a), (len(a),), generator=g)
        values.append(frechet_unbiased(a[pick], b[pick], g))
    v = torch.tensor(values, dtype=torch.float64)
    return Distance(frechet_unbiased(a, b, torch.Generator().manual_seed(seed + 1)), float(v.std()), float(v.quantile(0.025)),
                    float(v.quantile(0.975)), len(a))


def renders(captions: Sequence[Caption]) -> torch.Tensor:
    return torch.stack([render(c) for c in captions])


# --------------------------------------------------------------------------------------------- ranks


def ranks(intervals: dict, higher_is_better: bool = True) -> dict:
    """Rank 1 = best; a sampler is behind another only where their intervals do not overlap.

    intervals: key -> (lo, hi). A key's rank is 1 + the number of keys whose interval lies entirely on the
    better side of its own (competition ranking): keys whose intervals overlap share a rank unless a third
    separates them."""
    out = {}
    for key, (lo, hi) in intervals.items():
        if higher_is_better:
            better = sum(1 for k, (l2, _) in intervals.items() if k != key and l2 > hi)
        else:
            better = sum(1 for k, (_, h2) in intervals.items() if k != key and h2 < lo)
        out[key] = 1 + better
    return out


# --------------------------------------------------------------------------------------------- the node's columns

def judged_columns(cell_pictures: Sequence[torch.Tensor], caption_text: str) -> tuple[list[dict] | None, str]:
    """The Sampler Lab node's judged columns: per cell, adherence (k of n, Wilson) per attribute and in all five, and
    mean sharpness, from its pictures ([B, H, W, 3] in 0..1, one batch per cell) and the prompt's text.

    Returns (rows, "") or (None, why the columns are absent): the judge reads only the embedded model's world
    (64x64 pictures of a caption it can parse). Sharpness is measured at the named position's centre (a prompt
    names no jitter). The Fréchet distance needs `MIN_PICTURES` pictures per cell: the command line's judged
    sweep (bench/sampler_lab.py --judged) measures it."""
    from ..embedded.judge import parse_caption

    if not cell_pictures:
        return None, "no pictures"
    h, w = cell_pictures[0].shape[1:3]
    if (h, w) != (64, 64):
        return None, (f"the pictures are {w}x{h}; the judge reads the embedded model's 64x64 world "
                      "(load DiffusionAnatomy/tiny_shapes_sd1.safetensors and an Empty Latent of 64x64)")
    caption = parse_caption(caption_text or "")
    if caption is None:
        return None, ("the caption input is not a prompt of the embedded world (e.g. 'a large red circle at the top left on a "
                      f"blue background'): got {caption_text!r}; give the prompt's text so the judge can compare")
    from ..embedded.data import POSITIONS

    rows = []
    for pictures in cell_pictures:
        images = pictures.permute(0, 3, 1, 2).float() * 2 - 1
        flags = right_flags(images, [caption] * len(images))
        sharp = [sharpness(x, caption, POSITIONS[caption.position]) for x in images]
        finite = [v for v in sharp if math.isfinite(v)]
        rows.append({"adherence": adherence(flags), "sharpness": sum(finite) / len(finite) if finite else math.nan})
    return rows, ""
