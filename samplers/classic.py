"""Euler, Euler Ancestral, Heun, HeunPP2, LMS, DPM_2 (+ Ancestral), DDIM, LCM.

The classic k-diffusion samplers (crowsonkb/k-diffusion `sampling.py`, as shipped in ComfyUI core
`comfy/k_diffusion/sampling.py`), written in sigma space: x = x0 + sigma * eps, and the
probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2206.00364, eq. 4).

Where core departs from its own maths we fix it and say so in the docstring:
- churn noise (Euler, Heun, DPM_2, HeunPP2) is drawn from the seeded noise sampler; core draws it
  with `torch.randn_like` from the global generator, so it ignores the sampler seed;
- ancestral steps whose noise part swallows the whole next sigma (eta > 1) still add that noise;
  core's `sigma_down == 0` branch returns the clean x0 and then evaluates it at sigma_next > 0.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ._common import ancestral_step, s_in_like, to_d
from .noise import ETA, ETA_ODE, S_NOISE, noise_sampler_for
from .registry import Option, register

CORE = "comfyanonymous/ComfyUI/comfy/k_diffusion/sampling.py::"

# s_tmax's default is finite: ComfyUI serialises widget defaults as JSON, which has no infinity.
# Every sigma of an SD1/2/XL model (zero-terminal-SNR included, sigma_max ~ 4.5e3) lies below it.
S_TMAX_DEFAULT = 1e5

CHURN_OPTIONS = (
    Option("s_churn", 0.0, 0.0, 100.0, 0.01, tooltip="Karras S_churn: total extra noise over the run (0 = plain ODE steps)."),
    Option("s_tmin", 0.0, 0.0, S_TMAX_DEFAULT, 0.01, tooltip="Churn only where sigma >= s_tmin."),
    Option("s_tmax", S_TMAX_DEFAULT, 0.0, S_TMAX_DEFAULT, 0.01, tooltip="Churn only where sigma <= s_tmax."),
    S_NOISE,  # Karras S_noise
)
ANCESTRAL_OPTIONS = (ETA, S_NOISE)


# --- helpers of the family -------------------------------------------------------------------

def churn_gamma(sigma: float, n_steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Karras et al. 2206.00364 Alg. 2 line 5: gamma = min(S_churn / N, sqrt(2) - 1) inside [S_tmin, S_tmax]."""
    if s_churn > 0 and s_tmin <= sigma <= s_tmax:
        return min(s_churn / n_steps, 2**0.5 - 1)
    return 0.0


class _Churn:
    """Karras et al. 2206.00364 Alg. 2 lines 4-7 for one run: raise x from sigma to
    sigma_hat = (1 + gamma) sigma with fresh noise; the seeded noise source is made only if used."""

    def __init__(self, x, extra_args, noise_sampler, n_steps, s_churn, s_tmin, s_tmax, s_noise):
        self.n_steps, self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = n_steps, s_churn, s_tmin, s_tmax, s_noise
        self.noise_sampler = noise_sampler_for(x, extra_args, noise_sampler) if s_churn > 0 else None

    def __call__(self, x, sigma: float):
        """(x at sigma_hat, sigma_hat, gamma)."""
        gamma = churn_gamma(sigma, self.n_steps, self.s_churn, self.s_tmin, self.s_tmax)
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            x = x + self.noise_sampler(sigma, sigma_hat) * self.s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        return x, sigma_hat, gamma


def _report(callback, x, i, sigmas, denoised, gamma=0.0):
    """Core's callback dict; sigma and sigma_hat as 0-d tensors like core (indexing, no host sync)."""
    if callback is not None:
        sigma_hat = sigmas[i] if gamma == 0 else sigmas[i] * (gamma + 1)
        callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})


