"""Supreme (samplers/supreme.py): every step method's order on the exact Gaussian PF-ODE with the
enhancements off, the method selection quirks of the reference, the enhancements and noise modulations,
statistics of the ancestral sampler, and the departures named in the module docstring."""
from __future__ import annotations

import inspect
import math

import pytest
import torch

from diffusion_anatomy.samplers import supreme
from diffusion_anatomy.samplers.registry import REGISTRY
from support.gaussian import GaussianDenoiser, exact_law, fitted_order

MU, S = 0.3, 0.5
OFF = dict(eta=0.0, centralization=0.0, normalization=0.0, edge_enhancement=0.0, perphist=0.0, substeps=1, noise_modulation="none")
# Orders on dx/dsigma: classical tableaux; DPM-Solver-k is order k; the reversible corrections are O(dt^3) or
# smaller, so they keep Heun's 2 and Bogacki-Shampine's 3; reversible_heun_1s mixes x0 of two sigmas (O(h)
# slope error: first order); adaptive_rk's stage coefficients equal its weights (first order at every order).
EXPECTED_ORDER = {
    "euler": 1, "dpm_1s": 1, "dpm_2s": 2, "dpm_3s": 3, "bogacki_shampine": 3, "rk4": 4, "rkf45": 4, "reversible_heun": 2,
    "reversible_heun_1s": 1, "reversible_bogacki_shampine": 3, "trapezoidal": 2, "RES": 2, "adaptive_rk": 1,
}


def geometric(n, sigma_max=10.0, sigma_min=0.1):
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n + 1, dtype=torch.float64)


