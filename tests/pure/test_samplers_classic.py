"""Mathematics of the classic samplers, torch only.

Deterministic samplers: on Gaussian data the PF-ODE has a closed-form solution; the error at
sigma_min as the number of steps doubles gives the observed order of convergence, which must lie
within 0.3 of the registered order (geometric sigmas 10 -> 0.1 without the trailing 0, float64).
Stochastic samplers: with the exact Gaussian denoiser every step is linear in x - mu plus fresh
noise, so the mean and variance of the output follow a two-term recursion written out below for
each sampler (independently of the sampler code); sample mean and variance over one big seeded
batch must match it within 5 standard errors.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from diffusion_anatomy.samplers import REGISTRY, schedules
from diffusion_anatomy.samplers.classic import S_TMAX_DEFAULT, churn_gamma, lms_coefficients
from support.gaussian import GaussianDenoiser, fitted_order

OURS = ["euler", "euler_ancestral", "heun", "heunpp2", "lms", "dpm_2", "dpm_2_ancestral", "ddim", "lcm"]
MU, S = 0.3, 0.5


def geometric(n: int, sigma_max=10.0, sigma_min=0.1, startup: int = 0) -> torch.Tensor:
    """n geometric steps sigma_max -> sigma_min; `startup` extra steps of size h^2 (in log sigma) in
    front, so a multistep method's low-order start-up costs O(h^4) and not O(h^2)."""
    log_sigma = torch.linspace(math.log(sigma_max), math.log(sigma_min), n + 1, dtype=torch.float64)
    h = float(log_sigma[0] - log_sigma[1])
    head = torch.tensor([math.log(sigma_max) + (startup - k) * h * h for k in range(startup)], dtype=torch.float64)
    return torch.cat([head, log_sigma]).exp()


def ode_error(sampler_id: str, n: int, startup: int = 0, **options) -> float:
    model = GaussianDenoiser(MU, S)
    sigmas = geometric(n, startup=startup)
    x = torch.linspace(-3, 3, 7, dtype=torch.float64).reshape(7, 1) * float(sigmas[0])
    out = REGISTRY[sampler_id].fn(model, x.clone(), sigmas, **options)
    return float((out - model.ode_solution(x, float(sigmas[0]), float(sigmas[-1]))).abs().max())


# --- registry ---------------------------------------------------------------------------------

def test_registry_entries():
    names = {"euler": "Euler", "euler_ancestral": "Euler Ancestral", "heun": "Heun", "heunpp2": "HeunPP2",
             "lms": "LMS", "dpm_2": "DPM_2", "dpm_2_ancestral": "DPM_2 Ancestral", "ddim": "DDIM", "lcm": "LCM"}
    for sampler_id, name in names.items():
        info = REGISTRY[sampler_id]
        assert info.name == name and info.core_id == sampler_id
        assert info.description and info.reference and info.paper
    assert {i for i in OURS if REGISTRY[i].discard_penultimate_sigma} == {"dpm_2", "dpm_2_ancestral"}
    assert {i for i in OURS if REGISTRY[i].stochastic} == {"euler_ancestral", "dpm_2_ancestral", "lcm"}


@pytest.mark.parametrize("sampler_id", OURS)
def test_options_are_the_function_defaults(sampler_id):
    info = REGISTRY[sampler_id]
    params = inspect.signature(info.fn).parameters
    for option in info.options:
        assert params[option.name].default == option.default, option.name
        assert option.min <= option.default <= option.max
    assert "noise_sampler" not in info.defaults()


# --- common contract ----------------------------------------------------------------------------

@pytest.mark.parametrize("sampler_id", OURS)
def test_short_sigmas_return_x(sampler_id):
    x = torch.randn(2, 3)
    for sigmas in (torch.tensor([]), torch.tensor([1.0])):
        assert torch.equal(REGISTRY[sampler_id].fn(GaussianDenoiser(), x, sigmas), x)


