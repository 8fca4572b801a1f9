"""PNDM, PLMS and UniPC: against their references re-stated in the references' own (VP) variables,
and the facts of their step structure. Parity with ComfyUI's UniPC and iPNDM is in
tests/host/test_parity_unipc.py; convergence orders of all samplers in test_registry_orders.py.

The references work with an eps model in VP variables: x_vp = sqrt(abar) * x, sigma^2 = (1 - abar) / abar.
Our samplers see the same model as a denoiser in sigma space, D(x, sigma) = x - sigma * eps. If
"DDIM transfer = Euler step in sigma space" and the rest of the sigma-space rewriting are right, the
two agree to rounding (float64: 1e-12 relative).
"""
from __future__ import annotations

import math

import pytest
import torch

from diffusion_anatomy.samplers import REGISTRY
from diffusion_anatomy.samplers.unipc import END_SIGMA, step_orders
from support.gaussian import GaussianDenoiser, fitted_order

SHAPE = (2, 3, 4, 4)


def toy_denoiser(x, sigma, **kwargs):
    """A smooth nonlinear denoiser (Gaussian data plus a tanh term), so every evaluation point matters."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return 0.3 + (x - 0.3) * 0.25 / (0.25 + s**2) + 0.1 * torch.tanh(x) / (1 + s)


def eps_vp(x_vp, abar):
    """The toy model as the references see it: eps prediction at alphas_cumprod = abar, VP input."""
    sigma = math.sqrt((1 - abar) / abar)
    x = x_vp / math.sqrt(abar)
    return (x - toy_denoiser(x, torch.full([x.shape[0]], sigma, dtype=x.dtype))) / sigma


def sd_alphas_cumprod_table() -> list[float]:
    """abar_t for t = 0..999, SD's scaled-linear betas (0.00085 .. 0.012)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).tolist()


def sd_alphas_cumprod(n_steps: int, to_sigma_zero: bool) -> list[float]:
    """abar for n_steps steps over equally spaced SD timesteps (scaled-linear betas) from 999 down to 0,
    or, with `to_sigma_zero`, down to the last timestep and then abar = 1 (sigma 0)."""
    abar = torch.tensor(sd_alphas_cumprod_table(), dtype=torch.float64)
    timesteps = torch.linspace(999, 0, n_steps + (0 if to_sigma_zero else 1)).round().long()
    return abar[timesteps].tolist() + ([1.0] if to_sigma_zero else [])


def sigma_of_abar(abar: float) -> float:
    return math.sqrt((1 - abar) / abar)


def ddim_compvis(x, e, abar, abar_prev):
    """CompVis get_x_prev_and_pred_x0 with eta = 0: x0 from eps, then back along the same eps."""
    pred_x0 = (x - math.sqrt(1 - abar) * e) / math.sqrt(abar)
    return math.sqrt(abar_prev) * pred_x0 + math.sqrt(1 - abar_prev) * e


def transfer_pndm(x, abar, abar_prev, e):
    """PNDM formula (9), as diffusers' PNDMScheduler._get_prev_sample writes it."""
    denom = abar * math.sqrt(1 - abar_prev) + math.sqrt(abar * (1 - abar) * abar_prev)
    return math.sqrt(abar_prev / abar) * x - (abar_prev - abar) * e / denom


