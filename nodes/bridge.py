"""Hand the pack's own modules to ComfyUI as MODEL, CLIP and VAE (ModelPatcher-managed).

ComfyUI's own loader (`comfy.sd.load_state_dict_guess_config`) builds its modules; here the
pack's modules take their place inside ComfyUI's wrappers, so device placement, dtype, offload,
LoRA patching and every core node work with them unchanged.
"""
from __future__ import annotations

import logging
from pathlib import Path

import comfy.model_base
import comfy.model_detection
import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import folder_paths
import torch

from ..clip.encoder import SD1, SD2, SDXL, TextEncoder, TextEncoderConfig
from ..embedded.config import CLIP_CONFIG_METADATA_KEY, VAE_CONFIG_METADATA_KEY, from_metadata
from ..clip.tokenizer import BPETokenizer, find_tokenizer_dir
from ..unet.blocks import GroupNorm32, preferred_memory_format
from ..unet.model import UNetModel
from ..vae.config import PRESETS as VAE_PRESETS, VAEConfig
from ..vae.memory import decode_bytes, decode_tiled_bytes
from ..vae.model import AutoencoderKL
from ..vae.tiled import decode_tiled, encode_tiled

FAMILY_CONFIGS = {
    "sd15": comfy.supported_models.SD15,
    "sd21": comfy.supported_models.SD20,
    "sdxl": comfy.supported_models.SDXL,
}


class ComfyUNet(UNetModel):
    """The pack's U-Net with the call signature ComfyUI's BaseModel uses (and its `dtype`).

    Core's model patches (FreeU, PAG, SAG, ToMe, HyperTile, ...) and ControlNet / T2I-Adapter
    residuals reach it through `transformer_options` and `control` as they reach core's U-Net
    (unet/hooks.py); ComfyUI's interrupt is checked before every block and attention chunk.
    """

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options=None, **kwargs):
        # ComfyUI's diffusion-model wrappers (patcher extensions) wrap this call as they wrap core's U-Net
        options = transformer_options if transformer_options is not None else {}
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, options)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers).execute(
            x, timesteps, context, y, control, options, **kwargs)

    def _forward(self, x, timesteps, context, y, control, transformer_options, **kwargs):
        return super().forward(x, timesteps, context, y, control=control, transformer_options=transformer_options,
                               interrupt=mm.throw_exception_if_processing_interrupted)


def with_comfy_ops(module: torch.nn.Module) -> torch.nn.Module:
    """Give the pack's layers the classes of ComfyUI's `comfy.ops.disable_weight_init` (in place), as core's U-Net has.

    They are the same layers (same parameters, same maths when the weights sit on the input's device) that
    also know how to run with their weights elsewhere: in lowvram/novram modes ModelPatcher leaves the
    weights of layers that do not fit on the offload device and sets `comfy_cast_weights`, and those layers
    copy them (with any LoRA patch, `weight_function`) to the input's device per call. A plain torch layer
    that does not fit would be left behind unpatched (tests/host/test_model_management.py).
    """
    import comfy.ops

    ops = comfy.ops.disable_weight_init
    classes = {torch.nn.Linear: ops.Linear, torch.nn.Conv2d: ops.Conv2d, torch.nn.LayerNorm: ops.LayerNorm,
               GroupNorm32: ops.GroupNorm}  # ops.GroupNorm computes in the input's dtype, as GroupNorm32 does
    for layer in module.modules():
        if type(layer) in classes:
            layer.__class__ = classes[type(layer)]
    return module


def unet_weight_dtype(model_config, parameters: int) -> torch.dtype:
    """The dtype ComfyUI would run this U-Net in on the current device (fp32 on a CPU).

    Where ComfyUI would keep one dtype for weights and cast to another for compute ("manual cast"),
    the pack's plain torch modules hold the weights in the compute dtype instead.
    """
    load_device = mm.get_torch_device()
    unet_dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=list(model_config.supported_inference_dtypes))
    manual_cast = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    return manual_cast or unet_dtype


