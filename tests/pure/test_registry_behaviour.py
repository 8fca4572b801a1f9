"""Behaviour every registered sampler owes its callers, checked over the whole REGISTRY.

The tests iterate over whatever is registered, so a sampler added anywhere in the pack is covered
once it registers. Every sampler is called through `run_sampler` (defaults + pinned options), the
way the node layer calls it. Model: the exact Gaussian-data denoiser (elementwise, so samples in a
batch are independent), float64, tiny tensors.

Samplers that choose their own step grid instead of one step per schedule interval (core's
DPM-Fast and DPM-Adaptive: they only read sigma_min/sigma_max from the schedule) are exempt from
the per-step checks; they are listed in OWN_GRID.
"""
from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch

from diffusion_anatomy.samplers import REGISTRY
from diffusion_anatomy.samplers.registry import Option, SamplerInfo
from diffusion_anatomy.samplers.runner import NonFiniteError, run_sampler
from support.gaussian import GaussianDenoiser

IDS = sorted(REGISTRY)
OWN_GRID = {"dpm_fast", "dpm_adaptive"}
STEPWISE = [i for i in IDS if i not in OWN_GRID]
SHAPE = (2, 3, 4, 4)


def geometric_sigmas(n: int, sigma_max: float = 14.6, sigma_min: float = 0.03, zero: bool = True) -> torch.Tensor:
    """n steps, log-uniform from sigma_max to sigma_min, then (optionally) 0."""
    sig = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n + (0 if zero else 1), dtype=torch.float64))
    return torch.cat([sig, sig.new_zeros(1)]) if zero else sig