def karras(n, sigma_min=0.03, sigma_max=14.6, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


def x_start(sigma_max=10.0):
    return torch.linspace(-2, 2, 5, dtype=torch.float64).reshape(5, 1, 1, 1) * sigma_max


def ode_error(n, **options):
    model, sigmas, x = GaussianDenoiser(MU, S), geometric(n), x_start()
    out = supreme.sample_supreme(model, x, sigmas, **{**OFF, **options})
    return (out - model.ode_solution(x, 10.0, 0.1)).abs().max().item()


def test_registry_lists_every_method_and_the_node_defaults():
    info = REGISTRY["supreme"]
    options = {o.name: o for o in info.options}
    assert set(options["step_method"].choices) == set(EXPECTED_ORDER) | {"dynamic"}
    assert set(options["substep_method"].choices) == set(EXPECTED_ORDER) - {"adaptive_rk"}
    assert set(options["noise_modulation"].choices) == {"none", "intensity", "frequency", "spectral_signum"}
    d = info.defaults()
    assert (d["centralization"], d["normalization"], d["edge_enhancement"], d["perphist"], d["substeps"]) == (0.02, 0.01, 0.05, 0.0, 2)
    assert (d["noise_modulation"], d["modulation_strength"], d["modulation_dims"], d["reversible_eta"]) == ("intensity", 2.0, 3, 1.0)
    params = inspect.signature(info.fn).parameters
    assert all(params[name].default == o.default for name, o in options.items())


@pytest.mark.parametrize("method", sorted(EXPECTED_ORDER))
def test_step_method_converges_at_its_order(method):
    steps = [32, 64, 128, 256]
    errors = [ode_error(n, step_method=method) for n in steps]
    assert abs(fitted_order(steps, errors) - EXPECTED_ORDER[method]) <= 0.3, errors


@pytest.mark.parametrize("method", sorted(set(EXPECTED_ORDER) - {"adaptive_rk"}))
def test_substep_method_converges_at_its_order(method):
    """substeps = 2 averages RKF45 (step method) with `method` run from the same x: error ~ (e_rkf45 + e_method)/2,
    so the order is min(4, the method's)."""
    steps = [32, 64, 128, 256]
    errors = [ode_error(n, step_method="rkf45", substep_method=method, substeps=2) for n in steps]
    assert abs(fitted_order(steps, errors) - min(4, EXPECTED_ORDER[method])) <= 0.3, errors


def test_substeps_average_the_substep_methods():
    """One step from 10 to 5: substep 0 is RKF45 (first step), substep 1 Euler; x = their mean."""
    model, x = GaussianDenoiser(MU, S), x_start()
    sigmas = torch.tensor([10.0, 5.0], dtype=torch.float64)
    rkf = supreme.sample_supreme(model, x, sigmas, **OFF)
    d = model(x, torch.full((5,), 10.0, dtype=torch.float64))
    euler = x + (x - d) / 10.0 * (5.0 - 10.0)
    both = supreme.sample_supreme(model, x, sigmas, **{**OFF, "substeps": 2})
    assert torch.allclose(both, (rkf + euler) / 2, rtol=1e-14)


def test_first_step_is_rkf45_whatever_the_method():
    model, x = GaussianDenoiser(MU, S), x_start()
    sigmas = torch.tensor([10.0, 5.0], dtype=torch.float64)
    results = [supreme.sample_supreme(model, x, sigmas, **{**OFF, "step_method": m}) for m in ("euler", "RES", "rkf45", "dynamic")]
    assert all(torch.equal(r, results[0]) for r in results)
    assert not torch.allclose(results[0], x + (x - model(x, torch.full((5,), 10.0, dtype=torch.float64))) * -0.5)


@pytest.mark.parametrize("change,method,order", [(0.005, "rkf45", 6), (0.02, "rk4", 4), (0.05, "bogacki_shampine", 3),
                                                 (0.1, "trapezoidal", 2), (0.5, "euler", 1)])
def test_dynamic_method_choice(change, method, order):
    pick = lambda step, k=0, first=False: supreme.choose_method(step, "trapezoidal", k, first, lambda: change)
    assert pick("dynamic") == (method, order)
    assert pick("adaptive_rk") == ("adaptive_rk", min(order, 4))
    assert pick("RES") == ("RES", 1)
    assert pick("dynamic", first=True) == ("rkf45", 6)
    assert pick("dynamic", k=1) == ("trapezoidal", 1)


def test_dynamic_is_rkf45_where_the_slope_barely_changes():
    """On a fine schedule (h = log(10)/256) every step's relative slope change is < 1e-2: dynamic runs RKF45 throughout."""
    model, x, sigmas = GaussianDenoiser(MU, S), x_start(), geometric(256, 10.0, 1.0)
    dynamic = supreme.sample_supreme(model, x, sigmas, **{**OFF, "step_method": "dynamic"})
    assert torch.equal(dynamic, supreme.sample_supreme(model, x, sigmas, **{**OFF, "step_method": "rkf45"}))
    coarse = geometric(4)
    assert not torch.equal(supreme.sample_supreme(model, x, coarse, **{**OFF, "step_method": "dynamic"}),
                           supreme.sample_supreme(model, x, coarse, **{**OFF, "step_method": "rkf45"}))


def test_reference_bogacki_shampine_stage_is_first_order():
    """Departure 1: the reference's third stage x + 3/4 k1 + 1/4 k2 at sigma + 3/4 dt (row sum 1 != c3) is
    first order; the tableau's x + 3/4 k2 (used here) is third order (see test_step_method_converges_at_its_order)."""
    ref = supreme.Tableau(c=(0, 1 / 2, 3 / 4), a=((), (1 / 2,), (3 / 4, 1 / 4)), b=(2 / 9, 1 / 3, 4 / 9))
    model = GaussianDenoiser(MU, S)

    def run(n, tableau):
        sigmas, x = geometric(n).tolist(), x_start()
        s_in = x.new_ones(5)
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            ctx = supreme.StepContext(lambda z, s: model(z, s * s_in), sigma, sigma_next, sigma_next, sigma_next, x, None)
            x = supreme.explicit_rk(ctx, x, model(x, sigma * s_in), tableau)[0]
        return (x - model.ode_solution(x_start(), 10.0, 0.1)).abs().max().item()

    steps = [32, 64, 128, 256]
    assert abs(fitted_order(steps, [run(n, ref) for n in steps]) - 1) <= 0.3
    assert abs(fitted_order(steps, [run(n, supreme.BOGACKI_SHAMPINE) for n in steps]) - 3) <= 0.3


# ---------------------------------------------------------------------------------------------- statistics


def law(sigmas, **options):
    """Output law of Supreme (enhancements and modulation off: affine in the start and the noise), support.gaussian.exact_law."""
    return exact_law(supreme.sample_supreme, sigmas, MU, S, max_draws=200, **options)


ANCESTRAL = {**OFF, "eta": 1.0}


@pytest.mark.parametrize("method", ["euler", "dpm_2s", "RES"])
def test_ancestral_law_seeded_samples_and_convergence(method):
    sigmas = karras(10)
    mean, var, draws = law(sigmas, step_method=method, **ANCESTRAL)
    assert draws == 9  # departure 4: one noise per step into sigma > 0
    n = 20000
    g = torch.Generator().manual_seed(5)
    x = MU + math.sqrt(S**2 + 14.6**2) * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    out = supreme.sample_supreme(GaussianDenoiser(MU, S), x, sigmas, extra_args={"seed": 3}, step_method=method, **ANCESTRAL).flatten()
    assert abs(out.mean().item() - mean) <= 5 * math.sqrt(var / n)  # 5-sigma bounds for Gaussian samples
    assert abs(out.var().item() - var) <= 5 * var * math.sqrt(2 / (n - 1))
    # the law approaches x0 of the exact marginal at sigma_last: N(MU, S^4 / (S^2 + sigma_last^2))
    target = S**4 / (S**2 + 0.03**2)
    coarse, fine = (abs(law(karras(k), step_method=method, **ANCESTRAL)[1] - target) for k in (20, 80))
    assert fine < coarse / 2


def test_noise_is_seeded_with_every_option_on():
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 14.6
    run = lambda seed: supreme.sample_supreme(GaussianDenoiser(MU, S), x, karras(4).float(), extra_args={"seed": seed}, perphist=0.3)
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


# ---------------------------------------------------------------------------------------------- enhancements


def test_filters_equal_kornias():
    kornia = pytest.importorskip("kornia")
    g = torch.Generator().manual_seed(0)
    image, guide = torch.randn(2, 4, 9, 7, generator=g, dtype=torch.float64), torch.randn(2, 4, 9, 7, generator=g, dtype=torch.float64) * 0.1
    assert torch.allclose(supreme.gaussian_blur2d(image), kornia.filters.gaussian_blur2d(image, (3, 3), (1.5, 1.5)), rtol=1e-12, atol=1e-12)
    assert torch.allclose(supreme.unsharp_mask(image), kornia.filters.unsharp_mask(image, (3, 3), (1.5, 1.5)), rtol=1e-12, atol=1e-12)
    ours = supreme.joint_bilateral_blur(image, guide)
    theirs = kornia.filters.joint_bilateral_blur(image, guide, (3, 3), 0.1, (1.5, 1.5))
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def cfg(**kw):
    return supreme.Enhancements(**{"centralization": 0.0, "normalization": 0.0, "edge_enhancement": 0.0, "perphist": 0.0, "steps_per_sigma": 2, **kw})


def test_centralization_and_normalization():
    g = torch.Generator().manual_seed(1)
    d, x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64) + 2, torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    sigma = 4.0
    out = supreme.enhance(d, x, sigma, 1.0, None, cfg(centralization=0.1))
    mean = d.mean(dim=(-2, -1))
    assert torch.allclose(out.mean(dim=(-2, -1)), mean * (1 - 0.1 / 2 * sigma**0.5), rtol=1e-12)
    out = supreme.enhance(d, x, sigma, 1.0, None, cfg(normalization=2 * 2 / sigma**0.5 / 2))  # full strength: unit std
    assert torch.allclose(out.std(dim=(-2, -1)), torch.ones(2, 3, dtype=torch.float64), rtol=1e-12)


