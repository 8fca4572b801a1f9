"""The parts of Stable Diffusion as nodes: checkpoint loader, text encoder, empty latent, VAE decode/encode.

The loader builds the pack's own U-Net, text encoder and VAE; the other nodes take any ComfyUI
CLIP, VAE or MODEL (the pack's or core's).
"""
from __future__ import annotations

import comfy.model_management as mm
import folder_paths
import torch

from ..checkpoint.reader import load_checkpoint
from ..embedded import LOADER_NAME as EMBEDDED_NAME
from ..embedded import WEIGHTS as EMBEDDED_WEIGHTS
from .bridge import comfy_clip, comfy_model, comfy_vae, part_configs
from .common import CATEGORY, PREFIX

LATENT_FORMAT_KEY = "diffusion_anatomy_latent_format"  # set by Empty Latent, checked by U-Net Denoise


def safetensors_checkpoints() -> list[str]:
    """The pack's embedded model first (it ships with the pack: a fresh install draws at once), then
    the .safetensors files of ComfyUI's checkpoints folders. The embedded file is not added to the
    checkpoints folders themselves: core's loader cannot read it (it tells SD1 by a 768-wide context)."""
    own = [EMBEDDED_NAME] if EMBEDDED_WEIGHTS.is_file() else []
    return own + [n for n in folder_paths.get_filename_list("checkpoints") if n.lower().endswith(".safetensors") and n != EMBEDDED_NAME]


def checkpoint_path(ckpt_name: str) -> str | None:
    if ckpt_name == EMBEDDED_NAME and EMBEDDED_WEIGHTS.is_file():
        return str(EMBEDDED_WEIGHTS)
    return folder_paths.get_full_path("checkpoints", ckpt_name)


class CheckpointLoader:
    DESCRIPTION = ("Read a single-file Stable Diffusion checkpoint (.safetensors, original LDM layout: SD1.x, SD2.x, SDXL) and build the "
                   "pack's own U-Net, CLIP text encoder and VAE from it. They are ordinary ComfyUI MODEL/CLIP/VAE objects: core nodes "
                   "(KSampler, LoraLoader, CLIPTextEncode, VAEDecode) take them too.")
    CATEGORY = f"{CATEGORY}/models"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("The U-Net denoiser (predicts the noise, or v, from a noisy latent).",
                       "The CLIP text encoder (prompt -> conditioning).",
                       "The VAE (latent <-> image).")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": (safetensors_checkpoints(), {"tooltip": f"A .safetensors checkpoint from ComfyUI's models/checkpoints folders (pickle files are refused). {EMBEDDED_NAME} is the pack's own tiny SD1-layout model of coloured shapes (64x64 pictures, prompts like 'a large red circle at the top left on a blue background'; see the README's model card)."}),
            "prediction": (["auto", "eps", "v"], {"default": "auto", "tooltip": "What the U-Net predicts. auto reads it from the file (metadata, or ComfyUI's SD2 weight test); eps for SD1.x/SDXL, v for SD2.x-768."}),
        }}

    def load(self, ckpt_name, prediction):
        path = checkpoint_path(ckpt_name)
        if path is None:
            raise FileNotFoundError(f"checkpoint {ckpt_name!r} not found in {folder_paths.get_folder_paths('checkpoints')}")
        # tensors come in the file's dtype; each bridge casts its module to the dtype ComfyUI picks for the device
        ckpt = load_checkpoint(path, prediction=None if prediction == "auto" else prediction)
        text_config, vae_config, latent_scale = part_configs(ckpt, ckpt.family)
        model = comfy_model(ckpt.unet, ckpt.family, ckpt.config.prediction, latent_scale)
        return (model, comfy_clip(ckpt, text_config), comfy_vae(ckpt, vae_config))