def comfy_model(unet: UNetModel, family: str, prediction: str, latent_scale: float | None = None) -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI MODEL around the pack's U-Net (its tensors are shared, not copied).

    `latent_scale` replaces the family's latent scale factor (a pack-made model trains its own VAE)."""
    state = unet.state_dict()
    # ComfyUI's own reading of the U-Net's shapes: the unet_config its LoRA key maps and memory estimates use.
    unet_config = comfy.model_detection.detect_unet_config(state, "")
    model_config = FAMILY_CONFIGS[family](unet_config)
    if latent_scale is not None:
        model_config.latent_format.scale_factor = latent_scale  # this config's own instance
    dtype = unet_weight_dtype(model_config, sum(t.numel() for t in state.values()))
    model_config.set_inference_dtype(dtype, None)
    model_config.unet_config["disable_unet_model_creation"] = True
    model_type = comfy.model_base.ModelType.V_PREDICTION if prediction == "v" else comfy.model_base.ModelType.EPS
    model_class = comfy.model_base.SDXL if family == "sdxl" else comfy.model_base.BaseModel
    model = model_class(model_config, model_type=model_type, device=torch.device("cpu"))

    with torch.device("meta"):
        ours = ComfyUNet(unet.config)
    ours.load_state_dict(state, strict=True, assign=True)  # same tensors, ComfyUI's call signature
    ours = ours.to(dtype, memory_format=preferred_memory_format(mm.get_torch_device()))  # channels_last on CUDA
    model.diffusion_model = with_comfy_ops(ours).eval().requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


# --------------------------------------------------------------------------- text encoder

class ComfyTextEncoder(TextEncoder):
    """The pack's text encoder with the methods `comfy.sd.CLIP` calls on its `cond_stage_model`.

    Its state-dict keys read like ComfyUI's (`clip_l.transformer.text_model...`), so core's LoRA
    loader finds the CLIP weights it patches.
    """

    def reset_clip_options(self):
        self.layer, self.project_pooled = None, True

    def set_clip_options(self, options: dict):
        self.layer = options.get("layer", self.layer)
        self.project_pooled = options.get("projected_pooled", self.project_pooled)

    @property
    def dtypes(self) -> set[torch.dtype]:
        return {p.dtype for p in self.parameters()}

    def encode_token_weights(self, tokens):
        context, pooled = self.encode(tokens, layer=getattr(self, "layer", None), project_pooled=getattr(self, "project_pooled", True))
        device = mm.intermediate_device()
        return context.float().to(device), pooled.float().to(device)

    def load_sd(self, sd):
        return self.load_state_dict(sd, strict=False)


class ComfyTokenizer:
    """`comfy.sd.CLIP`'s tokenizer: the pack's BPE and prompt syntax, `embedding:name` from ComfyUI's embeddings folders."""

    def __init__(self, encoder: TextEncoder, embedding_directory=None):
        self.encoder = encoder
        self.bpe = BPETokenizer.from_dir(find_tokenizer_dir(Path(comfy.sd1_clip.__file__).resolve().parents[1]))
        self.embedding_directory = embedding_directory

    def lookups(self) -> dict:
        if not self.embedding_directory:
            return {}

        def lookup_for(width: int, key: str):
            def lookup(name: str):
                return comfy.sd1_clip.load_embed(name, self.embedding_directory, width, key)
            return lookup

        # ComfyUI's keys inside multi-encoder embedding files are the tower names: clip_l, clip_h, clip_g
        return {name: lookup_for(spec.clip.width, f"clip_{name}") for name, spec in self.encoder.config.towers}

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
        if return_word_ids:
            raise NotImplementedError("the Diffusion Anatomy tokenizer does not return word ids (used by regional prompting packs)")
        return self.encoder.tokenize(text, self.bpe, self.lookups())

    def untokenize(self, token_weight_pair):
        return [(t, self.bpe.decode([t]) if isinstance(t, int) else "<embedding>") for t, _ in token_weight_pair]

    def state_dict(self):
        return {}


TEXT_ENCODERS = {"sd15": SD1, "sd21": SD2, "sdxl": SDXL}


