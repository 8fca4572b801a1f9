"""The anatomy views on the embedded model, in-process: their numbers, not only their pictures.

Forward diffusion: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with abar_t from the DDPM linear-beta
schedule SD1 uses (betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2, abar_t = prod(1 - beta)),
computed here from that definition, not from ComfyUI.
Denoising steps: the recorder sees what the sampler does without changing it.
"""
from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.host

PROMPT = "a large red circle at the top left on a blue background"
SAMPLERS = ["euler", "heun", "dpmpp_2m", "lms", "uni_pc"]


@pytest.fixture(scope="module")
def embedded(comfy, tmp_path_factory):
    import folder_paths

    folder_paths.set_temp_directory(str(tmp_path_factory.mktemp("temp")))  # the views' shown pictures land here

    from diffusion_anatomy.embedded import LOADER_NAME
    from diffusion_anatomy.nodes import model_nodes

    model, clip, vae = model_nodes.CheckpointLoader().load(LOADER_NAME, "auto")
    (pos,) = model_nodes.CLIPTextEncode().encode(clip, PROMPT)
    (neg,) = model_nodes.CLIPTextEncode().encode(clip, "")
    (empty,) = model_nodes.EmptyLatent().generate(model, 64, 64, 1)
    return dict(model=model, clip=clip, vae=vae, pos=pos, neg=neg, empty=empty)


def ddpm_sqrt_alpha_bar() -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).sqrt()


def sample(e, sampler, steps=8, seed=3, recorder_every=None, live=False):
    """U-Net Denoise on the embedded model; with `recorder_every` the sampler is wrapped by the recorder."""
    import comfy.samplers

    from diffusion_anatomy.nodes import anatomy_nodes, denoise_nodes
    from diffusion_anatomy.nodes.schedule_nodes import model_schedule

    ksampler = comfy.samplers.sampler_object(sampler)
    recording = None
    if recorder_every is not None:
        ksampler, recording = anatomy_nodes.DenoisingStepsRecorder().wrap(ksampler, recorder_every, live, e["vae"], unique_id="1")
    sigmas = model_schedule(e["model"], "karras", steps, 1.0)
    out, denoised = denoise_nodes.UNetDenoise().denoise(e["model"], e["pos"], e["neg"], e["empty"], ksampler, sigmas, 4.0, seed, True)
    return out, denoised, recording


def test_forward_diffusion_noise_has_the_schedules_std_and_the_clean_share(embedded):
    from comfy.sample import prepare_noise

    from diffusion_anatomy.nodes import anatomy_nodes
    from diffusion_anatomy.nodes.model_nodes import VAEEncode

    e = embedded
    model = e["model"]
    image = torch.rand(4, 64, 64, 3)  # a batch of 4 pictures: 4 * 4*8*8 = 1024 numbers per noised latent
    (latent,) = VAEEncode().encode(image, e["vae"])
    x0 = model.model.process_latent_in(latent["samples"].float())
    eps = prepare_noise(latent["samples"], 7)
    reference = ddpm_sqrt_alpha_bar()
    n = eps.numel()
    for t in (50, 250, 500, 750, 999):
        result = anatomy_nodes.ForwardDiffusion().run(model, e["vae"], 7, 6, "", t, 4, latent=latent)
        strip, noised, sigmas = result["result"]
        x_sigma = model.model.process_latent_in(noised["samples"].float())
        sigma = float(sigmas[0])
        a = 1 / math.sqrt(1 + sigma ** 2)
        assert a == pytest.approx(float(reference[t]), rel=2e-3)  # ComfyUI's sigma table is the DDPM schedule
        x_t = x_sigma * a  # the document's form
        residual = x_t - a * x0  # = sqrt(1 - abar_t) eps
        want = math.sqrt(1 - a * a)
        # the sample std of n standard normals has relative error ~ 1/sqrt(2n) (3.1% for n = 1024); allow 4 of those
        assert residual.std().item() == pytest.approx(want, rel=4 / math.sqrt(2 * n))
        # the clean share: with eps known, x_t - sqrt(1 - abar) eps is exactly sqrt(abar) x0
        share = ((x_t - want * eps) * x0).sum() / (x0 * x0).sum()
        assert share.item() == pytest.approx(float(reference[t]), rel=2e-3)
    # at t = 999: sqrt(abar_999) = 0.068265 (SD1's linear-beta schedule; sigma_999 = 14.6146)
    assert float(reference[999]) == pytest.approx(0.068265, abs=2e-6)
    assert strip.shape[0] == 1 and strip.shape[2] > 6 * 128  # x0 and 6 noised pictures side by side


