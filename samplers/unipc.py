"""UniPC, the unified predictor-corrector (Zhao et al. 2302.04867), bh1 and bh2, as ComfyUI runs it.

Written in sigma space with data prediction: lambda = -log(sigma), h = lambda_t - lambda_s, and the
model's denoised output D is the data prediction. A step from sigma_s to sigma_t of order p uses
the newest denoised m0 (at sigma_s) and p - 1 older ones m_k (at lambda_k), through

    x_t = (sigma_t / sigma_s) x_s - expm1(-h) m0 - B(h) sum_k rho_k D1_k,    D1_k = (m_k - m0) / r_k,
    r_k = (lambda_k - lambda_s) / h,

with B(h) = -h ("bh1") or expm1(-h) ("bh2"). The predictor UniP solves for rho from the older
values; the corrector UniC re-does the step once the model has been evaluated at the predicted
x_t, adding (m_t - m0) as the point r = 1 and raising the order by one. That evaluation is then
reused as the next step's m0, so UniPC costs one model call per step.

ComfyUI (`comfy/extra_samplers/uni_pc.py::sample_unipc`, from wl-zhao/UniPC) runs it with: order
min(3, steps - 1); lower orders for the first steps (warm-up) and the last two (lower_order_final:
order <= steps + 1 - k at update k); no corrector after the last update; order-2 predictor and
order-1 corrector with the "simplified" rho = 1/2; a schedule ending in 0 ends at sigma = 0.001
instead (the result is x at sigma 0.001, not denoised further). This module reproduces that.
It departs from core only where core is broken:
- core writes 0.001 into the caller's `sigmas` (it edits a view); here `sigmas` is left alone;
- with a 1-step schedule core's loop only evaluates the model and returns the (rescaled) input
  noise; here the one step is taken (first order, no corrector, as core's own final step).

Order: the last update is first order without a corrector (lower_order_final), and its O(h^2)
local error sets the global error: UniPC as ComfyUI runs it converges with order 2 (measured 2.1 on
the exact Gaussian ODE, tests/pure/test_registry_orders.py), the order registered here, although the
updates before it use orders up to 3, each with the corrector.

Core also computes lambda as log(alpha) - log(std) from sigma in the sigmas' dtype; in float32 that
is off by ~0.025 at sigma 0.001 (1 - alpha^2 ~ 1e-6 cancels), 5e-5 relative in the result. Here
lambda = -log(sigma) in float64 on the host (tests/host/test_parity_unipc.py measures both).
"""
from __future__ import annotations

import math

import torch

from ._common import s_in_like
from .registry import register

END_SIGMA = 0.001  # where core's UniPC stops when the schedule ends in 0
MAX_ORDER = 3


def step_orders(n_steps: int) -> list[int]:
    """Order of each update k = 1..n as core runs it: warm-up k, then min(order, n + 1 - k)."""
    order = max(1, min(MAX_ORDER, n_steps - 1))
    return [min(k, order, n_steps + 1 - k) for k in range(1, n_steps + 1)]


def _phi_coefficients(hh: float, p: int, variant: str) -> tuple[float, list[float]]:
    """B(h) and the right-hand side b_i = i! * hh * phi_{i+1}(hh) / B(h), i = 1..p (hh = -h).

    phi_k(z) = (e^z - sum_{j<k} z^j / j!) / z^k; hh * phi_{i+1}(hh) follows from the recursion
    g_1 = expm1(hh) / hh - 1, g_{i+1} = g_i / hh - 1 / (i + 1)!.
    """
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    g, b = math.expm1(hh) / hh - 1, []
    for i in range(1, p + 1):
        b.append(g * math.factorial(i) / b_h)
        g = g / hh - 1 / math.factorial(i + 1)
    return b_h, b


def _solve(rks: list[float], b: list[float]) -> list[float]:
    """rho with sum_k rho_k r_k^(i-1) = b_i (i = 1..len(rks)), a tiny Vandermonde system, on the host."""
    vandermonde = torch.tensor([[r**i for r in rks] for i in range(len(rks))], dtype=torch.float64)
    return torch.linalg.solve(vandermonde, torch.tensor(b, dtype=torch.float64)).tolist()


