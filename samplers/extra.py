"""Samplers of the ComfyUI-Extra-Samplers pack (Clybius, BSD-3): Euler Ancestral Dancing,
DPM++ 3M SDE Dynamic ETA, TTM, LCM Custom Noise and the three momentumized samplers.

Reference: Clybius/ComfyUI-Extra-Samplers `extra_samplers.py`, `other_samplers/sample_ttm.py`,
`other_samplers/refined_exp_solver.py`, `nodes.py` (last commit 2024-04). Read for the algorithm, written
anew; the reference's design quirks are kept, its defects fixed (each named in the sampler's docstring).
Defects common to all of them: the reference's noise ignores the seed (non-Brownian types draw from
the global RNG, and Brownian gets `seed=None` through an argument-order bug); here every noise type is
drawn from `noise_sampler_for(x, extra_args, noise_sampler, noise_type, sigmas)`, seeded with extra_args["seed"], and is reproducible.

All maths in sigma space: t = lambda = -log(sigma), h = t_next - t; `sigmas.tolist()` is taken once
so the loops branch on floats and never sync with the device.
"""
from __future__ import annotations

import math

import torch

from ._common import ancestral_step, multistep_3m_correction, res_coefficients, s_in_like, sde_noise_std, to_d
from .noise import ETA, S_NOISE, noise_option, noise_sampler_for
from .registry import Option, register

REFERENCE = "Clybius/ComfyUI-Extra-Samplers/"

MOMENTUM = Option(
    "momentum", 0.5, -1.0, 1.0, 0.01,
    tooltip="Blend of each update with the previous one, weighted by m*(sigma/sigma_max - m/2); 0 = plain solver.",
)


def momentum_update(diff: torch.Tensor, velocity: torch.Tensor | None, momentum: float, tau: float) -> torch.Tensor:
    """The pack's momentum function: v = w v_prev + (1 - w) diff with w = m (tau - m/2), tau = sigma_i / sigma_max.

    The first update (no previous velocity) is `diff` itself. Linear in (diff, velocity), so momentum=0
    leaves every update unchanged.
    """
    if velocity is None or momentum == 0:
        return diff
    w = momentum * (tau - momentum / 2)
    return w * velocity + (1 - w) * diff


def multistep_correction(denoised, past_denoised: list, past_h: list[float], h: float, h_eta: float):
    """The history term added after the first-order exponential step, from up to three past x0 (else None).

    With up to two past x0 it is DPM++(3M) SDE's (`multistep_3m_correction`). With three (the pack's "4M")
    the divided differences take a third level with the reference's own step ratios
    r0 = h_3/h_2, r1 = h_2/h, r2 = h/h_1 (kept as written: the term is O(h^4) per step either way).
    """
    if len(past_denoised) < 3:
        return multistep_3m_correction(denoised, past_denoised, past_h, h, h_eta)
    phi_2 = math.expm1(-h_eta) / h_eta + 1
    phi_3 = phi_2 / h_eta - 0.5
    (d_1, d_2, d_3), (h_1, h_2, h_3) = past_denoised[:3], past_h[:3]
    r0, r1, r2 = h_3 / h_2, h_2 / h, h / h_1
    d1_0, d1_1, d1_2 = (denoised - d_1) / r2, (d_1 - d_2) / r1, (d_2 - d_3) / r0
    third = (d1_0 - d1_1) * r2 / (r2 + r1) - (d1_1 - d1_2) * r1 / (r0 + r1)
    d1 = d1_0 + (d1_0 - d1_1) * r2 / (r2 + r1) + third * r2 / ((r2 + r1) * (r0 + r1))
    d2 = (d1_0 - d1_1) / (r2 + r1) + third / ((r2 + r1) * (r0 + r1))
    return phi_2 * d1 - phi_3 * d2  # the reference names these phi_3, phi_4: same values


# --------------------------------------------------------------------------------------------------
# Euler Ancestral Dancing


