"""The schedule nodes give what core BasicScheduler gives, for every schedule core has."""
from __future__ import annotations

import pytest
import torch

from support.comfy_models import sampling_only_model

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def nodes_and_model(comfy):
    from comfy_extras.nodes_custom_sampler import BasicScheduler

    from diffusion_anatomy.nodes import schedule_nodes

    return schedule_nodes, BasicScheduler, sampling_only_model("sd15")


@pytest.mark.parametrize("steps,denoise", [(1, 1.0), (2, 1.0), (20, 1.0), (10, 0.6), (5, 0.0)])
def test_scheduler_node_equals_core_basic_scheduler(comfy, nodes_and_model, steps, denoise):
    schedule_nodes, BasicScheduler, model = nodes_and_model
    for name in comfy.samplers.SCHEDULER_NAMES:
        if name not in schedule_nodes.SCHEDULES:
            continue
        (ours,) = schedule_nodes.Scheduler().schedule(model, name, steps, denoise)
        (core,) = BasicScheduler.execute(model, name, steps, denoise).result
        assert ours.dtype == core.dtype == torch.float32 and ours.shape == core.shape, name
        if name == "kl_optimal" and steps == 1 and denoise == 1.0:
            # core divides by steps - 1 and returns NaN here; ours is the one-step schedule [sigma_max, 0]
            assert core.isnan().any()
            sigma_max = float(model.get_model_object("model_sampling").sigma_max)
            torch.testing.assert_close(ours, torch.tensor([sigma_max, 0.0]))
            continue
        # core computes some schedules in float32 (karras: (s^(1/rho)) ramps): 1e-5 relative covers it.
        torch.testing.assert_close(ours, core, rtol=1e-5, atol=1e-7, msg=name)


def test_every_core_scheduler_is_offered(comfy, nodes_and_model):
    schedule_nodes = nodes_and_model[0]
    missing = set(comfy.samplers.SCHEDULER_NAMES) - set(schedule_nodes.SCHEDULES)
    assert not missing


def test_per_schedule_node_passes_its_options(comfy, nodes_and_model):
    schedule_nodes, _, model = nodes_and_model
    node = schedule_nodes.NODE_CLASS_MAPPINGS["DiffusionAnatomySchedule_karras"]()
    (rho7,) = node.schedule(model, 10, 1.0, rho=7.0)
    (rho1,) = node.schedule(model, 10, 1.0, rho=1.0)
    sampling = model.get_model_object("model_sampling")
    lo, hi = float(sampling.sigma_min), float(sampling.sigma_max)
    # rho = 1 is linear in sigma between the model's ends
    torch.testing.assert_close(rho1[:-1], torch.linspace(hi, lo, 10), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(rho7, rho1)
