"""Supreme, the configurable ancestral integrator of ComfyUI-Extra-Samplers (Clybius, BSD-3).

Reference: Clybius/ComfyUI-Extra-Samplers `extra_samplers.py::sampler_supreme` and its node in `nodes.py`
("based on no paper, purely interesting thoughts"). Read for the algorithm, written anew as small parts:

- a table of step methods, one small function each (`STEP_METHODS`), most of them explicit Runge-Kutta
  tableaux on dx/dsigma run by one `explicit_rk`;
- `enhance`: what every model call's x0 goes through (edge enhancement, centralization, normalization,
  perpendicular history), each scaled by 1/steps_per_sigma;
- a table of noise modulations (`NOISE_MODULATIONS`);
- `sample_supreme`: per step, `substeps` runs of the step from the same x to sigma_down, averaged, then
  ancestral noise to sigma_next.

Quirks of the reference kept: the first step is always RKF45 (the "warm-up"); substeps after the first use
`substep_method`; `dynamic`/`adaptive_rk` pick the order from the relative change of dx/dsigma since the
previous step (and so need one device sync per step, the only ones); `adaptive_rk` uses its weights as stage
coefficients (first order); the trapezoidal rule takes its predictor slope at sigma_next but steps to
sigma_down; the reversible corrections dt_rev^2 (d' - d)/4; the intensity/frequency modulation formulas;
normalization divides by each channel's std (a perfectly flat x0 channel gives NaN, as there).
Departures (defects of the reference), each tested:
1. Bogacki-Shampine's third stage is x + 3/4 k1 + 1/4 k2 at sigma + 3/4 dt, a stage whose x belongs to
   another sigma, which makes the method first order; here the tableau's x + 3/4 k2, third order.
2. spectral_signum broadcasts its per-sample quantiles onto the channel axis, which crashes for a batch size
   other than 1 or the channel count; here per sample.
3. Every mean, norm and projection of the enhancements and modulations is per sample: the reference's
   whole-batch means/norms (perphist, the intensity and frequency modulations) make an image depend on the
   others in its batch. Batch size 1 is unchanged. (dynamic/adaptive_rk still choose one method per batch.)
4. Noise is seeded (the reference's ignores the seed), and drawn once per step: the reference also draws
   two noises per substep and one extra per step that it never uses.
5. Where eta is so large that sigma_down = 0, the log-sigma methods (dpm_*, RES) divide by zero and the
   Runge-Kutta stages at sigma_down = 0 give NaN; the step is then Euler, which lands on x0.
6. The callback runs once per step (the reference calls it at every model call).
The edge enhancement's filters are kornia's `joint_bilateral_blur` and `unsharp_mask` (reflect borders),
written here in plain torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from ._common import ancestral_step, res_coefficients, s_in_like, to_d
from .noise import ETA, S_NOISE, noise_option, noise_sampler_for
from .registry import Option, register

REFERENCE = "Clybius/ComfyUI-Extra-Samplers/"
Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------------
# Step methods: (ctx, z, denoised) -> z at ctx.sigma_down


@dataclass(frozen=True)
class StepContext:
    denoise: Callable[[Tensor, float], Tensor]  # the enhanced model at a sigma
    sigma: float
    sigma_next: float
    sigma_down: float  # where the deterministic part of the step lands
    sigma_down_reversible: float  # sigma_down for eta = reversible_eta: sets the reversible correction
    prev_x: Tensor  # x after the previous step (the initial x at step 0)
    prev_denoised: Tensor | None  # x0 of the previous step's last substep
    order: int = 1  # adaptive_rk's order

    @property
    def dt(self) -> float:
        return self.sigma_down - self.sigma


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method: stage j at sigma + c_j dt from z + sum_l a_jl k_l; result z + sum_j b_j k_j."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]


def explicit_rk(ctx: StepContext, z: Tensor, denoised: Tensor, tableau: Tableau) -> tuple[Tensor, list[Tensor]]:
    """Run a tableau on dx/dsigma = (x - x0)/sigma over dt = sigma_down - sigma; k_1 reuses the step's x0."""
    dt = ctx.dt
    ks = [to_d(z, ctx.sigma, denoised) * dt]
    for c_j, a_j in zip(tableau.c[1:], tableau.a[1:]):
        z_j = z + sum(a * k for a, k in zip(a_j, ks) if a != 0)
        sigma_j = ctx.sigma + c_j * dt
        ks.append(to_d(z_j, sigma_j, ctx.denoise(z_j, sigma_j)) * dt)
    return z + sum(b * k for b, k in zip(tableau.b, ks) if b != 0), ks


