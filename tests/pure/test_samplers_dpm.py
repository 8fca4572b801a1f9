"""DPM-Solver and DPM-Solver++ samplers against exact Gaussian-data solutions.

Deterministic parts: errors against the exact PF-ODE solution as steps double give the convergence order
(geometric sigmas without the trailing 0, float64). Stochastic samplers: with the linear Gaussian denoiser a
sampler's output is affine in the initial noise and the per-step noises, so its exact output distribution is
computable from deterministic runs; a big seeded batch must match it within 5 standard errors.
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch
from support.gaussian import GaussianDenoiser, fitted_order

from diffusion_anatomy.samplers import dpm_solver, dpm_solver_pp  # noqa: F401  (registers)
from diffusion_anatomy.samplers.registry import REGISTRY

MU, S = 0.3, 0.5
SIGMA_MAX, SIGMA_MIN = 10.0, 0.1
IDS = ["dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "dpmpp_2s_ancestral", "dpm_fast", "dpm_adaptive"]


def geometric(n: int, sigma_max: float = SIGMA_MAX, sigma_min: float = SIGMA_MIN, zero: bool = False) -> torch.Tensor:
    sigmas = [sigma_max * (sigma_min / sigma_max) ** (i / n) for i in range(n + 1)]
    return torch.tensor(sigmas + [0.0] * zero, dtype=torch.float64)


def start(sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    return torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None] * sigma_max


def run(sampler_id: str, x, sigmas, model=None, **options):
    info = REGISTRY[sampler_id]
    model = model or GaussianDenoiser(MU, S)
    return info.fn(model, x.clone(), sigmas, **{**info.fixed_options, **options})


# --- registry -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler_id", IDS)
def test_registry_entry_matches_function(sampler_id):
    info = REGISTRY[sampler_id]
    params = inspect.signature(info.fn).parameters
    assert list(params)[:3] == ["model", "x", "sigmas"]
    for option in info.options:
        assert params[option.name].default == option.default, option.name
    for name in info.fixed_options:
        assert name in params and name not in {o.name for o in info.options}
    assert info.core_id == sampler_id


def test_variants_share_one_function():
    assert REGISTRY["dpmpp_2m_sde"].fn is REGISTRY["dpmpp_2m_sde_heun"].fn
    assert REGISTRY["dpmpp_3m_sde"].fn is REGISTRY["dpmpp_3m_sde_gpu"].fn
    assert REGISTRY["dpmpp_2m_sde_heun"].fixed_options == {"solver_type": "heun"}
    assert REGISTRY["dpmpp_3m_sde_gpu"].fixed_options == {"noise_device": "gpu"}


# --- convergence orders ----------------------------------------------------------------------------------

ORDER_CASES = [
    ("dpmpp_2m", {}, 2),
    ("dpmpp_2m_sde", {"eta": 0.0}, 2),  # eta = 0: the midpoint variant is DPM-Solver++(2M) itself
    ("dpmpp_2m_sde_heun", {"eta": 0.0}, 2),
    ("dpmpp_2s_ancestral", {"eta": 0.0}, 2),
    ("dpmpp_3m_sde", {"eta": 0.0}, 2),  # measured 2, not 3: see sample_dpmpp_3m_sde's docstring
]


@pytest.mark.parametrize("sampler_id,options,order", ORDER_CASES)
def test_order_of_convergence(sampler_id, options, order):
    steps, errors = [16, 32, 64, 128], []
    for n in steps:
        model = GaussianDenoiser(MU, S)
        x = run(sampler_id, start(), geometric(n), model, **options)
        errors.append(float((x - model.ode_solution(start(), SIGMA_MAX, SIGMA_MIN)).abs().max()))
    assert abs(fitted_order(steps, errors) - order) < 0.3, errors


def test_registered_orders():
    """What the order tests measure, as registered (3M: see its docstring; DPM-Fast: 3 when n mod 3 = 2)."""
    assert {i: REGISTRY[i].order for i in IDS} == {
        "dpmpp_2m": 2, "dpmpp_2m_sde": 2, "dpmpp_2m_sde_heun": 2, "dpmpp_3m_sde": 2, "dpmpp_3m_sde_gpu": 2,
        "dpmpp_2s_ancestral": 2, "dpm_fast": 3, "dpm_adaptive": 3,
    }


def test_dpmpp_3m_second_difference_weight_is_halved():
    """Why 3M measures order 2: on D(lambda) = cos(3 lambda) (no x dependence, so the step is a quadrature of
    sigma_next * int e^lambda D dlambda) the 3M update's local error falls like h^3, the same update with the
    d2 term doubled like h^4. Halving h: error ratios -> 8 and -> 16."""
    def local_error(h: float, d2_weight: float) -> float:
        lam = 0.3
        antiderivative = lambda l: math.exp(l) * (math.cos(3 * l) + 3 * math.sin(3 * l)) / 10  # noqa: E731
        exact = math.exp(-(lam + h)) * (antiderivative(lam + h) - antiderivative(lam))
        d0, d1_, d2_ = (math.cos(3 * (lam - k * h)) for k in range(3))
        d1_0, d1_1 = d0 - d1_, d1_ - d2_
        d1, d2 = d1_0 + (d1_0 - d1_1) / 2, (d1_0 - d1_1) / 2
        phi_2 = math.expm1(-h) / h + 1
        phi_3 = phi_2 / h - 0.5
        return abs(exact - (-math.expm1(-h) * d0 + phi_2 * d1 - d2_weight * phi_3 * d2))

    as_core = local_error(0.0125, 1) / local_error(0.00625, 1)
    doubled = local_error(0.0125, 2) / local_error(0.00625, 2)
    assert 7 < as_core < 9 and 14 < doubled < 18


@pytest.mark.parametrize("remainder,order", [(2, 3), (0, 2)])
def test_dpm_fast_order(remainder, order):
    """n model calls -> floor(n/3)+1 steps uniform in t. The last step has order n mod 3 (or 1 when n mod 3 = 0
    after an order-2 step): n mod 3 = 2 keeps order 3, a final first-order step (local error h^2) gives 2."""
    calls = [3 * k + remainder for k in (11, 23, 47, 95)]
    steps, errors = [n // 3 + 1 for n in calls], []
    for n in calls:
        model = GaussianDenoiser(MU, S)
        x = run("dpm_fast", start(), geometric(n - 1, zero=True), model)  # n + 1 sigmas ending in 0: n calls
        assert model.calls == n
        errors.append(float((x - model.ode_solution(start(), SIGMA_MAX, SIGMA_MIN)).abs().max()))
    assert abs(fitted_order(steps, errors) - order) < 0.3, errors


def test_dpm_fast_takes_cores_sigma_range_and_stops_at_sigma_min():
    """Only sigmas[0], the last nonzero sigma and the count matter (ComfyUI's wrapper); the result is x at
    sigma_min, not at 0: with 143 calls it is within 1e-4 of the exact x(sigma_min) (order 3, see above),
    while x(0) lies over 1e-3 away."""
    model = GaussianDenoiser(MU, S)
    sigmas = torch.tensor([SIGMA_MAX, 7.0, 1.0, 0.5, SIGMA_MIN, 0.0], dtype=torch.float64)
    other = torch.tensor([SIGMA_MAX, 2.0, 1.5, 0.2, 0.15, SIGMA_MIN], dtype=torch.float64)  # no final 0
    assert torch.equal(run("dpm_fast", start(), sigmas, model), run("dpm_fast", start(), other))
    assert model.calls == 5
    x = run("dpm_fast", start(), geometric(142, zero=True))
    at_sigma_min = model.ode_solution(start(), SIGMA_MAX, SIGMA_MIN)
    at_zero = model.ode_solution(start(), SIGMA_MAX, 0.0)
    assert float((x - at_sigma_min).abs().max()) < 1e-4 < 1e-3 < float((x - at_zero).abs().max())


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_accuracy_follows_rtol(order):
    """The controller accepts a step when the scaled local error estimate ||x_low - x_high|| / delta is about 1 or
    less, delta ~ rtol |x|. For Gaussian data the ODE contracts errors (the solution map scales by
    sqrt((s^2 + sigma_b^2)/(s^2 + sigma_a^2)) <= 1), so the global error is at most the sum of accepted local
    errors: <= steps * rtol * max|x| (the kept x_high is more accurate than the estimate's x_low). Tighter
    rtol must also buy accuracy: 1000x tighter -> at least 100x smaller error."""
    errors = []
    for rtol in (1e-2, 1e-5):
        model, steps = GaussianDenoiser(MU, S), []
        x = run("dpm_adaptive", start(), geometric(4, zero=True), model, order=order, rtol=rtol, atol=1e-9, callback=steps.append)
        error = float((x - model.ode_solution(start(), SIGMA_MAX, SIGMA_MIN)).abs().max())
        assert error <= len(steps) * rtol * float(start().abs().max())
        assert [c["i"] for c in steps] == list(range(len(steps)))  # once per accepted step
        assert len(steps) * order <= model.calls
        errors.append(error)
    assert errors[1] < errors[0] / 100


def test_dpm_adaptive_rejects_bad_order():
    with pytest.raises(ValueError):
        run("dpm_adaptive", start(), geometric(4, zero=True), order=4)


# --- common contract --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler_id", IDS)
def test_contract(sampler_id):
    """Short sigmas return x; sigmas ending in 0 give a finite result near the data; the callback fires once per step."""
    x = start(1.0)
    assert torch.equal(run(sampler_id, x, torch.tensor([1.0], dtype=torch.float64)), x)
    calls = []
    sigmas = geometric(6, 14.6, 0.03, zero=True)
    out = run(sampler_id, start(14.6), sigmas, callback=calls.append, extra_args={"seed": 1})
    assert torch.isfinite(out).all() and out.shape == x.shape
    if sampler_id == "dpm_fast":  # once per solver step: 6 calls -> orders (3, 2, 1)
        assert [c["i"] for c in calls] == [0, 1, 2]
    elif sampler_id != "dpm_adaptive":  # (adaptive: tested with its accuracy)
        assert [c["i"] for c in calls] == list(range(len(sigmas) - 1))
    assert all(set(c) == {"x", "i", "sigma", "sigma_hat", "denoised"} for c in calls)


@pytest.mark.parametrize("sampler_id", ["dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "dpmpp_2s_ancestral"])
def test_seeded_and_per_sample_seeds(sampler_id):
    """extra_args['seed'] makes the run reproducible; a list of seeds (Brownian samplers) seeds each sample."""
    sigmas = geometric(8, zero=True)
    x = start()[:2]
    a = run(sampler_id, x, sigmas, extra_args={"seed": 3})
    assert torch.equal(a, run(sampler_id, x, sigmas, extra_args={"seed": 3}))
    assert not torch.allclose(a, run(sampler_id, x, sigmas, extra_args={"seed": 4}))
    if sampler_id != "dpmpp_2s_ancestral":
        both = run(sampler_id, x, sigmas, extra_args={"seed": [5, 6]})
        for k, seed in enumerate([5, 6]):
            torch.testing.assert_close(both[k : k + 1], run(sampler_id, x[k : k + 1], sigmas, extra_args={"seed": seed}))


# --- stochastic samplers: exact output distribution ----------------------------------------------------------

def exact_moments(sampler_id: str, sigmas: torch.Tensor, sigma_start: float, **options):
    """Mean and variance of the output for x_start ~ N(0, sigma_start^2) and unit noises.

    With D linear in x, out = a x_start + b + sum_k c_k z_k, z_k the k-th noise draw (independent N(0,1) per
    element: fresh gaussians, or a Brownian path's increments over disjoint intervals). a, b, c_k come from
    deterministic runs with a probe noise sampler that returns 1 at draw k and 0 elsewhere.
    """
    def probe_run(x_start: float, hot: int | None) -> tuple[float, int]:
        draws = []

        def probe(sigma, sigma_next):
            draws.append(None)
            return torch.full((1, 1), float(len(draws) - 1 == hot), dtype=torch.float64)

        x = torch.full((1, 1), x_start, dtype=torch.float64)
        return float(run(sampler_id, x, sigmas, noise_sampler=probe, **options)), len(draws)

    b, n_draws = probe_run(0.0, None)
    a = probe_run(1.0, None)[0] - b
    c = [probe_run(0.0, k)[0] - b for k in range(n_draws)]
    assert n_draws >= len(sigmas) - 3  # the noise is really drawn each step
    return b, a * a * sigma_start**2 + sum(ck * ck for ck in c)


@pytest.mark.parametrize("sampler_id,options", [
    ("dpmpp_2m_sde", {}), ("dpmpp_2m_sde_heun", {}), ("dpmpp_3m_sde", {}), ("dpmpp_3m_sde", {"eta": 0.5}),
    ("dpmpp_2m_sde", {"s_noise": 1.3}), ("dpmpp_2s_ancestral", {}),
])
def test_output_distribution(sampler_id, options):
    sigmas = geometric(12, 14.6, 0.03, zero=True)
    mean, var = exact_moments(sampler_id, sigmas, 14.6, **options)
    if options.get("s_noise", 1) == 1:  # the sampler targets N(mu, s^2); 12 steps leave a small bias
        assert abs(mean - MU) < 0.02 and abs(math.sqrt(var) / S - 1) < 0.1
    n = 10_000
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 14.6
    out = run(sampler_id, x, sigmas, extra_args={"seed": 123}, **options)
    assert abs(float(out.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(out.var()) - var) < 5 * var * math.sqrt(2 / n)


def test_noise_device_is_checked():
    with pytest.raises(ValueError):
        run("dpmpp_3m_sde", start(), geometric(4, zero=True), noise_device="tpu")
    with pytest.raises(ValueError):
        run("dpmpp_2m_sde", start(), geometric(4, zero=True), solver_type="rk4")