def lms_coefficients(ts: list[float], i: int, order: int) -> list[float]:
    """Adams-Bashforth weights for step t_i -> t_{i+1} from the derivatives at t_i, t_{i-1}, ...

    c_j = integral over [t_i, t_{i+1}] of the Lagrange basis polynomial l_j that is 1 at t_{i-j} and
    0 at the other `order` - 1 nodes. l_j has degree order - 1, so Gauss-Legendre quadrature with
    `order` points (exact to degree 2 order - 1) gives the integral exactly, in float64 on the host,
    where core calls scipy.integrate.quad for every coefficient of every step.
    """
    nodes = [ts[i - k] for k in range(order)]
    u, w = np.polynomial.legendre.leggauss(order)  # on [-1, 1]
    half = (ts[i + 1] - ts[i]) / 2
    tau = ts[i] + half * (u + 1)
    coeffs = []
    for j in range(order):
        basis = np.ones_like(tau)
        for k in range(order):
            if k != j:
                basis *= (tau - nodes[k]) / (nodes[j] - nodes[k])
        coeffs.append(float(half * (w * basis).sum()))
    return coeffs


# --- ODE samplers ----------------------------------------------------------------------------

@register(
    id="euler", name="Euler", order=1, calls_per_step=1, stochastic=False, options=CHURN_OPTIONS, core_id="euler",
    reference=CORE + "sample_euler", paper="arXiv:2206.00364 Alg. 2 (Euler steps)",
    description="Fast and sharp; needs few steps. Suited to text-to-image and image-to-image.",
)
@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=S_TMAX_DEFAULT, s_noise=1.0, noise_sampler=None):
    """Euler steps on the PF-ODE with optional churn (Karras et al. 2206.00364, Alg. 2 with the Heun
    correction left out). Churn noise comes from the seeded noise sampler (core: global RNG)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = s_in_like(x)
    sig = sigmas.tolist()
    churn = _Churn(x, extra_args, noise_sampler, len(sig) - 1, s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(sig) - 1):
        x, sigma_hat, gamma = churn(x, sig[i])
        denoised = model(x, sigma_hat * s_in, **extra_args)
        _report(callback, x, i, sigmas, denoised, gamma)
        x = x + to_d(x, sigma_hat, denoised) * (sig[i + 1] - sigma_hat)
    return x


@register(
    id="heun", name="Heun", order=2, calls_per_step=2, stochastic=False, options=CHURN_OPTIONS, core_id="heun",
    reference=CORE + "sample_heun", paper="arXiv:2206.00364 Alg. 2 (Heun steps)",
    description="A balance between quality and speed. Suited to image-to-image.",
)
@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None,
                s_churn=0.0, s_tmin=0.0, s_tmax=S_TMAX_DEFAULT, s_noise=1.0, noise_sampler=None):
    """Heun's second-order method on the PF-ODE (Karras et al. 2206.00364, Alg. 2): an Euler
    predictor, then the mean of the slopes at both ends; a plain Euler step into sigma = 0, where
    the slope is undefined. Churn noise from the seeded noise sampler (core: global RNG)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = s_in_like(x)
    sig = sigmas.tolist()
    churn = _Churn(x, extra_args, noise_sampler, len(sig) - 1, s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(sig) - 1):
        x, sigma_hat, gamma = churn(x, sig[i])
        denoised = model(x, sigma_hat * s_in, **extra_args)
        _report(callback, x, i, sigmas, denoised, gamma)
        d = to_d(x, sigma_hat, denoised)
        dt = sig[i + 1] - sigma_hat
        x_euler = x + d * dt
        if sig[i + 1] == 0:
            x = x_euler
        else:
            d_next = to_d(x_euler, sig[i + 1], model(x_euler, sig[i + 1] * s_in, **extra_args))
            x = x + (d + d_next) / 2 * dt
    return x