RK4 = Tableau(c=(0, 1 / 2, 1 / 2, 1), a=((), (1 / 2,), (0, 1 / 2), (0, 0, 1)), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6))
# Runge-Kutta-Fehlberg: its five stages of the fourth-order solution (the sixth, for the error, is not used)
RKF45 = Tableau(
    c=(0, 1 / 4, 3 / 8, 12 / 13, 1),
    a=((), (1 / 4,), (3 / 32, 9 / 32), (1932 / 2197, -7200 / 2197, 7296 / 2197), (439 / 216, -8, 3680 / 513, -845 / 4104)),
    b=(25 / 216, 0, 1408 / 2565, 2197 / 4104, -1 / 5),
)
BOGACKI_SHAMPINE = Tableau(c=(0, 1 / 2, 3 / 4), a=((), (1 / 2,), (0, 3 / 4)), b=(2 / 9, 1 / 3, 4 / 9))
# adaptive_rk: the reference uses each order's weights also as the stage coefficients (a_jl = b_l, c_j = sum b_<j)
ADAPTIVE_RK_WEIGHTS = {1: (1.0,), 2: (1 / 2, 1 / 2), 3: (1 / 6, 2 / 3, 1 / 6), 4: (1 / 8, 3 / 8, 3 / 8, 1 / 8)}


def adaptive_tableau(order: int) -> Tableau:
    w = ADAPTIVE_RK_WEIGHTS[order]
    return Tableau(c=tuple(sum(w[:j]) for j in range(order)), a=tuple(w[:j] for j in range(order)), b=w)


def euler_step(ctx, z, denoised):
    return z + to_d(z, ctx.sigma, denoised) * ctx.dt


def dpm_solver_step(ctx, z, denoised, r: tuple[float, ...]):
    """DPM-Solver-1/2/3 (Lu et al. 2206.00927, Algorithms 1 and 2 with r1 = 1/2 or r1, r2 = 1/3, 2/3), as
    k-diffusion's DPMSolver.dpm_solver_{1,2,3}_step, in t = -log sigma from sigma to sigma_down."""
    t, t_next = -math.log(ctx.sigma), -math.log(ctx.sigma_down)
    h = t_next - t
    eps = (z - denoised) / ctx.sigma

    def eps_at(x, s):
        sigma_s = math.exp(-s)
        return (x - ctx.denoise(x, sigma_s)) / sigma_s

    first = z - ctx.sigma_down * math.expm1(h) * eps
    if not r:
        return first
    if len(r) == 1:
        s1 = t + r[0] * h
        eps_1 = eps_at(z - math.exp(-s1) * math.expm1(r[0] * h) * eps, s1)
        return first - ctx.sigma_down / (2 * r[0]) * math.expm1(h) * (eps_1 - eps)
    r1, r2 = r
    s1, s2 = t + r1 * h, t + r2 * h
    eps_1 = eps_at(z - math.exp(-s1) * math.expm1(r1 * h) * eps, s1)
    u2 = z - math.exp(-s2) * math.expm1(r2 * h) * eps - math.exp(-s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_1 - eps)
    eps_2 = eps_at(u2, s2)
    return first - ctx.sigma_down / r2 * (math.expm1(h) / h - 1) * (eps_2 - eps)


