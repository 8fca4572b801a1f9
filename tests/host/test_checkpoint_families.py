"""Family detection on the real key layouts, as ComfyUI builds and saves them (meta tensors: no weights).

For each family the whole single-file key set (U-Net, VAE, text encoders in their LDM/sgm layout)
comes from ComfyUI's own modules; our reader must name the family ComfyUI's `model_detection`
names, build a U-Net with exactly ComfyUI's U-Net tensors, and split off the VAE and text encoders.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from diffusion_anatomy.checkpoint import UnsupportedFamilyError, detect_checkpoint
from diffusion_anatomy.checkpoint.detect import expected_shapes
from diffusion_anatomy.checkpoint.reader import SD2_V_PROBE, UNET_PREFIX
from diffusion_anatomy.unet import SD15, SD21, SDXL, UNetConfig
from support import checkpoints

FAMILIES = {
    "sd15": (checkpoints.sd15_keys, SD15, "SD15", ["cond_stage_model."]),
    "sd21": (checkpoints.sd21_keys, SD21, "SD20", ["cond_stage_model."]),
    "sdxl": (checkpoints.sdxl_keys, SDXL, "SDXL", ["conditioner.embedders.0.", "conditioner.embedders.1."]),
}


def shapes_of(keys):
    return {k: tuple(v.shape) for k, v in keys.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_of_the_real_layout(comfy, family):
    from comfy import model_detection

    make_keys, preset, comfy_class, text_prefixes = FAMILIES[family]
    keys = make_keys(comfy)
    info = detect_checkpoint(shapes_of(keys), {}, f"{family}.safetensors")
    assert (info.family, info.config) == (family, preset)
    assert type(model_detection.model_config_from_unet(keys, UNET_PREFIX)).__name__ == comfy_class
    # our U-Net has exactly ComfyUI's U-Net tensors, shape for shape
    theirs = {k[len(UNET_PREFIX):]: s for k, s in shapes_of(keys).items() if k.startswith(UNET_PREFIX)}
    assert expected_shapes(info.config) == theirs
    assert info.text_encoder_prefixes == text_prefixes
    assert any(k.startswith("first_stage_model.encoder.") for k in keys)


@pytest.mark.parametrize("spread", [0.3, 0.01])
def test_sd2_eps_or_v_follows_comfyui(comfy, spread):
    from comfy import model_base, supported_models

    keys = checkpoints.sd21_keys(comfy)
    bias = spread * torch.randn(1280, generator=torch.Generator().manual_seed(0))
    info = detect_checkpoint(shapes_of(keys), {}, read_tensor=lambda name: bias)
    ours = info.config.prediction
    model_config = supported_models.SD20(checkpoints.comfy_unet_kwargs(SD21))
    theirs = model_config.model_type({SD2_V_PROBE: bias})
    assert {model_base.ModelType.V_PREDICTION: "v", model_base.ModelType.EPS: "eps"}[theirs] == ours
    assert ours == ("v" if spread > 0.09 else "eps")


SDXL_REFINER = UNetConfig(
    model_channels=384, channel_mult=(1, 2, 4, 4), transformer_depth=(0, 4, 4, 0), transformer_depth_middle=4,
    context_dim=1280, num_heads=None, head_dim=64, use_linear_in_transformer=True, adm_in_channels=2560,
)


@pytest.mark.parametrize(
    "config, comfy_class, reason",
    [
        (SDXL_REFINER, "SDXLRefiner", "SDXL refiner"),
        (dataclasses.replace(SD15, in_channels=9), "SD15", "inpainting"),
    ],
    ids=["sdxl-refiner", "sd15-inpainting"],
)
def test_unsupported_families_are_named(comfy, config, comfy_class, reason):
    """Layouts ComfyUI knows (it names the class) that we refuse, saying what they look like."""
    from comfy import model_detection

    unet = checkpoints.comfy_unet(comfy, config).state_dict()
    keys = {UNET_PREFIX + k: v for k, v in unet.items()}
    assert type(model_detection.model_config_from_unet(keys, UNET_PREFIX)).__name__ == comfy_class
    with pytest.raises(UnsupportedFamilyError, match=reason):
        detect_checkpoint(shapes_of(keys), {}, "x.safetensors")
