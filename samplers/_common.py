"""Small helpers named after the maths, shared by the sampler functions.

Conventions of every sampler (k-diffusion's): `model(x, sigma * s_in, **extra_args)` returns the
denoised estimate x0; `sigmas` is descending and ends in 0; `callback` gets
{'x', 'i', 'sigma', 'sigma_hat', 'denoised'} once per step.
Samplers keep the loop free of host-device syncs: step-size decisions use `sigmas.tolist()` taken
once before the loop, never `.item()` or a Python comparison of device tensors inside it.
"""
from __future__ import annotations

import math

import torch


def to_d(x: torch.Tensor, sigma: torch.Tensor | float, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE, (x - D(x, sigma)) / sigma (Karras et al. 2206.00364, eq. 4)."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step sigma_from -> sigma_to into a deterministic part to sigma_down and fresh noise sigma_up.

    sigma_down^2 + sigma_up^2 = sigma_to^2, sigma_up = eta * sqrt(sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2)
    (the DDPM posterior variance in sigma form). Python floats in, floats out.
    """
    if eta == 0 or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    sigma_down = math.sqrt(sigma_to**2 - sigma_up**2)
    return sigma_down, sigma_up


def s_in_like(x: torch.Tensor) -> torch.Tensor:
    """A ones vector of the batch size, so a scalar sigma becomes one sigma per sample."""
    return x.new_ones([x.shape[0]])


def t_of(sigma: float) -> float:
    """DPM-Solver's time variable t = -log(sigma) (half the log-SNR lambda for VE/EDM parametrisation).

    sigma = 0 gives t = +inf, as torch's -log(0) does in k-diffusion: an ancestral split with eta so
    large that sigma_down = 0 then has its target clipped to the end of the interval, as there."""
    return math.inf if sigma == 0 else -math.log(sigma)


def sigma_of(t: float) -> float:
    return math.exp(-t)


# --- DPM-Solver++ SDE pieces (dpmpp_*_sde and the Extra-Samplers family) ------------------------------

def sde_noise_std(sigma_next: float, h: float, eta: float) -> float:
    """Std of the fresh noise of an SDE-DPM-Solver++ step (Lu et al. 2211.01095 sec. 4): sigma_next sqrt(1 - e^(-2 h eta))."""
    return sigma_next * math.sqrt(-math.expm1(-2 * h * eta))


def multistep_3m_correction(denoised, past_denoised: list, past_h: list[float], h: float, h_eta: float):
    """DPM++(3M) SDE's history term, added after the first-order exponential step (k-diffusion `sample_dpmpp_3m_sde`).

    From the last two x0 (most recent first) and their steps in lambda: divided differences with r0 = h_1/h,
    r1 = h_2/h, d1 = d1_0 + (d1_0 - d1_1) r0/(r0 + r1) (first derivative with its second-order term) and
    d2 = (d1_0 - d1_1)/(r0 + r1), weighted by phi_2 = (e^-h_eta - 1)/h_eta + 1 and phi_3 = phi_2/h_eta - 1/2:
    phi_2 d1 - phi_3 d2. With one past x0 the second-order phi_2 (D - D_1)/r0; with none, None.
    """
    phi_2 = math.expm1(-h_eta) / h_eta + 1
    if len(past_denoised) >= 2:
        (denoised_1, denoised_2), (h_1, h_2) = past_denoised[:2], past_h[:2]
        r0, r1 = h_1 / h, h_2 / h
        d1_0 = (denoised - denoised_1) / r0
        d1_1 = (denoised_1 - denoised_2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi_3 = phi_2 / h_eta - 0.5
        return phi_2 * d1 - phi_3 * d2
    if len(past_denoised) == 1:
        return phi_2 * ((denoised - past_denoised[0]) / (past_h[0] / h))
    return None


# --- RES (Zhang et al. 2308.02157): res_momentumized and Supreme's RES step ---------------------------

def phi(j: int, neg_h: float, simple: bool) -> float:
    """phi_j(-h) = h^-j int_0^h e^(tau - h) tau^(j-1)/(j-1)! dtau (2308.02157, Lemma 1), j = 1, 2.

    simple=True: the closed forms with expm1 (Katherine Crowson's); False: the reference's general form
    e^z z^-j (1 - Gamma(j, z)/Gamma(j)) through the finite sum of the upper incomplete gamma function.
    The same numbers up to rounding (the general form loses digits for small h). h = 0 gives the limits 1/j!.
    """
    if neg_h == 0:
        return 1 / math.factorial(j)
    if simple:
        return math.expm1(neg_h) / neg_h if j == 1 else (math.expm1(neg_h) - neg_h) / neg_h**2
    partial = sum(neg_h**k / math.factorial(k) for k in range(j))
    return math.exp(neg_h) * neg_h**-j * (1 - math.exp(-neg_h) * partial)


def res_coefficients(h: float, c2: float, simple: bool) -> tuple[float, float, float]:
    """Second-order RES tableau (2308.02157, Table 3): a21 = c2 phi_1(-c2 h), b1 = phi_1 - phi_2/c2, b2 = phi_2/c2."""
    a2_1 = c2 * phi(1, -c2 * h, simple)
    phi_1, phi_2 = phi(1, -h, simple), phi(2, -h, simple)
    return a2_1, phi_1 - phi_2 / c2, phi_2 / c2