def dance_step(sigma_from: float, sigma_to: float, eta_dance: float) -> tuple[float, float]:
    """Split a move UP in noise, sigma_from < sigma_to, into a deterministic part to sigma_down and fresh noise sigma_up.

    sigma_up = min(sigma_to, eta_dance sqrt(sigma_to^2 - sigma_from^2)), sigma_down^2 + sigma_up^2 = sigma_to^2.
    eta_dance = 0: the probability-flow ODE run backwards with a fixed x0 (the reference's eta_dance=0);
    eta_dance = 1: the forward noising process, x + sqrt(sigma_to^2 - sigma_from^2) n, which keeps the
    marginal exact; larger eta_dance up to the cap: x -> x0 + sigma_to n, which is what the reference
    gives for every eta_dance > 0 (see `sample_euler_ancestral_dancing`).
    """
    if eta_dance == 0 or sigma_to <= sigma_from:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta_dance * math.sqrt(sigma_to**2 - sigma_from**2))
    return math.sqrt(sigma_to**2 - sigma_up**2), sigma_up


@register(
    id="euler_ancestral_dancing",
    name="Euler Ancestral Dancing",
    order=1,
    calls_per_step=1,
    stochastic=True,
    options=(
        ETA,  # of the leap down
        Option("eta_dance", 1.0, 0.0, 100.0, 0.01,
               tooltip="Fresh-noise share of the dance back up: 0 = ODE backwards, 1 = forward noising process."),
        S_NOISE,
        Option("leap", 2, 1, 16, 1, tooltip="Leap down to sigma[i + leap], then dance back up to sigma[i + 1]."),
        noise_option("gaussian"),
    ),
    reference=REFERENCE + "extra_samplers.py::sampler_euler_ancestral_dancing",
    paper="none (Euler ancestral of k-diffusion; ancestral step from DDPM, arXiv 2006.11239)",
    description="Improves Euler Ancestral for results with better motion (recommended for text-to-video).",
)
def sample_euler_ancestral_dancing(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, eta_dance=1.0,
                                   s_noise=1.0, leap=2, noise_type="gaussian", noise_sampler=None):
    """Euler ancestral that leaps to sigma[i+leap] and "dances" back up to sigma[i+1] with the same x0.

    Each step: one model call at sigma_i; an ancestral Euler step to sigma[i+leap] (when that is > 0,
    else a plain ancestral step to sigma[i+1]); then the move back up to sigma[i+1] along the same x0.
    Departure from the reference: for the move up it calls `get_ancestral_step(sigma[i+leap], sigma[i+1],
    eta_dance)` with sigma_from < sigma_to, whose square root of a negative number is NaN; `min()` then
    drops the NaN, so for every eta_dance > 0 the step collapses to x = x0 + sigma[i+1] n and eta_dance
    has no effect. Here the move up is defined by `dance_step` (eta_dance=0 as in the reference,
    eta_dance=1 the exact forward noising process, large eta_dance the reference's x0 + sigma n).
    With a Brownian noise type the leap's and the dance's sigma intervals overlap, so their noises are
    correlated, as in the reference's design.
    """
    extra_args = {} if extra_args is None else extra_args
    sig = sigmas.tolist()
    if len(sig) <= 1:
        return x
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler, noise_type, sig)
    s_in = s_in_like(x)
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]
        dances = i + leap < len(sig) and sig[i + leap] > 0 and leap > 1
        sigma_leap = sig[i + leap] if dances else sigma_next
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        sigma_down, sigma_up = ancestral_step(sigma, sigma_leap, eta)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if sigma_next > 0 and sigma_up > 0:
            x = x + noise_sampler(sigma, sigma_leap) * s_noise * sigma_up
        if dances:  # back up from sigma_leap to sigma_next, keeping the same x0
            sigma_down, sigma_up = dance_step(sigma_leap, sigma_next, eta_dance)
            x = denoised + (x - denoised) * (sigma_down / sigma_leap)
            if sigma_up > 0:
                x = x + noise_sampler(sigma_leap, sigma_next) * s_noise * sigma_up
    return x


# --------------------------------------------------------------------------------------------------
# DPM++ 3M SDE Dynamic ETA


