"""Small ComfyUI MODEL objects for in-process node tests (no weights: model_sampling only)."""
from __future__ import annotations


def sampling_only_model(family: str = "sd15"):
    """A ComfyUI ModelPatcher whose model has the family's model_sampling but no U-Net."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    config_class = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}[family]
    config = config_class({"disable_unet_model_creation": True})
    model = comfy.model_base.BaseModel(config, comfy.model_base.ModelType.EPS, device=torch.device("cpu"))
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def tiny_pack_model(seed: int = 0):
    """A ComfyUI MODEL around a tiny SD1-layout pack U-Net (the embedded model's shapes), seeded weights."""
    import torch

    from diffusion_anatomy.embedded.config import TINY
    from diffusion_anatomy.nodes.bridge import comfy_model
    from diffusion_anatomy.unet import UNetModel

    torch.manual_seed(seed)
    return comfy_model(UNetModel(TINY.unet).eval(), "sd15", "eps")