def reversible_correction(ctx, d_from, d_to):
    """The reference's reversible-Heun-style term dt_rev^2 (d_to - d_from)/4, dt_rev = sigma_down(reversible_eta) - sigma."""
    return (ctx.sigma_down_reversible - ctx.sigma) ** 2 * (d_to - d_from) / 4


def reversible_heun_step(ctx, z, denoised):
    d = to_d(z, ctx.sigma, denoised)
    x_pred = z + d * ctx.dt
    d_pred = to_d(x_pred, ctx.sigma_down, ctx.denoise(x_pred, ctx.sigma_down))
    return z + ctx.dt * (d + d_pred) / 2 - reversible_correction(ctx, d, d_pred)


def reversible_heun_1s_step(ctx, z, denoised):
    """One-call variant: the slope of the previous step's x and x0 (both taken at this sigma, as in the
    reference), and the current x0 as the slope at the Euler prediction from the previous x."""
    prev_denoised = ctx.prev_denoised if ctx.prev_denoised is not None else ctx.denoise(ctx.prev_x, ctx.sigma)
    d_old = to_d(ctx.prev_x, ctx.sigma, prev_denoised)
    x_pred = ctx.prev_x + d_old * ctx.dt
    d_pred = to_d(x_pred, ctx.sigma_down, denoised)
    return z + ctx.dt * (d_old + d_pred) / 2 - reversible_correction(ctx, d_old, d_pred)


def reversible_bogacki_shampine_step(ctx, z, denoised):
    z_next, (k1, k2, k3) = explicit_rk(ctx, z, denoised, BOGACKI_SHAMPINE)
    return z_next - (ctx.sigma_down_reversible - ctx.sigma) ** 2 * (k3 - k2) / 6


def trapezoidal_step(ctx, z, denoised):
    """Heun's trapezoidal rule with the predictor at sigma_next; the averaged slope then steps to sigma_down."""
    d = to_d(z, ctx.sigma, denoised)
    x_pred = z + d * (ctx.sigma_next - ctx.sigma)
    d_pred = to_d(x_pred, ctx.sigma_next, ctx.denoise(x_pred, ctx.sigma_next))
    return z + ctx.dt * (d + d_pred) / 2


def res_step(ctx, z, denoised):
    """RES second-order step, c2 = 1/2, general phi functions (Zhang et al. 2308.02157, Algorithm 1)."""
    h = math.log(ctx.sigma / ctx.sigma_down)
    a2_1, b1, b2 = res_coefficients(h, 0.5, simple=False)
    x_2 = math.exp(-h / 2) * z + a2_1 * h * denoised
    denoised_2 = ctx.denoise(x_2, ctx.sigma * math.exp(-h / 2))
    return math.exp(-h) * z + h * (b1 * denoised + b2 * denoised_2)


STEP_METHODS: dict[str, Callable] = {
    "euler": euler_step,
    "dpm_1s": lambda ctx, z, d: dpm_solver_step(ctx, z, d, ()),
    "dpm_2s": lambda ctx, z, d: dpm_solver_step(ctx, z, d, (1 / 2,)),
    "dpm_3s": lambda ctx, z, d: dpm_solver_step(ctx, z, d, (1 / 3, 2 / 3)),
    "bogacki_shampine": lambda ctx, z, d: explicit_rk(ctx, z, d, BOGACKI_SHAMPINE)[0],
    "rk4": lambda ctx, z, d: explicit_rk(ctx, z, d, RK4)[0],
    "rkf45": lambda ctx, z, d: explicit_rk(ctx, z, d, RKF45)[0],
    "reversible_heun": reversible_heun_step,
    "reversible_heun_1s": reversible_heun_1s_step,
    "reversible_bogacki_shampine": reversible_bogacki_shampine_step,
    "trapezoidal": trapezoidal_step,
    "RES": res_step,
    "adaptive_rk": lambda ctx, z, d: explicit_rk(ctx, z, d, adaptive_tableau(ctx.order))[0],
}
SUBSTEP_METHOD_NAMES = (
    "euler", "dpm_1s", "dpm_2s", "dpm_3s", "bogacki_shampine", "rk4", "rkf45", "reversible_heun",
    "reversible_heun_1s", "reversible_bogacki_shampine", "trapezoidal", "RES",
)
STEP_METHOD_NAMES = SUBSTEP_METHOD_NAMES + ("dynamic", "adaptive_rk")
# The reference's order table (default 2): it only sets how far the enhancements are divided per step.
SUPREME_ORDER = {"euler": 1, "dpm_1s": 1, "dpm_3s": 3, "rk4": 4, "reversible_heun_1s": 1, "rkf45": 6, "bogacki_shampine": 3}
# dynamic: relative change of dx/dsigma below each bound -> order -> method
DYNAMIC_ORDER_BOUNDS = ((1e-2, 6), (3.75e-2, 4), (7.5e-2, 3), (1.5e-1, 2), (math.inf, 1))
DYNAMIC_METHODS = {1: "euler", 2: "trapezoidal", 3: "bogacki_shampine", 4: "rk4", 6: "rkf45"}