def cosine_eta(i: int, n: int, eta_max: float, eta_min: float) -> float:
    """Cosine annealing eta_min + (eta_max - eta_min)(1 + cos(pi i/(n - 1)))/2; the reference passes n = len(sigmas)."""
    return eta_min + 0.5 * (eta_max - eta_min) * (1 + math.cos(math.pi * i / (n - 1)))


@register(
    id="dpmpp_3m_sde_dynamic_eta",
    brownian_path=True,  # noise_type brownian by default
    name="DPM++ 3M SDE Dynamic ETA",
    order=3,
    calls_per_step=1,
    stochastic=True,
    options=(
        Option("eta_max", 1.0, 0.0, 100.0, 0.01, tooltip="eta at the first step (cosine-annealed towards eta_min)."),
        Option("eta_min", 0.0, 0.0, 100.0, 0.01, tooltip="eta the cosine schedule anneals to."),
        S_NOISE,
        noise_option("brownian"),
    ),
    reference=REFERENCE + "extra_samplers.py::sampler_dpmpp_3m_sde_dynamic_eta",
    paper="arXiv 2211.01095 (DPM-Solver++), 3M SDE of k-diffusion; cosine annealing of eta",
    description="Adjusts the amount of noise removed automatically (recommended for text-to-video and text-to-3D).",
)
def sample_dpmpp_3m_sde_dynamic_eta(model, x, sigmas, extra_args=None, callback=None, disable=None, eta_max=1.0, eta_min=0.0,
                                    s_noise=1.0, noise_type="brownian", noise_sampler=None):
    """DPM++(3M) SDE whose eta follows a cosine from eta_max (first step) towards eta_min.

    eta_i = eta_min + (eta_max - eta_min)(1 + cos(pi i/(len(sigmas) - 1)))/2. Quirk kept from the
    reference: the progress is i/(len(sigmas) - 1) = i/steps, so the last step (i = steps - 1) stops one
    notch short of eta_min. With eta_max = eta_min = eta it is k-diffusion's DPM++ 3M SDE.
    """
    extra_args = {} if extra_args is None else extra_args
    sig = sigmas.tolist()
    if len(sig) <= 1:
        return x
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler, noise_type, sig)
    s_in = s_in_like(x)
    past_denoised, past_h = [], []
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        eta = cosine_eta(i, len(sig), eta_max, eta_min)
        h_eta = h * (eta + 1)
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
        correction = multistep_correction(denoised, past_denoised[:2], past_h[:2], h, h_eta)
        if correction is not None:
            x = x + correction
        if eta:
            x = x + noise_sampler(sigma, sigma_next) * sde_noise_std(sigma_next, h, eta) * s_noise
        past_denoised, past_h = [denoised] + past_denoised[:1], [h] + past_h[:1]
    return x


# --------------------------------------------------------------------------------------------------
# LCM Custom Noise


@register(
    id="lcm_custom_noise",
    name="LCM Custom Noise",
    order=1,
    calls_per_step=1,
    stochastic=True,
    options=(noise_option("gaussian"),),
    reference=REFERENCE + "extra_samplers.py::sample_lcmcustom (ComfyUI comfy/k_diffusion/sampling.py::sample_lcm)",
    paper="arXiv 2310.04378 (Latent Consistency Models), multistep consistency sampling",
    description="LCM that can use a custom-defined noise.",
)
def sample_lcm_custom_noise(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_type="gaussian", noise_sampler=None):
    """LCM sampling with a chosen noise type: x = x0, then re-noise to the next sigma, x0 + sigma_next n.

    The re-noising is ComfyUI's EPS/V `noise_scaling` (x0 + sigma n). With "gaussian" and a seed it is
    core's `sample_lcm`. Departure: the reference's noise ignores the seed; here it is seeded.
    """
    extra_args = {} if extra_args is None else extra_args
    sig = sigmas.tolist()
    if len(sig) <= 1:
        return x
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler, noise_type, sig)
    s_in = s_in_like(x)
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = denoised
        if sig[i + 1] > 0:
            x = x + sig[i + 1] * noise_sampler(sig[i], sig[i + 1])
    return x


