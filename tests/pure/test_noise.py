"""Noise sources: seeding, per-sample seeds, shapes, and the statistics each type is built to have.

Statistical bounds are 5 standard errors of the estimator (a false failure about once in 10^6 runs):
mean of N unit-variance values: 5/sqrt(N); sample variance of N values: 5 sqrt(Var(X^2)/N).
"""
from __future__ import annotations

import math

import pytest
import torch

from diffusion_anatomy.samplers import noise
from diffusion_anatomy.samplers.noise import NOISE_TYPES, PYRAMID_STD, make_noise_sampler

SHAPE = (2, 4, 16, 24)
SIGMA_MIN, SIGMA_MAX = 0.03, 14.6


def draw(kind, seed, shape=SHAPE, dtype=torch.float32, calls=1):
    x = torch.zeros(shape, dtype=dtype)
    sample = make_noise_sampler(kind, x, seed, SIGMA_MIN, SIGMA_MAX)
    sigmas = torch.linspace(SIGMA_MAX, SIGMA_MIN, calls + 1).tolist()
    return [sample(a, b) for a, b in zip(sigmas[:-1], sigmas[1:])]


def excess_kurtosis(t: torch.Tensor) -> float:
    t = t.double().flatten()
    t = t - t.mean()
    return float((t**4).mean() / (t**2).mean() ** 2 - 3)


@pytest.mark.parametrize("kind", NOISE_TYPES)
def test_shape_dtype_and_seed_determinism(kind):
    a1, a2 = draw(kind, 7, calls=2)
    b1, _ = draw(kind, 7, calls=2)
    c1, _ = draw(kind, 8, calls=2)
    assert a1.shape == SHAPE and a1.dtype == torch.float32 and torch.isfinite(a1).all()
    assert torch.equal(a1, b1), "same seed, same noise"
    assert not torch.allclose(a1, c1), "another seed, other noise"
    assert not torch.allclose(a1, a2), "each step draws fresh noise"


@pytest.mark.parametrize("kind", NOISE_TYPES)
def test_per_sample_seeds_equal_batches_of_one(kind):
    """A list of seeds gives sample k the noise a batch of one seeded with seed[k] gets (as core's batched tree)."""
    batch = draw(kind, [11, 12, 13], shape=(3, 4, 8, 8), calls=2)
    for k, seed in enumerate([11, 12, 13]):
        single = draw(kind, seed, shape=(1, 4, 8, 8), calls=2)
        for step in range(2):
            torch.testing.assert_close(batch[step][k : k + 1], single[step], rtol=0, atol=1e-6)


def test_seed_list_length_must_match_batch():
    with pytest.raises(ValueError):
        draw("perlin", [1, 2, 3])
    with pytest.raises(ValueError):
        draw("brownian", [1, 2, 3])


def test_unknown_type_or_shape_is_an_error():
    with pytest.raises(ValueError):
        draw("violet", 0)
    with pytest.raises(ValueError):
        draw("perlin", 0, shape=(16, 16))  # needs (batch, ..., height, width)


def test_gaussian_is_cores_stream():
    """Core's default_noise_sampler: torch.randn(x.size()) from a generator on x.device seeded with the seed."""
    x = torch.zeros(SHAPE)
    expected = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    assert torch.equal(noise.default_noise_sampler(x, 5)(1.0, 0.5), expected)


BIG = (4, 4, 256, 256)  # 2^20 values
N_BIG = math.prod(BIG)


@pytest.fixture(scope="module")
def big():
    return {kind: draw(kind, 2024, shape=BIG)[0] for kind in ("gaussian", "uniform", "pyramid", "highres-pyramid", "perlin", "laplacian")}


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "highres-pyramid", "perlin", "laplacian"])
def test_unit_mean_zero_types(big, kind):
    """gaussian and uniform have unit variance by construction; highres-pyramid, perlin and laplacian are
    divided by their std as the reference does. Var(X^2) <= 9 covers all five (laplacian's is the largest)."""
    t = big[kind].double()
    assert abs(float(t.mean())) < 5 / math.sqrt(N_BIG)
    assert abs(float(t.var()) - 1) < 5 * math.sqrt(9 / N_BIG)