def test_forward_diffusion_latent_continues_in_unet_denoise(embedded):
    """Reverse diffusion from t = 500: U-Net Denoise with add_noise off starts exactly at the noised latent."""
    import comfy.samplers

    from diffusion_anatomy.nodes import anatomy_nodes, denoise_nodes

    e = embedded
    out, _, _ = sample(e, "euler", steps=6)
    (_, noised, sigmas) = anatomy_nodes.ForwardDiffusion().run(e["model"], e["vae"], 1, 3, "", 500, 6, latent=out)["result"]
    assert len(sigmas) == 7 and float(sigmas[-1]) == 0
    back, _ = denoise_nodes.UNetDenoise().denoise(e["model"], e["pos"], e["neg"], noised, comfy.samplers.sampler_object("euler"), sigmas, 4.0, 0, False)
    # brought back close to the picture it started from (its noise std at t=500 is ~0.93 in the working space)
    start = e["model"].model.process_latent_in(out["samples"])
    got = e["model"].model.process_latent_in(back["samples"])
    noisy = e["model"].model.process_latent_in(noised["samples"]) / math.sqrt(1 + float(sigmas[0]) ** 2)
    assert (got - start).pow(2).mean() < 0.5 * (noisy - start).pow(2).mean()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_denoising_steps_leave_the_latent_bit_identical_and_converge(embedded, sampler):
    plain, plain_x0, _ = sample(embedded, sampler)
    recorded, recorded_x0, recording = sample(embedded, sampler, recorder_every=1)
    assert torch.equal(plain["samples"], recorded["samples"])
    assert torch.equal(plain_x0["samples"], recorded_x0["samples"])
    steps = recording.steps
    assert [s.i for s in steps] == list(range(8))
    # the last x0 prediction is U-Net Denoise's denoised output
    model = embedded["model"].model
    assert torch.allclose(model.process_latent_out(steps[-1].denoised[None]), recorded_x0["samples"].float(), atol=1e-6)
    # one record per step, in the schedule's order
    from diffusion_anatomy.nodes.schedule_nodes import model_schedule

    sigmas = model_schedule(embedded["model"], "karras", 8, 1.0)
    assert [s.sigma for s in steps] == pytest.approx(sigmas[:-1].tolist(), rel=1e-6)
    # the x0 prediction approaches the final latent: its distance falls over the steps, overall (a multistep
    # sampler's x0 may step back on the way: UniPC's does twice at 8 steps on the retrained embedded model)
    final = model.process_latent_in(recorded["samples"].float())[0]
    dist = [float((s.denoised - final).norm()) for s in steps]
    assert dist[-1] < 0.25 * dist[0], dist
    assert max(dist[len(dist) // 2:]) < max(dist[:len(dist) // 2]), dist


def test_denoising_steps_view_draws_a_column_per_step(embedded):
    from diffusion_anatomy.nodes import anatomy_nodes

    out, _, recording = sample(embedded, "euler", steps=6, recorder_every=2, live=True)  # the live strip drawn at each kept step
    assert [s.i for s in recording.steps] == [0, 2, 4, 5]
    (grid,) = anatomy_nodes.DenoisingSteps().show(recording, embedded["vae"], out, True, 10)["result"]
    assert grid.shape[0] == 1 and grid.shape[2] > 4 * 96 and grid.shape[1] > 3 * 96


def test_recorder_works_with_core_sampler_custom(embedded):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import SamplerCustom

    from diffusion_anatomy.nodes import anatomy_nodes
    from diffusion_anatomy.nodes.schedule_nodes import model_schedule

    e = embedded
    sigmas = model_schedule(e["model"], "karras", 5, 1.0)
    run = lambda s: SamplerCustom().execute(e["model"], True, 2, 4.0, e["pos"], e["neg"], s, sigmas, e["empty"])  # noqa: E731
    wrapped, recording = anatomy_nodes.DenoisingStepsRecorder().wrap(comfy.samplers.sampler_object("dpmpp_2m"), 1, False)
    plain = run(comfy.samplers.sampler_object("dpmpp_2m"))
    recorded = run(wrapped)
    assert torch.equal(plain[0]["samples"], recorded[0]["samples"])
    assert len(recording.steps) == 5


def test_latent_channels_shows_each_channel_and_the_decode(embedded):
    from diffusion_anatomy.nodes import anatomy_nodes

    out, _, _ = sample(embedded, "euler", steps=4)
    (image,) = anatomy_nodes.LatentChannels().show(out, embedded["model"], embedded["vae"])["result"]
    assert image.shape[2] > 6 * 128  # 4 channels + the RGB preview + the decode, each at least 128 wide


def test_latent_of_another_family_is_refused(embedded):
    from diffusion_anatomy.nodes import anatomy_nodes

    wrong = {"samples": torch.zeros(1, 16, 8, 8)}
    with pytest.raises(ValueError, match="samples.*16, 8, 8.*4-channel"):
        anatomy_nodes.LatentChannels().show(wrong, embedded["model"], embedded["vae"])
    with pytest.raises(ValueError, match="latent.*SDXL"):
        anatomy_nodes.ForwardDiffusion().run(embedded["model"], embedded["vae"], 0, 3, "", 500, 4,
                                             latent={"samples": torch.zeros(1, 4, 8, 8), "diffusion_anatomy_latent_format": "SDXL"})


@pytest.mark.parametrize("text, message", [("0, 500, 1000", "timestep 1000 is out of range.*0 to 999"),
                                           ("0, ten", "'ten' is not"), (" , ", "holds no number")])
def test_bad_timesteps_name_the_input(embedded, text, message):
    from diffusion_anatomy.nodes import anatomy_nodes

    with pytest.raises(ValueError, match=message):
        anatomy_nodes.ForwardDiffusion().run(embedded["model"], embedded["vae"], 0, 3, text, 500, 4, latent=embedded["empty"])


def tokenizer_rows(clip, text):
    """The tokenizer's own output, flattened: (chunk, position, id, weight)."""
    (chunks,) = clip.tokenize(text).values()
    return [(c, p, int(t), float(w)) for c, chunk in enumerate(chunks) for p, (t, w, *_) in enumerate(chunk)]


@pytest.mark.parametrize("text", ["a small (red:1.3) circle at the (top left) on a blue background",
                                  ", ".join(f"a red square number {k}" for k in range(30))])
def test_tokens_table_is_the_tokenizers_output(embedded, text):
    from diffusion_anatomy.anatomy.tokens import token_rows
    from diffusion_anatomy.nodes import anatomy_nodes

    clip = embedded["clip"]
    ((key, chunks, words),) = anatomy_nodes.clip_tokens(clip, text)
    rows = token_rows(chunks, words)
    assert [(r.chunk, r.position, r.id, r.weight) for r in rows] == tokenizer_rows(clip, text)
    result = anatomy_nodes.Tokens().show(clip, text, False)["result"]
    table_text = result[1]
    lines = table_text.splitlines()[3:]  # after the prompt, the summary and the header
    assert len(lines) == len(rows) and all(len(line.split("\t")) == 6 for line in lines)
    assert {r.role for r in rows if r.position == 0} == {"BOS"}
    chunks_n = len(chunks)
    if len(text) > 200:
        assert chunks_n >= 2 and all(len(c) == 77 for c in chunks)
    else:
        weights = {r.token.replace("</w>", ""): r.weight for r in rows}  # core's vocabulary marks word ends, the pack's decode does not
        assert weights["red"] == pytest.approx(1.3) and weights["top"] == pytest.approx(1.1) and weights["circle"] == 1.0
        assert sum(r.role == "EOS" for r in rows) == 1 and rows[-1].role == "PAD"


def test_tokens_refuses_an_empty_prompt(embedded):
    from diffusion_anatomy.nodes import anatomy_nodes

    with pytest.raises(ValueError, match="text is empty"):
        anatomy_nodes.Tokens().show(embedded["clip"], "  ", False)


def test_tokens_table_reads_cores_tokenizer_too(comfy):
    """Core's SD1 tokenizer (Hugging Face vocabulary, its own weight parser) through the same node code."""
    import types

    from comfy.sd1_clip import SD1Tokenizer

    from diffusion_anatomy.anatomy.tokens import token_rows
    from diffusion_anatomy.nodes import anatomy_nodes

    tokenizer = SD1Tokenizer()
    clip = types.SimpleNamespace(tokenizer=tokenizer, tokenize=tokenizer.tokenize_with_weights)
    text = "a (blue:0.8) square, " * 30  # > 77 tokens
    ((key, chunks, words),) = anatomy_nodes.clip_tokens(clip, text)
    rows = token_rows(chunks, words)
    assert key == "l" and len(chunks) >= 2
    assert [(r.chunk, r.position, r.id, r.weight) for r in rows] == tokenizer_rows(clip, text)
    assert {r.token for r in rows if r.weight == pytest.approx(0.8)} == {"blue</w>"}
    assert [r.role for r in rows if r.chunk == 0][:2] == ["BOS", "word"]