# --------------------------------------------------------------------------------------------------
# TTM: second-order truncated Taylor method


def denoised_derivative_jvp(model, x, sigma, denoised, s_in, extra_args):
    """dD/dlambda along the probability-flow ODE by forward-mode AD: the JVP of D(x, sigma) with the
    tangent (dx/dlambda, dsigma/dlambda) = (D - x, -sigma) (lambda = -log sigma)."""
    def model_fn(x_, sigma_):
        return model(x_, sigma_ * s_in, **extra_args)

    return torch.func.jvp(model_fn, (x, sigma), (denoised - x, -sigma))[1]


def denoised_derivative_fd(model, x, sigma: float, denoised, delta: float, s_in, extra_args):
    """dD/dlambda by a forward difference of step delta (in lambda) along the same tangent:
    (D(x + delta (D - x), sigma e^-delta) - D) / delta; one extra model call, O(delta) error."""
    shifted = model(x + delta * (denoised - x), sigma * math.exp(-delta) * s_in, **extra_args)
    return (shifted - denoised) / delta


# Errors by which torch.func.jvp reports a model it cannot differentiate forward (missing forward-mode
# formulas, data-dependent Python control flow, custom autograd functions); a user interrupt is not one.
JVP_UNSUPPORTED = (RuntimeError, NotImplementedError, TypeError)


@register(
    id="ttm",
    name="TTM",
    order=2,
    calls_per_step=2,
    stochastic=True,
    options=(
        ETA,
        S_NOISE,
        noise_option("gaussian"),
        Option("derivative", "auto", choices=("auto", "jvp", "finite_difference"),
               tooltip="How dx0/dlambda is taken: forward-mode AD (jvp), a finite difference of half a step, "
                       "or auto = jvp, falling back to the finite difference where the model has no forward-mode AD."),
    ),
    reference=REFERENCE + "other_samplers/sample_ttm.py::sample_ttm_jvp (Katherine Crowson)",
    paper="none (second-order truncated Taylor / exponential Taylor method on the DPM-Solver++ data-prediction ODE, arXiv 2211.01095 eq. 9)",
    description="A new sampler that may use accuracy-enhancing techniques.",
)
def sample_ttm(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_type="gaussian",
               derivative="auto", noise_sampler=None):
    """Second-order truncated Taylor method: x0 and its derivative along the ODE, dx0/dlambda, per step.

    x_next = e^-h_eta x + (1 - e^-h_eta) D + (e^-h_eta - 1 + h_eta) D' + sigma_next sqrt(1 - e^(-2 h eta)) n,
    with h_eta = (1 + eta) h and D' = dD/dlambda along the probability-flow ODE (the ODE tangent is used
    for eta > 0 too, as in the reference). The reference extra_samplers.py defines a variant with
    phi_2 = e^-h - 1 + h, but the `sample_ttm_jvp` it registers is the one imported from
    other_samplers/sample_ttm.py with h_eta: that one is reproduced.
    D' comes from `torch.func.jvp` (one forward + one JVP per step). Many models do not support
    forward-mode AD (in torch 2.14 the fused scaled_dot_product_attention kernels of the U-Nets have no
    forward-mode formula; ComfyUI's wrappers add more): `derivative="auto"` then switches, once, to a forward difference with
    step delta = h/2 in lambda (one extra model call); its O(h) error in D' meets a coefficient
    O(h^2), so the method stays second order and works in half precision (a tiny delta would not).
    `derivative="jvp"` raises a clear error instead; "finite_difference" always uses the difference.
    Departure: the reference's noise ignores the seed; here it is seeded.
    """
    if derivative not in ("auto", "jvp", "finite_difference"):
        raise ValueError(f"TTM: derivative must be 'auto', 'jvp' or 'finite_difference', not {derivative!r}")
    extra_args = {} if extra_args is None else extra_args
    sig = sigmas.tolist()
    if len(sig) <= 1:
        return x
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler, noise_type, sig)
    s_in = s_in_like(x)
    use_jvp = derivative != "finite_difference"
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        h_eta = h * (eta + 1)
        denoised_prime = None
        if use_jvp:
            try:
                denoised_prime = denoised_derivative_jvp(model, x, sigmas[i].to(x), denoised, s_in, extra_args)
            except JVP_UNSUPPORTED as err:
                if derivative == "jvp":
                    raise RuntimeError(
                        "TTM: this model does not support forward-mode autodiff (torch.func.jvp); "
                        "use derivative='auto' or 'finite_difference'."
                    ) from err
                use_jvp = False
        if denoised_prime is None:
            denoised_prime = denoised_derivative_fd(model, x, sigma, denoised, h / 2, s_in, extra_args)
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised + (math.expm1(-h_eta) + h_eta) * denoised_prime
        if eta:
            x = x + noise_sampler(sigma, sigma_next) * sde_noise_std(sigma_next, h, eta) * s_noise
    return x


