"""Properties of the sigma schedules, torch only: shape, order, end points, and each schedule's
defining formula checked on a case where it has a closed form."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from diffusion_anatomy.samplers import schedules
from diffusion_anatomy.samplers.schedules import SCHEDULES, beta_ppf, betainc, calculate_sigmas

LO, HI = 0.0291675, 14.614642


def sd15_sigmas() -> torch.Tensor:
    """SD1.5's table (LDM "linear" = scaled-linear betas 0.00085..0.012 over 1000 steps), ascending, float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


TABLE = sd15_sigmas()


def test_sd15_table_ends():
    """The familiar SD1.5 range (ComfyUI's KarrasScheduler defaults are these two numbers)."""
    assert float(TABLE[0]) == pytest.approx(LO, rel=2e-5)
    assert float(TABLE[-1]) == pytest.approx(HI, rel=2e-5)


def make(name: str, n: int) -> torch.Tensor:
    return calculate_sigmas(name, n, model_sigmas=TABLE)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 20, 33, 100])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_descending_ends_in_zero(name, n):
    if name == "sd_turbo" and n > 10:
        n = 10
    sigmas = make(name, n)
    assert sigmas.ndim == 1 and sigmas.dtype == torch.float32 and torch.isfinite(sigmas).all()
    assert sigmas[-1] == 0 and (sigmas[:-1] > 0).all()
    steps = sigmas[:-1] - sigmas[1:]
    if name == "laplace":
        assert (steps >= 0).all()  # clamped to the range: may repeat an end value for large n
    else:
        assert (steps > 0).all()
    expected_len = {"ddim_uniform": len(range(1, 1000, max(1000 // n, 1))) + 1}.get(name, n + 1)
    if name == "beta":
        assert 2 <= len(sigmas) <= n + 1
    else:
        assert len(sigmas) == expected_len


@pytest.mark.parametrize("n", [1, 4, 25])
def test_end_points(n):
    lo, hi = float(TABLE[0]), float(TABLE[-1])
    first = {name: float(make(name, n)[0]) for name in SCHEDULES}
    for name in ("karras", "exponential", "polyexponential", "kl_optimal", "normal", "sgm_uniform", "simple",
                 "beta", "linear_quadratic", "laplace", "sd_turbo"):
        assert first[name] == pytest.approx(hi, rel=1e-6), name
    if n > 1:
        for name in ("karras", "exponential", "polyexponential", "kl_optimal", "normal", "laplace"):
            assert float(make(name, n)[-2]) == pytest.approx(lo, rel=1e-6), name
        assert float(make("ddim_uniform", n)[-2]) == float(TABLE[1])  # DDIM's uniform grid starts at timestep 1
    vp = make("vp", n).double()
    assert float(vp[0]) == pytest.approx(math.sqrt(math.expm1(19.9 / 2 + 0.1)), rel=1e-6)
    if n > 1:
        assert float(vp[-2]) == pytest.approx(math.sqrt(math.expm1(19.9 * 1e-6 / 2 + 0.1 * 1e-3)), rel=1e-6)


def _even(values: torch.Tensor, rel=1e-6):
    d = values[1:] - values[:-1]
    torch.testing.assert_close(d, torch.full_like(d, float(d.mean())), rtol=rel, atol=rel * float(d.abs().max()))


def test_defining_formulas():
    n = 12
    _even(schedules.karras(n, LO, HI, rho=7.0)[:-1].double() ** (1 / 7))
    _even(schedules.karras(n, LO, HI, rho=3.0)[:-1].double() ** (1 / 3))
    _even(schedules.exponential(n, LO, HI)[:-1].double().log())
    _even(schedules.kl_optimal(n, LO, HI)[:-1].double().atan())
    torch.testing.assert_close(schedules.polyexponential(n, LO, HI, rho=1.0), schedules.exponential(n, LO, HI))
    # polyexponential rho = 2: log sigma - log sigma_min proportional to the ramp squared
    ramp = torch.linspace(1, 0, n, dtype=torch.float64)
    poly = schedules.polyexponential(n, LO, HI, rho=2.0)[:-1].double()
    torch.testing.assert_close((poly.log() - math.log(LO)) / (math.log(HI) - math.log(LO)), ramp**2, rtol=1e-5, atol=1e-6)


def test_laplace_is_symmetric_in_log_sigma_around_mu():
    n, mu = 21, 0.4
    s = schedules.laplace(n, 1e-3, 1e3, mu=mu, beta=0.5)[:-1].double().log()
    torch.testing.assert_close(s - mu, -(s - mu).flip(0), rtol=0, atol=1e-5)
    assert float(s[n // 2]) == pytest.approx(mu, abs=1e-6)


def test_normal_on_a_log_linear_table_is_exponential():
    """If log sigma is linear in the timestep, evenly spaced timesteps are evenly spaced log sigmas."""
    table = torch.linspace(math.log(0.05), math.log(20.0), 1000, dtype=torch.float64).exp()
    torch.testing.assert_close(schedules.normal(13, table), schedules.exponential(13, 0.05, 20.0), rtol=1e-6, atol=0)
    # sgm_uniform: 14 even points, the last one dropped
    expected = schedules.exponential(14, 0.05, 20.0)
    torch.testing.assert_close(schedules.sgm_uniform(13, table), torch.cat([expected[:-2], expected[-1:]]), rtol=1e-6, atol=0)


def test_normal_interpolates_between_timesteps():
    """Timesteps 999, 999 - 999/4, ...: fractional ones get log-linear interpolated sigmas."""
    sigmas = schedules.normal(5, TABLE).double()
    log_table = TABLE.double().log()
    t = 999 - 999 / 4  # 749.25: 3/4 of the way from log sigma[749] to log sigma[750]
    low, frac = int(t), t - int(t)
    expected = math.exp((1 - frac) * float(log_table[low]) + frac * float(log_table[low + 1]))
    assert float(sigmas[1]) == pytest.approx(expected, rel=1e-6)


def test_table_schedules_pick_table_entries():
    assert schedules.simple(4, TABLE)[:-1].tolist() == TABLE[[999, 749, 499, 249]].tolist()
    assert schedules.ddim_uniform(4, TABLE)[:-1].tolist() == TABLE[[751, 501, 251, 1]].tolist()
    assert schedules.sd_turbo(3, TABLE)[:-1].tolist() == TABLE[[999, 899, 799]].tolist()
    assert schedules.sd_turbo(2, TABLE, denoise=0.5)[:-1].tolist() == TABLE[[499, 399]].tolist()
    # beta with alpha = beta = 1 (uniform): timesteps rint(999 (1 - i/n)) = 999, 799.2, 599.4, 399.6, 199.8
    assert schedules.beta(5, TABLE, alpha=1.0, beta=1.0)[:-1].tolist() == TABLE[[999, 799, 599, 400, 200]].tolist()


def test_linear_quadratic_shape():
    """In s = 1 - sigma/sigma_max: linear from 0 to threshold over linear_steps, then a quadratic to 1
    with the same value and slope at the joint."""
    n, k, thr = 10, 5, 0.025
    s = 1 - schedules.linear_quadratic(n, TABLE, threshold_noise=thr).double() / float(TABLE[-1])
    torch.testing.assert_close(s[:k], torch.arange(k, dtype=torch.float64) * thr / k, rtol=0, atol=1e-6)
    assert float(s[k]) == pytest.approx(thr, abs=1e-6)  # continuous at the joint
    assert float(s[-1]) == pytest.approx(1.0, abs=1e-6)
    second = s[k + 2:] - 2 * s[k + 1:-1] + s[k:-2]
    torch.testing.assert_close(second, torch.full_like(second, float(second[0])), rtol=0, atol=1e-6)  # one quadratic to the end
    slope_at_joint = float(-3 * s[k] + 4 * s[k + 1] - s[k + 2]) / 2  # exact for a quadratic
    assert slope_at_joint == pytest.approx(thr / k, abs=1e-5)


def test_kl_optimal_one_step():
    """Core divides by n - 1 (NaN for one step); one step is the whole range."""
    assert schedules.kl_optimal(1, LO, HI).tolist() == pytest.approx([HI, 0.0], rel=1e-6)


# --- the scipy-free Beta quantile ------------------------------------------------------------

def test_beta_quantile_closed_forms():
    q = np.linspace(0, 1, 101)
    np.testing.assert_allclose(beta_ppf(q, 1.0, 1.0), q, atol=1e-13)  # uniform
    np.testing.assert_allclose(beta_ppf(q, 1.0, 2.0), 1 - np.sqrt(1 - q), atol=1e-13)  # CDF 1 - (1 - x)^2
    np.testing.assert_allclose(beta_ppf(q, 2.0, 1.0), np.sqrt(q), atol=1e-13)  # CDF x^2
    np.testing.assert_allclose(beta_ppf(q, 0.5, 0.5), np.sin(np.pi * q / 2) ** 2, atol=1e-12)  # arcsine law


@pytest.mark.parametrize("a,b", [(0.6, 0.6), (0.3, 4.0), (7.0, 2.5), (40.0, 40.0)])
def test_beta_quantile_inverts_the_cdf(a, b):
    q = np.linspace(0.001, 0.999, 97)
    np.testing.assert_allclose(betainc(beta_ppf(q, a, b), a, b), q, atol=1e-12)
    if a == b:
        np.testing.assert_allclose(beta_ppf(1 - q, a, b), 1 - beta_ppf(q, a, b), atol=1e-12)


def test_betainc_against_quadrature():
    """I_x(a, b) against a direct numerical integral of x^(a-1) (1-x)^(b-1) / B(a, b) (a, b >= 1: smooth)."""
    a, b = 2.5, 3.5
    u = np.linspace(0, 0.3, 200_001)
    density = u ** (a - 1) * (1 - u) ** (b - 1) / math.exp(math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    integral = float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(u)))
    assert float(betainc(np.array([0.3]), a, b)[0]) == pytest.approx(integral, rel=1e-8)


# --- the registry --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SCHEDULES))
def test_registry_options_are_function_defaults(name):
    entry = SCHEDULES[name]
    params = inspect.signature(entry.fn).parameters
    if entry.needs_model_sigmas:
        assert list(params)[:2] == ["n", "model_sigmas"]
    elif name != "vp":  # vp builds its own range
        assert list(params)[:3] == ["n", "sigma_min", "sigma_max"]
    for option in entry.options:
        assert params[option.name].default == option.default
    assert entry.description


def test_calculate_sigmas_inputs():
    torch.testing.assert_close(calculate_sigmas("karras", 5, model_sigmas=TABLE), schedules.karras(5, float(TABLE[0]), float(TABLE[-1])))
    torch.testing.assert_close(calculate_sigmas("karras", 5, sigma_min=0.1, sigma_max=3.0, rho=5.0), schedules.karras(5, 0.1, 3.0, rho=5.0))
    with pytest.raises(ValueError):
        calculate_sigmas("normal", 5)
    with pytest.raises(ValueError):
        calculate_sigmas("karras", 5)
    assert torch.equal(calculate_sigmas("vp", 5), schedules.vp(5))