def test_uniform_range_and_shape(big):
    """U[-sqrt3, sqrt3]: bounded, excess kurtosis -6/5 (estimator sd about 0.002 here)."""
    t = big["uniform"]
    assert float(t.abs().max()) <= math.sqrt(3)
    assert abs(excess_kurtosis(t) + 1.2) < 0.02


def test_laplacian_kurtosis(big):
    """N(0, 1/16) + Laplace(0, 1): excess kurtosis = kappa_4 / var^2 = (3 * 2^2) / (2 + 1/16)^2 = 2.82.
    Estimator sd ~ sqrt(Var(X^4)/N)/var^2 ~ sqrt(8! / 16 / 2^20) ~ 0.05; bound 0.3 (gaussian would be 0)."""
    assert abs(excess_kurtosis(big["laplacian"]) - 12 / (2 + 1 / 16) ** 2) < 0.3


def test_pyramid_equals_the_references_construction(big):
    """The reference sums 5 levels N(0, 0.25^i) drawn at 2^(i+1) x the resolution, shrunk with 'nearest-exact',
    weighted 0.8^i. Build that here (small) and compare with ours: the same std (sum of 0.16^i, not normalised),
    and no correlation between neighbours (nearest-exact keeps one independent value per block)."""
    b, c, h, w = 2, 2, 16, 16
    gen = torch.Generator().manual_seed(0)
    reference = torch.zeros(b, c, h, w, dtype=torch.float64)
    for i in range(5):
        r = 2 ** (i + 1)
        level = torch.randn(b, c, h * r, w * r, generator=gen, dtype=torch.float64) * 0.5**i
        reference += torch.nn.functional.interpolate(level, size=(h, w), mode="nearest-exact") * 0.8**i
    n = reference.numel()
    assert abs(float(reference.std()) - PYRAMID_STD) < 5 * PYRAMID_STD * math.sqrt(1 / (2 * n))  # sd of a sample std
    ours = big["pyramid"].double()
    assert abs(float(ours.std()) - PYRAMID_STD) < 5 * PYRAMID_STD * math.sqrt(1 / (2 * N_BIG))
    for t, count in ((reference, n), (ours, N_BIG)):
        assert abs(correlation(t, 0, 1)) < 5 / math.sqrt(count)


def correlation(t: torch.Tensor, dy: int, dx: int) -> float:
    """Correlation of each pixel with its neighbour (dy, dx), over the whole tensor."""
    h, w = t.shape[-2:]
    a = t[..., : h - dy, max(0, -dx) : w - max(0, dx)].double()
    b = t[..., dy:, max(0, dx) : w + min(0, dx)].double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).mean() / (a.std() * b.std()))


def test_perlin_neighbour_correlations(big):
    """One Perlin lattice cell per pixel, sampled at the cell centre: the value is the mean of the 4 corner
    gradients' dot products with offsets (+-1/2, +-1/2), variance 4 * (1/2 * 1/2) / 16 = 1/16 per layer.
    Side neighbours share 2 corners with orthogonal offsets: correlation 0. Diagonal neighbours share 1 corner
    with opposite offsets: covariance (1/16) * (-1/2 / 2) = -1/64 per layer; with the N(0, 1/4) base and two
    layers the correlation is 2 (-1/64) / (1/4 + 2/16) = -1/12."""
    t = big["perlin"]
    bound = 5 / math.sqrt(N_BIG)
    assert abs(correlation(t, 0, 1)) < bound
    assert abs(correlation(t, 1, 0)) < bound
    assert abs(correlation(t, 1, 1) + 1 / 12) < bound
    assert abs(correlation(t, 1, -1) + 1 / 12) < bound


def test_normalised_types_are_normalised_per_sample():
    """With per-sample seeds each sample is drawn and divided by its own std."""
    for kind in ("highres-pyramid", "perlin", "laplacian"):
        t = draw(kind, [1, 2], shape=(2, 4, 32, 32))[0]
        for k in range(2):
            assert abs(float(t[k].std()) - 1) < 1e-5


# --- Brownian tree ------------------------------------------------------------------------------------