# --------------------------------------------------------------------------------------------------
# Momentumized samplers


@register(
    id="clyb_4m_sde_momentumized",
    brownian_path=True,  # noise_type brownian by default
    name="CLyB-4M SDE Momentumized",
    order=3,
    calls_per_step=1,
    stochastic=True,
    discard_penultimate_sigma=True,
    options=(
        ETA,
        S_NOISE,
        MOMENTUM,
        noise_option("brownian"),
    ),
    reference=REFERENCE + "extra_samplers.py::sample_clyb_4m_sde_momentumized",
    paper="arXiv 2211.01095 (DPM-Solver++), 3M SDE of k-diffusion extended to three past x0; momentum of the pack",
    description="Improves DPM-SDE to use momentum (recommended for text-to-video).",
)
def sample_clyb_4m_sde_momentumized(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                                    momentum=0.5, noise_type="brownian", noise_sampler=None):
    """DPM++(3M) SDE extended with a third past x0 ("4M"), each update passed through the momentum function.

    x = e^-h_eta x + v, v = momentum(x0 (1 - e^-h_eta)); then x += v_sde, v_sde = momentum(history term of
    `multistep_correction`); then SDE noise sigma_next sqrt(1 - e^(-2 h eta)) n. momentum=0 and eta=0 give
    a deterministic third-order multistep solver (the 4th-level term has the reference's ratios, which are
    not those of a fourth-order method). Departure: the reference's noise ignores the seed; here it is seeded.
    """
    extra_args = {} if extra_args is None else extra_args
    sig = sigmas.tolist()
    if len(sig) <= 1:
        return x
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler, noise_type, sig)
    s_in = s_in_like(x)
    sigma_max = max(sig)
    velocity = velocity_sde = None
    past_denoised, past_h = [], []
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]
        tau = sigma / sigma_max
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        h_eta = h * (eta + 1)
        velocity = momentum_update(-math.expm1(-h_eta) * denoised, velocity, momentum, tau)
        x = math.exp(-h_eta) * x + velocity
        correction = multistep_correction(denoised, past_denoised, past_h, h, h_eta)
        if correction is not None:
            velocity_sde = momentum_update(correction, velocity_sde, momentum, tau)
            x = x + velocity_sde
        if eta:
            x = x + noise_sampler(sigma, sigma_next) * sde_noise_std(sigma_next, h, eta) * s_noise
        past_denoised, past_h = [denoised] + past_denoised[:2], [h] + past_h[:2]
    return x


