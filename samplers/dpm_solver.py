"""DPM-Solver (Lu et al. 2206.00927): DPM-Fast and DPM-Adaptive.

DPM-Solver integrates the diffusion ODE in t = -log(sigma) (half the log-SNR) with the noise prediction
eps(x, sigma) = (x - D(x, sigma)) / sigma. The linear part is exact, so a step t -> t_next (h = t_next - t)
    x_next = x - sigma_next expm1(h) eps             (DPM-Solver-1, i.e. DDIM / Euler in sigma)
and DPM-Solver-2 / -3 (Algorithms 1 and 2 of the paper) add intermediate evaluations at t + r h.

Both samplers ignore the inner sigmas of the schedule they get: like ComfyUI's `ksampler()` wrapper for
these ids (comfy/samplers.py) they take sigma_max = sigmas[0], sigma_min = the last nonzero sigma and, for
DPM-Fast, n = len(sigmas) - 1 model calls; they stop at sigma_min (no final denoise to 0, as core).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ._common import ancestral_step, s_in_like, sigma_of, t_of
from .noise import ETA_ODE, S_NOISE, noise_sampler_for
from .registry import Option, register

REFERENCE = "comfyanonymous/ComfyUI/comfy/k_diffusion/sampling.py::{}"  # with its DPMSolver, PIDStepSizeController

EpsFn = Callable[[torch.Tensor, float], torch.Tensor]  # eps(x, t)


def sigma_range(sigmas: list[float]) -> tuple[float, float]:
    """(sigma_min, sigma_max) as ComfyUI's ksampler() wrapper takes them: the last sigma, or the one before a final 0."""
    sigma_min = sigmas[-2] if sigmas[-1] == 0 else sigmas[-1]
    if sigma_min <= 0 or sigmas[0] <= 0:
        raise ValueError("DPM-Solver needs sigma_min and sigma_max above 0")
    return sigma_min, sigmas[0]


def noise_prediction(model, x: torch.Tensor, extra_args: dict) -> EpsFn:
    """eps(x, t) = (x - D(x, sigma)) / sigma at sigma = exp(-t)."""
    s_in = s_in_like(x)

    def eps(x: torch.Tensor, t: float) -> torch.Tensor:
        sigma = sigma_of(t)
        return (x - model(x, sigma * s_in, **extra_args)) / sigma

    return eps


def dpm_solver_1(x: torch.Tensor, t: float, t_next: float, eps: torch.Tensor) -> torch.Tensor:
    """DPM-Solver-1 (eq. 3.7 of 2206.00927): x - sigma_next expm1(h) eps."""
    return x - sigma_of(t_next) * math.expm1(t_next - t) * eps


def dpm_solver_2(eps_fn: EpsFn, x, t: float, t_next: float, eps, r1: float = 0.5):
    """DPM-Solver-2 (Algorithm 1): a DPM-Solver-1 step to s1 = t + r1 h, then the correction from eps there.

    Returns (x_next, eps at s1) so that DPM-Solver-3 can reuse the evaluation when r1 = 1/3.
    """
    h = t_next - t
    s1 = t + r1 * h
    eps_1 = eps_fn(dpm_solver_1(x, t, s1, eps), s1)
    x_next = dpm_solver_1(x, t, t_next, eps) - sigma_of(t_next) / (2 * r1) * math.expm1(h) * (eps_1 - eps)
    return x_next, eps_1


def dpm_solver_3(eps_fn: EpsFn, x, t: float, t_next: float, eps, eps_1=None):
    """DPM-Solver-3 (Algorithm 2, r1 = 1/3, r2 = 2/3); `eps_1` at t + h/3 may come from DPM-Solver-2(r1 = 1/3)."""
    r1, r2 = 1 / 3, 2 / 3
    h = t_next - t
    s1, s2 = t + r1 * h, t + r2 * h
    if eps_1 is None:
        eps_1 = eps_fn(dpm_solver_1(x, t, s1, eps), s1)
    u2 = dpm_solver_1(x, t, s2, eps) - sigma_of(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_1 - eps)
    eps_2 = eps_fn(u2, s2)
    return dpm_solver_1(x, t, t_next, eps) - sigma_of(t_next) / r2 * (math.expm1(h) / h - 1) * (eps_2 - eps)


def dpm_solver_step(eps_fn: EpsFn, x, t: float, t_next: float, eps, order: int):
    """One DPM-Solver step of order 1, 2 (r1 = 1/2) or 3."""
    if order == 1:
        return dpm_solver_1(x, t, t_next, eps)
    if order == 2:
        return dpm_solver_2(eps_fn, x, t, t_next, eps)[0]
    return dpm_solver_3(eps_fn, x, t, t_next, eps)


