"""Our U-Net against ComfyUI's `openaimodel.UNetModel` on the same weights.

Both models hold the *same* tensors (ours loads them, ComfyUI's is built on the meta device and
has them assigned), so a full-size comparison costs one copy of the weights (3.4 GB for SD1.5/2.1).

Error measure: max |ours - core| / max |core| over the output. Both run the same float32 maths in
a different order (ComfyUI picks its attention kernel at import, we call SDPA; its Linear/Conv are
its own subclasses), so the outputs differ by rounding alone: ~1e-6 relative was observed on
scaled-down models; 1e-4 leaves room for the deeper full-size networks, and any real difference
(a missing bias, a wrong eps, swapped heads) is of order 1.
"""
from __future__ import annotations

import dataclasses
import gc

import pytest
import torch

from diffusion_anatomy.checkpoint import inspect_checkpoint, load_checkpoint
from diffusion_anatomy.unet import SD21, SDXL, UNetModel
from support import checkpoints

TOLERANCE = 1e-4


def relative_error(ours: torch.Tensor, core: torch.Tensor) -> float:
    error = ((ours - core).abs().max() / core.abs().max()).item()
    print(f"max relative error {error:.2e} (output max {core.abs().max().item():.3g})")  # shown with -rP
    return error


def run_both(comfy, ours: UNetModel, batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    config = ours.config
    core = checkpoints.comfy_unet(comfy, config)
    core.load_state_dict(ours.state_dict(), strict=True, assign=True)  # shares ours' tensors
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, size, size, generator=g)
    t = torch.linspace(999, 1, batch)  # one noisy, one almost clean sample
    context = torch.randn(batch, 77, config.context_dim, generator=g)
    y = torch.randn(batch, config.adm_in_channels, generator=g) if config.adm_in_channels else None
    with torch.no_grad():
        out = ours(x, t, context, y), core(x, t, context, y)
    del core
    return out


def random_unet(config, seed=0) -> UNetModel:
    with torch.device("meta"):
        model = UNetModel(config)
    model.load_state_dict(checkpoints.fill_random(model.state_dict(), seed), strict=True, assign=True)
    return model.eval().requires_grad_(False)


@pytest.fixture
def free_memory():
    yield
    gc.collect()


@pytest.mark.slow
def test_sd15_full_size_checkpoint(comfy, free_memory):
    """The random full-size SD1.5 file (made by ComfyUI's modules) through our reader, batch 2, 16x16 latent."""
    from comfy import model_detection

    path = checkpoints.sd15_random_checkpoint(comfy, seed=0)
    info = inspect_checkpoint(path)
    assert info.family == "sd15"
    meta_keys = {k: torch.empty(s, device="meta") for k, s in info.shapes.items()}
    assert type(model_detection.model_config_from_unet(meta_keys, "model.diffusion_model.")).__name__ == "SD15"

    ckpt = load_checkpoint(path, dtype=torch.float32)
    ours, core = run_both(comfy, ckpt.unet, batch=2, size=16)
    assert torch.isfinite(core).all() and core.abs().max() > 0.1
    assert relative_error(ours, core) <= TOLERANCE


@pytest.mark.slow
def test_sd21_full_size(comfy, free_memory):
    """SD2.1 shapes (Linear projections, 64-wide heads, context 1024), seeded weights, 8x8 latent."""
    ours, core = run_both(comfy, random_unet(SD21, seed=1), batch=2, size=8)
    assert relative_error(ours, core) <= TOLERANCE


def test_sdxl_scaled_down(comfy):
    """SDXL's structure at 1/5 width: model_channels 64 instead of 320 (full SDXL is 10 GB in fp32).

    Everything else is SDXL's: 3 levels, no attention at level 0, transformer depths 2 and 10,
    10 in the middle, context 2048, vector conditioning y of width 2816; the same config builds
    both models. Full-size key layout equality is in test_checkpoint_families.py.
    """
    config = dataclasses.replace(SDXL, model_channels=64)
    ours, core = run_both(comfy, random_unet(config, seed=2), batch=2, size=8)
    assert relative_error(ours, core) <= TOLERANCE


def test_sd15_structure_scaled_down_with_odd_latent(comfy):
    """Latent sides that are not multiples of 8: both resize each Upsample to the skip it meets."""
    from diffusion_anatomy.unet import SD15

    config = dataclasses.replace(SD15, model_channels=64, context_dim=64)
    model = random_unet(config, seed=3)
    core = checkpoints.comfy_unet(comfy, config)
    core.load_state_dict(model.state_dict(), assign=True)
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 9, 13, generator=g), torch.randn(1, 5, 64, generator=g)
    t = torch.tensor([321.5])
    with torch.no_grad():
        assert relative_error(model(x, t, context), core(x, t, context)) <= TOLERANCE
