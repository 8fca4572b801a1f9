"""Sigma schedules: pure functions returning descending sigmas that end in 0.

Two kinds, as in ComfyUI core (`comfy/samplers.py` SCHEDULER_HANDLERS, `comfy.k_diffusion.sampling.get_sigmas_*`):
- from a sigma range: `fn(n, sigma_min, sigma_max, **options)` (karras, exponential, polyexponential,
  laplace, kl_optimal; vp builds its own range);
- from the model's discrete sigma table `model_sigmas` (1-D, ascending, as ComfyUI's
  `model_sampling.sigmas`; for SD1.5 the 1000 sigmas of the scaled-linear beta schedule):
  `fn(n, model_sigmas, **options)` (normal, simple, sgm_uniform, ddim_uniform, beta,
  linear_quadratic, sd_turbo).
`n` is the number of steps; the result has n + 1 entries except where core's rule gives another
count (ddim_uniform, beta: noted there). Maths in float64; results float32, ComfyUI's SIGMAS dtype.
`SCHEDULES` maps each name to its function, whether it needs the model's table, a description
and its tunable options; `calculate_sigmas` calls one by name.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch

from .registry import Option

F64 = torch.float64


def _finish(sigmas: torch.Tensor | list[float], append_zero: bool = True) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=F64)
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros([1])])
    return sigmas.float()


# --- from a sigma range ----------------------------------------------------------------------

def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2206.00364 eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    ramp = torch.linspace(0, 1, n, dtype=F64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log sigma (k-diffusion `get_sigmas_exponential`)."""
    return _finish(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=F64).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """log sigma a polynomial of degree rho in the step ramp (k-diffusion `get_sigmas_polyexponential`);
    rho = 1 is `exponential`."""
    ramp = torch.linspace(1, 0, n, dtype=F64) ** rho
    return _finish(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """Continuous VP-SDE schedule (Song et al. 2011.13456): sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1),
    t evenly from 1 to eps_s (k-diffusion `get_sigmas_vp`)."""
    t = torch.linspace(1, eps_s, n, dtype=F64)
    return _finish(torch.sqrt(torch.special.expm1(beta_d * t**2 / 2 + beta_min * t)))


def laplace(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5) -> torch.Tensor:
    """Laplace schedule (Hang et al. 2407.03297): log sigma = mu - beta sign(1/2 - u) log(1 - 2|1/2 - u|),
    u evenly in [0, 1], clamped to [sigma_min, sigma_max] (k-diffusion `get_sigmas_laplace`).
    Departure from core: core returns it without the trailing 0, so a sampler stops at sigma_min
    without the final denoise; here it ends in 0 like every other schedule."""
    eps = 1e-5  # keeps log away from 0 at the ends, as core
    u = torch.linspace(0, 1, n, dtype=F64)
    log_sigma = mu - beta * torch.sign(0.5 - u) * torch.log(1 - 2 * torch.abs(0.5 - u) + eps)
    return _finish(log_sigma.exp().clamp(sigma_min, sigma_max))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """KL-optimal schedule (AUTOMATIC1111 PR 15608, after Sabour et al. 2404.14507 / "Align Your Steps"):
    evenly spaced in arctan(sigma). Core divides by n - 1 and returns NaN for n = 1; here that is [sigma_max, 0]."""
    u = torch.linspace(0, 1, n, dtype=F64)
    return _finish(torch.tan(u * math.atan(sigma_min) + (1 - u) * math.atan(sigma_max)))


# --- from the model's discrete sigma table ---------------------------------------------------

def _log_table(model_sigmas: torch.Tensor) -> torch.Tensor:
    return model_sigmas.detach().to("cpu", F64).log()


def _nearest_timestep(log_table: torch.Tensor, sigma: float) -> int:
    return int((log_table - math.log(sigma)).abs().argmin())


def _sigma_at(log_table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Sigma at fractional timesteps t: linear interpolation of log sigma (core `ModelSamplingDiscrete.sigma`)."""
    t = t.clamp(0, len(log_table) - 1)
    lo, hi = t.floor().long(), t.ceil().long()
    w = t - t.floor()
    return ((1 - w) * log_table[lo] + w * log_table[hi]).exp()


def _timestep_schedule(n: int, model_sigmas, sigma_min, sigma_max, sgm: bool) -> torch.Tensor:
    log_table = _log_table(model_sigmas)
    start = _nearest_timestep(log_table, float(model_sigmas[-1]) if sigma_max is None else sigma_max)
    end = _nearest_timestep(log_table, float(model_sigmas[0]) if sigma_min is None else sigma_min)
    if sgm:
        return _finish(_sigma_at(log_table, torch.linspace(start, end, n + 1, dtype=F64)[:-1]))
    if math.isclose(float(_sigma_at(log_table, torch.tensor(float(end), dtype=F64))), 0, abs_tol=1e-5):
        # a table that reaches sigma = 0 already ends the run there (core's rule)
        return _finish(_sigma_at(log_table, torch.linspace(start, end, n + 1, dtype=F64)), append_zero=False)
    return _finish(_sigma_at(log_table, torch.linspace(start, end, n, dtype=F64)))


def normal(n: int, model_sigmas: torch.Tensor, sigma_min: float | None = None, sigma_max: float | None = None) -> torch.Tensor:
    """Timesteps evenly spaced from the one of sigma_max to the one of sigma_min (both included), each
    turned into sigma by log-linear interpolation of the table (core `normal_scheduler`)."""
    return _timestep_schedule(n, model_sigmas, sigma_min, sigma_max, sgm=False)


def sgm_uniform(n: int, model_sigmas: torch.Tensor, sigma_min: float | None = None, sigma_max: float | None = None) -> torch.Tensor:
    """As `normal` with n + 1 evenly spaced timesteps, the last (sigma_min's) dropped, as Stability's
    sgm "uniform" discretisation (core `normal_scheduler(sgm=True)`)."""
    return _timestep_schedule(n, model_sigmas, sigma_min, sigma_max, sgm=True)


def simple(n: int, model_sigmas: torch.Tensor) -> torch.Tensor:
    """Every (len/n)-th sigma of the table, from the top (core `simple_scheduler`)."""
    stride = len(model_sigmas) / n
    idx = [len(model_sigmas) - 1 - int(i * stride) for i in range(n)]
    return _finish(model_sigmas.detach().cpu().to(F64)[idx])


def ddim_uniform(n: int, model_sigmas: torch.Tensor) -> torch.Tensor:
    """DDIM's "uniform" timesteps 1, 1 + c, 1 + 2c, ... with c = len // n (CompVis ddim
    `make_ddim_timesteps`; core `ddim_scheduler`). Like core, this may give more than n steps
    when len is not a multiple of n (n = 30 on 1000 timesteps gives 31)."""
    table = model_sigmas.detach().cpu().to(F64)
    ends_in_zero = math.isclose(float(table[1]), 0, abs_tol=1e-5)
    stride = max(len(table) // (n + 1 if ends_in_zero else n), 1)
    sigmas = table[1::stride].flip(0)
    return _finish(sigmas, append_zero=not ends_in_zero)


def beta(n: int, model_sigmas: torch.Tensor, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Beta schedule (Lee et al. 2407.12173): timesteps at the Beta(alpha, beta) quantiles of
    1, 1 - 1/n, ..., 1/n, rounded to the table, repeats dropped (core `beta_scheduler`; may give
    fewer than n steps for large n). The quantile is `beta_ppf` below, not scipy."""
    total = len(model_sigmas) - 1
    q = 1 - np.linspace(0, 1, n, endpoint=False)
    ts = np.rint(beta_ppf(q, alpha, beta) * total).astype(np.int64)
    keep = np.concatenate([[True], ts[1:] != ts[:-1]])
    return _finish(model_sigmas.detach().cpu().to(F64)[torch.from_numpy(ts[keep])])


def linear_quadratic(n: int, model_sigmas: torch.Tensor, threshold_noise: float = 0.025, linear_steps: int | None = None) -> torch.Tensor:
    """Mochi's linear-quadratic schedule (genmoai/models `infer.py`; core `linear_quadratic_schedule`):
    in s = 1 - sigma / sigma_max it rises linearly to threshold_noise over `linear_steps` steps
    (default n // 2), then along a quadratic that reaches 1 at step n, joined with matching slope."""
    sigma_max = float(model_sigmas[-1])
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=F64).float()
    linear_steps = n // 2 if linear_steps is None else linear_steps
    quadratic_steps = n - linear_steps
    step_diff = linear_steps - threshold_noise * n
    quad = step_diff / (linear_steps * quadratic_steps**2)
    lin = threshold_noise / linear_steps - 2 * step_diff / quadratic_steps**2
    const = quad * linear_steps**2
    s = [i * threshold_noise / linear_steps for i in range(linear_steps)]
    s += [quad * i**2 + lin * i + const for i in range(linear_steps, n)] + [1.0]
    return (torch.tensor([1.0 - v for v in s], dtype=F64) * sigma_max).float()


def sd_turbo(n: int, model_sigmas: torch.Tensor, denoise: float = 1.0) -> torch.Tensor:
    """SD-Turbo's timesteps 999, 899, ..., 99 (at most 10 steps), starting 10 (1 - denoise) steps
    in (core `SDTurboScheduler`)."""
    start = 10 - int(10 * denoise)
    timesteps = list(range(999, 0, -100))[start:start + n]
    return _finish(model_sigmas.detach().cpu().to(F64)[timesteps])


# --- the Beta quantile without scipy ---------------------------------------------------------

def _betainc_cf(x: np.ndarray, a: float, b: float, iters: int = 300) -> np.ndarray:
    """Continued fraction of the regularized incomplete beta I_x(a, b) (modified Lentz), valid for
    x < (a + 1) / (a + b + 2) (Numerical Recipes 6.4)."""
    tiny = 1e-300
    c = np.ones_like(x)
    d = 1 - (a + b) * x / (a + 1)
    d = 1 / np.where(np.abs(d) < tiny, tiny, d)
    f = d.copy()
    for m in range(1, iters + 1):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1 + num / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            f = f * c * d
        if np.all(np.abs(c * d - 1) < 1e-15):
            break
    log_front = a * np.log(x) + b * np.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    return np.exp(log_front) * f / a


def betainc(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Regularized incomplete beta function I_x(a, b) in float64, elementwise; the continued fraction
    where it converges fast, else the symmetry I_x(a, b) = 1 - I_{1-x}(b, a)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.where(x >= 1, 1.0, 0.0)
    inside = (x > 0) & (x < 1)
    direct = inside & (x < (a + 1) / (a + b + 2))
    mirrored = inside & ~direct
    out[direct] = _betainc_cf(x[direct], a, b)
    out[mirrored] = 1 - _betainc_cf(1 - x[mirrored], b, a)
    return out


def beta_ppf(q: np.ndarray, a: float, b: float) -> np.ndarray:
    """Quantile of Beta(a, b): solve I_x(a, b) = q by bisection (monotone, 60 halvings reach float64)."""
    q = np.asarray(q, dtype=np.float64)
    lo, hi = np.zeros_like(q), np.ones_like(q)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = betainc(mid, a, b) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(q <= 0, 0.0, np.where(q >= 1, 1.0, (lo + hi) / 2))


# --- the registry ----------------------------------------------------------------------------

class Schedule(NamedTuple):
    fn: Callable[..., torch.Tensor]
    needs_model_sigmas: bool  # fn(n, model_sigmas, ...) if True, else fn(n, sigma_min, sigma_max, ...)
    description: str
    options: tuple[Option, ...] = ()


SCHEDULES: dict[str, Schedule] = {
    "normal": Schedule(normal, True, "Timesteps evenly spaced over the model's range, sigma interpolated from its table."),
    "karras": Schedule(karras, False, "Karras et al.: evenly spaced in sigma^(1/rho); dense near sigma_min.",
                       (Option("rho", 7.0, 0.0, 100.0, 0.01, tooltip="Larger rho puts more steps at low noise."),)),
    "exponential": Schedule(exponential, False, "Evenly spaced in log sigma."),
    "sgm_uniform": Schedule(sgm_uniform, True, "As normal, with n + 1 timesteps and the last dropped (Stability sgm)."),
    "simple": Schedule(simple, True, "Every (1000/n)-th sigma of the model's table."),
    "ddim_uniform": Schedule(ddim_uniform, True, "DDIM's uniform timesteps 1, 1 + c, 1 + 2c, ... of the model's table."),
    "beta": Schedule(beta, True, "Timesteps at Beta(alpha, beta) quantiles: dense at both ends (2407.12173).",
                     (Option("alpha", 0.6, 0.0, 50.0, 0.01, tooltip="Beta distribution alpha."),
                      Option("beta", 0.6, 0.0, 50.0, 0.01, tooltip="Beta distribution beta."))),
    "linear_quadratic": Schedule(linear_quadratic, True, "Mochi's schedule: linear in 1 - sigma/sigma_max, then quadratic.",
                                 (Option("threshold_noise", 0.025, 0.0, 1.0, 0.001, tooltip="Where the linear part ends."),)),
    "kl_optimal": Schedule(kl_optimal, False, "Evenly spaced in arctan(sigma) (KL-optimal, Align Your Steps)."),
    "polyexponential": Schedule(polyexponential, False, "log sigma a power rho of the step ramp (rho = 1: exponential).",
                                (Option("rho", 1.0, 0.0, 100.0, 0.01, tooltip="Power of the ramp."),)),
    "vp": Schedule(vp, False, "Continuous VP-SDE schedule of Song et al.; builds its own range.",
                   (Option("beta_d", 19.9, 0.0, 5000.0, 0.01, tooltip="VP beta_d."),
                    Option("beta_min", 0.1, 0.0, 5000.0, 0.01, tooltip="VP beta_min."),
                    Option("eps_s", 1e-3, 0.0, 1.0, 0.0001, tooltip="Last time point."))),
    "laplace": Schedule(laplace, False, "Laplace-distributed log sigma around mu (2407.03297).",
                        (Option("mu", 0.0, -10.0, 10.0, 0.1, tooltip="Centre of log sigma."),
                         Option("beta", 0.5, 0.0, 10.0, 0.1, tooltip="Spread of log sigma."))),
    "sd_turbo": Schedule(sd_turbo, True, "SD-Turbo's timesteps 999, 899, ..., at most 10 steps.",
                         (Option("denoise", 1.0, 0.0, 1.0, 0.01, tooltip="Start this far down the 10 timesteps."),)),
}


def calculate_sigmas(name: str, n: int, model_sigmas: torch.Tensor | None = None,
                     sigma_min: float | None = None, sigma_max: float | None = None, **options) -> torch.Tensor:
    """The schedule `name` for n steps. A range schedule takes sigma_min/sigma_max, defaulting to the
    ends of `model_sigmas` (as core's `calculate_sigmas` does); vp ignores them."""
    entry = SCHEDULES[name]
    if entry.needs_model_sigmas:
        if model_sigmas is None:
            raise ValueError(f"schedule {name!r} needs the model's sigma table")
        return entry.fn(n, model_sigmas, **options)
    if entry.fn is vp:
        return vp(n, **options)
    if model_sigmas is not None:
        sigma_min = float(model_sigmas[0]) if sigma_min is None else sigma_min
        sigma_max = float(model_sigmas[-1]) if sigma_max is None else sigma_max
    if sigma_min is None or sigma_max is None:
        raise ValueError(f"schedule {name!r} needs sigma_min and sigma_max (or the model's sigma table)")
    return entry.fn(n, sigma_min, sigma_max, **options)