@register(
    id="heunpp2", name="HeunPP2", order=1, calls_per_step=3, stochastic=False, options=CHURN_OPTIONS, core_id="heunpp2",
    reference=CORE + "sample_heunpp2 (origin Carzit/sd-webui-samplers-scheduler)", paper="none (heuristic)",
    description="Improves on Heun for more efficiency. Suited to text-to-image.",
)
@torch.no_grad()
def sample_heunpp2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                   s_churn=0.0, s_tmin=0.0, s_tmax=S_TMAX_DEFAULT, s_noise=1.0, noise_sampler=None):
    """Heun++ (Carzit/sd-webui-samplers-scheduler, in ComfyUI core as `sample_heunpp2`).

    Each step looks ahead with two Euler steps, to sigmas[i+1] and sigmas[i+2], and moves with the
    weighted slope w1 d + w2 d2 + w3 d3, w2 = sigma_{i+1} / (3 sigma_0), w3 = sigma_{i+2} / (3 sigma_0),
    w1 = 1 - w2 - w3; the second-to-last step uses only the first look-ahead (w2 = sigma_{i+1}/(2 sigma_0)),
    the last one is Euler. The weights are a design choice of the reference, not a Runge-Kutta tableau:
    w2 + 2 w3 != 1/2 in general, so the method is first order (registered so; the tests measure it).
    Departures from core: churn noise from the seeded noise sampler (core: global RNG, drawn even
    without churn), and the last two steps are found by index (core compares sigma values with
    sigmas[-1], which misfires on a schedule that repeats its last value).
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = s_in_like(x)
    sig = sigmas.tolist()
    last = len(sig) - 1
    churn = _Churn(x, extra_args, noise_sampler, last, s_churn, s_tmin, s_tmax, s_noise)
    for i in range(last):
        x, sigma_hat, gamma = churn(x, sig[i])
        denoised = model(x, sigma_hat * s_in, **extra_args)
        _report(callback, x, i, sigmas, denoised, gamma)
        d = to_d(x, sigma_hat, denoised)
        dt = sig[i + 1] - sigma_hat
        if i + 1 == last:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sig[i + 1], model(x_2, sig[i + 1] * s_in, **extra_args))
        if i + 2 == last:
            w2 = sig[i + 1] / (2 * sig[0])
            x = x + ((1 - w2) * d + w2 * d_2) * dt
            continue
        x_3 = x_2 + d_2 * (sig[i + 2] - sig[i + 1])
        d_3 = to_d(x_3, sig[i + 2], model(x_3, sig[i + 2] * s_in, **extra_args))
        w2, w3 = sig[i + 1] / (3 * sig[0]), sig[i + 2] / (3 * sig[0])
        x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


@register(
    id="lms", name="LMS", order=4, calls_per_step=1, stochastic=False,
    options=(Option("order", 4, 1, 10, 1, tooltip="How many past slopes the linear multistep step uses."),),
    core_id="lms", reference=CORE + "sample_lms", paper="classical Adams-Bashforth in sigma (k-diffusion)",
    description="Realistic, sharp results; uses more steps. Suited to text-to-image and text-to-3D.",
)
@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep (Adams-Bashforth) in sigma with up to `order` past slopes on an uneven grid.

    Coefficients integrate the Lagrange basis through the past sigmas exactly (`lms_coefficients`),
    all computed before the loop. The first steps use fewer slopes (order 1, 2, ...), and the step
    into sigma = 0 returns x0. The Euler start-up makes the global error O(h^2) at best whatever
    `order` is (its constant is small on SD-like schedules); the tests show both effects.
    """
    if order < 1:
        raise ValueError(f"LMS order must be at least 1, got {order}")
    extra_args = {} if extra_args is None else extra_args
    s_in = s_in_like(x)
    sig = sigmas.tolist()
    n = len(sig) - 1
    coeffs = [lms_coefficients(sig, i, min(i + 1, order)) if sig[i + 1] != 0 else None for i in range(n)]
    slopes = []
    for i in range(n):
        denoised = model(x, sig[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas, denoised)
        slopes = (slopes + [to_d(x, sig[i], denoised)])[-order:]
        if sig[i + 1] == 0:
            x = denoised
        else:
            x = x + sum(c * d for c, d in zip(coeffs[i], reversed(slopes)))
    return x


@register(
    id="dpm_2", name="DPM_2", order=2, calls_per_step=2, stochastic=False, discard_penultimate_sigma=True,
    options=CHURN_OPTIONS, core_id="dpm_2", reference=CORE + "sample_dpm_2",
    paper="arXiv:2206.00927 (DPM-Solver-2) with arXiv:2206.00364 Alg. 2",
    description="A balance between quality and noise removal. Suited to image-to-image and text-to-3D.",
)
@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=S_TMAX_DEFAULT, s_noise=1.0, noise_sampler=None):
    """DPM-Solver-2 in the Karras form (k-diffusion): the slope at the midpoint sigma_mid =
    sqrt(sigma_hat * sigma_next) (midpoint in log sigma) carries the whole step; Euler into sigma = 0.
    Core drops the penultimate sigma of its schedules for it (registry flag). Churn as in Euler."""
    extra_args = {} if extra_args is None else extra_args
    s_in = s_in_like(x)
    sig = sigmas.tolist()
    churn = _Churn(x, extra_args, noise_sampler, len(sig) - 1, s_churn, s_tmin, s_tmax, s_noise)
    for i in range(len(sig) - 1):
        x, sigma_hat, gamma = churn(x, sig[i])
        denoised = model(x, sigma_hat * s_in, **extra_args)
        _report(callback, x, i, sigmas, denoised, gamma)
        d = to_d(x, sigma_hat, denoised)
        x = _dpm_2_step(model, x, d, sigma_hat, sig[i + 1], s_in, extra_args)
    return x