def part_configs(checkpoint, family: str) -> tuple:
    """(text-encoder config, VAE config, latent scale or None) for a checkpoint, read once.

    A pack-made checkpoint (e.g. the embedded tiny model) carries its VAE and text-encoder configs in
    its metadata and trained its own VAE (its own latent scale); a published SD checkpoint's parts
    have the family presets' shapes and the family's latent scale (None: keep ComfyUI's)."""
    if VAE_CONFIG_METADATA_KEY in checkpoint.metadata and CLIP_CONFIG_METADATA_KEY in checkpoint.metadata:
        own = from_metadata(checkpoint.metadata)
        return own.text_encoder, own.vae, own.vae.scale_factor
    return TEXT_ENCODERS[family], VAE_PRESETS["sdxl" if family == "sdxl" else "sd"], None


def comfy_clip(checkpoint, config: TextEncoderConfig) -> comfy.sd.CLIP:
    """A ComfyUI CLIP around the pack's text encoder, loaded from the checkpoint (one copy of the weights)."""
    with torch.device("meta"):
        encoder = ComfyTextEncoder(config)
    tensors = {}
    for _, spec in config.towers:
        part = checkpoint.tensors(spec.checkpoint_prefix)
        tensors.update({spec.checkpoint_prefix + k: part[k] for k in part.keys()})
    encoder.load_checkpoint(tensors, strict=True, assign=True)
    # ComfyUI keeps text-encoder weights in fp16 and computes in fp32 (manual cast); plain torch
    # modules compute in their weights' dtype, so on a CPU hold fp32 (the same numbers) and on a GPU
    # ComfyUI's storage dtype (fp16 compute: differs from core in the last bits).
    device = mm.text_encoder_device()
    dtype = torch.float32 if device.type == "cpu" else mm.text_encoder_dtype(device)
    encoder = encoder.to(dtype).eval().requires_grad_(False)
    encoder.reset_clip_options()

    class Target:  # what comfy.sd.CLIP builds from: our prebuilt modules instead of classes
        params = {}

        @staticmethod
        def clip(**_):
            return encoder

        @staticmethod
        def tokenizer(embedding_directory=None, tokenizer_data=None):
            return ComfyTokenizer(encoder, embedding_directory)

    parameters = sum(p.numel() for p in encoder.parameters())
    return comfy.sd.CLIP(Target, embedding_directory=folder_paths.get_folder_paths("embeddings"), parameters=parameters)


# --------------------------------------------------------------------------- VAE

class ComfyAutoencoder(AutoencoderKL):
    """The pack's AutoencoderKL with the call signature `comfy.sd.VAE` uses."""

    def decode(self, z, **vae_options):
        return super().decode(z, interrupt=mm.throw_exception_if_processing_interrupted)

    def encode(self, image, generator=None):
        return super().encode(image, generator, interrupt=mm.throw_exception_if_processing_interrupted)


GUARD_TILE = 256  # tiles of the fallback when an untiled decode cannot fit: small, for the least memory


