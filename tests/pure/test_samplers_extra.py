"""Samplers of ComfyUI-Extra-Samplers (samplers/extra.py): no core equivalent, so mathematics and behaviour.

Model: the exact Gaussian-data denoiser (tests/support/gaussian.py), data N(MU, S^2).
- Orders: where eta = 0 / momentum = 0 reduce a sampler to a deterministic solver, the error against the
  exact PF-ODE solution as steps double (geometric sigmas without the trailing 0, float64) must show the
  registered order within +-0.3.
- Statistics: with the Gaussian denoiser every sampler here is affine in (x_T, noise draws), so its exact
  output law N(m, v) is found by running it on basis inputs (`exact_law`). A seeded Monte-Carlo run (one big
  batch) must match that law within 5-sigma sampling bounds (so the noise is standard, independent, and the
  seed drives it), and the law must approach the data law as steps double.
- The departures from the reference, each named in the sampler's docstring.
"""
from __future__ import annotations

import math

import pytest
import torch

from diffusion_anatomy.samplers import extra
from diffusion_anatomy.samplers._common import res_coefficients
from diffusion_anatomy.samplers.noise import NOISE_TYPES
from diffusion_anatomy.samplers.registry import REGISTRY
from support.gaussian import GaussianDenoiser, exact_law, fitted_order

MU, S = 0.3, 0.5
IDS = ("euler_ancestral_dancing", "dpmpp_3m_sde_dynamic_eta", "lcm_custom_noise", "ttm",
       "clyb_4m_sde_momentumized", "dpmpp_dualsde_momentumized", "res_momentumized")
GAUSSIAN = {"noise_type": "gaussian"}  # the Brownian default needs the noise owner's tree


def geometric(n, sigma_max, sigma_min):
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n + 1, dtype=torch.float64)