def _dpm_2_step(model, x, d, sigma, sigma_next, s_in, extra_args):
    """One DPM-Solver-2 step sigma -> sigma_next given the slope d at sigma (Euler if sigma_next = 0)."""
    if sigma_next == 0:
        return x + d * (sigma_next - sigma)
    sigma_mid = math.exp((math.log(sigma) + math.log(sigma_next)) / 2)
    x_mid = x + d * (sigma_mid - sigma)
    d_mid = to_d(x_mid, sigma_mid, model(x_mid, sigma_mid * s_in, **extra_args))
    return x + d_mid * (sigma_next - sigma)


# --- ancestral and re-noising samplers --------------------------------------------------------

@register(
    id="euler_ancestral", name="Euler Ancestral", order=1, calls_per_step=1, stochastic=True,
    options=ANCESTRAL_OPTIONS, core_id="euler_ancestral", reference=CORE + "sample_euler_ancestral",
    paper="k-diffusion; DDPM posterior noise, arXiv:2006.11239",
    description="High contrast and good detail. Suited to text-to-image and upscaling.",
)
@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral sampling with Euler steps (k-diffusion): an Euler step down to sigma_down, then fresh
    noise of size sigma_up back to sigma_next (`ancestral_step`). For eps/v models; ComfyUI's
    separate flow (CONST) branch is not needed by the pack's SD models.
    Departure from core: when eta > 1 makes sigma_up = sigma_next (sigma_down = 0) the noise is
    still added, so the next step sees a sample at its own sigma (core returns the bare x0 there).
    """
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler)
    s_in = s_in_like(x)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas, denoised)
        if sig[i + 1] == 0:
            x = denoised
            continue
        sigma_down, sigma_up = ancestral_step(sig[i], sig[i + 1], eta)
        x = x + to_d(x, sig[i], denoised) * (sigma_down - sig[i])
        x = x + noise_sampler(sig[i], sig[i + 1]) * s_noise * sigma_up
    return x


@register(
    id="dpm_2_ancestral", name="DPM_2 Ancestral", order=2, calls_per_step=2, stochastic=True,
    discard_penultimate_sigma=True, options=ANCESTRAL_OPTIONS, core_id="dpm_2_ancestral",
    reference=CORE + "sample_dpm_2_ancestral", paper="arXiv:2206.00927 (DPM-Solver-2), ancestral noise as k-diffusion",
    description="Improves on DPM_2 for better results. Suited to text-to-image.",
)
@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM_2 steps down to sigma_down, then fresh noise sigma_up back to sigma_next (k-diffusion).
    Departure from core as in Euler Ancestral: with sigma_down = 0 before the end (eta > 1) the
    step lands on x0 and the noise is still added (core skips it)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler)
    s_in = s_in_like(x)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas, denoised)
        sigma_down, sigma_up = ancestral_step(sig[i], sig[i + 1], eta)
        x = _dpm_2_step(model, x, to_d(x, sig[i], denoised), sig[i], sigma_down, s_in, extra_args)
        if sig[i + 1] != 0:
            x = x + noise_sampler(sig[i], sig[i + 1]) * s_noise * sigma_up
    return x


@register(
    id="ddim", name="DDIM", order=1, calls_per_step=1, stochastic=False,
    options=(dataclasses.replace(ETA_ODE, max=1.0), S_NOISE),  # DDIM's eta (eq. 16): 0 = DDIM, 1 = DDPM-like
    core_id="ddim", reference="CompVis/stable-diffusion/ldm/models/diffusion/ddim.py::p_sample_ddim; " + CORE + "sample_euler",
    paper="arXiv:2010.02502 eq. 12 and eq. 16",
    description="Smooth images with realistic colours; few steps. Suited to image-to-image and upscaling.",
)
@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None,
                eta=0.0, s_noise=1.0, noise_sampler=None):
    """DDIM (Song et al. 2010.02502, eq. 12) written in sigma space.

    With alpha_bar = 1 / (1 + sigma^2) and x = x_vp / sqrt(alpha_bar), eq. 12 reads
        x_next = x0 + sqrt(sigma_next^2 - c^2) * eps + c * z,   eps = (x - x0) / sigma,
    where c = sigma_t(eta) / sqrt(alpha_bar_next) and sigma_t(eta) is eq. 16. With eta = 0 this is an
    Euler step of the PF-ODE, which is ComfyUI core's "ddim" (core: euler + ddim_uniform schedule);
    c works out to k-diffusion's ancestral sigma_up, so eta > 0 equals Euler Ancestral with that eta.
    eta > 1 would need sqrt of a negative number; c is capped at sigma_next as in `ancestral_step`.
    """
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler) if eta > 0 else None
    s_in = s_in_like(x)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, x, i, sigmas, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        alpha_bar, alpha_bar_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
        sigma_t = eta * math.sqrt((1 - alpha_bar_next) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_next))  # eq. 16
        c = min(sigma_t / math.sqrt(alpha_bar_next), sigma_next)
        eps = (x - denoised) / sigma
        x = denoised + eps * math.sqrt(sigma_next**2 - c**2)
        if c > 0:
            x = x + noise_sampler(sigma, sigma_next) * s_noise * c
    return x


@register(
    id="lcm", name="LCM", order=1, calls_per_step=1, stochastic=True, core_id="lcm",
    reference=CORE + "sample_lcm", paper="arXiv:2310.04378 (Luo et al., multistep consistency sampling, Alg. 1)",
    description="Latent Consistency Model sampling; used to reduce loss of detail. Suited to text-to-image and upscaling.",
)
@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Multistep consistency sampling (Luo et al. 2310.04378, Alg. 1): jump to the model's x0, then
    re-noise it with fresh noise to the next sigma, x = x0 + sigma_next * z (core's EPS/V
    `noise_scaling`); the last step returns x0."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler)
    s_in = s_in_like(x)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas, denoised)
        x = denoised
        if sig[i + 1] > 0:
            x = x + noise_sampler(sig[i], sig[i + 1]) * sig[i + 1]
    return x