@register(
    id="dpmpp_dualsde_momentumized",
    name="DPM++ Dual SDE Momentumized",
    order=1,
    calls_per_step=2,
    stochastic=True,
    discard_penultimate_sigma=True,
    options=(
        ETA,  # of both stages
        S_NOISE,
        Option("r", 0.5, 0.01, 100.0, 0.01, tooltip="Position of the intermediate stage, as a fraction of the step in log sigma."),
        MOMENTUM,
        noise_option("gaussian"),
    ),
    reference=REFERENCE + "extra_samplers.py::sample_dpmpp_dualsde_momentum",
    paper="arXiv 2211.01095 (DPM-Solver++ SDE, k-diffusion sample_dpmpp_sde) plus a 3M-style history term; momentum of the pack",
    description="Uses momentum to reduce image jitter (recommended for text-to-video and image-to-video).",
)
def sample_dpmpp_dualsde_momentumized(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                                      r=0.5, momentum=0.5, noise_type="gaussian", noise_sampler=None):
    """DPM++ SDE (two stages, ancestral noise in each) followed by the "4M" history term of the blended x0.

    Stage 1: ancestral DPM-Solver++(1) step to sigma_s = sigma e^(-r h), x0 there; stage 2: ancestral step
    to sigma_next with x0_d = (1 - 1/(2r)) x0 + 1/(2r) x0_s; then the history term of
    `multistep_correction` over past x0_d (with h_eta = (1 + eta) h), all three updates through the momentum
    function. Kept from the reference: the history term is added on top of the already second-order stage
    step, so even with eta = momentum = 0 the method is first order (tested). Also kept: the reference's
    one-history branch assigns `r = h_1 / h`, shadowing the option, so from the third step on the stage
    sits at r = h_0/h_1 (the ratio of the first two steps; about 1 on usual schedules) and the option r
    only shapes the first two steps. This sets the look users know; it is no NaN, crash or wrong sigma.
    Departures: the reference's noise ignores the seed (here seeded); r = 0 divides by zero there (here r >= 0.01).
    The final step to sigma = 0 returns x0 (the reference's Euler step to 0, the same value).
    """
    extra_args = {} if extra_args is None else extra_args
    sig = sigmas.tolist()
    if len(sig) <= 1:
        return x
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler, noise_type, sig)
    s_in = s_in_like(x)
    sigma_max = max(sig)
    velocity = velocity_s = velocity_sde = None
    past_denoised, past_h = [], []
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]
        tau = sigma / sigma_max
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        h_eta = h * (eta + 1)
        sigma_s, fac = sigma * math.exp(-r * h), 1 / (2 * r)
        # stage 1: ancestral first-order step to sigma_s
        sigma_down, sigma_up = ancestral_step(sigma, sigma_s, eta)
        velocity_s = momentum_update((1 - sigma_down / sigma) * denoised, velocity_s, momentum, tau)
        x_s = (sigma_down / sigma) * x + velocity_s
        if sigma_up > 0:
            x_s = x_s + noise_sampler(sigma, sigma_s) * s_noise * sigma_up
        denoised_s = model(x_s, sigma_s * s_in, **extra_args)
        # stage 2: ancestral step to sigma_next with the blended x0
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        denoised_d = (1 - fac) * denoised + fac * denoised_s
        velocity = momentum_update((1 - sigma_down / sigma) * denoised_d, velocity, momentum, tau)
        x = (sigma_down / sigma) * x + velocity
        correction = multistep_correction(denoised_d, past_denoised, past_h, h, h_eta)
        if correction is not None:
            velocity_sde = momentum_update(correction, velocity_sde, momentum, tau)
            x = x + velocity_sde
        if len(past_denoised) == 1:
            r = past_h[0] / h  # the reference's `r = h_1 / h` overwrites the option r (kept, see docstring)
        if eta and sigma_up > 0:
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
        past_denoised, past_h = [denoised_d] + past_denoised[:2], [h] + past_h[:2]
    return x


# --------------------------------------------------------------------------------------------------
# Res-Momentumized: RES (Zhang et al. 2308.02157) with churn and momentum


