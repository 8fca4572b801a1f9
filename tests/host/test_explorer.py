"""Anatomy Explorer Capture in-process, on the embedded model through ComfyUI's own sampling (CFG 5, 64x64, 20
steps unless told): what it records is what the sampler did, and recording changes nothing.

- the sampled latent is bit-identical with and without the capture (every hook returns what it is given,
  and the attn2 replacement returns the output of the attention function the U-Net would have called);
- the recorded x0 of the last step is U-Net Denoise's `denoised_output` (the same tensor, decoded out of
  the working space by the same operation: equal, not close);
- uncond + s (cond - uncond) at the run's CFG is the recorded guided x0 (ComfyUI's cfg_function computes
  that very expression in float32; 1e-6 of the largest value leaves room for another summation order);
- the per-step, per-level word maps summed are Cross-Attention per Word's map (the same attention summed
  in another order, and the other capture's own single-pass attention moves the latent by float32
  rounding: 1e-4 relative, while a missed layer is 1/7 of the sum).
"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host

PROMPT = "a large red circle at the top left on a blue background"


@pytest.fixture(scope="module")
def embedded(comfy):
    from diffusion_anatomy.embedded import LOADER_NAME
    from diffusion_anatomy.nodes import model_nodes

    return model_nodes.CheckpointLoader().load(LOADER_NAME, "auto")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    from diffusion_anatomy.anatomy.explorer import RunStore
    from diffusion_anatomy.nodes import explorer_nodes

    store = RunStore(tmp_path / "runs")
    monkeypatch.setattr(explorer_nodes, "store", lambda: store)
    return store


def sample(comfy, model, clip, sampler="euler", steps=20, cfg=5.0, seed=7, text=PROMPT, batch=1):
    import comfy.sample

    from diffusion_anatomy.nodes import model_nodes

    (positive,) = model_nodes.CLIPTextEncode().encode(clip, text)
    (negative,) = model_nodes.CLIPTextEncode().encode(clip, "")
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", steps)
    latent = torch.zeros(batch, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object(sampler), sigmas, positive, negative,
                                      latent, seed=seed, disable_pbar=True)


def capture(model, clip, vae, **kw):
    from diffusion_anatomy.nodes.explorer_nodes import ExplorerCapture

    args = dict(text=PROMPT, pictures="vae", levels_every=5, keep_runs=4, label="", vae=vae)
    args.update(kw)
    (patched,) = ExplorerCapture().capture(model, clip, **args)
    recording = patched.model_options["sampler_post_cfg_function"][-1].__self__
    return patched, recording


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "heun"])
def test_capture_leaves_the_latent_bit_identical_and_records_every_step(comfy, embedded, runs, sampler):
    model, clip, vae = embedded
    plain = sample(comfy, model, clip, sampler)
    patched, recording = capture(model, clip, vae)
    captured = sample(comfy, patched, clip, sampler)
    assert torch.equal(plain, captured)
    assert [s.i for s in recording.steps] == list(range(20))
    calls = {"euler": 20, "dpmpp_2m": 20, "heun": 39}[sampler]  # heun: 2 per step, 1 at the last (sigma 0 next)
    assert recording.attention_calls == 7 * calls  # the tiny U-Net's 7 cross-attention layers per model call
    (run_id,) = runs.run_ids()
    index = runs.index(run_id)
    assert index["status"] == "complete" and index["recorded_steps"] == 20 and index["sampler"] == sampler
    assert index["cfg"] == 5.0 and index["seed"] == 7 and index["size"]["width"] == 64
    assert sorted(index["unet"]["names"])[:1] and [s["i"] for s in index["unet"]["steps"]] == [0, 5, 10, 15, 19]


def test_last_x0_is_unet_denoise_output_and_cfg_recombines(comfy, embedded, runs):
    import comfy.samplers

    from diffusion_anatomy.nodes import denoise_nodes, model_nodes

    model, clip, vae = embedded
    patched, recording = capture(model, clip, vae)
    (positive,) = model_nodes.CLIPTextEncode().encode(clip, PROMPT)
    (negative,) = model_nodes.CLIPTextEncode().encode(clip, "")
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 12)
    sampler = comfy.samplers.sampler_object("dpmpp_2m")
    out, denoised = denoise_nodes.UNetDenoise().denoise(patched, positive, negative, latent, sampler, sigmas, 5.0, 3, True)
    last = recording.steps[-1]
    assert last.i == 11
    assert torch.equal(model.model.process_latent_out(last.x0[None]), denoised["samples"])
    for s in recording.steps:
        guided = s.uncond + s.scale * (s.cond - s.uncond)
        assert s.scale == 5.0
        assert (guided - s.x0).abs().max() <= 1e-6 * s.x0.abs().max()


def test_per_step_maps_sum_to_cross_attention_per_word(comfy, embedded, runs):
    from diffusion_anatomy.anatomy import attention_maps as am
    from diffusion_anatomy.anatomy import explorer as ex
    from diffusion_anatomy.nodes import anatomy_attention_nodes as views

    model, clip, vae = embedded
    patched, maps = views.CrossAttentionCapture().capture(model)
    sample(comfy, patched, clip)
    words, n = views.words_of_prompt(clip, PROMPT)
    expected = am.word_heatmaps(am.fold_tokens(maps.sums.float().cpu(), n)[0], words)

    patched, recording = capture(model, clip, vae)
    sample(comfy, patched, clip)
    total = torch.stack([s.maps for s in recording.steps]).sum(dim=(0, 1))  # [tokens, h, w]
    names = [t.text for t in recording.tokens]
    assert names[0] == "<BOS>" and names[-1] == "<EOS>" and names[1:-1] == [w.text for w in words]
    error = (total[1:-1] - expected).abs().max() / expected.abs().max()
    print(f"explorer maps vs Cross-Attention per Word: max relative difference {error:.2e}")
    assert error < 1e-4
    # each step holds its own share: the shape word's map is not the same at the first and the last step
    circle = names.index("circle")
    first, last = recording.steps[0].maps[:, circle].sum(0), recording.steps[-1].maps[:, circle].sum(0)
    assert not torch.allclose(am.normalise(first), am.normalise(last), atol=1e-2)
    # and the store's float16 copy is that, rounded
    (run_id,) = runs.run_ids()
    index = runs.index(run_id)
    stored = torch.frombuffer(bytearray(runs.file(run_id, "attention.f16").read_bytes()), dtype=torch.float16).float()
    stored = stored.reshape(index["attention"]["shape"])
    assert torch.allclose(stored, torch.stack([s.maps for s in recording.steps]), rtol=1e-3, atol=1e-3)
    assert index["attention"]["levels"] == list(ex.LEVELS)


def test_batch_records_the_first_picture_and_cfg1_has_no_guidance(comfy, embedded, runs):
    model, clip, vae = embedded
    patched, recording = capture(model, clip, vae, pictures="latent_preview", levels_every=0)
    out = sample(comfy, patched, clip, batch=2, cfg=1.0, steps=4)
    assert out.shape[0] == 2
    assert recording.steps[-1].cond is None
    index = runs.index(runs.run_ids()[0])
    assert index["size"]["batch"] == 2 and index["size"]["picture"] == 0
    assert index["guidance"] is False and "cond" not in index["pictures"]["kinds"]
    assert index["pictures"]["source"] == "latent_preview" and index["pictures"]["tile"] == [8, 8]