def adams_bashforth(ets):
    """Equal-step Adams-Bashforth on the last (up to 4) eps values, newest last (PLMS e')."""
    if len(ets) == 1:
        return ets[-1]
    if len(ets) == 2:
        return (3 * ets[-1] - ets[-2]) / 2
    if len(ets) == 3:
        return (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
    return (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24


def plms_compvis(x_vp, abars):
    """CompVis PLMSSampler.p_sample_plms over the given abar sequence."""
    old_eps = []
    for i in range(len(abars) - 1):
        a, a_next = abars[i], abars[i + 1]
        e_t = eps_vp(x_vp, a)
        if not old_eps:  # pseudo improved Euler
            e_next = eps_vp(ddim_compvis(x_vp, e_t, a, a_next), a_next)
            e_prime = (e_t + e_next) / 2
        else:
            e_prime = adams_bashforth([*old_eps, e_t])
        x_vp = ddim_compvis(x_vp, e_prime, a, a_next)
        old_eps = [*old_eps, e_t][-3:]
    return x_vp


def pndm_diffusers(x_vp, alphas_cumprod, n_steps, steps_offset, set_alpha_to_one):
    """diffusers' PNDMScheduler (skip_prk_steps=False) re-derived from its source, as its pipeline drives it.

    set_timesteps: integer timesteps i * step_ratio + steps_offset; the pseudo Runge-Kutta timesteps of the
    last 4 of them with their half steps (t + step_ratio // 2); then one `step` per model call: 12 PRK calls
    (counter-driven cur_sample / cur_model_output / ets), then PLMS (Adams-Bashforth on ets). Returns the
    result and the timesteps the run visits, highest first."""
    step_ratio = len(alphas_cumprod) // n_steps
    half = step_ratio // 2
    timesteps = [i * step_ratio + steps_offset for i in range(n_steps)]
    prk = [t + d for t in timesteps[-4:] for d in (0, half)][:-1]
    prk = [t for t in prk for _ in range(2)][1:-1][::-1]
    plms = timesteps[:-3][::-1]
    final = 1.0 if set_alpha_to_one else alphas_cumprod[0]

    def abar(t):
        return alphas_cumprod[t] if t >= 0 else final

    ets, cur_out, cur_sample = [], 0, None
    for counter, t in enumerate(prk):
        e = eps_vp(x_vp, abar(t))
        prev = t - (0 if counter % 2 else half)
        if counter % 4 == 0:
            cur_out, cur_sample = e / 6, x_vp
            ets.append(e)
        elif counter % 4 in (1, 2):
            cur_out = cur_out + e / 3
        else:
            e, cur_out = cur_out + e / 6, 0
        x_vp = transfer_pndm(cur_sample, abar(prk[counter // 4 * 4]), abar(prev), e)
    for t in plms:
        ets.append(eps_vp(x_vp, abar(t)))
        x_vp = transfer_pndm(x_vp, abar(t), abar(t - step_ratio), adams_bashforth(ets[-4:]))
    return x_vp, timesteps[::-1], final


def start(sigma0, seed=0):
    return 0.3 + sigma0 * torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# --- PLMS and PNDM against their references ----------------------------------------------------


@pytest.mark.parametrize("n_steps", [1, 2, 4, 10])
def test_plms_equals_compvis_plms(n_steps):
    abars = sd_alphas_cumprod(n_steps, to_sigma_zero=False)  # CompVis' last abar is < 1
    sigmas = torch.tensor([sigma_of_abar(a) for a in abars], dtype=torch.float64)
    x = start(float(sigmas[0]))
    ours = REGISTRY["plms"].fn(toy_denoiser, x, sigmas, disable=True)
    ref = plms_compvis(x * math.sqrt(abars[0]), abars) / math.sqrt(abars[-1])
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_steps, steps_offset, set_alpha_to_one", [(4, 0, True), (10, 1, False), (20, 1, True), (7, 1, False)])
def test_pndm_on_the_model_sigmas_equals_diffusers_pndm(n_steps, steps_offset, set_alpha_to_one):
    """On the model's own discrete sigmas (the table given as model_sigmas, as the nodes give ComfyUI's), the warm-up's
    middle is the half timestep's sigma, and the whole run is diffusers' PNDM (re-derived above) to float64 rounding.
    7 steps: step_ratio 142, an even half (71); the odd ones are covered by t - (t - t_next) // 2 = t - step_ratio // 2."""
    table_abar = sd_alphas_cumprod_table()
    table = [sigma_of_abar(a) for a in table_abar]
    top = (n_steps - 1) * (1000 // n_steps) + steps_offset  # diffusers' first timestep
    x = start(table[top])
    ref, visited, final = pndm_diffusers(x * math.sqrt(table_abar[top]), table_abar, n_steps, steps_offset, set_alpha_to_one)
    sigmas = torch.tensor([table[t] for t in visited] + [sigma_of_abar(final)], dtype=torch.float64)
    ours = REGISTRY["pndm"].fn(toy_denoiser, x, sigmas, disable=True, model_sigmas=torch.tensor(table, dtype=torch.float64))
    torch.testing.assert_close(ours, ref / math.sqrt(final), rtol=1e-12, atol=1e-12)
    # the geometric middle (the other grids' rule) is measurably another run here: the test sees the difference
    geometric = REGISTRY["pndm"].fn(toy_denoiser, x, sigmas, disable=True)
    assert (geometric - ours).abs().max() > 1e3 * 1e-12 * ours.abs().max()


def test_pndm_warmup_evaluates_at_half_timesteps_on_the_table():
    table = [sigma_of_abar(a) for a in sd_alphas_cumprod_table()]
    seen = []

    def model(x, sigma, **kw):
        seen.append(float(sigma[0]))
        return toy_denoiser(x, sigma)

    ts = [999, 899, 799, 699, 599]  # steps of 100: middles at 949, 849, 749 (and 999 - 100 // 2 = 949)
    sigmas = torch.tensor([table[t] for t in ts] + [0.0], dtype=torch.float64)
    REGISTRY["pndm"].fn(model, start(table[999]), sigmas, disable=True, model_sigmas=torch.tensor(table, dtype=torch.float64))
    mids = [table[949], table[849], table[749]]
    assert seen[:12] == pytest.approx([v for k in range(3) for v in (table[ts[k]], mids[k], mids[k], table[ts[k + 1]])], rel=1e-15)


def test_pndm_warmup_evaluates_at_geometric_middle_off_the_table():
    """A grid that is not the model's discrete sigmas (here no table at all; karras etc. in the nodes): the middle
    in lambda = -log(sigma), sqrt(sigma sigma_next)."""
    seen = []

    def model(x, sigma, **kw):
        seen.append(float(sigma[0]))
        return toy_denoiser(x, sigma)

    REGISTRY["pndm"].fn(model, start(14.6), torch.tensor([14.6, 4.0, 1.0, 0.0], dtype=torch.float64), disable=True)
    mid = math.sqrt(14.6 * 4.0)
    assert seen[:4] == pytest.approx([14.6, mid, mid, 4.0], rel=1e-15)
    # a table that does not hold these sigmas changes nothing
    seen.clear()
    table = torch.tensor([sigma_of_abar(a) for a in sd_alphas_cumprod_table()], dtype=torch.float64)
    REGISTRY["pndm"].fn(model, start(14.6), torch.tensor([14.6, 4.0, 1.0, 0.0], dtype=torch.float64), disable=True, model_sigmas=table)
    assert seen[:4] == pytest.approx([14.6, mid, mid, 4.0], rel=1e-15)


@pytest.mark.parametrize(
    "sampler_id, sigmas, calls",
    [
        ("pndm", [8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.1], 3 * 4 + 3),  # 3 pseudo RK steps, then 1 call each
        ("pndm", [8.0, 1.0, 0.0], 4 + 1),  # the step to 0 never evaluates at sigma 0: AB2 instead of PRK
        ("pndm", [8.0, 0.0], 1),
        ("plms", [8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.1], 2 + 5),  # pseudo improved Euler, then 1 call each
        ("plms", [8.0, 0.0], 1),
    ],
)
def test_model_calls(sampler_id, sigmas, calls):
    model = GaussianDenoiser()
    REGISTRY[sampler_id].fn(model, start(8.0), torch.tensor(sigmas, dtype=torch.float64), disable=True)
    assert model.calls == calls


@pytest.mark.parametrize("sampler_id", ["plms", "pndm"])
def test_equal_steps_show_the_multistep_order(sampler_id):
    """Equal-step Adams-Bashforth coefficients are only right on equal steps: there PLMS/PNDM converge
    faster than the order 2 they have on a geometric grid (registry test). Warm-up local errors O(h^3)
    bound the asymptotic order by 3, the AB4 body by 4; at these step counts the slope lies between."""
    model = GaussianDenoiser(mu=0.3, s=0.5)
    x = start(2.0)[:1]
    steps, errors = [8, 16, 32, 64], []
    for n in steps:
        out = REGISTRY[sampler_id].fn(model, x, torch.linspace(2.0, 0.5, n + 1, dtype=torch.float64), disable=True)
        errors.append(float((out - model.ode_solution(x, 2.0, 0.5)).abs().max()))
    assert 3.0 <= fitted_order(steps, errors) <= 4.3


# --- UniPC ---------------------------------------------------------------------------------------


def test_unipc_step_orders_follow_core():
    """core: order = min(3, steps - 1); update k (1-based) has order k while k < order (warm-up), then
    min(order, steps + 1 - k) (lower_order_final). One step: core takes none; we take one of order 1."""
    assert [step_orders(n) for n in range(1, 7)] == [
        [1],
        [1, 1],
        [1, 2, 1],
        [1, 2, 2, 1],
        [1, 2, 3, 2, 1],
        [1, 2, 3, 3, 2, 1],
    ]


@pytest.mark.parametrize("sampler_id", ["uni_pc", "uni_pc_bh2"])
def test_unipc_one_step_is_dpm_solver_1_to_end_sigma(sampler_id):
    """One step to 0 = one first-order exponential step to core's end sigma 0.001:
    x1 = (s1 / s0) x + (1 - s1 / s0) D(x, s0)."""
    x, sigmas = start(14.6), torch.tensor([14.6, 0.0], dtype=torch.float64)
    out = REGISTRY[sampler_id].fn(toy_denoiser, x, sigmas, disable=True)
    ratio = END_SIGMA / 14.6
    expected = ratio * x + (1 - ratio) * toy_denoiser(x, torch.full([2], 14.6, dtype=torch.float64))
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)
    assert sigmas.tolist() == [14.6, 0.0], "the caller's sigmas stay untouched (core writes 0.001 into them)"


def test_unipc_variants_differ():
    """B(h) enters every corrector, so bh1 and bh2 give different results from 2 steps on."""
    x, sigmas = start(14.6), torch.tensor([14.6, 3.0, 0.5, 0.0], dtype=torch.float64)
    bh1 = REGISTRY["uni_pc"].fn(toy_denoiser, x, sigmas, disable=True, variant="bh1")
    bh2 = REGISTRY["uni_pc_bh2"].fn(toy_denoiser, x, sigmas, disable=True, variant="bh2")
    assert (bh1 - bh2).abs().max() > 1e-6
    with pytest.raises(ValueError, match="variant"):
        REGISTRY["uni_pc"].fn(toy_denoiser, x, sigmas, disable=True, variant="bh3")


def test_unipc_one_call_per_step_and_no_call_at_the_end_sigma():
    seen = []

    def model(x, sigma, **kw):
        seen.append(float(sigma[0]))
        return toy_denoiser(x, sigma)

    sigmas = torch.tensor([14.6, 6.0, 2.0, 0.7, 0.2, 0.0], dtype=torch.float64)
    REGISTRY["uni_pc"].fn(model, start(14.6), sigmas, disable=True)
    assert seen == sigmas[:-1].tolist()
