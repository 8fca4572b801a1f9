"""U-Net Denoise refuses, before sampling, a latent made for another model family (SDXL latent, SD1.5 model)."""
from __future__ import annotations

import pytest
import torch

from support.comfy_models import sampling_only_model

pytestmark = pytest.mark.host


def test_sdxl_latent_into_sd15_model_is_refused_by_name(comfy):
    from diffusion_anatomy.nodes.denoise_nodes import UNetDenoise
    from diffusion_anatomy.nodes.model_nodes import EmptyLatent

    sdxl, sd15 = sampling_only_model("sdxl"), sampling_only_model("sd15")
    (latent,) = EmptyLatent().generate(sdxl, 64, 64, 1)
    sigmas = torch.tensor([14.6, 1.0, 0.0])
    with pytest.raises(ValueError, match="made for a SDXL model but this model is SD15"):
        UNetDenoise().denoise(sd15, [], [], latent, sampler=None, sigmas=sigmas, cfg=5.0, seed=0, add_noise=True)


def test_too_few_sigmas_is_refused(comfy):
    from diffusion_anatomy.nodes.denoise_nodes import UNetDenoise
    from diffusion_anatomy.nodes.model_nodes import EmptyLatent

    sd15 = sampling_only_model("sd15")
    (latent,) = EmptyLatent().generate(sd15, 64, 64, 1)
    with pytest.raises(ValueError, match="at least 2 sigmas"):
        UNetDenoise().denoise(sd15, [], [], latent, sampler=None, sigmas=torch.tensor([14.6]), cfg=5.0, seed=0, add_noise=True)
