"""A pack-made checkpoint with its configs in the metadata (the embedded tiny SD1-layout model) loads
through the pack's loader node: U-Net, VAE and text encoder built from the file's own configs, the
model's latent scale from the file, and a whole text-to-image pass runs through ComfyUI's sampling."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def tiny_file(comfy, tmp_path_factory):
    from diffusion_anatomy.embedded import train as et

    out = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    log = et.main(["--out", str(out), "--vae-steps", "2", "--steps", "2", "--batch", "2", "--vae-batch", "2",
                   "--latent-pool", "4", "--threads", "1", "--log-every", "1", "--save-every", "1000"])
    return out, log["scale_factor"]


def test_loader_builds_the_files_own_parts_and_draws(comfy, tiny_file, monkeypatch):
    import comfy.sample
    import comfy.samplers
    import folder_paths

    from diffusion_anatomy.embedded import config as ec
    from diffusion_anatomy.nodes import model_nodes

    path, scale = tiny_file
    monkeypatch.setattr(folder_paths, "get_full_path", lambda kind, name: str(path))
    model, clip, vae = model_nodes.CheckpointLoader().load(path.name, "auto")

    assert model.model.diffusion_model.config == ec.TINY.unet
    assert model.model.latent_format.scale_factor == pytest.approx(scale)
    assert vae.first_stage_model.cfg.ch == ec.TINY.vae.ch
    (cond,) = model_nodes.CLIPTextEncode().encode(clip, "a small red circle at the top left on a blue background")
    assert cond[0][0].shape == (1, 77, ec.TINY.clip.width)
    (uncond,) = model_nodes.CLIPTextEncode().encode(clip, "")
    (latent,) = model_nodes.EmptyLatent().generate(model, 64, 64, 1)
    assert latent["samples"].shape == (1, 4, 8, 8)

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 3)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = comfy.sample.sample_custom(model, noise, 3.0, comfy.samplers.sampler_object("euler"), sigmas, cond, uncond,
                                     latent["samples"], seed=0, disable_pbar=True)
    (image,) = model_nodes.VAEDecode().decode({"samples": out}, vae, False, 512)
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
