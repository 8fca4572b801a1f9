"""The reference solution: the probability-flow ODE of the sampled model, solved to convergence.

The ODE is Karras et al.'s (arXiv:2206.00364, eq. 4 with sigma(t) = t): dx/dsigma = (x - D(x, sigma)) / sigma,
D the guided denoiser. Every deterministic sampler of the pack approximates its solution from the
schedule's first sigma to its last positive one, then takes the final step to sigma = 0 as
x = D(x, sigma_last) (Euler's last step; DPM++'s "x = denoised"). The reference does exactly that.

Why it steps to the model's timestep jumps: a discrete-time model (SD1.x/2.x, SDXL: 1000 training
timesteps) is given sigma as the *nearest* training timestep (ComfyUI's
`ModelSamplingDiscrete.timestep`, `embedded.sample.DiscreteEpsDenoiser.timestep`), so D is smooth in
sigma only between the geometric midpoints of neighbouring training sigmas and jumps at each. A
solver whose steps straddle jumps sees them at arbitrary phases: measured on the embedded model,
Heun at 200 vs 400 karras steps changes by 7e-5 relative and DPM++ 2M at 400 vs 800 by 3e-5, no
longer falling as the order 2 predicts. So the reference steps from jump to jump (each step inside
one smooth piece, where Heun is second order, arXiv:2206.00364 Alg. 1) with at most `max_log_step`
in log sigma per step. Each evaluation is nudged a relative `NUDGE` inside its piece so that the
nearest-timestep rule picks the piece's own timestep at its ends (an O(1e-6) change of the field).
For a continuous-time model (no sigma table) there are no jumps and it is plain Heun on a geometric grid.

Verification (`verify`): the same solve with every step halved; the relative RMS change is reported
beside the results. tests/pure/test_lab.py asserts it is at most 1% of Euler-40's error.
"""
from __future__ import annotations

import math

import torch

NUDGE = 1e-6
MAX_LOG_STEP = 0.01  # log-sigma per step at most: Heun error ~1e-5 relative on a smooth field (Gaussian-data test), where pieces are wide


def jump_sigmas(model_sigmas: torch.Tensor | None, lo: float, hi: float) -> list[float]:
    """Where the nearest training timestep changes: geometric means of neighbouring table sigmas in (lo, hi), descending."""
    if model_sigmas is None or len(model_sigmas) < 2:
        return []
    s = model_sigmas.detach().double().cpu().sort().values
    mids = ((s[:-1].log() + s[1:].log()) / 2).exp()
    return sorted((float(m) for m in mids if lo < m < hi), reverse=True)


def reference_grid(hi: float, lo: float, model_sigmas: torch.Tensor | None, max_log_step: float = MAX_LOG_STEP,
                   halve: bool = False) -> list[tuple[float, float]]:
    """The steps (sigma_from, sigma_to), descending from hi to lo: each within one smooth piece of the model."""
    edges = [hi, *jump_sigmas(model_sigmas, lo, hi), lo]
    steps = []
    for a, b in zip(edges[:-1], edges[1:]):
        n = max(1, math.ceil(math.log(a / b) / max_log_step)) * (2 if halve else 1)
        points = [a * (b / a) ** (k / n) for k in range(n + 1)]
        points[-1] = b
        steps += list(zip(points[:-1], points[1:]))
    return steps


@torch.no_grad()
def sample_reference(model, x, sigmas, extra_args=None, callback=None, disable=None, model_sigmas=None,
                     max_log_step: float = MAX_LOG_STEP, halve: bool = False):
    """A k-diffusion-style sampler function: Heun from sigmas[0] to the last positive sigma on the
    piece-aligned grid, then x = D(x, sigma_last) if the schedule ends in 0. `callback` is called per grid step."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    sig = [float(s) for s in sigmas]
    positive = [s for s in sig if s > 0]
    hi, lo = positive[0], positive[-1]
    steps = reference_grid(hi, lo, model_sigmas, max_log_step, halve) if hi > lo else []
    for i, (a, b) in enumerate(steps):
        ea, eb = a * (1 - NUDGE), b * (1 + NUDGE)  # evaluated inside the piece (see the module docstring)
        d = (x - model(x, ea * s_in, **extra_args)) / ea
        x_euler = x + (b - a) * d
        d_next = (x_euler - model(x_euler, eb * s_in, **extra_args)) / eb
        x = x + (b - a) * (d + d_next) / 2
        if callback is not None:
            callback({"x": x, "i": i, "sigma": a, "sigma_hat": a, "denoised": x, "steps": len(steps)})
    if sig[-1] == 0:
        x = model(x, lo * s_in, **extra_args)
    return x


def reference_calls(hi: float, lo: float, model_sigmas, max_log_step: float = MAX_LOG_STEP, halve: bool = False,
                    ends_in_zero: bool = True) -> int:
    """Model calls `sample_reference` makes (for progress bars): 2 per grid step, 1 for the final denoise."""
    return 2 * len(reference_grid(hi, lo, model_sigmas, max_log_step, halve)) + int(ends_in_zero)