class CLIPTextEncode:
    DESCRIPTION = ("Turn a prompt into conditioning: the CLIP tokenizer splits it into tokens (77 per chunk, longer prompts in several "
                   "chunks), the text transformer turns them into one vector per token, which the U-Net reads through cross-attention. "
                   "ComfyUI's weight syntax works: (word:1.2), (word), [word], embedding:name.")
    CATEGORY = f"{CATEGORY}/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("The encoded prompt, for U-Net Denoise or any sampler node.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "Any ComfyUI CLIP: the pack's loader or core's."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The prompt."}),
        }}

    def encode(self, clip, text):
        if clip is None:
            raise RuntimeError("CLIP Text Encode: the CLIP input is empty; the checkpoint has no text encoder")
        return (clip.encode_from_tokens_scheduled(clip.tokenize(text)),)


class EmptyLatent:
    DESCRIPTION = ("A blank latent for text-to-image, shaped for the model: its channel count and 1/8 of the image size. The sampler fills "
                   "it with noise and denoises it into a picture.")
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("Zeros of shape [batch, channels, height/8, width/8].",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model the latent is for (sets the channel count and downscale)."}),
            "width": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8, "tooltip": "Image width in pixels (a multiple of 8)."}),
            "height": ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8, "tooltip": "Image height in pixels (a multiple of 8)."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096, "tooltip": "Images to make at once."}),
        }}

    def generate(self, model, width, height, batch_size):
        latent_format = model.model.latent_format
        samples = torch.zeros([batch_size, latent_format.latent_channels, height // 8, width // 8], device=mm.intermediate_device())
        return ({"samples": samples, LATENT_FORMAT_KEY: type(latent_format).__name__},)


class VAEDecode:
    DESCRIPTION = ("Turn a latent into an image with the VAE decoder (undoing the model's latent scale). 'tiled' decodes large images "
                   "tile by tile in bounded memory, seamlessly for the pack's VAE (GroupNorm statistics over the whole image).")
    CATEGORY = f"{CATEGORY}/vae"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The decoded image(s), values in 0..1.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "samples": ("LATENT", {"tooltip": "The latent to decode, e.g. U-Net Denoise's output."}),
            "vae": ("VAE", {"tooltip": "Any ComfyUI VAE: the pack's loader or core's."}),
            "tiled": ("BOOLEAN", {"default": False, "tooltip": "Decode in tiles (for images too large for memory at once)."}),
            "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 64, "tooltip": "Tile size in image pixels, when tiled."}),
        }}

    def decode(self, samples, vae, tiled, tile_size):
        latent = samples["samples"]
        if latent.ndim != 4 or latent.shape[1] != vae.latent_channels:
            raise ValueError(f"VAE Decode: this VAE decodes [B, {vae.latent_channels}, H, W] latents, got {tuple(latent.shape)}")
        if tiled:
            t = tile_size // vae.spacial_compression_decode()
            images = vae.decode_tiled(latent, tile_x=t, tile_y=t, overlap=t // 4)
        else:
            images = vae.decode(latent)
        return (images.reshape(-1, *images.shape[-3:]),)


class VAEEncode:
    DESCRIPTION = "Turn an image into a latent with the VAE encoder (the posterior mean), for image-to-image: denoise it with denoise < 1."
    CATEGORY = f"{CATEGORY}/vae"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The image's latent (unscaled; the model applies its scale factor).",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pixels": ("IMAGE", {"tooltip": "The image(s) to encode; sides are cropped to multiples of 8."}),
            "vae": ("VAE", {"tooltip": "Any ComfyUI VAE: the pack's loader or core's."}),
        }}

    def encode(self, pixels, vae):
        return ({"samples": vae.encode(pixels[:, :, :, :3])},)


_NODES = {
    "CheckpointLoader": (CheckpointLoader, "Load Checkpoint (Diffusion Anatomy)"),
    "CLIPTextEncode": (CLIPTextEncode, "CLIP Text Encode (Diffusion Anatomy)"),
    "EmptyLatent": (EmptyLatent, "Empty Latent (Diffusion Anatomy)"),
    "VAEDecode": (VAEDecode, "VAE Decode (Diffusion Anatomy)"),
    "VAEEncode": (VAEEncode, "VAE Encode (Diffusion Anatomy)"),
}
NODE_CLASS_MAPPINGS = {PREFIX + k: cls for k, (cls, _) in _NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {PREFIX + k: title for k, (_, title) in _NODES.items()}