def test_brownian_increments_are_unit_normal_and_independent():
    """Normalised increments of one Brownian path over disjoint intervals: N(0, 1), mutually independent."""
    x = torch.zeros(2**16, dtype=torch.float64)
    sample = noise.brownian_tree_noise_sampler(x, 0.1, 10.0, seed=3)
    sigmas = [10.0, 5.0, 2.0, 0.5, 0.1]
    zs = [sample(a, b) for a, b in zip(sigmas[:-1], sigmas[1:])]
    n = x.numel()
    for z in zs:
        assert abs(float(z.mean())) < 5 / math.sqrt(n)
        assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    for a, b in zip(zs[:-1], zs[1:]):
        assert abs(float((a * b).mean())) < 5 / math.sqrt(n)


def test_brownian_path_is_consistent():
    """The increment over [a, c] is the sum of those over [a, b] and [b, c] (one path, whatever the steps):
    z(a,c) sqrt(c-a) = z(a,b) sqrt(b-a) + z(b,c) sqrt(c-b), up to the tree's time tolerance."""
    x = torch.zeros(1000, dtype=torch.float64)
    sample = noise.brownian_tree_noise_sampler(x, 0.1, 10.0, seed=9)
    a, b, c = 8.0, 3.0, 0.7
    whole = sample(a, c) * math.sqrt(a - c)
    parts = sample(a, b) * math.sqrt(a - b) + sample(b, c) * math.sqrt(b - c)
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-5)


def test_brownian_is_reversible_in_sign():
    """Querying (b, a) gives minus the increment of (a, b): the noise of a step is oriented."""
    x = torch.zeros(100)
    sample = noise.brownian_tree_noise_sampler(x, 0.1, 10.0, seed=1)
    torch.testing.assert_close(sample(2.0, 1.0), -sample(1.0, 2.0))


def test_brownian_empty_step_is_zero_not_nan():
    x = torch.zeros(10)
    assert torch.equal(noise.brownian_tree_noise_sampler(x, 0.1, 10.0, seed=1)(2.0, 2.0), x)


def test_brownian_device_option_keeps_its_seed():
    """cpu=False builds the tree on x's device (here the CPU too): still seeded, still unit noise."""
    x = torch.zeros(4096, dtype=torch.float64)
    one = noise.brownian_tree_noise_sampler(x, 0.1, 10.0, seed=4, cpu=False)(5.0, 4.0)
    two = noise.brownian_tree_noise_sampler(x, 0.1, 10.0, seed=4, cpu=False)(5.0, 4.0)
    assert torch.equal(one, two)
    assert abs(float(one.var()) - 1) < 5 * math.sqrt(2 / x.numel())


# --- Brownian noise on the device (dyadic tree of bridges) ---------------------------------------------

FAST_N = 2**17  # elements per draw: a sample variance has standard error sqrt(2/N) = 0.004


def test_fast_brownian_increments_have_variance_dt_at_any_times():
    """W(t1) - W(t0) ~ N(0, t1 - t0) for intervals on and off the tree's grid, short and long, including the
    ends of the range (W(lo) = 0, W(hi) from the root alone). The shortest, 1e-3 relative, spans about ten
    leaf cells of the tree (2^-16 of log(14.6/0.03): 9.4e-5 relative), the documented resolution."""
    path = noise.DyadicBrownian(0.03, 14.6, (FAST_N,), [5], "cpu", torch.float64)
    for t0, t1 in [(0.03, 14.6), (0.03, 0.0301), (1.0, 1.3), (2.2, 9.7), (13.0, 14.6), (0.5, 0.5005)]:
        inc = (path(t1) - path(t0))[0] / math.sqrt(t1 - t0)
        assert abs(float(inc.mean())) < 5 / math.sqrt(FAST_N), (t0, t1)
        assert abs(float(inc.var()) - 1) < 5 * math.sqrt(2 / FAST_N), (t0, t1)