def test_perphist_adds_the_perpendicular_part_per_sample():
    g = torch.Generator().manual_seed(2)
    d, old, x = (torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    out = supreme.enhance(d, x, 2.0, 1.0, old, cfg(perphist=1.0))
    a = 2 * x - d
    assert torch.allclose(supreme.per_sample_dot(out - d, a), torch.zeros(3, 1, 1, 1, dtype=torch.float64), atol=1e-10)
    assert not torch.allclose(out, d)
    alone = supreme.enhance(d[1:2], x[1:2], 2.0, 1.0, old[1:2], cfg(perphist=1.0))  # departure 3: batch-independent
    assert torch.allclose(out[1:2], alone, rtol=1e-12)


def test_edge_enhancement_leaves_flat_images_alone():
    """Constant images: the unsharp mask and the bilateral blur are identities, so x0 is unchanged."""
    d, x = torch.full((1, 4, 6, 6), 0.7, dtype=torch.float64), torch.full((1, 4, 6, 6), -1.3, dtype=torch.float64)
    assert torch.allclose(supreme.enhance(d, x, 3.0, 1.0, None, cfg(edge_enhancement=5.0)), d, rtol=1e-12)
    g = torch.Generator().manual_seed(3)
    rough = torch.randn(1, 4, 6, 6, generator=g, dtype=torch.float64)
    assert not torch.allclose(supreme.enhance(rough, x, 3.0, 1.0, None, cfg(edge_enhancement=5.0)), rough)


# ---------------------------------------------------------------------------------------------- noise modulation


def batch():
    g = torch.Generator().manual_seed(4)
    return torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", ["intensity", "frequency"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_renormalised_modulations_keep_the_noise_norm(name, dims):
    x, noise = batch()
    fn, d = supreme.NOISE_MODULATIONS[name], supreme.MODULATION_DIMS[dims]
    out = fn(x, noise, 0.7, 1.0, d)  # strength 1: all modulated noise, rescaled to the plain noise's norm
    assert torch.allclose(supreme.per_sample_norm(out), supreme.per_sample_norm(noise * 0.7), rtol=1e-12)
    if (name, dims) != ("intensity", 3):  # there the scaling is one number per sample, which the renormalisation undoes
        assert not torch.allclose(out, noise * 0.7)
    assert torch.allclose(fn(x, noise, 0.7, 2.0, d)[1:], fn(x[1:], noise[1:], 0.7, 2.0, d), rtol=1e-12)  # departure 3


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_spectral_signum(dims):
    """Departure 2: batch 2 with 4 channels crashes in the reference (quantiles broadcast onto channels)."""
    x, noise = batch()
    d = supreme.MODULATION_DIMS[dims]
    assert torch.allclose(supreme.spectral_signum_modulation(x, noise, 0.7, 0.0, d), noise * 0.7, atol=1e-12)  # factor^0 = 1
    out = supreme.spectral_signum_modulation(x, noise, 0.7, 2.0, d)
    assert torch.isfinite(out).all() and not torch.allclose(out, noise * 0.7)
    assert torch.allclose(out[1:], supreme.spectral_signum_modulation(x[1:], noise[1:], 0.7, 2.0, d), rtol=1e-10)


# ---------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("modulation", ["none", "intensity", "frequency", "spectral_signum"])
@pytest.mark.parametrize("method", ["euler", "dpm_3s", "reversible_heun_1s", "dynamic", "adaptive_rk"])
def test_defaults_run_with_callback_once_per_step(modulation, method):
    """Departure 6: one callback per step (the reference calls it at every model call)."""
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 14.6
    seen = []
    out = supreme.sample_supreme(GaussianDenoiser(MU, S), x, karras(5).float(), extra_args={"seed": 0}, callback=seen.append,
                                 step_method=method, substep_method="RES", noise_modulation=modulation, perphist=0.2)
    assert [d["i"] for d in seen] == list(range(5))
    assert torch.isfinite(out).all() and out.dtype == x.dtype


@pytest.mark.parametrize("method", ["dpm_1s", "dpm_2s", "dpm_3s", "RES"])
def test_huge_eta_is_finite(method):
    """Departure 5: eta large enough that sigma_down = 0 would put log(0) into the log-sigma methods."""
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 14.6
    sigmas = karras(4).float()
    assert supreme.ancestral_step(sigmas[1].item(), sigmas[2].item(), 50.0)[0] == 0
    out = supreme.sample_supreme(GaussianDenoiser(MU, S), x, sigmas, extra_args={"seed": 0}, step_method=method, eta=50.0)
    assert torch.isfinite(out).all()