@pytest.mark.parametrize("sampler_id", OURS)
def test_callback_once_per_step_and_model_calls(sampler_id):
    """One callback per step with core's keys; model calls as the method says (1 fewer on the step into 0)."""
    sigmas = schedules.karras(6, 0.03, 14.6).double()
    n = len(sigmas) - 1
    model, log = GaussianDenoiser(), []
    out = REGISTRY[sampler_id].fn(model, torch.randn(2, 4, dtype=torch.float64) * 14.6, sigmas, callback=log.append,
                                  extra_args={"seed": 0})
    assert [c["i"] for c in log] == list(range(n))
    assert all(set(c) == {"x", "i", "sigma", "sigma_hat", "denoised"} for c in log)
    assert [float(c["sigma"]) for c in log] == sigmas[:-1].tolist()
    expected_calls = {"heun": 2 * n - 1, "dpm_2": 2 * n - 1, "dpm_2_ancestral": 2 * n - 1,
                      "heunpp2": 3 * (n - 2) + 2 + 1}.get(sampler_id, n)
    assert model.calls == expected_calls
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


@pytest.mark.parametrize("sampler_id", OURS)
def test_float32_in_float32_out(sampler_id):
    sigmas = schedules.karras(5, 0.03, 14.6)
    out = REGISTRY[sampler_id].fn(GaussianDenoiser(), torch.randn(3, 2) * 14.6, sigmas, extra_args={"seed": 1})
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# --- orders of convergence ----------------------------------------------------------------------

@pytest.mark.parametrize("sampler_id,options", [
    ("euler", {}), ("heun", {}), ("dpm_2", {}), ("ddim", {"eta": 0.0}), ("heunpp2", {}),
    ("euler_ancestral", {"eta": 0.0}), ("dpm_2_ancestral", {"eta": 0.0}),
])
def test_order_of_convergence(sampler_id, options):
    steps = [16, 32, 64]
    order = fitted_order(steps, [ode_error(sampler_id, n, **options) for n in steps])
    assert abs(order - REGISTRY[sampler_id].order) <= 0.3, order


def test_heunpp2_is_first_order_not_second():
    """Its weights w2 + 2 w3 != 1/2 (see the docstring): Heun's second order is lost, on any range."""
    steps = [64, 128, 256]
    assert fitted_order(steps, [ode_error("heunpp2", n) for n in steps]) < 1.3


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_lms_order_with_accurate_start(order):
    """With the start-up steps made h^2 small, LMS of order p converges with order p."""
    steps = [64, 128, 256]
    errors = [ode_error("lms", n, startup=order - 1, order=order) for n in steps]
    assert abs(fitted_order(steps, errors) - order) <= 0.3


def test_lms_order4_is_startup_limited_on_a_plain_grid():
    """Honest global order of k-diffusion's LMS: its first step is Euler (local error O(h^2)), so on a
    plain grid the error is O(h^2) asymptotically; in the range of real step counts the h^4 part
    dominates and it converges faster than 3rd order."""
    asymptotic = [256, 512, 1024]
    assert abs(fitted_order(asymptotic, [ode_error("lms", n) for n in asymptotic]) - 2) <= 0.3
    practical = [16, 32, 64]
    assert fitted_order(practical, [ode_error("lms", n) for n in practical]) > 3.0


@pytest.mark.parametrize("order", [1, 2, 3, 4, 6])
def test_lms_coefficients_integrate_polynomials_exactly(order):
    """sum_j c_j p(t_{i-j}) = integral of p over [t_i, t_{i+1}] for every p of degree < order."""
    ts = [14.6, 9.1, 6.0, 3.3, 2.9, 1.2, 0.7, 0.31]
    i = order - 1 if order > 1 else 2
    c = lms_coefficients(ts, i, order)
    for degree in range(order):
        poly = np.polynomial.Polynomial([0.0] * degree + [1.0])  # tau^degree
        exact = poly.integ()(ts[i + 1]) - poly.integ()(ts[i])
        assert sum(cj * poly(ts[i - j]) for j, cj in enumerate(c)) == pytest.approx(exact, rel=1e-12, abs=1e-12)


# --- equalities between samplers ----------------------------------------------------------------

