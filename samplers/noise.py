"""Noise sources for stochastic samplers.

A noise sampler is a callable `noise_sampler(sigma, sigma_next) -> Tensor` shaped like x, mean 0 and unit
variance per element (pyramid: 1.09^2, as its reference); the sampler scales it. Every source here is
seeded and reproducible:

- `seed` an int: one random stream for the whole batch (core's convention for gaussian noise);
- `seed` a list of ints, one per sample: one stream per sample, so sample k of a batch gets the same
  noise as a batch of one seeded with seed[k] (core's `BatchedBrownianTree` does this for Brownian noise;
  here every type does);
- `seed` None: unseeded (torch's global generator).

Types: gaussian (core's stream), brownian (a Brownian tree over torchsde, core's numbers), brownian-fast
(the same law from a fixed dyadic tree of Brownian bridges drawn on x's device, `DyadicBrownian`), and the
noise types of Clybius/ComfyUI-Extra-Samplers (`extra_samplers.py::NOISE_SAMPLER_HANDLERS`): uniform,
pyramid, highres-pyramid, perlin, laplacian, each standardised as that reference does.
"""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .registry import Option

Seed = int | Sequence[int] | None

# Noise types of the ComfyUI-Extra-Samplers pack, offered by samplers that take `noise_type`.
NOISE_TYPES = ("gaussian", "uniform", "brownian", "pyramid", "highres-pyramid", "perlin", "laplacian", "brownian-fast")


def noise_option(default: str, added_later: bool = False) -> Option:
    """The `noise_type` widget of a stochastic sampler."""
    return Option("noise_type", default, choices=NOISE_TYPES, added_later=added_later,
                  tooltip="Kind of noise injected at each step (seeded). brownian: a Brownian tree on the CPU (torchsde, "
                          "core's numbers); brownian-fast: the same law drawn on the latent's device, faster, other numbers.")


# The two options of every stochastic sampler, defined once; a sampler that wants another default or range
# takes a `dataclasses.replace` of it, the tooltip stays.
ETA = Option("eta", 1.0, 0.0, 100.0, 0.01,
             tooltip="How much fresh noise each step adds: 0 is the deterministic (ODE) solver, 1 the full ancestral/SDE noise.")
S_NOISE = Option("s_noise", 1.0, 0.0, 100.0, 0.01,
                 tooltip="Scale of the added noise (above 1 adds detail, below 1 smooths).")
ETA_ODE = dataclasses.replace(ETA, default=0.0)  # for samplers whose default is their deterministic solver (DDIM, DPM-Solver)


def _per_sample(seed: Seed) -> bool:
    return isinstance(seed, (list, tuple))


def _check_seeds(x: torch.Tensor, seed: Seed) -> None:
    if _per_sample(seed) and len(seed) != x.shape[0]:
        raise ValueError(f"{len(seed)} seeds for a batch of {x.shape[0]}: give one seed per sample")


@dataclass(frozen=True)
class Streams:
    """The random streams of one draw: a torch generator on the tensor's device for the values, and a
    host-side Python RNG for sizes (highres-pyramid's scale factors), so that no draw needs a device sync."""

    values: torch.Generator | None
    host: random.Random

    @staticmethod
    def seeded(seed: int | None, device: torch.device) -> "Streams":
        if seed is None:
            return Streams(None, random.Random())
        return Streams(torch.Generator(device=device).manual_seed(seed), random.Random(seed))


# A draw function makes one tensor of `shape` from `streams`, like `like` (dtype, device).
Draw = Callable[[tuple, Streams, torch.Tensor], torch.Tensor]


def seeded_noise_sampler(x: torch.Tensor, seed: Seed, draw: Draw):
    """A noise sampler calling `draw` once per step: one stream for the batch, or one per sample.

    Types that divide by their std divide by the std of one draw: the whole batch for an int seed (as the
    reference), each sample for a list of seeds (so a sample's noise does not depend on its batch).
    """
    _check_seeds(x, seed)
    if _per_sample(seed):
        streams = [Streams.seeded(s, x.device) for s in seed]
        one = (1, *x.shape[1:])
        return lambda sigma, sigma_next: torch.cat([draw(one, st, x) for st in streams])
    streams = Streams.seeded(seed, x.device)
    return lambda sigma, sigma_next: draw(tuple(x.shape), streams, x)