def ancestral_target(t: float, t_next: float, t_end: float, eta: float) -> tuple[float, float]:
    """Where the deterministic part of a step ends (t_down) and the std of the noise added after it.

    The ancestral split of sigma(t) -> sigma(t_next), with t_down clipped to the end of the interval and
    the noise std recomputed so that the variance at sigma(t_next) is right (as k-diffusion).
    """
    if not eta:
        return t_next, 0.0
    sigma_down, _ = ancestral_step(sigma_of(t), sigma_of(t_next), eta)
    t_down = min(t_end, t_of(sigma_down))
    return t_down, math.sqrt(max(0.0, sigma_of(t_next) ** 2 - sigma_of(t_down) ** 2))


def fast_orders(nfe: int) -> list[int]:
    """DPM-Solver-fast's orders (sec. 3.4 of 2206.00927): floor(nfe/3)+1 steps, third order except the last
    one or two, so the orders add up to nfe."""
    m = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (m - 2) + [2, 1]
    return [3] * (m - 1) + [nfe % 3]


@register(
    id="dpm_fast", name="DPM-Fast", order=3, calls_per_step=1, stochastic=False, core_id="dpm_fast",
    options=(ETA_ODE, S_NOISE), reference=REFERENCE.format("sample_dpm_fast"),
    paper="arXiv 2206.00927, sec. 3.4 (DPM-Solver-fast) with Algorithms 1-2",
    description="Emphasises speed with few steps; for text-to-image and video.",
)
@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=0.0, s_noise=1.0,
                    noise_sampler=None):
    """DPM-Solver-fast (Lu et al. 2206.00927, sec. 3.4): n = len(sigmas) - 1 model calls spent on
    floor(n/3) + 1 steps uniform in t = -log(sigma), of orders 3, ..., 3 then (2, 1) or n mod 3.

    The final low-order step bounds the global order: 3 when n mod 3 = 2, else 2 (a final first-order step
    has local error O(h^2)). `eta` > 0 adds ancestral noise after each step. Callback once per step.
    """
    sigma_list = sigmas.tolist()
    if len(sigma_list) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    sigma_min, sigma_max = sigma_range(sigma_list)
    t_start, t_end = t_of(sigma_max), t_of(sigma_min)
    if eta and t_end < t_start:  # core also refuses t_end == t_start (one sigma): nothing to do, no error here
        raise ValueError("eta must be 0 for reverse sampling")
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler)
    eps_fn = noise_prediction(model, x, extra_args)
    orders = fast_orders(len(sigma_list) - 1)
    m = len(orders)
    ts = [t_start + (t_end - t_start) * k / m for k in range(m)] + [t_end]  # uniform in t, exact end
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_down, noise_std = ancestral_target(t, t_next, t_end, eta)
        eps = eps_fn(x, t)
        if callback is not None:
            sigma = x.new_tensor(sigma_of(t))
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x - sigma_of(t) * eps})
        x = dpm_solver_step(eps_fn, x, t, t_down, eps, order)
        if noise_std:
            x = x + noise_sampler(sigma_of(t), sigma_of(t_next)) * (noise_std * s_noise)
    return x


def pid_step_factor(inv_errors: list[float], pcoeff: float, icoeff: float, dcoeff: float, order: float) -> float:
    """Step-size factor of a PID controller (Söderlind 2003, as k-diffusion's PIDStepSizeController):
    prod_k (1/err_k)^b_k over the last three error estimates, through the limiter 1 + atan(f - 1)."""
    b1 = (pcoeff + icoeff + dcoeff) / order
    b2 = -(pcoeff + 2 * dcoeff) / order
    b3 = dcoeff / order
    # in log space: large coefficients overflow a float power (core's torch maths gives inf, atan(inf) = pi/2)
    log_factor = b1 * math.log(inv_errors[0]) + b2 * math.log(inv_errors[1]) + b3 * math.log(inv_errors[2])
    factor = math.exp(log_factor) if log_factor < 700 else math.inf
    return 1 + math.atan(factor - 1)


def adaptive_domain(options: dict) -> list[str]:
    """Where DPM-Adaptive's controller cannot work: a zero first step never advances; zero tolerances make
    every error estimate infinite; the step factor 1 + atan(f - 1) stays below 1 + pi/2, so a larger
    accept_safety rejects every attempt (core loops forever on each of these)."""
    problems = []
    if options["h_init"] <= 0:
        problems.append(f"h_init={options['h_init']} must be > 0 (the first step size in t; 0 never advances)")
    if options["rtol"] <= 0 and options["atol"] <= 0:
        problems.append(f"rtol={options['rtol']} and atol={options['atol']}: at least one must be > 0 (the error is divided by them)")
    if options["accept_safety"] >= MAX_STEP_FACTOR:
        problems.append(f"accept_safety={options['accept_safety']} must be < 1 + pi/2 = {MAX_STEP_FACTOR:.4f} "
                        "(the largest step factor the controller gives; above it no step is ever accepted)")
    return problems


MAX_STEP_FACTOR = 1 + math.pi / 2  # sup of pid_step_factor