def unipc_update(x, sigma_s, sigma_t, denoised_history, lambda_history, p, variant, denoised_t=None):
    """One UniPC update of order p from sigma_s to sigma_t: UniP, or UniC when `denoised_t` (the model
    at the predicted x_t) is given. Histories hold denoised values and their lambdas, newest last."""
    lambda_s, lambda_t = -math.log(sigma_s), -math.log(sigma_t)
    h = lambda_t - lambda_s
    m0 = denoised_history[-1]
    rks = [(lambda_history[-1 - k] - lambda_s) / h for k in range(1, p)]
    d1s = [(denoised_history[-1 - k] - m0) / r for k, r in enumerate(rks, start=1)]
    b_h, b = _phi_coefficients(-h, p, variant)

    x_t = (sigma_t / sigma_s) * x - math.expm1(-h) * m0  # first order (DPM-Solver++ 1 / DDIM)
    if denoised_t is None:  # predictor UniP-p
        rhos = [0.5] if p == 2 else _solve(rks, b[:-1]) if p > 2 else []
        terms = list(zip(rhos, d1s))
    else:  # corrector UniC-p: the new evaluation enters as the point r = 1
        rhos = [0.5] if p == 1 else _solve([*rks, 1.0], b)
        terms = list(zip(rhos, [*d1s, denoised_t - m0]))
    if not terms:
        return x_t
    return x_t - b_h * sum(rho * d for rho, d in terms)


@register(
    id="uni_pc",
    name="UNI-PC",
    order=2,
    calls_per_step=1,
    stochastic=False,
    discard_penultimate_sigma=True,
    fixed_options={"variant": "bh1"},
    core_id="uni_pc",
    reference="comfyanonymous/ComfyUI comfy/extra_samplers/uni_pc.py::sample_unipc (from wl-zhao/UniPC)",
    paper="arXiv 2302.04867, Algorithms 2-3 (UniP-p, UniC-p), B(h) = h (bh1)",
    description="Uses a predictor-corrector method to make images more accurate; for text-to-image "
    "and text-to-3D.",
)
@register(
    id="uni_pc_bh2",
    name="UNI-PC BH2",
    order=2,
    calls_per_step=1,
    stochastic=False,
    discard_penultimate_sigma=True,
    fixed_options={"variant": "bh2"},
    core_id="uni_pc_bh2",
    reference="comfyanonymous/ComfyUI comfy/extra_samplers/uni_pc.py::sample_unipc_bh2 (from wl-zhao/UniPC)",
    paper="arXiv 2302.04867, Algorithms 2-3, B(h) = e^h - 1 (bh2)",
    description="Adjusts UNI-PC to be more stable; for text-to-image and text-to-video.",
)
@torch.no_grad()
def sample_uni_pc(model, x, sigmas, extra_args=None, callback=None, disable=None, variant="bh1"):
    """UniPC (Zhao et al. 2302.04867) as ComfyUI's `sample_unipc` runs it; see the module docstring.

    Step i evaluates the model at the predicted x_i, corrects x_i with it (UniC, from step 1 on),
    reports (x_i, denoised_i) to the callback and predicts x_{i+1} (UniP): one model call per step.
    """
    extra_args = {} if extra_args is None else extra_args
    sig = sigmas.tolist()
    n = len(sig) - 1
    if n < 1:
        return x
    if sig[-1] == 0:
        sig[-1] = END_SIGMA
    orders = step_orders(n)
    s_in = s_in_like(x)
    denoised_history, lambda_history = [], []
    x_prev = None  # x at sig[i - 1], the start of the step being corrected
    for i in range(n):
        denoised = model(x, sig[i] * s_in, **extra_args)
        if i > 0:
            x = unipc_update(x_prev, sig[i - 1], sig[i], denoised_history, lambda_history, orders[i - 1], variant, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        denoised_history = [*denoised_history[-(MAX_ORDER - 1) :], denoised]
        lambda_history = [*lambda_history[-(MAX_ORDER - 1) :], -math.log(sig[i])]
        x_prev = x
        x = unipc_update(x, sig[i], sig[i + 1], denoised_history, lambda_history, orders[i], variant)
    return x