def karras(n, sigma_min=0.03, sigma_max=14.6, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


def ode_error(sampler_id, n, sigma_max=10.0, sigma_min=0.1, **options):
    model = GaussianDenoiser(MU, S)
    sigmas = geometric(n, sigma_max, sigma_min)
    x = torch.linspace(-2, 2, 5, dtype=torch.float64).reshape(5, 1, 1, 1) * sigma_max
    out = REGISTRY[sampler_id].fn(model, x, sigmas, **options)
    return (out - model.ode_solution(x, sigma_max, sigma_min)).abs().max().item()


def law(sampler_id, sigmas, **options):
    """The sampler's exact output law N(mean, var) for the exact starting marginal (support.gaussian.exact_law)."""
    mean, var, _ = exact_law(REGISTRY[sampler_id].fn, sigmas, MU, S, **options)
    return mean, var


def monte_carlo(sampler_id, sigmas, n=20000, seed=1, **options):
    g = torch.Generator().manual_seed(12345)
    x = MU + math.sqrt(S**2 + sigmas[0].item() ** 2) * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    out = REGISTRY[sampler_id].fn(GaussianDenoiser(MU, S), x, sigmas, extra_args={"seed": seed}, **options)
    return out.flatten()


def assert_matches_law(samples, mean, var):
    """5-sigma bounds of the sample mean (sd sqrt(var/n)) and sample variance (sd var sqrt(2/(n-1))) of Gaussian data."""
    n = samples.numel()
    assert abs(samples.mean().item() - mean) <= 5 * math.sqrt(var / n)
    assert abs(samples.var().item() - var) <= 5 * var * math.sqrt(2 / (n - 1))


# ---------------------------------------------------------------------------------------------- registry


# the options' defaults against the functions' (and in their choices): test_registry_behaviour.py, for every sampler


def test_node_defaults_of_the_reference():
    d = {k: REGISTRY[k].defaults() for k in IDS}
    assert (d["euler_ancestral_dancing"]["eta"], d["euler_ancestral_dancing"]["eta_dance"], d["euler_ancestral_dancing"]["leap"]) == (1.0, 1.0, 2)
    assert d["dpmpp_3m_sde_dynamic_eta"]["noise_type"] == d["clyb_4m_sde_momentumized"]["noise_type"] == "brownian"
    assert d["ttm"]["eta"] == 1.0 and d["lcm_custom_noise"]["noise_type"] == "gaussian"
    assert all(d[k]["momentum"] == 0.5 for k in ("dpmpp_dualsde_momentumized", "clyb_4m_sde_momentumized", "res_momentumized"))
    assert (d["res_momentumized"]["ita"], d["res_momentumized"]["c2"]) == (0.25, 0.5)


# ---------------------------------------------------------------------------------------------- contract
# callback once per step, short and partial schedules, a single sigma, seeded noise (the reference's ignores the seed):
# test_registry_behaviour.py runs them for every registered sampler, these included


# ---------------------------------------------------------------------------------------------- orders


ORDER_CASES = [
    ("euler_ancestral_dancing", dict(eta=0.0, eta_dance=0.0, leap=3), 1, (10.0, 0.1)),
    ("ttm", dict(eta=0.0, derivative="jvp"), 2, (10.0, 0.1)),
    ("ttm", dict(eta=0.0, derivative="finite_difference"), 2, (10.0, 0.1)),
    ("res_momentumized", dict(ita=0.0, momentum=0.0), 2, (10.0, 0.1)),
    ("res_momentumized", dict(ita=0.0, momentum=0.0, simple_phi_calc=True), 2, (10.0, 0.1)),
    ("dpmpp_dualsde_momentumized", dict(eta=0.0, momentum=0.0), 1, (10.0, 0.1)),
    # 3M: the first two steps are first/second order; starting at sigma >> S, where x0 barely moves, keeps
    # their O(h^2) share below the third-order error over these step counts (asymptotically it would show).
    ("dpmpp_3m_sde_dynamic_eta", dict(eta_max=0.0, eta_min=0.0, **GAUSSIAN), 3, (10.0, 0.3)),
    ("clyb_4m_sde_momentumized", dict(eta=0.0, momentum=0.0, **GAUSSIAN), 3, (10.0, 0.3)),
]


@pytest.mark.parametrize("sampler_id,options,order,span", ORDER_CASES)
def test_deterministic_reduction_has_its_order(sampler_id, options, order, span):
    steps = [8, 16, 32, 64]
    errors = [ode_error(sampler_id, n, *span, **options) for n in steps]
    assert abs(fitted_order(steps, errors) - order) <= 0.3, errors


@pytest.mark.parametrize("sampler_id,options", [
    ("clyb_4m_sde_momentumized", dict(eta=0.0, momentum=0.5, **GAUSSIAN)),
    ("dpmpp_dualsde_momentumized", dict(eta=0.0, momentum=0.5)),
    ("res_momentumized", dict(ita=0.0, momentum=0.5)),
])
def test_momentum_makes_a_first_order_method(sampler_id, options):
    """Momentum blends consecutive updates that differ by O(h^2): an O(h^2) local change, so first order."""
    steps = [16, 32, 64, 128]
    errors = [ode_error(sampler_id, n, **options) for n in steps]
    assert abs(fitted_order(steps, errors) - 1) <= 0.3, errors


def test_momentum_function():
    diff, velocity = torch.tensor([2.0]), torch.tensor([-1.0])
    assert extra.momentum_update(diff, None, 0.5, 1.0) is diff
    assert extra.momentum_update(diff, velocity, 0.0, 0.7) is diff
    w = 0.5 * (0.7 - 0.25)  # m (tau - m/2)
    assert torch.allclose(extra.momentum_update(diff, velocity, 0.5, 0.7), w * velocity + (1 - w) * diff)


def test_dancing_without_noise_is_euler():
    """eta = eta_dance = 0: leap down to sigma[i+leap] along x0, back up to sigma[i+1] along the same x0,
    which lands where one Euler step does: x0 + (x - x0) sigma[i+1]/sigma[i]."""
    model, sigmas = GaussianDenoiser(MU, S), geometric(7, 10.0, 0.1)
    x = torch.linspace(-20, 20, 5, dtype=torch.float64)[:, None, None, None]
    euler = x
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        d = model(euler, sigma.expand(5))
        euler = d + (euler - d) * sigma_next / sigma
    out = extra.sample_euler_ancestral_dancing(model, x, sigmas, eta=0.0, eta_dance=0.0, leap=3)
    assert torch.allclose(out, euler, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- statistics


STAT_CASES = [
    ("euler_ancestral_dancing", {}),
    ("dpmpp_3m_sde_dynamic_eta", GAUSSIAN),
    ("ttm", {}),
    ("clyb_4m_sde_momentumized", dict(momentum=0.0, **GAUSSIAN)),
    ("dpmpp_dualsde_momentumized", dict(momentum=0.0)),
    ("res_momentumized", dict(momentum=0.0)),
]


@pytest.mark.parametrize("sampler_id,options", STAT_CASES + [
    ("clyb_4m_sde_momentumized", GAUSSIAN), ("dpmpp_dualsde_momentumized", {}), ("res_momentumized", {}), ("lcm_custom_noise", {})])
def test_seeded_samples_follow_the_exact_law(sampler_id, options):
    sigmas = karras(12)
    mean, var = law(sampler_id, sigmas, **options)
    assert_matches_law(monte_carlo(sampler_id, sigmas, **options), mean, var)


@pytest.mark.parametrize("sampler_id,options", STAT_CASES)
def test_law_approaches_the_data_as_steps_double(sampler_id, options):
    """Target: a final x0 at sigma_last of x with the exact marginal has variance S^4/(S^2 + sigma_last^2)
    (RES's final call is at the churned sigma (1 + ita) sigma_last); the mean must stay MU (linear, unbiased)."""
    sigma_last = 0.03 * (1 + REGISTRY[sampler_id].defaults().get("ita", 0.0))
    target = S**4 / (S**2 + sigma_last**2)
    errors = []
    for n in (20, 80):
        mean, var = law(sampler_id, karras(n), **options)
        assert mean == pytest.approx(MU, abs=1e-9)
        errors.append(abs(var - target))
    assert errors[1] < errors[0] / 2 and errors[1] < 0.05, errors


def test_lcm_law_is_the_posterior_mean_recursion():
    """LCM: x = D(x, sigma) + sigma_next n. With D = MU + k (x - MU), k = S^2/(S^2 + sigma^2), the variance
    obeys v <- k^2 v + sigma_next^2 per step, and the last step keeps k^2 v."""
    sigmas = karras(9)
    s = sigmas.tolist()
    v = S**2 + s[0] ** 2
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        v = (S**2 / (S**2 + sigma**2)) ** 2 * v + sigma_next**2
    mean, var = law("lcm_custom_noise", sigmas)
    assert (mean, var) == pytest.approx((MU, v), rel=1e-12)


def test_lcm_gaussian_is_cores_seeded_stream():
    """With "gaussian" and a seed the noise is core's default_noise_sampler stream (a torch.Generator on x's device)."""
    model, sigmas = GaussianDenoiser(MU, S), karras(4).float()
    x = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(0)) * 14.6
    g = torch.Generator().manual_seed(42)
    expected = x
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        expected = model(expected, sigma.expand(1))
        if sigma_next > 0:
            expected = expected + sigma_next * torch.randn(x.shape, generator=g)
    assert torch.equal(extra.sample_lcm_custom_noise(model, x, sigmas, extra_args={"seed": 42}), expected)


# ---------------------------------------------------------------------------------------------- departures


def test_dancing_up_depends_on_eta_dance():
    """Departure: the reference's move up (sigma_from < sigma_to) is NaN, which min() turns into x0 + sigma_to n for every
    eta_dance > 0, so eta_dance does nothing there. Here the same seed gives a finite, different picture for each eta_dance up
    to 1 (below the cap sigma_up = sigma_to), and a huge one gives the reference's outcome."""
    run = lambda eta_dance: extra.sample_euler_ancestral_dancing(GaussianDenoiser(MU, S), torch.ones(4, 1, 2, 2) * 14.6,
                                                                 karras(8).float(), eta_dance=eta_dance, extra_args={"seed": 0})
    outs = [run(e) for e in (0.25, 0.5, 1.0, 1e6)]
    assert all(torch.isfinite(o).all() for o in outs)
    assert all(not torch.allclose(a, b) for i, a in enumerate(outs) for b in outs[i + 1:])


def test_dance_step_interpolates_ode_forward_process_and_reference():
    a, b = 0.4, 1.1
    assert extra.dance_step(a, b, 0.0) == (b, 0.0)  # ODE backwards, as the reference at eta_dance = 0
    down, up = extra.dance_step(a, b, 1.0)  # forward noising: keep x, add sqrt(b^2 - a^2) noise
    assert down == pytest.approx(a) and up == pytest.approx(math.sqrt(b * b - a * a))
    assert extra.dance_step(a, b, 1e6) == (0.0, b)  # the reference's NaN outcome x0 + sigma_to n


def test_dance_with_eta_dance_one_keeps_the_exact_marginal():
    """eta_dance = 1 is the forward process: the sampler's own move up takes x ~ N(MU, S^2 + a^2) to exactly N(MU, S^2 + b^2).
    Sigmas (a, b, a): the leap of step 0 goes from a to a (no move with eta = 0), then the dance goes up to b; x is read at the
    start of step 1. Other eta_dance values give another variance, so the check tells them apart."""
    a, b = 0.4, 1.1
    sigmas = torch.tensor([a, b, a], dtype=torch.float64)
    for eta_dance in (1.0, 0.5, 2.0):
        mean, var, draws = exact_law(extra.sample_euler_ancestral_dancing, sigmas, MU, S, at_step=1, eta=0.0, eta_dance=eta_dance, leap=2)
        assert draws == 1 and mean == pytest.approx(MU, abs=1e-12)
        assert (var == pytest.approx(S**2 + b**2, rel=1e-12)) == (eta_dance == 1.0), (eta_dance, var)


def test_dynamic_eta_schedule_keeps_the_reference_progress():
    """eta_i = eta_min + (eta_max - eta_min)(1 + cos(pi i/(len(sigmas)-1)))/2: starts at eta_max and, as in the
    reference, the last step (i = steps - 1) stops short of eta_min."""
    steps = 10
    etas = [extra.cosine_eta(i, steps + 1, 1.0, 0.2) for i in range(steps)]
    assert etas[0] == 1.0 and all(e1 > e2 for e1, e2 in zip(etas, etas[1:]))
    assert etas[-1] == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi * 9 / 10)) / 2) and etas[-1] > 0.2


