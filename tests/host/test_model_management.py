"""The pack's MODEL moves as ComfyUI's model management asks (CPU-only machine: what ModelPatcher does can
be observed, not a GPU's memory): a partial (lowvram/novram) load runs the layers left on the offload device
through ComfyUI's cast path with their LoRA patches, unloading restores the original weights and leaves
nothing loaded, and the weights are in the dtype ComfyUI picks for the device."""
from __future__ import annotations

import pytest
import torch

from support.comfy_models import tiny_pack_model

pytestmark = pytest.mark.host

def with_patches(model, scale=0.01):
    """A clone with LoRA-like weight diffs on every convolution and linear weight of the U-Net."""
    patched = model.clone()
    gen = torch.Generator().manual_seed(3)
    keys = [f"diffusion_model.{k}" for k, v in model.model.diffusion_model.state_dict().items() if v.ndim >= 2]
    patched.add_patches({k: (scale * torch.randn(model.get_model_object(k).shape, generator=gen),) for k in keys}, 1.0)
    return patched


def run(model):
    """One U-Net call through BaseModel.apply_model (what sampling calls), on the model's current placement."""
    ctx = model.model.diffusion_model.config.context_dim
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, ctx, generator=g)
    with torch.no_grad():
        return model.model.apply_model(x, torch.tensor([5.0, 0.5]), c_crossattn=c)


def loaded(model) -> bool:
    import comfy.model_management as mm

    return any(getattr(m.model, "model", None) is model.model for m in mm.current_loaded_models)


@pytest.fixture
def tiny(comfy):
    import comfy.model_management as mm

    model = tiny_pack_model()
    yield model
    mm.unload_all_models()


def test_partial_load_runs_offloaded_layers_with_their_patches(tiny):
    """A load with a weight budget of a third of the model (what load_models_gpu gives in lowvram mode, or
    novram's minimum): the layers that do not fit are marked for ComfyUI's cast path, and the output with
    the patches equals a full load's (a plain torch layer left behind would run unpatched)."""
    import comfy.model_management as mm

    patched = with_patches(tiny)
    mm.load_models_gpu([patched])  # full load (a CPU is never lowvram in load_models_gpu)
    full = run(patched)
    mm.load_models_gpu([tiny])  # switching clones unpatches
    unpatched_out = run(tiny)
    assert (full - unpatched_out).abs().max() > 1e-3, "the patches change the output"
    mm.unload_all_models()

    budget = patched.model_size() // 3
    patched.patch_model(device_to=patched.load_device, lowvram_model_memory=budget)
    try:
        assert patched.model.model_lowvram
        cast = [m for m in patched.model.diffusion_model.modules() if getattr(m, "comfy_cast_weights", False)]
        assert cast, "some layers run through the cast path"
        with_patch_functions = [m for m in cast if getattr(m, "weight_function", [])]
        assert with_patch_functions, "patched layers left behind carry their patches as weight functions"
        torch.testing.assert_close(run(patched), full, rtol=1e-5, atol=1e-5)
    finally:
        patched.unpatch_model(device_to=patched.offload_device)
    assert not any(getattr(m, "comfy_cast_weights", False) for m in patched.model.diffusion_model.modules())
    mm.load_models_gpu([tiny])
    torch.testing.assert_close(run(tiny), unpatched_out, rtol=0, atol=0)


def test_unloading_restores_the_weights_and_leaves_nothing_loaded(tiny):
    import comfy.model_management as mm

    before = {k: v.clone() for k, v in tiny.model.diffusion_model.state_dict().items()}
    patched = with_patches(tiny)
    mm.load_models_gpu([patched])
    assert loaded(patched)
    after_load = patched.model.diffusion_model.state_dict()
    assert not torch.equal(after_load["out.2.weight"], before["out.2.weight"]), "the patch is in the weights"
    mm.unload_all_models()
    assert not loaded(patched) and not loaded(tiny)
    assert patched.model.device == patched.offload_device and patched.model.model_loaded_weight_memory == 0
    assert not patched.backup, "no weight backup kept"
    state = patched.model.diffusion_model.state_dict()
    assert all(torch.equal(state[k], v) and state[k].device == patched.offload_device for k, v in before.items())


@pytest.mark.parametrize("picked, manual_cast, held", [
    (torch.float32, None, torch.float32),     # a CPU: ComfyUI's own choice here
    (torch.float16, None, torch.float16),     # a GPU with fp16
    (torch.bfloat16, None, torch.bfloat16),   # a GPU with bf16
    (torch.float16, torch.float32, torch.float32),  # fp16 storage, fp32 compute: held in the compute dtype
])
def test_weights_are_in_the_dtype_comfyui_picks(comfy, monkeypatch, picked, manual_cast, held):
    import comfy.model_management as mm

    monkeypatch.setattr(mm, "unet_dtype", lambda *a, **k: picked)
    monkeypatch.setattr(mm, "unet_manual_cast", lambda *a, **k: manual_cast)
    model = tiny_pack_model()
    assert {p.dtype for p in model.model.diffusion_model.parameters()} == {held}
    assert model.model.get_dtype() == held
