"""PNDM (Liu et al. 2202.09778) and PLMS (CompVis latent diffusion): pseudo numerical methods.

A pseudo numerical method splits a step into a *gradient part*, an estimate e' of the noise eps
over the step built from model evaluations (Runge-Kutta or linear multistep style), and a
*transfer part* that moves x with that e' (PNDM formula (9), which is the DDIM update).

In sigma space the transfer is exact and simple. With x = x0 + sigma * eps (VE form of an eps
model: x_vp / sqrt(alphas_cumprod)), the DDIM update from sigma to sigma_next with noise e' is

    x_next = x + (sigma_next - sigma) * e',        e = (x - D(x, sigma)) / sigma = dx/dsigma,

an Euler step of the probability-flow ODE dx/dsigma = e(x, sigma). So PLMS and PNDM become
Adams-Bashforth steps on e, with the coefficients of equal steps (the references take equal
*timestep* steps), and PNDM's pseudo Runge-Kutta warm-up is RK4 on dx/dsigma.

Orders. On an equal-step sigma grid the Adams-Bashforth body is 4th order. On any other grid
(every practical schedule, and the geometric grids of the tests) equal-step coefficients are off
by O(step ratio - 1) = O(h), so both methods converge with order 2, which is what the PNDM paper
proves ("second-order convergent") and what the registry states.

A step to sigma = 0 never evaluates the model at sigma 0 (e = (x - D) / 0 is undefined there):
warm-up steps that would need it use the Adams-Bashforth estimate from what is at hand instead.
"""
from __future__ import annotations

import bisect
import math

import torch

from ._common import s_in_like, to_d
from .registry import register

