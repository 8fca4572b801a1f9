"""Compile U-Net (Diffusion Anatomy) on the CPU with a tiny pack U-Net, through ComfyUI's own sampling.

torch.compile runs with the `aot_eager` backend (dynamo's graph capture, guards and recompiles, and
AOTAutograd's functionalised graph, without code generation) or with a counting backend: inductor's
C++ code generation takes many minutes on this 2-core machine (bench/README.md has the timing), the
rest of the path (the wrapper inside model management, parameters as graph inputs, recompiles) is the
same. The backend is the node's choice; what is tested is the node's contract.
"""
from __future__ import annotations

import logging

import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def tiny_model(comfy):
    from support.comfy_models import tiny_pack_model

    return tiny_pack_model()


def sample(model, size=8, seed=0):
    """Two Euler steps of ComfyUI's sampling (cfg 1: one U-Net call per step), as SamplerCustom runs them."""
    import comfy.sample
    import comfy.samplers

    ctx = model.model.diffusion_model.config.context_dim
    cond = [[torch.randn(1, 77, ctx, generator=torch.Generator().manual_seed(1)), {}]]
    noise = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(seed))
    sigmas = torch.tensor([14.6, 3.0, 0.5])
    return comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.sampler_object("euler"), sigmas, cond, cond,
                                      torch.zeros_like(noise), seed=seed, disable_pbar=True)


class CountingBackend:
    """A torch.compile backend that runs the captured graph as it is and counts the graphs it was given."""

    def __init__(self, fail: bool = False):
        self.graphs, self.fail = 0, fail

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        if self.fail:
            raise RuntimeError("simulated compiler failure")
        return gm.forward


def out_weight_patch(model, scale=0.05):
    """A weight patch (a LoRA-like diff) on the U-Net's last convolution."""
    key = "diffusion_model.out.2.weight"
    weight = model.get_model_object(key)
    delta = scale * torch.randn(weight.shape, generator=torch.Generator().manual_seed(3))
    patched = model.clone()
    patched.add_patches({key: (delta,)}, 1.0)
    return patched


@pytest.fixture(scope="module")
def compiled(tiny_model):
    """The tiny MODEL through the node's compile path, with a counting backend (dynamo's real capture and guards)."""
    from diffusion_anatomy.nodes.compile_nodes import compile_model

    backend = CountingBackend()
    model, state = compile_model(tiny_model, backend=backend)
    return model, state, backend


def test_compiled_equals_eager_and_a_lora_after_compiling_applies(tiny_model, compiled):
    model, state, backend = compiled
    eager_out, compiled_out = sample(tiny_model), sample(model)
    assert state.failed is None and backend.graphs >= 1, "the compiled twin ran"
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-4, atol=1e-4)

    # a weight patch added after the node (as LoraLoader downstream of it) reaches the compiled code
    eager_lora, compiled_lora = sample(out_weight_patch(tiny_model)), sample(out_weight_patch(model))
    assert (eager_lora - eager_out).abs().max() > 1e-2, "the patch changes the output"
    torch.testing.assert_close(compiled_lora, eager_lora, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sample(model), eager_out, rtol=1e-4, atol=1e-4)  # and is undone after


def test_a_new_shape_recompiles_at_most_once(compiled):
    """A sampling run at a new size compiles at most one graph; a size seen before, or a new sigma, none.

    (On the CPU, the mkldnn convolution's backend choice depends on the size, so dynamo guards on size
    ranges and some new sizes recompile even after sizes became symbolic: one graph each, never more.)"""
    model, _, backend = compiled
    sample(model, size=8)
    once = backend.graphs  # the graphs of one compile (more than one where dynamo splits the forward)
    graphs = [backend.graphs]
    for size in (8, 12, 8, 12):
        sample(model, size=size, seed=size + len(graphs))  # other noise and seeds each time: values are not guarded
        graphs.append(backend.graphs)
    new = [b - a for a, b in zip(graphs[:-1], graphs[1:])]
    assert new[0] == 0, new  # the same size, another seed: nothing recompiles
    assert new[1] <= once, (new, once)  # a new size: each captured graph recompiles at most once
    assert new[2] == 0 and new[3] == 0, new  # sizes seen before: no compile


def test_unavailable_compiler_warns_once_and_runs_eager(tiny_model, monkeypatch, caplog):
    from diffusion_anatomy.nodes import compile_nodes
    from comfy.patcher_extension import WrappersMP

    monkeypatch.setattr(compile_nodes, "unavailable_reason", lambda backend, device: "simulated: no compiler")
    monkeypatch.setattr(compile_nodes, "_warned", set())
    with caplog.at_level(logging.WARNING):
        (first,) = compile_nodes.CompileUNet().compile(tiny_model, "inductor", "default")
        (second,) = compile_nodes.CompileUNet().compile(tiny_model, "inductor", "default")
    assert sum("simulated: no compiler" in r.getMessage() for r in caplog.records) == 1
    assert not first.get_wrappers(WrappersMP.APPLY_MODEL, compile_nodes.COMPILE_KEY)
    torch.testing.assert_close(sample(second), sample(tiny_model), rtol=0, atol=0)


def test_a_failing_compile_falls_back_to_eager_once(tiny_model, caplog):
    from diffusion_anatomy.nodes.compile_nodes import compile_model

    backend = CountingBackend(fail=True)
    compiled, state = compile_model(tiny_model, backend=backend)
    with caplog.at_level(logging.WARNING):
        out = sample(compiled)
        tries = backend.graphs
        again = sample(compiled)
    assert tries >= 1 and backend.graphs == tries, "after the failure the compiler is not tried again"
    assert isinstance(state.failed, Exception)
    assert sum("compiling failed" in r.getMessage() for r in caplog.records) == 1
    eager = sample(tiny_model)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    torch.testing.assert_close(again, eager, rtol=0, atol=0)


def test_bad_backend_is_refused_by_name(tiny_model):
    from diffusion_anatomy.nodes.compile_nodes import CompileUNet

    with pytest.raises(ValueError, match="backend must be one of .* not 'tensorrt'"):
        CompileUNet().compile(tiny_model, "tensorrt", "default")