def test_dynamic_eta_with_constant_eta_is_3m_sde():
    """eta_max = eta_min: the cosine does nothing; with noise switched off the step is DPM++(3M): check the
    first two steps by hand (step 1: first-order exponential step; step 2: plus phi_2 (x0 - x0_1) h/h_1)."""
    model, sigmas = GaussianDenoiser(MU, S), geometric(2, 4.0, 1.0)
    x = torch.tensor([3.0, -2.0], dtype=torch.float64)[:, None, None, None]
    zero = lambda s, t: torch.zeros_like(x)
    out = extra.sample_dpmpp_3m_sde_dynamic_eta(model, x, sigmas, eta_max=0.5, eta_min=0.5, noise_sampler=zero)
    s = sigmas.tolist()
    y = x
    d_prev, h_prev = None, None
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        d = model(y, torch.full((2,), sigma, dtype=torch.float64))
        h = math.log(sigma / sigma_next)
        he = 1.5 * h
        y = math.exp(-he) * y + (1 - math.exp(-he)) * d
        if d_prev is not None:
            y = y + (math.expm1(-he) / he + 1) * (d - d_prev) * h / h_prev
        d_prev, h_prev = d, h
    assert torch.allclose(out, y, rtol=1e-12)


class SigmaSpy(GaussianDenoiser):
    def __init__(self):
        super().__init__(MU, S)
        self.sigmas = []

    def __call__(self, x, sigma, **extra_args):
        self.sigmas.append(sigma[0].item())
        return super().__call__(x, sigma, **extra_args)