# Adams-Bashforth coefficients for equal steps, newest value first (PLMS "pseudo linear multistep").
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def pseudo_linear_multistep(eps: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
    """e' from the newest eps and up to 3 earlier ones (`history`, oldest first): AB1..AB4."""
    values = [eps, *reversed(history[-3:])]
    coefficients = ADAMS_BASHFORTH[len(values)]
    return sum(c * v for c, v in zip(coefficients, values))


def _eps(model, x, sigma: float, s_in, extra_args) -> torch.Tensor:
    return to_d(x, sigma, model(x, sigma * s_in, **extra_args))


def timestep_of(table: list[float], sigma: float, rel: float = 1e-6) -> int | None:
    """The timestep t with table[t] == sigma (to `rel`), in the model's ascending discrete sigma table, else None."""
    i = bisect.bisect_left(table, sigma * (1 - rel))
    return i if i < len(table) and abs(table[i] - sigma) <= rel * sigma else None


def half_timestep_sigma(table: list[float] | None, sigma: float, sigma_next: float) -> float:
    """Where PNDM's pseudo Runge-Kutta takes the middle of a step.

    On the model's discrete sigmas (both ends in `table`, ComfyUI's model_sampling.sigmas: index = timestep)
    it is the sigma of the half timestep t - (t - t_next) // 2, as diffusers' PNDMScheduler (its prk_timesteps:
    t - step_ratio // 2). On any other grid (karras, exponential, ..., or no table given) there is no timestep
    to halve, and the middle is the geometric one sqrt(sigma sigma_next), the midpoint in lambda = -log(sigma)
    (within 1% of the half timestep's sigma at the high-noise steps of SD's schedule where the warm-up runs).
    """
    if table:
        t, t_next = timestep_of(table, sigma), timestep_of(table, sigma_next)
        if t is not None and t_next is not None and t > t_next:
            return table[t - (t - t_next) // 2]
    return math.sqrt(sigma * sigma_next)


@register(
    id="plms",
    name="PLMS",
    order=2,
    calls_per_step="2 on the first step, then 1",
    stochastic=False,
    reference="CompVis/stable-diffusion ldm/models/diffusion/plms.py::PLMSSampler.p_sample_plms; "
    "AUTOMATIC1111 modules/sd_samplers_timesteps_impl.py::plms",
    paper="arXiv 2202.09778 (PNDM), pseudo linear multistep with a pseudo improved Euler start",
    description="Images with a distinctive style of their own, sharp; medium speed. The document "
    "recommends it, with DDIM, for latent upscaling (adds detail and sharpness).",
)
@torch.no_grad()
def sample_plms(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """PLMS in sigma space: a pseudo improved Euler (Heun) first step, then Adams-Bashforth 2/3/4 on eps.

    As in CompVis' plms.py the history keeps each step's first eps (not the averaged e'), and the
    multistep coefficients assume equal steps. Differs from the reference only where the first step
    goes straight to sigma 0: it is then a DDIM step (the reference's second evaluation would be at
    sigma 0, where eps is undefined in sigma space).
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = s_in_like(x)
    sig = sigmas.tolist()
    history: list[torch.Tensor] = []
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        eps = to_d(x, sigma, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if not history and sigma_next > 0:  # pseudo improved Euler: average eps at both ends of a DDIM step
            eps_next = _eps(model, x + (sigma_next - sigma) * eps, sigma_next, s_in, extra_args)
            eps_prime = (eps + eps_next) / 2
        else:
            eps_prime = pseudo_linear_multistep(eps, history)
        x = x + (sigma_next - sigma) * eps_prime
        history = [*history[-2:], eps]
    return x


@register(
    id="pndm",
    name="PNDM",
    order=2,
    calls_per_step="4 on the first 3 steps, then 1",
    stochastic=False,
    uses_model_sigmas=True,
    reference="huggingface/diffusers src/diffusers/schedulers/scheduling_pndm.py::PNDMScheduler "
    "(step_prk, step_plms, _get_prev_sample)",
    paper="arXiv 2202.09778, formula (9) (transfer part) and (12) (pseudo Runge-Kutta / linear multistep)",
    description="Designed to work well in latent space; balances quality and speed. The document "
    "recommends it for text-to-image and, with LMS and UNI-PC, for text-to-3D (precise control of "
    "the image's structure).",
)
@torch.no_grad()
def sample_pndm(model, x, sigmas, extra_args=None, callback=None, disable=None, model_sigmas=None):
    """PNDM in sigma space: 3 pseudo Runge-Kutta steps (4 model calls each), then Adams-Bashforth 4 on eps.

    Pseudo Runge-Kutta = RK4 on dx/dsigma = eps, e' = (e1 + 2 e2 + 2 e3 + e4) / 6, e2 and e3 taken at the
    step's middle: on the model's discrete sigmas (`model_sigmas`, its ascending table by timestep; the nodes
    pass ComfyUI's) the half timestep's sigma, as diffusers; elsewhere the geometric middle
    (`half_timestep_sigma`). As in diffusers the multistep history holds each step's first eps, so the 4th
    step already uses AB4.
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = s_in_like(x)
    sig = sigmas.tolist()
    table = None if model_sigmas is None else torch.as_tensor(model_sigmas).tolist()
    history: list[torch.Tensor] = []
    for i in range(len(sig) - 1):
        sigma, sigma_next = sig[i], sig[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        e1 = to_d(x, sigma, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if len(history) < 3 and sigma_next > 0:  # pseudo Runge-Kutta warm-up
            sigma_mid = half_timestep_sigma(table, sigma, sigma_next)
            e2 = _eps(model, x + (sigma_mid - sigma) * e1, sigma_mid, s_in, extra_args)
            e3 = _eps(model, x + (sigma_mid - sigma) * e2, sigma_mid, s_in, extra_args)
            e4 = _eps(model, x + (sigma_next - sigma) * e3, sigma_next, s_in, extra_args)
            eps_prime = (e1 + 2 * e2 + 2 * e3 + e4) / 6
        else:
            eps_prime = pseudo_linear_multistep(e1, history)
        x = x + (sigma_next - sigma) * eps_prime
        history = [*history[-2:], e1]
    return x