# --- the noise types -------------------------------------------------------------------------------

def gaussian(shape: tuple, streams: Streams, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise."""
    return torch.randn(shape, generator=streams.values, dtype=like.dtype, layout=like.layout, device=like.device)


def uniform(shape: tuple, streams: Streams, like: torch.Tensor) -> torch.Tensor:
    """Uniform noise on [-sqrt 3, sqrt 3]: mean 0, variance 1.

    The reference (`uniform_noise_like`) writes sqrt(3) as 1.73 (variance 0.9977); we use sqrt(3).
    """
    u = torch.rand(shape, generator=streams.values, dtype=like.dtype, device=like.device)
    return (2 * u - 1) * math.sqrt(3)


# The reference's pyramid (`pyramid_noise_like`, discount 0.8, 5 levels): level i is N(0, 0.5^(2i)) drawn
# at 2^(i+1) times the resolution, brought back with 'nearest-exact' and weighted by discount^i. Shrinking
# by an integer factor with 'nearest-exact' keeps one sample of each block, so every pixel is a sum of
# independent normals: N(0, sum_i (0.4^i)^2), about 1.091^2, not normalised by the reference.
PYRAMID_STD = math.sqrt(sum((0.8**i * 0.5**i) ** 2 for i in range(5)))


def pyramid(shape: tuple, streams: Streams, like: torch.Tensor) -> torch.Tensor:
    """Pyramid noise of Extra-Samplers: i.i.d. N(0, PYRAMID_STD^2) per pixel (see the note above).

    Same distribution as the reference, drawn at latent size: the reference draws grids up to 32x the
    latent resolution in each direction (1024x the values) only to keep one value per block.
    """
    return gaussian(shape, streams, like) * PYRAMID_STD


def _height_width(shape: tuple) -> tuple[int, int]:
    if len(shape) < 3:
        raise ValueError(f"this noise type needs (batch, ..., height, width) tensors, not shape {tuple(shape)}")
    return shape[-2], shape[-1]


def _as_planes(t: torch.Tensor) -> torch.Tensor:
    """(..., h, w) -> (n, 1, h, w): leading axes as one batch of single-channel planes for interpolate."""
    return t.reshape(-1, 1, *t.shape[-2:])


def highres_pyramid(shape: tuple, streams: Streams, like: torch.Tensor, discount: float = 0.7) -> torch.Tensor:
    """Highres-pyramid noise of Extra-Samplers (`highres_pyramid_noise_like`), divided by its std.

    Uniform noise plus up to 4 normal grids of growing resolution (ratio r^i, r uniform in [2, 4), capped at
    15x the latent size), each resized to latent size bilinearly and weighted by discount^i.
    """
    h, w = _height_width(shape)
    noise = uniform(shape, streams, like)
    gh, gw = h, w
    for i in range(4):
        r = 2 + 2 * streams.host.random()  # a fresh ratio per level, as the reference
        gh, gw = min(15 * h, int(gh * r**i)), min(15 * w, int(gw * r**i))
        grid = gaussian((*shape[:-2], gh, gw), streams, like)
        resized = torch.nn.functional.interpolate(_as_planes(grid), size=(h, w), mode="bilinear")
        noise = noise + resized.reshape(shape) * discount**i
        if gh >= 15 * h or gw >= 15 * w:
            break
    return noise / noise.std()


def _smoothstep(t: torch.Tensor) -> torch.Tensor:
    return t * t * (3 - 2 * t)


def perlin_noise(planes: int, grid: tuple[int, int], out: tuple[int, int], streams: Streams,
                 like: torch.Tensor) -> torch.Tensor:
    """2-D gradient (Perlin) noise, (planes, H, W): random unit gradients on a (gh+1) x (gw+1) lattice; each
    pixel blends the dot products of the 4 corner gradients with its offsets to them, weights smoothstep(3t^2-2t^3).
    """
    (gh, gw), (oh, ow) = grid, out
    bh, bw = oh // gh, ow // gw
    if (bh * gh, bw * gw) != (oh, ow):
        raise ValueError(f"perlin output {out} is not a whole number of grid cells {grid}")
    lattice = (planes, gh + 1, gw + 1)
    angle = 2 * math.pi * torch.rand(lattice, generator=streams.values, dtype=like.dtype, device=like.device)
    gradient = torch.stack((angle.cos(), angle.sin()), dim=-1)  # (planes, gh+1, gw+1, xy)
    row, col = torch.arange(oh, device=like.device), torch.arange(ow, device=like.device)
    fy = ((row % bh + 0.5) / bh).to(like.dtype)[:, None]  # position inside the cell, (oh, 1)
    fx = ((col % bw + 0.5) / bw).to(like.dtype)[None, :]  # (1, ow)
    cy, cx = row // bh, col // bw

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = gradient[:, cy + dy][:, :, cx + dx]  # (planes, oh, ow, xy)
        return g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy)

    sx, sy = _smoothstep(fx), _smoothstep(fy)
    top = torch.lerp(corner(0, 0), corner(0, 1), sx)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), sx)
    return torch.lerp(top, bottom, sy)


def perlin(shape: tuple, streams: Streams, like: torch.Tensor) -> torch.Tensor:
    """Perlin noise of Extra-Samplers (`rand_perlin_like`): N(0, 1/4) plus two Perlin layers with one lattice
    cell per pixel, divided by its std.

    The reference draws the Perlin layers with batch size = channels and broadcasts them over the batch, so
    every image of a batch shares them; here each image gets its own (batch noise must be independent, and a
    per-sample seed must give the same noise as a batch of one).
    """
    h, w = _height_width(shape)
    planes = math.prod(shape[:-2])
    noise = gaussian(shape, streams, like) / 2
    for _ in range(2):
        noise = noise + perlin_noise(planes, (h, w), (h, w), streams, like).reshape(shape)
    return noise / noise.std()


def laplacian(shape: tuple, streams: Streams, like: torch.Tensor) -> torch.Tensor:
    """Laplacian noise of Extra-Samplers (`rand_laplacian_like`): N(0, 1/16) + Laplace(0, 1), divided by its std.

    Laplace(0, 1) drawn as the difference of two Exp(1) variables (seeded; the reference uses
    `torch.distributions.Laplace` on the global generator).
    """
    def exponential() -> torch.Tensor:
        return torch.empty(shape, dtype=like.dtype, device=like.device).exponential_(generator=streams.values)

    noise = gaussian(shape, streams, like) / 4 + (exponential() - exponential())
    return noise / noise.std()


DRAWS: dict[str, Draw] = {
    "gaussian": gaussian,
    "uniform": uniform,
    "pyramid": pyramid,
    "highres-pyramid": highres_pyramid,
    "perlin": perlin,
    "laplacian": laplacian,
}


def default_noise_sampler(x: torch.Tensor, seed: Seed = None):
    """Seeded standard gaussian noise, drawn on x's device.

    Same stream as ComfyUI core's `default_noise_sampler` (a torch.Generator on x.device seeded with
    `seed`), so a stochastic sampler gives core's numbers for the same seed. A list of seeds gives one
    stream per sample (an extension; core takes one int).
    """
    return seeded_noise_sampler(x, seed, gaussian)


# --- Brownian tree -----------------------------------------------------------------------------------

TREE_TOL = 1e-6  # torchsde's default time resolution of the tree (core uses the default)


def brownian_tree_noise_sampler(x: torch.Tensor, sigma_min: float, sigma_max: float, seed: Seed = None, cpu: bool = True):
    """Noise from one Brownian path W over [sigma_min, sigma_max]: (W(sigma_next) - W(sigma)) / sqrt|sigma_next - sigma|.

    Increments over nested or neighbouring steps are consistent with one path (torchsde's BrownianTree,
    a seeded binary tree of Brownian bridges), so the noise depends on the seed, not on the step count:
    an SDE solver converges as steps are refined (Kidger et al. 2021, arXiv 2105.13493).

    Same numbers as core's `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=cpu)`:
    the tree holds a zero state like x (like x[0] per sample for a list of seeds, one tree each) in x's dtype,
    on the CPU (`cpu=True`, query times rounded to float32 as core does) or on x's device (`cpu=False`,
    core's "_gpu" samplers; the device's generator gives other numbers for the same seed).
    """
    import torchsde  # only SDE samplers need it; keeps importing the pack cheap

    _check_seeds(x, seed)
    per_sample = _per_sample(seed)
    if seed is None:
        seed = torch.randint(0, 2**63 - 1, ()).item()  # unseeded: draw one from torch's global generator
    seeds = list(seed) if per_sample else [seed]
    device = torch.device("cpu") if cpu else x.device
    w0 = torch.zeros(x.shape[1:] if per_sample else x.shape, dtype=x.dtype, device=device)
    lo, hi = sorted((float(sigma_min), float(sigma_max)))
    trees = [torchsde.BrownianTree(lo, w0, hi, entropy=s, tol=TREE_TOL) for s in seeds]
    # torchsde keeps times to the digits of its tolerance and clamps queries into its (rounded) interval, with a
    # warning; clamping here first gives the same numbers, quietly.
    digits = round(-math.log10(TREE_TOL))
    t_lo, t_hi = round(lo, digits), round(hi, digits)

    def query_time(sigma: float) -> float:
        t = float(torch.tensor(sigma, dtype=torch.float32)) if cpu else sigma  # core's CPU tree: float32 times
        return min(max(t, t_lo), t_hi)

    def sample(sigma, sigma_next):
        a, b = float(sigma), float(sigma_next)
        if a == b:  # an empty step (a repeated sigma): no noise; core divides 0 by 0 here (NaN)
            return torch.zeros_like(x)
        sign = 1.0 if a < b else -1.0
        t0, t1 = query_time(min(a, b)), query_time(max(a, b))
        w = torch.stack([tree(t0, t1) for tree in trees]).to(device=x.device, dtype=x.dtype)
        w = w if per_sample else w[0]
        return w * sign / math.sqrt(abs(b - a))

    return sample


def make_noise_sampler(kind: str, x: torch.Tensor, seed: Seed, sigma_min: float, sigma_max: float, cpu: bool = True):
    """The noise sampler of type `kind` for x, seeded; `sigma_min/max` bound a Brownian tree.

    `cpu=True` keeps a Brownian tree on the CPU (core's default); False puts it on x's device. The other
    types draw on x's device with a generator there (as core's gaussian stream).

    The reference pack's "brownian" is unseeded: its samplers call
    `get_noise_sampler(x, sigmas, noise_sampler_type, noise_sampler, extra_args)`, so `extra_args` lands in
    the `cpu` slot and the seed is always None. Here the seed reaches the tree.
    """
    if kind == "brownian":
        return brownian_tree_noise_sampler(x, sigma_min, sigma_max, seed=seed, cpu=cpu)
    if kind == "brownian-fast":
        return fast_brownian_noise_sampler(x, sigma_min, sigma_max, seed=seed)
    if kind not in DRAWS:
        raise ValueError(f"unknown noise type {kind!r}; choose one of {NOISE_TYPES}")
    return seeded_noise_sampler(x, seed, DRAWS[kind])


def noise_sampler_for(x: torch.Tensor, extra_args: dict, noise_sampler=None, noise_type: str = "gaussian",
                      sigmas: Sequence[float] = (), noise_device: str = "cpu", sigma_min_scale: float = 1.0):
    """What a sampler draws its noise from: the caller's `noise_sampler`, else a sampler of `noise_type` seeded
    with extra_args["seed"]; a Brownian tree spans [sigma_min_scale * smallest positive sigma, largest sigma] of `sigmas`
    and lives on the CPU (core's default) or, with noise_device="gpu", on x's device.

    "gaussian" is core's `default_noise_sampler` stream; "brownian" over that interval is core's
    `BrownianTreeNoiseSampler` for its SDE samplers.
    """
    if noise_sampler is not None:
        return noise_sampler
    if noise_device not in ("cpu", "gpu"):
        raise ValueError(f"noise_device must be 'cpu' or 'gpu', not {noise_device!r}")
    positive = [s for s in sigmas if s > 0] or [1.0]
    return make_noise_sampler(noise_type, x, extra_args.get("seed"), min(positive) * sigma_min_scale, max(positive),
                              cpu=noise_device == "cpu")


# --- Brownian noise on the device: a fixed dyadic tree of Brownian bridges ---------------------------

DYADIC_DEPTH = 16  # leaf cells of the tree: 2^16 over [sigma_min, sigma_max], geometric (1e-4 relative for 14.6/0.03)
_MASK64 = (1 << 64) - 1


def _node_seed(seed: int, node: int) -> int:
    """A 63-bit seed for tree node `node` of path `seed` (splitmix64 finaliser of the pair): counter-based,
    so any node's normals are drawn without drawing the nodes before it."""
    z = (seed * 0x9E3779B97F4A7C15 + node * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        z = ((z ^ (z >> shift)) * mult) & _MASK64
    return (z ^ (z >> 31)) >> 1


class DyadicBrownian:
    """One Brownian path W on [lo, hi] (W(lo) = 0), any time queried on the tensor's device.

    Levy's construction (the Brownian bridge; e.g. Glasserman, "Monte Carlo Methods in Financial
    Engineering", 3.1): W(hi) ~ N(0, hi - lo); given W at a and b, W at a point m between them is
    W(a) + (m-a)/(b-a) (W(b) - W(a)) + sqrt((m-a)(b-m)/(b-a)) Z. The split points are fixed, a tree of
    `depth` levels over a grid geometric in time when lo > 0 (the sigmas of a schedule are), and node i's
    Z is drawn from a generator seeded by (seed, i) alone, so W(t) depends on the seed and t only: 10 and
    20 steps see one path. A query descends from the root to the leaf cell holding t and bridges inside it
    (that last Z keyed by the cell), so W(t) = sum_i c_i Z_i with depth + 2 draws and coefficients c_i
    computed on the host from times alone: no value goes back to the host, nothing is kept but the last
    few answers. Exact law for queries in distinct leaf cells (torchsde's tree is exact only to its `tol`,
    rounding times); two queries inside one leaf cell (closer than 2^-depth of the range) share its Z.
    """

    def __init__(self, lo: float, hi: float, shape: tuple, seeds: Sequence[int], device, dtype,
                 depth: int = DYADIC_DEPTH):
        if not hi > lo:
            raise ValueError(f"a Brownian path needs lo < hi, got [{lo}, {hi}]")
        self.lo, self.hi, self.depth = float(lo), float(hi), depth
        self.shape, self.seeds, self.device, self.dtype = tuple(shape), list(seeds), torch.device(device), dtype
        self.geometric = self.lo > 0
        self.generator = torch.Generator(device=self.device)
        self.cache: dict[float, torch.Tensor] = {}

    def grid_time(self, u: float) -> float:
        """The time at fraction u of the tree (geometric between lo and hi where lo > 0)."""
        if u <= 0:
            return self.lo
        if u >= 1:
            return self.hi
        return self.lo * (self.hi / self.lo) ** u if self.geometric else self.lo + (self.hi - self.lo) * u

    def coefficients(self, t: float) -> list[tuple[int, float]]:
        """W(t) as [(node, c)]: the sum of c times that node's standard normals."""
        t = min(max(float(t), self.lo), self.hi)
        if t == self.lo:
            return []
        root = (1, math.sqrt(self.hi - self.lo))
        if t == self.hi:
            return [root]
        span = math.log(self.hi / self.lo) if self.geometric else self.hi - self.lo
        u = (math.log(t / self.lo) if self.geometric else t - self.lo) / span
        cell = min(int(u * 2**self.depth), 2**self.depth - 1)
        # W(a), W(b) as coefficient dicts over nodes; node numbering as a heap: level l, index j -> 2^l + j
        ta, tb, wa, wb = self.lo, self.hi, {}, dict([root])
        for level in range(self.depth):
            j = cell >> (self.depth - level)  # the interval at this level holding the cell
            tm = self.grid_time((2 * j + 1) / 2 ** (level + 1))
            wm = _bridge(wa, wb, ta, tb, tm, node=2 ** (level + 1) + j)
            if (cell >> (self.depth - level - 1)) & 1:
                ta, wa = tm, wm
            else:
                tb, wb = tm, wm
        return list(_bridge(wa, wb, ta, tb, t, node=2 ** (self.depth + 1) + cell).items())

    def __call__(self, t: float) -> torch.Tensor:
        key = float(t)
        if key in self.cache:
            return self.cache[key]
        terms = self.coefficients(key)
        out = torch.zeros((len(self.seeds), *self.shape), dtype=torch.float32, device=self.device)
        if terms:
            normals = torch.empty((len(terms), len(self.seeds), *self.shape), dtype=torch.float32, device=self.device)
            for i, (node, _) in enumerate(terms):
                for k, seed in enumerate(self.seeds):
                    self.generator.manual_seed(_node_seed(seed, node))
                    torch.randn(self.shape, generator=self.generator, out=normals[i, k])
            weights = torch.tensor([c for _, c in terms], dtype=torch.float32).to(self.device, non_blocking=True)
            out = torch.tensordot(weights, normals, dims=1)
        out = out.to(self.dtype)
        if len(self.cache) >= 4:  # a sampler asks for sigma_i then sigma_i+1: keep the last few answers
            self.cache.pop(next(iter(self.cache)))
        self.cache[key] = out
        return out


def _bridge(wa: dict, wb: dict, ta: float, tb: float, tm: float, node: int) -> dict:
    """Coefficients of W(tm) = W(ta) + (tm-ta)/(tb-ta) (W(tb) - W(ta)) + sqrt((tm-ta)(tb-tm)/(tb-ta)) Z_node."""
    lam = (tm - ta) / (tb - ta)
    out = {n: (1 - lam) * c for n, c in wa.items()}
    for n, c in wb.items():
        out[n] = out.get(n, 0.0) + lam * c
    out[node] = math.sqrt(max((tm - ta) * (tb - tm) / (tb - ta), 0.0))
    return out


def fast_brownian_noise_sampler(x: torch.Tensor, sigma_min: float, sigma_max: float, seed: Seed = None,
                                depth: int = DYADIC_DEPTH):
    """Brownian noise (W(sigma_next) - W(sigma)) / sqrt|sigma_next - sigma| from a `DyadicBrownian` on x's device.

    The law of `brownian` (independent Gaussian increments of variance |t1 - t0|, one path per seed, so step
    counts agree at shared times) without torchsde and without host round trips; other numbers than core's
    tree for the same seed. A list of seeds gives one path per sample.
    """
    _check_seeds(x, seed)
    per_sample = _per_sample(seed)
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    seeds = list(seed) if per_sample else [seed]
    shape = x.shape[1:] if per_sample else x.shape
    lo, hi = sorted((float(sigma_min), float(sigma_max)))
    path = DyadicBrownian(lo, hi, shape, seeds, x.device, x.dtype, depth)

    def sample(sigma, sigma_next):
        a, b = float(sigma), float(sigma_next)
        if a == b:
            return torch.zeros_like(x)
        w = path(b) - path(a)
        w = w.reshape(x.shape) if per_sample else w[0]
        return w / math.sqrt(abs(b - a))

    return sample