def choose_method(step_method: str, substep_method: str, substep: int, first_step: bool, slope_change: Callable[[], float]):
    """(method, order) of one substep, as the reference's dynamic_step_method."""
    if substep > 0:
        return substep_method, 1
    if first_step:
        return "rkf45", 6  # the reference's warm-up: the first step is RKF45 whatever the step method
    if step_method not in ("dynamic", "adaptive_rk"):
        return step_method, 1
    error = slope_change()
    # a NaN/inf change (a diverging run, e.g. every widget at its maximum) is beyond every bound: first order
    order = next((o for bound, o in DYNAMIC_ORDER_BOUNDS if error < bound), 1)
    if step_method == "adaptive_rk":
        return "adaptive_rk", min(order, 4)
    return DYNAMIC_METHODS[order], order


def relative_slope_change(prev_x, prev_denoised, x, denoised, sigma_prev: float, sigma: float) -> float:
    """|d_pred - d| / |d|: d the previous step's slope, d_pred the slope now at its Euler prediction (whole batch, as
    the reference; a device sync, taken only by dynamic and adaptive_rk)."""
    d = to_d(prev_x, sigma_prev, prev_denoised)
    d_pred = to_d(prev_x + d * (sigma - sigma_prev), sigma, denoised)
    return (torch.linalg.norm(d_pred - d) / torch.linalg.norm(d)).item()


# --------------------------------------------------------------------------------------------------
# Enhancements of every x0


def gaussian_kernel1d(size: int, sigma: float, like: Tensor) -> Tensor:
    offsets = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur2d(image: Tensor, size: int = 3, sigma: float = 1.5) -> Tensor:
    """kornia.filters.gaussian_blur2d: separable normalised Gaussian, reflect borders, per channel."""
    channels, pad = image.shape[1], size // 2
    kernel = gaussian_kernel1d(size, sigma, image)
    padded = F.pad(image, (pad, pad, pad, pad), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)


def unsharp_mask(image: Tensor, size: int = 3, sigma: float = 1.5) -> Tensor:
    """kornia.filters.unsharp_mask: image + (image - blur(image))."""
    return 2 * image - gaussian_blur2d(image, size, sigma)


def joint_bilateral_blur(image: Tensor, guide: Tensor, size: int = 3, sigma_color: float = 0.1, sigma_space: float = 1.5) -> Tensor:
    """kornia.filters.joint_bilateral_blur (L1 colour distance): each pixel the average of its window, weighted by a
    spatial Gaussian times exp(-(sum_c |guide_q - guide_p|)^2 / (2 sigma_color^2)); reflect borders."""
    pad = size // 2

    def windows(t):
        padded = F.pad(t, (pad, pad, pad, pad), mode="reflect")
        return rearrange(padded.unfold(2, size, 1).unfold(3, size, 1), "b c h w ky kx -> b c h w (ky kx)")

    k1 = gaussian_kernel1d(size, sigma_space, image)
    space = rearrange(k1[:, None] * k1[None, :], "ky kx -> (ky kx)")
    distance = (windows(guide) - guide[..., None]).abs().sum(1, keepdim=True)
    weight = space * torch.exp(-0.5 / sigma_color**2 * distance**2)
    return (windows(image) * weight).sum(-1) / weight.sum(-1)