class ComfyVAE(comfy.sd.VAE):
    """A ComfyUI VAE around the pack's AutoencoderKL.

    Core's own constructor builds the wrapper, so every field its decode/encode read (memory estimates,
    pre/post-processing, devices, dtypes, and whatever a later ComfyUI adds) is core's: it is given an
    AutoencoderKL config of the same shapes and that module's state-dict shapes on the meta device, so its
    module costs no memory and loads nothing. The pack's module then takes its place, as the U-Net's does
    in `comfy_model`. Tiled decode/encode use the pack's seamless tiling (image-wide GroupNorm statistics)
    rather than core's blended overlapping tiles.
    """

    def __init__(self, autoencoder: ComfyAutoencoder):
        cfg = autoencoder.cfg
        ddconfig = {"double_z": True, "z_channels": cfg.z_channels, "resolution": 256, "in_channels": cfg.in_channels,
                    "out_ch": cfg.out_ch, "ch": cfg.ch, "ch_mult": list(cfg.ch_mult), "num_res_blocks": cfg.num_res_blocks,
                    "attn_resolutions": [], "dropout": 0.0}
        shapes = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in autoencoder.state_dict().items()}
        with torch.device("meta"):  # core's module of the same shapes, never allocated: ours replaces it below
            super().__init__(sd=shapes, config={"params": {"ddconfig": ddconfig, "embed_dim": cfg.embed_dim}})
        # core's config path keeps its SD defaults for the geometry; these are our module's
        self.downscale_ratio = self.upscale_ratio = cfg.downscale
        self.latent_channels = cfg.embed_dim
        self.first_stage_model = autoencoder.eval().requires_grad_(False).to(self.vae_dtype)
        self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.patcher.load_device,
                                                        offload_device=self.patcher.offload_device)

    def decode(self, samples_in, vae_options={}):  # noqa: B006 (core's signature)
        """Core's decode, unless the estimate (vae/memory.py) says it cannot fit in the memory available:
        then tiled ("level", the least memory) with a log line, or a clear error when even that cannot fit."""
        self.throw_exception_if_invalid()
        batch, _, h, w = samples_in.shape
        height, width, size = h * self.upscale_ratio, w * self.upscale_ratio, mm.dtype_size(self.vae_dtype)
        cfg = self.first_stage_model.cfg
        # core decodes as many images at a time as fit (at least one): one image must fit
        need, free = decode_bytes(cfg, 1, height, width, size), mm.get_free_memory(self.device)
        if need <= free:
            return super().decode(samples_in, vae_options)
        tiled = decode_tiled_bytes(cfg, batch, height, width, GUARD_TILE, size)
        where = f"{free / 2**30:.2f} GiB available on {self.device}"
        if tiled > free:
            raise MemoryError(f"VAE Decode: {width}x{height} images, batch {batch}, need about {need / 2**30:.2f} GiB per image to decode "
                              f"({tiled / 2**30:.2f} GiB for the batch tiled) but {where}; decode a smaller latent or fewer images")
        logging.info("Diffusion Anatomy VAE: decoding %dx%d, batch %d, in %d-pixel tiles: untiled needs about %.2f GiB per image, %s",
                     width, height, batch, GUARD_TILE, need / 2**30, where)
        return self._decode_tiled(samples_in, GUARD_TILE, granularity="level").movedim(1, -1)

    def decode_tiled_(self, samples, tile_x=64, tile_y=64, overlap=16):
        # ComfyUI's fallback after running out of memory: the pack's lowest-memory tiling
        return self._decode_tiled(samples, max(tile_x, tile_y) * self.upscale_ratio, granularity="level")

    def decode_tiled(self, samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        self.throw_exception_if_invalid()
        tile = max(tile_x or 64, tile_y or 64) * self.upscale_ratio
        # "block": about half the memory of untiled at about twice its time ("level": less memory, slower)
        return self._decode_tiled(samples, tile, granularity="block").movedim(1, -1)

    def _decode_tiled(self, samples, tile: int, granularity: str):
        mm.load_models_gpu([self.patcher])
        out = decode_tiled(self.first_stage_model, samples.to(self.vae_dtype).to(self.device), tile=tile, granularity=granularity,
                           interrupt=mm.throw_exception_if_processing_interrupted)
        return self.process_output(out.to(self.output_device).float())

    def encode_tiled(self, pixel_samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        self.throw_exception_if_invalid()
        pixels = self.vae_encode_crop_pixels(pixel_samples)
        mm.load_models_gpu([self.patcher])
        image = self.process_input(pixels.movedim(-1, 1).to(self.vae_dtype).to(self.device))
        return encode_tiled(self.first_stage_model, image, tile=max(tile_x or 512, tile_y or 512),
                            interrupt=mm.throw_exception_if_processing_interrupted).to(self.output_device).float()


def comfy_vae(checkpoint, cfg: VAEConfig) -> ComfyVAE:
    """A ComfyUI VAE around the pack's AutoencoderKL, loaded from the checkpoint (one copy of the weights)."""
    with torch.device("meta"):
        autoencoder = ComfyAutoencoder(cfg)
    part = checkpoint.vae
    autoencoder.load_state_dict({k: part[k] for k in part.keys()}, strict=True, assign=True)
    return ComfyVAE(autoencoder)