def test_res_final_denoise_uses_the_last_sigma():
    """Departure: the reference's denoise-to-zero call uses the previous sigma (the loop's stale variable) and
    the unchurned sigma; here the last call is at (1 + ita) sigma_last, the level of the churned x."""
    sigmas = torch.tensor([8.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    spy = SigmaSpy()
    x = torch.ones(3, 1, 1, 1, dtype=torch.float64) * 8
    extra.sample_res_momentumized(spy, x, sigmas, ita=0.25, extra_args={"seed": 0})
    assert len(spy.sigmas) == 2 * 2 + 1
    assert spy.sigmas[-1] == pytest.approx(0.5 * 1.25)
    assert spy.sigmas[0] == pytest.approx(8 * 1.25)
    # without churn the final value is x0 at sigma_last of the RES result there
    spy = SigmaSpy()
    at_last = extra.sample_res_momentumized(spy, x, sigmas[:-1], ita=0.0, momentum=0.0)
    final = extra.sample_res_momentumized(spy, x, sigmas, ita=0.0, momentum=0.0)
    assert torch.allclose(final, spy(at_last, torch.full((3,), 0.5, dtype=torch.float64)), rtol=1e-12)
    # a schedule with one step (the reference raises NameError) denoises once
    assert torch.allclose(extra.sample_res_momentumized(spy, x, sigmas[[0, 3]], ita=0.0), spy(x, torch.full((3,), 8.0, dtype=torch.float64)))


@pytest.mark.parametrize("h", [1e-3, 0.1, 1.0, 5.0])
def test_res_phi_forms_agree(h):
    for c2 in (0.5, 1.0):
        assert res_coefficients(h, c2, True) == pytest.approx(res_coefficients(h, c2, False), rel=1e-6)
    a2_1, b1, b2 = res_coefficients(h, 0.5, True)
    assert b1 + b2 == pytest.approx(-math.expm1(-h) / h)  # the weights integrate a constant x0 exactly


# ---------------------------------------------------------------------------------------------- TTM


def test_ttm_jvp_is_the_derivative_along_the_ode():
    """D = MU + k (x - MU), k = S^2/(S^2 + sigma^2); along the ODE dx/dlambda = D - x, dsigma/dlambda = -sigma:
    dD/dlambda = k (D - x) + (x - MU) dk/dsigma (-sigma), dk/dsigma = -2 sigma S^2/(S^2 + sigma^2)^2."""
    model, sigma = GaussianDenoiser(MU, S), 1.7
    x = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)[:, None, None, None]
    s_in = x.new_ones(3)
    d = model(x, sigma * s_in)
    k = S**2 / (S**2 + sigma**2)
    expected = k * (d - x) + (x - MU) * (2 * sigma**2 * S**2 / (S**2 + sigma**2) ** 2)
    got = extra.denoised_derivative_jvp(model, x, torch.tensor(sigma, dtype=torch.float64), d, s_in, {})
    assert torch.allclose(got, expected, rtol=1e-12)
    fd = extra.denoised_derivative_fd(model, x, sigma, d, 1e-6, s_in, {})
    assert torch.allclose(fd, expected, rtol=1e-5)


class NoForwardAD(torch.autograd.Function):
    """An op with a backward but no forward-mode formula, as in many wrapped models."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad


def test_ttm_falls_back_to_finite_differences():
    base = GaussianDenoiser(MU, S)
    model = lambda x, sigma, **kw: NoForwardAD.apply(base(x, sigma))
    x, sigmas = torch.linspace(-10, 10, 4, dtype=torch.float64)[:, None, None, None], geometric(6, 10.0, 0.1)
    with pytest.raises(RuntimeError, match="forward-mode"):
        extra.sample_ttm(model, x, sigmas, eta=0.0, derivative="jvp")
    auto = extra.sample_ttm(model, x, sigmas, eta=0.0, derivative="auto")
    assert torch.equal(auto, extra.sample_ttm(model, x, sigmas, eta=0.0, derivative="finite_difference"))
    # where jvp works, auto is the jvp
    assert torch.equal(extra.sample_ttm(base, x, sigmas, eta=0.0), extra.sample_ttm(base, x, sigmas, eta=0.0, derivative="jvp"))


@pytest.mark.parametrize("noise_type", [t for t in NOISE_TYPES if t != "gaussian"])
@pytest.mark.parametrize("sampler_id", ["dpmpp_3m_sde_dynamic_eta", "res_momentumized", "euler_ancestral_dancing"])
def test_other_noise_types_are_seeded(sampler_id, noise_type):
    """Every noise type of samplers/noise.py reaches these samplers seeded: the same seed, the same picture; another, another."""
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 14.6
    run = lambda seed: REGISTRY[sampler_id].fn(GaussianDenoiser(MU, S), x, karras(5).float(), extra_args={"seed": seed}, noise_type=noise_type)
    first = run(4)
    assert torch.isfinite(first).all() and torch.equal(first, run(4)) and not torch.equal(first, run(5))


def test_dualsde_stage_fraction_follows_the_reference_shadowing():
    """Quirk kept: the reference's `r = h_1 / h` (one-history branch, step 1) overwrites the option r, so the
    stage of step i >= 2 sits at sigma_i e^(-r' h_i) with r' = h_0/h_1; steps 0 and 1 use the option."""
    sigmas = torch.tensor([10.0, 6.0, 3.0, 1.2, 0.5], dtype=torch.float64)
    s = sigmas.tolist()
    h = [math.log(a / b) for a, b in zip(s[:-1], s[1:])]
    spy = SigmaSpy()
    extra.sample_dpmpp_dualsde_momentumized(spy, torch.ones(2, 1, 1, 1, dtype=torch.float64) * 10, sigmas, r=0.3, extra_args={"seed": 0})
    stages = spy.sigmas[1::2]
    expected = [s[i] * math.exp(-(0.3 if i < 2 else h[0] / h[1]) * h[i]) for i in range(4)]
    assert stages == pytest.approx(expected, rel=1e-12)


def test_ttm_falls_back_for_attention_models():
    """The fused kernels of scaled_dot_product_attention (the U-Nets' attention) have no forward-mode AD
    (torch 2.14 raises NotImplementedError): 'jvp' gives the clear error, 'auto' runs the finite difference."""
    base = GaussianDenoiser(MU, S)

    def model(x, sigma, **kw):
        tokens = x.flatten(2).transpose(1, 2)[:, None].contiguous()  # b heads=1 (h w) c: the fused kernel
        attended = torch.nn.functional.scaled_dot_product_attention(tokens, tokens, tokens)
        return base(x, sigma) + 1e-3 * attended[:, 0].transpose(1, 2).reshape(x.shape)

    x, sigmas = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 10, geometric(4, 10.0, 0.1).float()
    with pytest.raises(RuntimeError, match="forward-mode"):
        extra.sample_ttm(model, x, sigmas, eta=0.0, derivative="jvp")
    assert torch.equal(extra.sample_ttm(model, x, sigmas, eta=0.0), extra.sample_ttm(model, x, sigmas, eta=0.0, derivative="finite_difference"))