def per_sample_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1).view(-1, *([1] * (a.ndim - 1)))


@dataclass(frozen=True)
class Enhancements:
    """Strengths of the per-call x0 enhancements, each divided by steps_per_sigma (model calls per step of the
    reference's order table), so that a step applies about the full strength once."""

    centralization: float
    normalization: float
    edge_enhancement: float
    perphist: float
    steps_per_sigma: int


def enhance(denoised: Tensor, x: Tensor, sigma: float, sigma_next: float, old_denoised: Tensor | None, cfg: Enhancements) -> Tensor:
    """What every model call's x0 goes through, in the reference's order. sigma, sigma_next: the step's."""
    n = cfg.steps_per_sigma
    if cfg.edge_enhancement != 0:  # sharpen everything, then blur x where the x0 has no edges
        strength = (sigma - sigma_next) * cfg.edge_enhancement / n
        blur = joint_bilateral_blur(x, denoised) - x
        denoised = denoised + (unsharp_mask(denoised) - denoised) * strength + blur * strength
    if cfg.centralization != 0:  # remove part of each channel's mean
        denoised = denoised - denoised.mean(dim=(-2, -1), keepdim=True) * (cfg.centralization / n * sigma**0.5)
    if cfg.normalization != 0:  # move each channel part of the way towards unit std
        std = denoised.std(dim=(-2, -1), keepdim=True)
        denoised = denoised + (denoised / std - denoised) * (cfg.normalization / n * sigma**0.5)
    if old_denoised is not None and cfg.perphist != 0:  # add the previous x0's part perpendicular to this one
        a, b = 2 * x - denoised, 2 * x - old_denoised  # x - (x0 - x), the reference's "diffs"
        b_perp = b - a * per_sample_dot(a, b) / per_sample_dot(a, a)
        denoised = denoised + cfg.perphist / n * b_perp
    return denoised


# --------------------------------------------------------------------------------------------------
# Noise modulations: (x, noise, scale = s_noise sigma_up, strength, dims) -> the noise to add


def per_sample_norm(t: Tensor) -> Tensor:
    return per_sample_dot(t, t).sqrt()


def _norm_ratio(target: Tensor, t: Tensor) -> Tensor:
    """|target| / |t| per sample; 0 where both are zero (s_noise = 0 or sigma_up = 0: no noise, not 0/0 = NaN)."""
    return per_sample_norm(target) / per_sample_norm(t).clamp_min(torch.finfo(t.dtype).tiny)


def intensity_modulation(x, noise, scale, strength, dims):
    """Less noise where x varies more: noise (1 + 1/(std(x) |strength| + 1)), renormalised to the plain noise's
    norm, then mixed strength : (1 - strength) with the plain noise."""
    additive = noise * scale
    centred = x - x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    scaling = 1 / (centred.std(dim=dims, keepdim=True) * abs(strength) + 1)
    scaled = additive * scaling + additive
    scaled = scaled * _norm_ratio(additive, scaled)
    return scaled * strength + additive * (1 - strength)


def frequency_modulation(x, noise, scale, strength, dims):
    """The intensity-scaled noise with its Fourier magnitudes boosted by 1 + (1 - exp(-|strength|^2 (fy^2 + fx^2)))
    (fy, fx = index/size), renormalised and mixed as the intensity modulation."""
    additive = noise * scale
    centred = x - x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    scaling = 1 / (centred.std(dim=dims, keepdim=True) * abs(strength) + 1)
    spectrum = torch.fft.fft2(scaling * additive + additive)
    h, w = x.shape[-2:]
    fy = torch.arange(h, device=x.device, dtype=x.dtype)[:, None] / h
    fx = torch.arange(w, device=x.device, dtype=x.dtype)[None, :] / w
    high_pass = 1 - torch.exp(-(fy**2 + fx**2) * strength**2)
    scaled = torch.fft.ifft2(spectrum.abs() * (1 + high_pass) * torch.exp(1j * spectrum.angle())).real
    scaled = scaled * _norm_ratio(additive, scaled)
    return scaled * strength + additive * (1 - strength)