def _run(sampler_id, sigmas, x, seed=5, model=None, **options):
    model = GaussianDenoiser(MU, S) if model is None else model
    return REGISTRY[sampler_id].fn(model, x.clone(), sigmas, extra_args={"seed": seed}, **options)


def _toy(x, sigma, **extra_args):
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return torch.tanh(x) * 0.25 / (0.25 + sigma**2)


@pytest.mark.parametrize("eta", [0.0, 0.4, 1.0, 3.0])
def test_ddim_equals_euler_ancestral(eta):
    """DDIM eq. 12 in sigma space = Euler step to sigma_down + sigma_up noise (derivation in the docstring)."""
    sigmas = schedules.karras(8, 0.03, 14.6).double()
    x = torch.randn(4, 3, dtype=torch.float64) * 14.6
    a = _run("ddim", sigmas, x, model=_toy, eta=eta)
    b = _run("euler_ancestral", sigmas, x, model=_toy, eta=eta)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_ddim_eta0_is_euler():
    sigmas = schedules.karras(8, 0.03, 14.6).double()
    x = torch.randn(4, 3, dtype=torch.float64) * 14.6
    torch.testing.assert_close(_run("ddim", sigmas, x, model=_toy), _run("euler", sigmas, x, model=_toy), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampler_id", ["euler_ancestral", "dpm_2_ancestral"])
def test_ancestral_with_huge_eta_is_lcm(sampler_id):
    """eta so large that sigma_up = sigma_next: the step lands on x0 and all noise is fresh, which is LCM.
    (Core drops the noise in this case and evaluates a clean x0 at sigma_next: the fixed defect.)"""
    sigmas = schedules.karras(8, 0.03, 14.6).double()
    x = torch.randn(4, 3, dtype=torch.float64) * 14.6
    torch.testing.assert_close(_run(sampler_id, sigmas, x, model=_toy, eta=100.0), _run("lcm", sigmas, x, model=_toy),
                               rtol=1e-12, atol=1e-12)


def test_dpm_2_ancestral_eta0_is_dpm_2():
    sigmas = schedules.karras(8, 0.03, 14.6).double()
    x = torch.randn(4, 3, dtype=torch.float64) * 14.6
    torch.testing.assert_close(_run("dpm_2_ancestral", sigmas, x, model=_toy, eta=0.0), _run("dpm_2", sigmas, x, model=_toy),
                               rtol=1e-12, atol=1e-12)


# --- seeds and churn ----------------------------------------------------------------------------

@pytest.mark.parametrize("sampler_id,options", [
    ("euler_ancestral", {}), ("dpm_2_ancestral", {}), ("lcm", {}), ("ddim", {"eta": 0.5}),
    ("euler", {"s_churn": 1.0}), ("heun", {"s_churn": 1.0}), ("dpm_2", {"s_churn": 1.0}), ("heunpp2", {"s_churn": 1.0}),
])
def test_noise_follows_the_seed(sampler_id, options):
    sigmas = schedules.karras(6, 0.03, 14.6).double()
    x = torch.randn(4, 3, dtype=torch.float64) * 14.6
    a, b, c = (_run(sampler_id, sigmas, x, seed=s, model=_toy, **options) for s in (1, 1, 2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_churn_gamma():
    """Karras Alg. 2: gamma = min(S_churn / N, sqrt 2 - 1) inside [S_tmin, S_tmax], else 0."""
    assert churn_gamma(5.0, 10, 1.0, 0.0, S_TMAX_DEFAULT) == pytest.approx(0.1)
    assert churn_gamma(5.0, 10, 80.0, 0.0, S_TMAX_DEFAULT) == pytest.approx(2**0.5 - 1)
    assert churn_gamma(5.0, 10, 1.0, 6.0, S_TMAX_DEFAULT) == 0.0
    assert churn_gamma(5.0, 10, 1.0, 0.0, 4.0) == 0.0
    assert churn_gamma(5.0, 10, 0.0, 0.0, S_TMAX_DEFAULT) == 0.0


@pytest.mark.parametrize("sampler_id", ["euler", "heun", "dpm_2", "heunpp2"])
def test_churn_outside_its_window_is_no_churn(sampler_id):
    sigmas = schedules.karras(6, 0.03, 14.6).double()
    x = torch.randn(4, 3, dtype=torch.float64) * 14.6
    plain = _run(sampler_id, sigmas, x, model=_toy)
    assert torch.equal(_run(sampler_id, sigmas, x, model=_toy, s_churn=5.0, s_tmin=20.0), plain)
    assert not torch.allclose(_run(sampler_id, sigmas, x, model=_toy, s_churn=5.0), plain)


# --- statistics of the stochastic samplers ------------------------------------------------------

def _ancestral_split(sigma, sigma_next, eta):
    """sigma_up^2 = eta^2 sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2 (DDPM posterior variance), capped."""
    up = min(sigma_next, eta * sigma_next * math.sqrt(sigma**2 - sigma_next**2) / sigma)
    return math.sqrt(sigma_next**2 - up**2), up


def _step_maps(sampler_id, sigma, sigma_next, eta):
    """(a, b): one step maps y = x - mu to a y + b z on Gaussian data (D = mu + c y, c = s^2/(s^2+sigma^2))."""
    c = S**2 / (S**2 + sigma**2)
    slope = (1 - c) / sigma  # d = slope * y
    if sigma_next == 0:
        return c, 0.0  # every sampler here lands on x0
    if sampler_id == "lcm":
        return c, sigma_next
    down, up = _ancestral_split(sigma, sigma_next, eta)
    if sampler_id in ("euler_ancestral", "ddim"):
        return 1 + slope * (down - sigma), up
    if sampler_id == "dpm_2_ancestral":
        if down == 0:
            return c, up
        mid = math.sqrt(sigma * down)
        a_mid = 1 + slope * (mid - sigma)
        return 1 + (down - sigma) * a_mid * mid / (S**2 + mid**2), up
    raise ValueError(sampler_id)


@pytest.mark.parametrize("sampler_id,options", [
    ("euler_ancestral", {}), ("euler_ancestral", {"eta": 0.5, "s_noise": 0.9}), ("dpm_2_ancestral", {}),
    ("dpm_2_ancestral", {"eta": 0.7}), ("ddim", {"eta": 0.8}), ("lcm", {}),
])
def test_output_mean_and_variance(sampler_id, options):
    n_samples = 200_000
    sigmas = schedules.karras(10, 0.03, 14.6).double()
    sig = sigmas.tolist()
    eta = options.get("eta", REGISTRY[sampler_id].defaults().get("eta", 0.0))
    s_noise = options.get("s_noise", 1.0)
    mean, var = 0.0, S**2 + sig[0] ** 2  # start from the exact marginal N(mu, s^2 + sigma_0^2)
    for sigma, sigma_next in zip(sig[:-1], sig[1:]):
        a, b = _step_maps(sampler_id, sigma, sigma_next, eta)
        mean, var = a * mean, a * a * var + (b * s_noise) ** 2
    g = torch.Generator().manual_seed(11)
    x = MU + math.sqrt(S**2 + sig[0] ** 2) * torch.randn(n_samples, 1, generator=g, dtype=torch.float64)
    out = _run(sampler_id, sigmas, x, seed=3, **options)
    assert abs(float(out.mean()) - (MU + mean)) <= 5 * math.sqrt(var / n_samples)
    assert abs(float(out.var()) - var) <= 5 * var * math.sqrt(2 / (n_samples - 1))


def test_ancestral_recursion_tends_to_the_data():
    """The recursion used above is not vacuous: with many steps Euler Ancestral's output variance
    tends to the data's s^2 (and with 10 steps it is measurably off, so the test above can tell)."""
    def final_var(n):
        sig = schedules.karras(n, 0.03, 14.6).double().tolist()
        var = S**2 + sig[0] ** 2
        for sigma, sigma_next in zip(sig[:-1], sig[1:]):
            a, b = _step_maps("euler_ancestral", sigma, sigma_next, 1.0)
            var = a * a * var + b * b
        return var
    assert abs(final_var(2000) / S**2 - 1) < 0.01
    assert abs(final_var(10) / S**2 - 1) > 0.05
