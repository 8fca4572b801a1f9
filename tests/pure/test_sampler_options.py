"""Sampler options are checked before the run: the error names the option, its value and what is allowed.
Every sampler node at its widgets' minima and maxima runs in tests/server/test_hostile.py (the real model).
"""
from __future__ import annotations

import math

import pytest
import torch

from diffusion_anatomy.samplers import REGISTRY
from diffusion_anatomy.samplers._common import t_of
from diffusion_anatomy.samplers.dpm_solver import MAX_STEP_FACTOR, ancestral_target, pid_step_factor
from diffusion_anatomy.samplers.registry import OptionError, check_options
from diffusion_anatomy.samplers.runner import run_sampler
from support.toy import toy_denoiser


def karras(n=6, sigma_min=0.0292, sigma_max=14.6146, rho=7.0):
    ramp = torch.linspace(0, 1, n)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def test_eta_100_no_longer_a_math_domain_error():
    """The issue's case (DPM-Adaptive, eta 100): sigma_down = 0 and -log(0) raised; now t_down is clipped to
    the end of the interval as in core, and the noise restores sigma_next (DPM-Fast's parity test runs it)."""
    assert t_of(0.0) == math.inf
    t, t_next = t_of(10.0), t_of(5.0)
    t_down, noise_std = ancestral_target(t, t_next, t_end=t_of(0.03), eta=100.0)
    assert t_down == t_of(0.03) and noise_std == pytest.approx(math.sqrt(5.0**2 - 0.03**2))


def test_pid_step_factor_saturates_instead_of_overflowing():
    factor = pid_step_factor([1e8, 1e8, 1e8], pcoeff=100.0, icoeff=100.0, dcoeff=0.0, order=2)
    assert factor == pytest.approx(MAX_STEP_FACTOR)


@pytest.mark.parametrize("options,named", [
    ({"h_init": 0.0}, "h_init=0.0"),
    ({"rtol": 0.0, "atol": 0.0}, "atol=0.0"),
    ({"accept_safety": 3.0}, "accept_safety=3.0"),
    ({"eta": float("nan")}, "eta=nan is not a finite number"),
    ({"eta": 101.0}, "eta=101.0 is outside its range [0.0, 100.0]"),
    ({"order": 5}, "order=5 is outside its range [2, 3]"),
])
def test_dpm_adaptive_domain_is_named(options, named):
    with pytest.raises(OptionError, match="DPM-Adaptive") as error:
        check_options(REGISTRY["dpm_adaptive"], options)
    assert named in str(error.value)


def test_unknown_choice_is_named():
    with pytest.raises(OptionError, match="noise_type='pink' is not one of gaussian"):
        check_options(REGISTRY["ttm"], {"noise_type": "pink"})


def test_supreme_without_noise_is_finite():
    """s_noise = 0 made the intensity modulation 0/0 (renormalising zero noise): now zero noise."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * 14.6
    out = run_sampler("supreme", toy_denoiser, x, karras(), extra_args={"seed": 0}, disable=True, s_noise=0.0)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("change", [math.nan, math.inf])
def test_supreme_dynamic_order_survives_a_non_finite_slope_change(change):
    """Supreme at its widgets' maxima diverged and the order choice raised StopIteration (a bare
    'coroutine raised StopIteration' in ComfyUI); now the step falls back to first order and the run ends in
    a NonFiniteError that names the options."""
    from diffusion_anatomy.samplers.supreme import choose_method

    assert choose_method("dynamic", "euler", 0, False, lambda: change) == ("euler", 1)
    assert choose_method("adaptive_rk", "euler", 0, False, lambda: change) == ("adaptive_rk", 1)