def spectral_signum_modulation(x, noise, scale, strength, dims, percentile=5.0):
    """Soft spectral clipping of the noise: Fourier components whose log-amplitude is above the 95th percentile
    (of |log-amplitude|, per sample) are damped by up to 1/2, those below the 5th boosted by up to 3/2, the
    factor raised to `strength`. Not renormalised (as the reference)."""
    additive = noise * scale
    spectrum = torch.fft.fftn(additive, dim=dims)
    log_amp = torch.log(spectrum.abs())
    flat = log_amp.abs().flatten(1)
    shape = (-1,) + (1,) * (log_amp.ndim - 1)  # one quantile per sample (departure 2)
    q_low = torch.quantile(flat, percentile / 100, dim=1).view(shape)
    q_high = torch.quantile(flat, 1 - percentile / 100, dim=1).view(shape)
    q_max = flat.amax(dim=1).view(shape)
    damp = torch.where(log_amp > q_high, 1 - ((log_amp - q_high) / (q_max - q_high)).clamp(max=0.5), 1.0)
    boost = torch.where(log_amp < q_low, 1 + (1 - log_amp / q_low).clamp(max=0.5), 1.0)
    return torch.fft.ifftn(spectrum * (boost * damp) ** strength, dim=dims).real


NOISE_MODULATIONS: dict[str, Callable] = {
    "none": lambda x, noise, scale, strength, dims: noise * scale,
    "intensity": intensity_modulation,
    "frequency": frequency_modulation,
    "spectral_signum": spectral_signum_modulation,
}
MODULATION_DIMS = {1: (-3,), 2: (-2, -1), 3: (-3, -2, -1)}  # channels, space, both


# --------------------------------------------------------------------------------------------------
# The sampler