def start_noise(sigma0: float, seed: int = 0, shape=SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 + sigma0 * torch.randn(shape, generator=g, dtype=torch.float64)


class Recorder:
    """The Gaussian denoiser, recording each call's sigma (per-sample vector) and extra_args."""

    def __init__(self):
        self.inner = GaussianDenoiser()
        self.sigmas: list[torch.Tensor] = []
        self.kwargs: list[dict] = []
        self.calls_at_callback: list[int] = []

    def __call__(self, x, sigma, **kwargs):
        assert sigma.shape == (x.shape[0],), f"sigma must be one per sample (sigma * s_in), got shape {tuple(sigma.shape)}"
        self.sigmas.append(sigma.clone())
        self.kwargs.append(kwargs)
        return self.inner(x, sigma)

    def callback(self, payload):
        self.calls_at_callback.append(len(self.sigmas))


def run(sampler_id, model, x, sigmas, seed=0, callback=None, **extra):
    return run_sampler(sampler_id, model, x, sigmas, extra_args={"seed": seed, **extra}, callback=callback, disable=True)


# --- the registry itself -------------------------------------------------------------------------


@pytest.mark.parametrize("sampler_id", IDS)
def test_registry_entry_matches_its_function(sampler_id):
    """Every option and pinned option is a parameter of the function, with the function's default."""
    info = REGISTRY[sampler_id]
    params = inspect.signature(info.fn).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for name in [*info.defaults(), *info.fixed_options]:
        assert name in params or takes_kwargs, f"{sampler_id}: option {name!r} is not a parameter of {info.fn.__name__}"
    for opt in info.options:
        if opt.name in params and params[opt.name].default is not inspect.Parameter.empty:
            assert params[opt.name].default == opt.default, f"{sampler_id}: {opt.name} default differs from the function's"
        assert opt.choices is None or opt.default in opt.choices, f"{sampler_id}: {opt.name} default is not one of its choices"
    assert info.name and info.description and (info.reference or info.paper)
    assert isinstance(info.calls_per_step, str) or info.calls_per_step >= 1
    # brownian_path (the lab's choice of reference) says what the function draws by default: a Brownian tree
    called = {**{k: p.default for k, p in params.items()}, **info.defaults(), **info.fixed_options}
    assert info.brownian_path == (called.get("noise_type") == "brownian"), f"{sampler_id}: brownian_path disagrees with its default noise"


# --- steps and model calls ---------------------------------------------------------------------


@pytest.mark.parametrize("sampler_id", STEPWISE)
def test_callback_once_per_step(sampler_id):
    sigmas = geometric_sigmas(5)
    payloads = []
    run(sampler_id, Recorder(), start_noise(14.6), sigmas, callback=payloads.append)
    assert [p["i"] for p in payloads] == list(range(len(sigmas) - 1))
    for i, p in enumerate(payloads):
        assert {"x", "i", "sigma", "sigma_hat", "denoised"} <= set(p)
        assert float(p["sigma"]) == pytest.approx(float(sigmas[i]), rel=1e-6), "callback 'sigma' is sigmas[i]"
        assert p["denoised"].shape == SHAPE


@pytest.mark.parametrize("sampler_id", [i for i in STEPWISE if isinstance(REGISTRY[i].calls_per_step, int)])
@pytest.mark.parametrize("ends_in_zero", [True, False])
def test_model_calls_per_step(sampler_id, ends_in_zero):
    """`calls_per_step` model calls between consecutive callbacks. The last steps may take fewer: a step
    to sigma 0 (Heun, DPM-2 finish with an Euler step) and, for samplers that look two sigmas ahead
    (HeunPP2 uses sigmas[i+2]), the step before it. (discard_penultimate_sigma samplers get a schedule
    with the penultimate sigma already dropped by the caller; the rule is the same on the schedule
    they are given.)"""
    c = REGISTRY[sampler_id].calls_per_step
    n = 6
    model = Recorder()
    run(sampler_id, model, start_noise(14.6), geometric_sigmas(n, zero=ends_in_zero), callback=model.callback)
    at = model.calls_at_callback
    assert len(at) == n
    between = [b - a for a, b in zip(at, at[1:])]
    assert between[:-1] == [c] * (n - 2) and 1 <= between[-1] <= c, f"model calls between callbacks: {between}"
    assert c * (n - 2) + 2 <= len(model.sigmas) <= c * n


# --- seeds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler_id", IDS)
def test_seed_reproducible(sampler_id):
    sigmas, x = geometric_sigmas(4), start_noise(14.6)
    a = run(sampler_id, Recorder(), x, sigmas, seed=1)
    b = run(sampler_id, Recorder(), x, sigmas, seed=1)
    c = run(sampler_id, Recorder(), x, sigmas, seed=2)
    assert torch.equal(a, b), "same seed, same output"
    if REGISTRY[sampler_id].stochastic:
        assert (a - c).abs().max() > 1e-3, "a stochastic sampler's output depends on the seed"
    else:
        assert torch.equal(a, c), "a deterministic sampler ignores the seed"


# --- schedules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler_id", IDS)
@pytest.mark.parametrize("sigmas", [[14.6, 0.0], [14.6, 1.0, 0.0], [2.0, 0.5]], ids=["1step", "2steps", "1step_no_zero"])
def test_short_schedules(sampler_id, sigmas):
    sigmas = torch.tensor(sigmas, dtype=torch.float64)
    model, payloads = Recorder(), []
    out = run(sampler_id, model, start_noise(float(sigmas[0])), sigmas, callback=payloads.append)
    assert out.shape == SHAPE and torch.isfinite(out).all()
    if sampler_id == "dpm_adaptive" and float(sigmas[-1]) == 0.0 and len(sigmas) == 2:
        # DPM-Adaptive integrates from sigma_max down to the last nonzero sigma, as core's
        # ksampler() wrapper does: with one nonzero sigma there is nothing to integrate.
        assert len(model.sigmas) == 0 and torch.equal(out, start_noise(float(sigmas[0])))
        return
    assert len(model.sigmas) >= 1
    if sampler_id not in OWN_GRID:
        assert len(payloads) == len(sigmas) - 1


@pytest.mark.parametrize("sampler_id", IDS)
def test_single_sigma_returns_input(sampler_id):
    x = start_noise(1.0)
    out = run(sampler_id, Recorder(), x, torch.tensor([1.0], dtype=torch.float64))
    assert torch.equal(out, x)


@pytest.mark.parametrize("sampler_id", IDS)
def test_partial_denoise_starts_at_first_sigma(sampler_id):
    """img2img: the schedule starts below sigma_max. An ODE sampler first asks the model at sigmas[0]
    and never above it, and its result is denoised from that level: far closer to the exact PF-ODE
    endpoint than the input is (8 steps: even first order leaves < 1/4 of the distance). A stochastic
    sampler may add churn (sigma_hat = sigma * (1 + gamma), gamma <= sqrt(2) - 1 in Karras et al.):
    its first evaluation lies in [sigmas[0], 2 sigmas[0]], far from sigma_max = 14.6."""
    sigmas = torch.cat([geometric_sigmas(8, sigma_max=2.0, sigma_min=0.05, zero=False), torch.zeros(1, dtype=torch.float64)])
    x = start_noise(2.0)
    model = Recorder()
    out = run(sampler_id, model, x, sigmas)
    seen = torch.stack(model.sigmas)
    if REGISTRY[sampler_id].stochastic:
        assert 2.0 * (1 - 1e-9) <= float(seen[0, 0]) and float(seen.max()) <= 4.0
        return
    assert float(seen[0, 0]) == pytest.approx(2.0, rel=1e-9)
    assert float(seen.max()) <= 2.0 * (1 + 1e-9)
    exact = model.inner.ode_solution(x, 2.0, 0.0)
    assert (out - exact).norm() < 0.25 * (x - exact).norm()


# --- batches and extra_args ----------------------------------------------------------------------


@pytest.mark.parametrize("sampler_id", IDS)
def test_batch_samples_are_independent(sampler_id):
    sigmas = geometric_sigmas(5)
    x = start_noise(14.6, shape=(3, 2, 4, 4))
    batch = run(sampler_id, Recorder(), x, sigmas)
    assert batch.shape == x.shape and torch.isfinite(batch).all()
    if REGISTRY[sampler_id].stochastic:
        return  # noise is drawn for the whole batch at once: only shapes compare
    if sampler_id == "dpm_adaptive":
        return  # one step size for the batch, from the error norm over all of it (as core): coupled by design
    single = torch.cat([run(sampler_id, Recorder(), x[k : k + 1], sigmas) for k in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sampler_id", IDS)
def test_extra_args_reach_the_model_untouched(sampler_id):
    """ComfyUI's KSAMPLER puts denoise_mask (and model_options, seed) into extra_args: every model
    call gets the very same objects, unmodified."""
    mask = torch.rand(SHAPE, dtype=torch.float64)
    mask_copy = mask.clone()
    options = {"transformer_options": {}}
    model = Recorder()
    run(sampler_id, model, start_noise(14.6), geometric_sigmas(3), seed=5, denoise_mask=mask, model_options=options)
    assert model.kwargs
    for kwargs in model.kwargs:
        assert kwargs["denoise_mask"] is mask and kwargs["model_options"] is options and kwargs["seed"] == 5
    assert torch.equal(mask, mask_copy)


# --- non-finite model output -------------------------------------------------------------------


class NaNFromStep:
    """The Gaussian denoiser until `step` callbacks have been seen, then NaN."""

    def __init__(self, step: int):
        self.step, self.steps_seen, self.inner = step, 0, GaussianDenoiser()
        self.first_bad_sigma = None

    def __call__(self, x, sigma, **kwargs):
        out = self.inner(x, sigma)
        if self.steps_seen >= self.step:
            if self.first_bad_sigma is None:
                self.first_bad_sigma = float(sigma[0])
            out = out * float("nan")
        return out

    def callback(self, payload):
        self.steps_seen += 1


@pytest.mark.parametrize("sampler_id", STEPWISE)
def test_nan_model_raises_naming_sampler_step_and_sigma(sampler_id):
    info, model = REGISTRY[sampler_id], NaNFromStep(step=2)
    with pytest.raises(NonFiniteError) as caught:
        run(sampler_id, model, start_noise(14.6), geometric_sigmas(5), callback=model.callback)
    err = caught.value
    assert err.sampler == info.name and err.step == 2
    assert err.sigma == pytest.approx(model.first_bad_sigma)
    assert info.name in str(err) and "step 2" in str(err)


@pytest.mark.parametrize("sampler_id", sorted(OWN_GRID & set(IDS)))
def test_nan_model_raises_own_grid(sampler_id):
    with pytest.raises(NonFiniteError, match=REGISTRY[sampler_id].name):
        run(sampler_id, NaNFromStep(step=0), start_noise(14.6), geometric_sigmas(5))


# --- no host-device sync per step ----------------------------------------------------------------

SYNCING = {"__bool__", "item", "tolist", "__float__", "__int__", "__index__", "nonzero", "cpu", "numpy"}


class SyncCounting(torch.Tensor):
    """A tensor that counts the calls which, on a GPU, make the host wait for the device.

    Results of torch ops on it stay SyncCounting, so x, sigmas and everything computed from them
    count. Calls made inside torchsde are not counted: its Brownian tree lives on the CPU by
    default (host-side bookkeeping, not a device sync).
    """

    calls: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCING and not _inside("torchsde"):
            cls.calls.append(name)
        return super().__torch_function__(func, types, args, kwargs or {})


def _inside(package: str) -> bool:
    frame = inspect.currentframe()
    while frame is not None:
        if f"/{package}/" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def count_syncs(sampler_id: str, n: int) -> int:
    SyncCounting.calls = []
    x = start_noise(14.6).as_subclass(SyncCounting)
    sigmas = geometric_sigmas(n).as_subclass(SyncCounting)
    model = GaussianDenoiser()
    run_sampler(sampler_id, model, x, sigmas, extra_args={"seed": 0}, callback=lambda p: None, disable=True)
    return len(SyncCounting.calls)


@pytest.mark.parametrize("sampler_id", STEPWISE)
def test_no_host_sync_per_step(sampler_id):
    """The number of syncing calls (sigmas.tolist() once, the runner's one final check) does not grow
    with the number of steps: nothing in the loop waits for the device."""
    few, many = count_syncs(sampler_id, 4), count_syncs(sampler_id, 8)
    assert many == few, f"{many - few} extra syncing calls for 4 extra steps: {SyncCounting.calls}"


# --- run_sampler itself (a toy sampler, not registered) ------------------------------------------


def toy_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, gain=1.0, variant="a"):
    """Euler steps scaled by `gain` (gain=1 is Euler); `variant` is only recorded."""
    extra_args = extra_args or {}
    toy_euler.seen = dict(gain=gain, variant=variant)
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + gain * (s[i + 1] - s[i]) * (x - denoised) / s[i]
    return x


TOY = SamplerInfo(id="toy", name="Toy Euler", fn=toy_euler, order=1, calls_per_step=1, stochastic=False,
                  options=(Option("gain", 1.0, 0.0, 2.0, 0.1),), fixed_options={"variant": "b"}, description="toy")


def test_runner_applies_defaults_options_and_pins():
    sigmas, x = geometric_sigmas(3), start_noise(14.6)
    run_sampler(TOY, GaussianDenoiser(), x, sigmas)
    assert toy_euler.seen == {"gain": 1.0, "variant": "b"}
    run_sampler(TOY, GaussianDenoiser(), x, sigmas, gain=0.5)
    assert toy_euler.seen == {"gain": 0.5, "variant": "b"}
    with pytest.raises(ValueError, match="pins variant"):
        run_sampler(TOY, GaussianDenoiser(), x, sigmas, variant="a")
    with pytest.raises(KeyError, match="unknown sampler"):
        run_sampler("no_such_sampler", GaussianDenoiser(), x, sigmas)


def test_runner_reports_a_sampler_that_breaks_by_itself():
    """Finite model outputs but a non-finite result: the sampler is blamed, not the model."""
    sigmas = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    broken = dataclasses.replace(TOY, fn=lambda model, x, sigmas, **kw: toy_euler(model, x, sigmas, **kw) / 0.0)
    with pytest.raises(NonFiniteError, match="non-finite result although every model output was finite"):
        run_sampler(broken, GaussianDenoiser(), start_noise(1.0), sigmas)


def test_runner_check_every_stops_early():
    """check_every=1 raises at the first step boundary after the NaN instead of running to the end."""
    model = NaNFromStep(step=1)
    calls = []

    def counting(x, sigma, **kw):
        calls.append(1)
        return model(x, sigma, **kw)

    with pytest.raises(NonFiniteError) as caught:
        run_sampler(TOY, counting, start_noise(14.6), geometric_sigmas(20), callback=model.callback, check_every=1)
    assert caught.value.step == 1 and len(calls) == 2


def test_runner_without_callback_still_counts_steps():
    model = NaNFromStep(step=10**9)  # never NaN by steps; NaN by sigma below
    sigmas = geometric_sigmas(6)

    def nan_below_one(x, sigma, **kw):
        out = model(x, sigma)
        return torch.where(sigma.reshape(-1, 1, 1, 1) < 1.0, float("nan"), out)

    with pytest.raises(NonFiniteError) as caught:
        run_sampler(TOY, nan_below_one, start_noise(14.6), sigmas)
    first = next(i for i, s in enumerate(sigmas.tolist()) if s < 1.0)
    assert caught.value.step == first and caught.value.sigma == pytest.approx(float(sigmas[first]))
