"""U-Net Denoise: the sampling loop node, for any MODEL, SAMPLER and SIGMAS.

It does what core SamplerCustom does (same noise for the same seed, same CFG guider), so with the same
inputs it gives core's latents; it adds checks that say clearly what is wrong with bad inputs.
"""
from __future__ import annotations

import math

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..unet.memory import activation_bytes
from ..unet.model import UNetModel
from .common import CATEGORY, PREFIX
from .model_nodes import LATENT_FORMAT_KEY


def check_inputs(model, latent_dict: dict, latent: torch.Tensor, sigmas: torch.Tensor) -> None:
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"U-Net Denoise needs at least 2 sigmas (1 step); got {tuple(sigmas.shape)}. Use steps >= 1 in the scheduler.")
    if not torch.isfinite(sigmas).all() or (sigmas < 0).any():
        raise ValueError("U-Net Denoise: sigmas must be finite and non-negative")
    made_for = latent_dict.get(LATENT_FORMAT_KEY)
    model_format = type(model.model.latent_format).__name__
    if made_for is not None and made_for != model_format:
        raise ValueError(f"U-Net Denoise: the latent was made for a {made_for} model but this model is {model_format}; "
                         "make the Empty Latent from the same model")
    want = model.model.latent_format.latent_channels
    if latent.ndim == 4 and latent.shape[1] not in (want, 1):
        raise ValueError(f"U-Net Denoise: the latent has {latent.shape[1]} channels but this model works on {want}-channel latents "
                         f"({type(model.model.latent_format).__name__}); use an Empty Latent made for this model")


def check_memory(model, latent: torch.Tensor) -> None:
    """Refuse, before the first step, a latent whose U-Net activations cannot fit in the memory available.

    The estimate: unet/memory.py's formula for the pack's U-Net, ComfyUI's `memory_required` for core's.
    The batch is the latent's (ComfyUI runs cond and uncond together only where that fits)."""
    if latent.ndim != 4:
        return
    batch, channels, h, w = latent.shape
    diffusion = model.model.diffusion_model
    dtype = model.model.get_dtype()
    if isinstance(diffusion, UNetModel):
        need = activation_bytes(diffusion.config, batch, h, w, comfy.model_management.dtype_size(dtype))
    else:
        need = model.model.memory_required([batch, channels, h, w])
    device = model.load_device
    free = comfy.model_management.get_free_memory(device)
    if need > free:
        raise MemoryError(f"U-Net Denoise: a {w * 8}x{h * 8} image (latent {w}x{h}), batch {batch}, needs about "
                          f"{need / 2**30:.2f} GiB for one U-Net call but {free / 2**30:.2f} GiB are available on {device}; "
                          "use a smaller size or batch")


class UNetDenoise:
    DESCRIPTION = ("The denoising loop of Stable Diffusion: start from noise (or a noised latent), and at each sigma of the schedule ask the "
                   "U-Net (with classifier-free guidance between the positive and negative conditioning) for the clean latent, then let the "
                   "sampler step to the next sigma. Gives what core SamplerCustom gives for the same inputs; shows previews and progress.")
    CATEGORY = f"{CATEGORY}/denoise"
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("output", "denoised_output")
    OUTPUT_TOOLTIPS = ("The latent after the last step.", "The model's last clean-latent (x0) prediction.")
    FUNCTION = "denoise"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "Any ComfyUI MODEL: the pack's loader or core's."}),
            "positive": ("CONDITIONING", {"tooltip": "What the picture should show (CLIP Text Encode)."}),
            "negative": ("CONDITIONING", {"tooltip": "What it should not show; the unconditional branch of CFG."}),
            "latent_image": ("LATENT", {"tooltip": "Empty Latent for text-to-image, VAE Encode for image-to-image."}),
            "sampler": ("SAMPLER", {"tooltip": "A sampler node of the pack, or core's KSamplerSelect."}),
            "sigmas": ("SIGMAS", {"tooltip": "The noise schedule, descending, usually ending in 0."}),
            "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Classifier-free guidance scale: x0 = uncond + cfg * (cond - uncond). 1 turns guidance off."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Seed of the starting noise and of the sampler's noise."}),
            "add_noise": ("BOOLEAN", {"default": True, "tooltip": "Add the seed's noise at sigmas[0]; off to continue from a noisy latent."}),
        }}

    def denoise(self, model, positive, negative, latent_image, sampler, sigmas, cfg, seed, add_noise):
        if not math.isfinite(cfg):  # the widget's min/max checks let NaN through (NaN compares False)
            raise ValueError(f"U-Net Denoise: cfg={cfg} is not a finite number; use a guidance scale between 0 and 100")
        latent = latent_image.copy()
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        check_inputs(model, latent, samples, sigmas)
        check_memory(model, samples)
        latent["samples"] = samples
        if add_noise:
            noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
        else:
            noise = torch.zeros(samples.size(), dtype=samples.dtype, layout=samples.layout, device="cpu")
        x0_output = {}
        callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1, x0_output)
        out = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, samples,
                                         noise_mask=latent.get("noise_mask"), callback=callback,
                                         disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        if not torch.isfinite(out).all():
            raise FloatingPointError("U-Net Denoise: the result contains NaN or inf; the model or sampler diverged "
                                     "(try fewer extreme settings, a lower cfg, or float32)")
        result = dict(latent, samples=out)
        denoised = result
        if "x0" in x0_output:
            denoised = dict(latent, samples=model.model.process_latent_out(x0_output["x0"].cpu()))
        return (result, denoised)


NODE_CLASS_MAPPINGS = {f"{PREFIX}UNetDenoise": UNetDenoise}
NODE_DISPLAY_NAME_MAPPINGS = {f"{PREFIX}UNetDenoise": "U-Net Denoise (Diffusion Anatomy)"}