@register(
    id="supreme",
    name="Supreme",
    order=1,
    calls_per_step="substeps x the step method's calls (adaptive for dynamic, adaptive_rk)",
    stochastic=True,
    options=(
        Option("step_method", "euler", choices=STEP_METHOD_NAMES, tooltip="Integrator of each step (the first step is always RKF45)."),
        Option("substep_method", "euler", choices=SUBSTEP_METHOD_NAMES, tooltip="Integrator of the substeps after the first."),
        ETA,
        Option("centralization", 0.02, -1.0, 1.0, 0.01, tooltip="Subtract this share of each channel's mean from x0 (scaled by sqrt(sigma))."),
        Option("normalization", 0.01, -1.0, 1.0, 0.01, tooltip="Move x0's channels this far towards unit std (scaled by sqrt(sigma))."),
        Option("edge_enhancement", 0.05, -100.0, 100.0, 0.01, tooltip="Sharpen x0 and blur x away from its edges (bilateral filter)."),
        Option("perphist", 0.0, -5.0, 5.0, 0.01, tooltip="Add this much of the previous x0's component perpendicular to the current one."),
        Option("substeps", 2, 1, 16, 1, tooltip="Runs of each step from the same x, averaged (each costs a whole step of model calls; at most 16, the reference allows 100)."),
        S_NOISE,
        Option("noise_modulation", "intensity", choices=tuple(NOISE_MODULATIONS), tooltip="How the ancestral noise is shaped by the image."),
        Option("modulation_strength", 2.0, -100.0, 100.0, 0.01, tooltip="Mix of modulated and plain noise (1 = all modulated)."),
        Option("modulation_dims", 3, 1, 3, 1, tooltip="Statistics over 1 = channels, 2 = height and width, 3 = all three."),
        Option("reversible_eta", 1.0, 0.0, 100.0, 0.01, tooltip="eta of the sigma_down that sizes the reversible methods' correction."),
        noise_option("gaussian"),
    ),
    reference=REFERENCE + "extra_samplers.py::sampler_supreme",
    paper="none (\"based on no paper\"); step methods: DPM-Solver 2206.00927, RES 2308.02157, classical Runge-Kutta tableaux",
    description="A new algorithm with little information about it yet.",
)
def sample_supreme(model, x, sigmas, extra_args=None, callback=None, disable=None, step_method="euler", substep_method="euler",
                   eta=1.0, centralization=0.02, normalization=0.01, edge_enhancement=0.05, perphist=0.0, substeps=2, s_noise=1.0,
                   noise_modulation="intensity", modulation_strength=2.0, modulation_dims=3, reversible_eta=1.0,
                   noise_type="gaussian", noise_sampler=None):
    """Supreme: an ancestral sampler with a choice of integrator, substep averaging, x0 enhancements and
    noise modulation (see the module docstring for the reference's quirks kept and its defects fixed).

    Step i: sigma_down, sigma_up = ancestral split of sigma_i -> sigma_{i+1} (eta). For each substep k, from
    the same x: x0 = enhanced model(x, sigma_i); integrate to sigma_down with the chosen method (RKF45 at
    step 0, substep_method for k > 0, Euler into sigma = 0); x = mean over substeps; then x += modulated
    noise of std s_noise sigma_up. Every model call's x0 goes through `enhance`.
    """
    if step_method not in STEP_METHOD_NAMES or substep_method not in SUBSTEP_METHOD_NAMES:
        raise ValueError(f"Supreme: unknown step method {step_method!r} / substep method {substep_method!r}")
    if noise_modulation not in NOISE_MODULATIONS or modulation_dims not in MODULATION_DIMS:
        raise ValueError(f"Supreme: unknown noise_modulation {noise_modulation!r} / modulation_dims {modulation_dims!r}")
    extra_args = {} if extra_args is None else extra_args
    sig = sigmas.tolist()
    if len(sig) <= 1:
        return x
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler, noise_type, sig)
    s_in = s_in_like(x)
    steps_per_sigma = SUPREME_ORDER.get(step_method, 2) + SUPREME_ORDER.get(substep_method, 2) * (substeps - 1)
    cfg = Enhancements(centralization, normalization, edge_enhancement, perphist, steps_per_sigma)
    modulate, dims = NOISE_MODULATIONS[noise_modulation], MODULATION_DIMS[modulation_dims]
    old_denoised = None  # the last x0 any call returned, for perphist
    prev_x, prev_denoised = x, None
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]

        def denoise(z, sigma_call):
            nonlocal old_denoised
            old_denoised = enhance(model(z, sigma_call * s_in, **extra_args), z, sigma, sigma_next, old_denoised, cfg)
            return old_denoised

        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        sigma_down_reversible, _ = ancestral_step(sigma, sigma_next, reversible_eta)
        z_sum = 0
        for k in range(substeps):
            denoised = denoise(x, sigma)
            if k == 0 and callback is not None:
                callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
            slope_change = lambda: relative_slope_change(prev_x, prev_denoised, x, denoised, sig[i - 1], sigma)
            method, order = choose_method(step_method, substep_method, k, i == 0 or prev_denoised is None, slope_change)
            if sigma_next == 0 or sigma_down == 0:
                method = "euler"  # into sigma = 0 (the reference), or where log sigma_down is undefined (departure 5)
            ctx = StepContext(denoise, sigma, sigma_next, sigma_down, sigma_down_reversible, prev_x, prev_denoised, order)
            z_sum = z_sum + STEP_METHODS[method](ctx, x, denoised)
        x = z_sum / substeps
        if sigma_next > 0 and sigma_up > 0:
            x = x + modulate(x, noise_sampler(sigma, sigma_next), s_noise * sigma_up, modulation_strength, dims)
        prev_x, prev_denoised = x, denoised
    return x