@register(
    id="res_momentumized",
    name="Res-Momentumized",
    order=2,
    calls_per_step=2,
    stochastic=True,
    options=(
        MOMENTUM,
        Option("denoise_to_zero", True, tooltip="Finish with one model call at the last sigma (else stop at sigma_min, as Algorithm 2)."),
        Option("simple_phi_calc", False, tooltip="phi functions by their expm1 closed forms instead of the general incomplete-gamma formula."),
        Option("ita", 0.25, 0.0, 100.0, 0.01, tooltip="Churn: each step first adds noise from sigma up to sigma (1 + ita)."),
        Option("c2", 0.5, 0.01, 1.0, 0.01, tooltip="Position of the second stage in the step (0.5 = midpoint)."),
        noise_option("gaussian"),
    ),
    reference=REFERENCE + "other_samplers/refined_exp_solver.py::sample_refined_exp_s (Birch-san, Katherine Crowson)",
    paper="arXiv 2308.02157 (Zhang et al., RES), Algorithm 2 with the Algorithm 1 second-order step",
    description="Uses momentum for sharp, highly detailed images (recommended for text-to-image and upscaling).",
)
def sample_res_momentumized(model, x, sigmas, extra_args=None, callback=None, disable=None, momentum=0.5, denoise_to_zero=True,
                            simple_phi_calc=False, ita=0.25, c2=0.5, noise_type="gaussian", noise_sampler=None):
    """Refined Exponential Solver, second order single step, with churn and momentum.

    Each step i: churn x_hat = x + sqrt(sigma_hat^2 - sigma^2) n with sigma_hat = (1 + ita) sigma; then the
    RES step from sigma_hat to sigma_next (h = log(sigma_hat/sigma_next)): x_2 = e^(-c2 h) x_hat + v_2,
    v_2 = momentum(a21 h x0), x0_2 at sigma_hat e^(-c2 h); x_next = e^-h x_hat + v, v = momentum(h (b1 x0 + b2 x0_2)).
    RES steps run down to the last positive sigma; with `denoise_to_zero` a final churned model call there
    returns x0 (for a schedule that does not end in 0 every step is a RES step).
    Departures from the reference: (1) its final denoise-to-zero call uses the loop's stale `sigma`, the
    previous sigma, both for the churn and for the model, and evaluates the churned x_hat at the unchurned
    sigma; here the churn is at the last positive sigma and the model sees sigma_hat, as in every other
    step (and a 2-sigma schedule, where the reference raises NameError, works). (2) its noise ignores the
    seed, and its final churn reuses the last step's (sigma, sigma_next) so a Brownian tree returns the same
    noise twice; here noise is seeded and the final churn draws a fresh interval below the last sigma.
    (3) c2 = 0 divides by zero there (here c2 >= 0.01). One callback per step, the final call included.
    """
    extra_args = {} if extra_args is None else extra_args
    sig = sigmas.tolist()
    if len(sig) <= 1:
        return x
    noise_sampler = noise_sampler_for(x, extra_args, noise_sampler, noise_type, sig, sigma_min_scale=0.5)
    s_in = s_in_like(x)
    sigma_max = max(sig)
    ends_in_zero = sig[-1] == 0
    res_steps = len(sig) - 2 if ends_in_zero else len(sig) - 1
    velocity = velocity_2 = None

    def churn(x, sigma, noise_to):
        sigma_hat = sigma * (1 + ita)
        if ita == 0:
            return x, sigma_hat
        return x + math.sqrt(sigma_hat**2 - sigma**2) * noise_sampler(sigma, noise_to), sigma_hat

    for i in range(res_steps):
        sigma, sigma_next = sig[i], sig[i + 1]
        tau = sigma / sigma_max
        x_hat, sigma_hat = churn(x, sigma, sigma_next)
        h = math.log(sigma_hat / sigma_next)
        a2_1, b1, b2 = res_coefficients(h, c2, simple_phi_calc)
        denoised = model(x_hat, sigma_hat * s_in, **extra_args)
        velocity_2 = momentum_update(a2_1 * h * denoised, velocity_2, momentum, tau)
        x_2 = math.exp(-c2 * h) * x_hat + velocity_2
        denoised_2 = model(x_2, sigma_hat * math.exp(-c2 * h) * s_in, **extra_args)
        velocity = momentum_update(h * (b1 * denoised + b2 * denoised_2), velocity, momentum, tau)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        x = math.exp(-h) * x_hat + velocity
    if ends_in_zero and denoise_to_zero:
        i = len(sig) - 2
        x_hat, sigma_hat = churn(x, sig[i], sig[i] / 2)  # a Brownian interval no earlier step used
        denoised = model(x_hat, sigma_hat * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        x = denoised
    return x