def test_fast_brownian_increments_over_disjoint_intervals_are_independent():
    """Correlations of the normalised increments over disjoint intervals (adjacent, and apart) and of W at two
    times against its theoretical value sqrt(min/max) (Brownian covariance min(s, t))."""
    path = noise.DyadicBrownian(0.1, 10.0, (FAST_N,), [6], "cpu", torch.float64)
    times = [10.0, 7.3, 5.0, 2.0, 1.1, 0.4, 0.1]
    z = [(path(a) - path(b))[0] / math.sqrt(a - b) for a, b in zip(times[:-1], times[1:])]
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            assert abs(float((z[i] * z[j]).mean())) < 5 / math.sqrt(FAST_N), (i, j)
    w1, w2 = path(3.0)[0], path(6.0)[0]  # W(t) = B(t - 0.1): covariance 2.9, variances 2.9 and 5.9
    corr = float((w1 * w2).mean() / (w1.var() * w2.var()).sqrt())
    assert abs(corr - math.sqrt(2.9 / 5.9)) < 5 / math.sqrt(FAST_N)


def test_fast_brownian_ten_and_twenty_steps_see_one_path():
    """One seed, one path: every other point of a 20-step schedule is a point of the 10-step one, and the
    10-step noise times sqrt(dt) is the sum of the two 20-step increments it spans (fresh samplers each)."""
    x = torch.zeros(2, 4, 16, 16)
    sig20 = torch.linspace(14.6, 0.03, 21).tolist()
    sig10 = sig20[::2]
    fine = make_noise_sampler("brownian-fast", x, 42, 0.03, 14.6)
    coarse = make_noise_sampler("brownian-fast", x, 42, 0.03, 14.6)
    w20 = [fine(a, b) * math.sqrt(a - b) for a, b in zip(sig20[:-1], sig20[1:])]
    w10 = [coarse(a, b) * math.sqrt(a - b) for a, b in zip(sig10[:-1], sig10[1:])]
    for k, w in enumerate(w10):
        torch.testing.assert_close(w, w20[2 * k] + w20[2 * k + 1], rtol=0, atol=1e-5)
    other = make_noise_sampler("brownian-fast", x, 43, 0.03, 14.6)(sig10[0], sig10[1]) * math.sqrt(sig10[0] - sig10[1])
    assert not torch.allclose(other, w10[0]), "another seed, another path"


def test_fast_brownian_is_oriented_and_empty_steps_are_zero():
    x = torch.zeros(3, 100)
    sample = make_noise_sampler("brownian-fast", x, 1, 0.1, 10.0)
    torch.testing.assert_close(sample(2.0, 1.0), -sample(1.0, 2.0))
    assert torch.equal(sample(2.0, 2.0), x)


def test_fast_brownian_makes_no_host_round_trip(monkeypatch):
    """Queries compute W on x's device from host floats only: reading a tensor back (item, tolist, float,
    cpu, numpy) during sampling is an error here (on a GPU each would be a sync)."""
    x = torch.zeros(2, 4, 8, 8)
    sample = make_noise_sampler("brownian-fast", x, [3, 4], 0.03, 14.6)

    def refuse(*args, **kwargs):
        raise AssertionError("a host round trip")

    for name in ("item", "tolist", "__float__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    sigmas = [14.6, 7.0, 3.0, 1.0, 0.03]
    draws = [sample(a, b) for a, b in zip(sigmas[:-1], sigmas[1:])]
    monkeypatch.undo()
    assert all(d.shape == x.shape and torch.isfinite(d).all() for d in draws)


@pytest.mark.parametrize("sampler_id", ["dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu"])
def test_sde_samplers_take_the_fast_brownian_noise(sampler_id):
    """The SDE samplers' noise_type option reaches their noise: brownian (the default, core's tree) and
    brownian-fast give other pictures for one seed, each reproducible; eta = 0 ignores the noise type."""
    from diffusion_anatomy.samplers.runner import run_sampler

    def model(x, sigma, **_):  # x0 estimate of unit Gaussian data: x / (1 + sigma^2)
        return x / (1 + sigma[:, None, None, None] ** 2)

    x = 14.6 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([14.6, 5.0, 2.0, 0.8, 0.3, 0.0])

    def run(**options):
        return run_sampler(sampler_id, model, x, sigmas, extra_args={"seed": 3}, **options)

    default, fast = run(), run(noise_type="brownian-fast")
    assert torch.equal(fast, run(noise_type="brownian-fast"))
    assert torch.equal(default, run(noise_type="brownian"))
    assert (fast - default).abs().max() > 1e-2
    torch.testing.assert_close(run(eta=0.0, noise_type="brownian-fast"), run(eta=0.0))