@register(
    id="dpm_adaptive", domain=adaptive_domain, name="DPM-Adaptive", order=3, calls_per_step="adaptive", stochastic=False, core_id="dpm_adaptive",
    options=(
        Option("order", 3, 2, 3, 1, tooltip="3: DPM-Solver-23 (3 calls per step); 2: DPM-Solver-12 (2 calls)."),
        Option("rtol", 0.05, 0.0, 100.0, 0.01, tooltip="Relative tolerance of the local error estimate."),
        Option("atol", 0.0078, 0.0, 100.0, 0.01, tooltip="Absolute tolerance of the local error estimate."),
        Option("h_init", 0.05, 0.0, 100.0, 0.01, tooltip="First step size in t = -log(sigma)."),
        Option("pcoeff", 0.0, 0.0, 100.0, 0.01, tooltip="Proportional coefficient of the PID step-size controller."),
        Option("icoeff", 1.0, 0.0, 100.0, 0.01, tooltip="Integral coefficient of the PID step-size controller."),
        Option("dcoeff", 0.0, 0.0, 100.0, 0.01, tooltip="Derivative coefficient of the PID step-size controller."),
        Option("accept_safety", 0.81, 0.0, 100.0, 0.01,
               tooltip="A step is accepted when the proposed step factor is at least this."),
        ETA_ODE, S_NOISE,
    ),
    reference=REFERENCE.format("sample_dpm_adaptive"),
    paper="arXiv 2206.00927, sec. 3.3 / Algorithm 4 (DPM-Solver-12 and -23, adaptive step size)",
    description="Adapts the denoising steps to the image (adaptive step size); for image-to-image.",
)
@torch.no_grad()
def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None, order=3, rtol=0.05, atol=0.0078,
                        h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0,
                        noise_sampler=None):
    """DPM-Solver-12 / -23 with adaptive steps (Lu et al. 2206.00927, Algorithm 4), as k-diffusion.

    Each attempt from t with step h computes a low-order (1 or 2) and a high-order (2 or 3) solution from
    shared evaluations; the scaled error ||(x_low - x_high) / delta|| / sqrt(N), delta = max(atol, rtol
    max(|x_low|, |x_prev|)), drives a PID controller that rescales h and accepts the step when the factor is
    at least `accept_safety`; the high-order solution is kept. Reading the error is one host read per attempt
    (a step-size decision needs it).

    Differences from core, same results: a rejected attempt reuses eps at s (core evaluates the model there
    again); the callback fires once per accepted step with x, sigma and D at its start (core's fires on every
    attempt, rejected ones included).
    """
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    sigma_list = sigmas.tolist()
    if len(sigma_list) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    sigma_min, sigma_max = sigma_range(sigma_list)
    t_start, t_end = t_of(sigma_max), t_of(sigma_min)
    forward = t_end > t_start
    if eta and t_end < t_start:  # core also refuses t_end == t_start (one sigma): nothing to do, no error here
        raise ValueError("eta must be 0 for reverse sampling")
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler)
    eps_fn = noise_prediction(model, x, extra_args)
    clip = min if forward else max  # never step past t_end
    h = abs(h_init) * (1 if forward else -1)
    controller_order = 1.5 if eta else order
    inv_errors: list[float] = []  # 1/error of the current attempt and the last two accepted steps
    s, x_prev, accepted = t_start, x, 0
    eps = None  # kept through rejected attempts: same x and s (core evaluates it again)
    while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
        t = clip(t_end, s + h)
        t_down, noise_std = ancestral_target(s, t, t_end, eta)
        if eps is None:
            eps = eps_fn(x, s)
        if order == 2:
            x_low = dpm_solver_1(x, s, t_down, eps)
            x_high, _ = dpm_solver_2(eps_fn, x, s, t_down, eps)
        else:
            x_low, eps_1 = dpm_solver_2(eps_fn, x, s, t_down, eps, r1=1 / 3)
            x_high = dpm_solver_3(eps_fn, x, s, t_down, eps, eps_1)
        delta = torch.maximum(x_low.new_tensor(atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = float(torch.linalg.norm((x_low - x_high) / delta)) / math.sqrt(x.numel())
        if not math.isfinite(error):  # NaN/inf from the model: no step size helps; run_sampler reports it
            return x_high
        inv_error = 1 / (error + 1e-8)
        inv_errors = [inv_error] * 3 if not inv_errors else [inv_error, *inv_errors[1:]]
        factor = pid_step_factor(inv_errors, pcoeff, icoeff, dcoeff, controller_order)
        h *= factor
        if factor >= accept_safety:
            inv_errors = [inv_error, inv_error, inv_errors[1]]
            if callback is not None:
                sigma = x.new_tensor(sigma_of(s))
                callback({"x": x, "i": accepted, "sigma": sigma, "sigma_hat": sigma, "denoised": x - sigma_of(s) * eps})
            x_prev = x_low
            x = x_high
            if noise_std:
                x = x + noise_sampler(sigma_of(s), sigma_of(t)) * (noise_std * s_noise)
            s, accepted, eps = t, accepted + 1, None
    return x
