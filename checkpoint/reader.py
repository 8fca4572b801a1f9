"""Read a single-file SD checkpoint (LDM layout): detect the family, build the U-Net, hand out the rest.

LDM/sgm single files keep each model under a prefix:
    model.diffusion_model.*      the U-Net (loaded here, strictly)
    first_stage_model.*          the VAE (handed out lazily, prefix stripped)
    cond_stage_model.*           the text encoder of SD1.x (`transformer.text_model.*`, HF CLIP) and
                                 SD2.x (`model.*`, OpenCLIP)
    conditioner.embedders.N.*    SDXL's text encoders: 0 = CLIP-L (HF layout), 1 = OpenCLIP bigG
Anything else (DDPM schedule buffers, EMA counters) is left in the file.

Memory: the U-Net is built on the meta device (no storage), its tensors are read from the file one
by one (optionally cast) and *assigned* (`load_state_dict(assign=True)`), so the weights exist once.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..unet.config import UNetConfig
from ..unet.model import UNetModel
from . import detect
from .errors import CheckpointError, UnknownLayoutError, UnsupportedFamilyError
from .files import LazyStateDict, open_safetensors, read_header

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")

# ComfyUI's SD2 test (supported_models.SD20.model_type): v-prediction models have a spread-out
# bias on the last transformer's first LayerNorm; eps models keep it near zero.
SD2_V_PROBE = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
SD2_V_PROBE_STD = 0.09


@dataclass(frozen=True)
class CheckpointInfo:
    """What a file holds, read from its header alone."""

    path: Path
    family: str  # "sd15" | "sd21" | "sdxl"
    config: UNetConfig  # including `prediction`
    prediction_source: str  # where `config.prediction` came from (see `resolve_prediction`)
    metadata: dict[str, str]
    shapes: dict[str, tuple[int, ...]] = field(repr=False)

    @property
    def text_encoder_prefixes(self) -> list[str]:
        """`cond_stage_model.` (SD1.x/SD2.x) or `conditioner.embedders.N.` for each N (SDXL: 0 = CLIP-L, 1 = bigG)."""
        return _text_encoder_prefixes(self.shapes)


@dataclass(frozen=True)
class Checkpoint(CheckpointInfo):
    """A read checkpoint: the U-Net built and loaded, the VAE and text encoders as lazy state dicts."""

    unet: UNetModel | None = field(default=None, repr=False)
    vae: LazyStateDict | None = field(default=None, repr=False)
    text_encoders: tuple[LazyStateDict, ...] = field(default=(), repr=False)
    handle: object = field(default=None, repr=False)

    def tensors(self, prefix: str, dtype: torch.dtype | None = None) -> LazyStateDict:
        """Any part of the file, `prefix` stripped, read lazily."""
        return LazyStateDict(self.handle, prefix, self.shapes, dtype)


def inspect_checkpoint(path: str | Path, prediction: str | None = None) -> CheckpointInfo:
    """Family, U-Net config and metadata of a checkpoint, from the header (plus at most one small tensor)."""
    path = Path(path)
    shapes, metadata = read_header(path)

    def read_tensor(name: str) -> torch.Tensor:
        with open_safetensors(path) as f:
            return f.get_tensor(name)

    return detect_checkpoint(shapes, metadata, path, prediction, read_tensor)


def detect_checkpoint(
    shapes: Mapping[str, tuple[int, ...]],
    metadata: Mapping[str, str],
    path: str | Path = "<state dict>",
    prediction: str | None = None,
    read_tensor: Callable[[str], torch.Tensor] | None = None,
) -> CheckpointInfo:
    """`inspect_checkpoint` on names and shapes (a file's header, or a state dict's); `read_tensor`
    lets the SD2 eps/v weight test read its one tensor (skipped without it)."""
    path, shapes, metadata = Path(path), {k: tuple(v) for k, v in shapes.items()}, dict(metadata)
    unet_shapes = {k[len(UNET_PREFIX):]: v for k, v in shapes.items() if k.startswith(UNET_PREFIX)}
    if not unet_shapes:
        raise UnknownLayoutError(path, f"{_guess_layout(shapes)}: no `{UNET_PREFIX}*` tensors; expected a single-file SD checkpoint in the LDM layout")
    family, config = _family_and_config(path, unet_shapes, metadata)
    prediction, source = resolve_prediction(family, shapes, metadata, prediction, read_tensor)
    return CheckpointInfo(path, family, replace(config, prediction=prediction), source, metadata, shapes)


def load_checkpoint(
    path: str | Path,
    *,
    prediction: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    load_unet: bool = True,
) -> Checkpoint:
    """Read `path`: detect the family, build and strictly load the U-Net (in `dtype` when given).

    `prediction` ("eps" or "v") overrides what the file says; the VAE and text encoders come back
    as `LazyStateDict`s (cast to `dtype` on access) for the VAE and CLIP code to load.
    """
    info = inspect_checkpoint(path, prediction)
    handle = open_safetensors(info.path, str(device))
    unet = None
    if load_unet:
        with torch.device("meta"):
            unet = UNetModel(info.config)
        state = LazyStateDict(handle, UNET_PREFIX, info.shapes, dtype)
        try:
            unet.load_state_dict(dict(state.items()), strict=True, assign=True)
        except RuntimeError as e:
            raise CheckpointError(info.path, f"the U-Net tensors do not load into {info.family}: {e}") from None
        unet.eval().requires_grad_(False)
    text = [LazyStateDict(handle, p, info.shapes, dtype) for p in info.text_encoder_prefixes]
    return Checkpoint(
        **{f: getattr(info, f) for f in ("path", "family", "config", "prediction_source", "metadata", "shapes")},
        unet=unet,
        vae=LazyStateDict(handle, VAE_PREFIX, info.shapes, dtype),
        text_encoders=tuple(text),
        handle=handle,
    )


def resolve_prediction(
    family: str,
    shapes: Mapping[str, tuple[int, ...]],
    metadata: Mapping[str, str],
    hint: str | None = None,
    read_tensor: Callable[[str], torch.Tensor] | None = None,
) -> tuple[str, str]:
    """(prediction, where it came from). The weights layout is the same for eps and v, so, in order:

    1. the caller's hint ("eps" / "v");
    2. our metadata config (`diffusion_anatomy.config`, field `prediction`);
    3. ModelSpec metadata `modelspec.prediction_type` ("epsilon" / "v");
    4. a top-level `v_pred` tensor (the marker ComfyUI reads in SDXL v-prediction fine-tunes);
    5. SD2.x only: ComfyUI's weight test (std of `output_blocks.11...norm1.bias` > 0.09 means v),
       which reads that one 1280-float tensor; ComfyUI 0.3.75 decides SD2 checkpoints this way;
    6. otherwise eps, what SD1.x, SDXL base and SD2.x-base were trained with.
    """
    aliases = {"eps": "eps", "epsilon": "eps", "v": "v", "v_prediction": "v", "v-prediction": "v"}
    if hint is not None:
        if hint not in aliases:
            raise ValueError(f"prediction hint {hint!r}: expected 'eps' or 'v'")
        return aliases[hint], "caller hint"
    if detect.CONFIG_METADATA_KEY in metadata:
        return json.loads(metadata[detect.CONFIG_METADATA_KEY]).get("prediction", "eps"), "metadata config"
    spec = metadata.get("modelspec.prediction_type")
    if spec is not None and spec.lower() in aliases:
        return aliases[spec.lower()], "modelspec.prediction_type metadata"
    if "v_pred" in shapes:
        return "v", "v_pred key"
    if family == "sd21" and UNET_PREFIX + SD2_V_PROBE in shapes and read_tensor is not None:
        bias = read_tensor(UNET_PREFIX + SD2_V_PROBE).float()
        v = bias.std(unbiased=False).item() > SD2_V_PROBE_STD
        return ("v" if v else "eps"), "weights test (ComfyUI's SD2 norm1.bias std > 0.09)"
    return "eps", "default"


def _family_and_config(path: Path, unet_shapes, metadata: dict[str, str]) -> tuple[str, UNetConfig]:
    if detect.CONFIG_METADATA_KEY in metadata:
        try:
            config = UNetConfig.from_json(metadata[detect.CONFIG_METADATA_KEY])
        except (ValueError, TypeError, AssertionError) as e:
            raise UnsupportedFamilyError(path, f"metadata `{detect.CONFIG_METADATA_KEY}` is not a UNetConfig: {e}") from None
        mismatch = detect.layout_mismatch(config, unet_shapes)
        if mismatch:
            raise UnsupportedFamilyError(path, f"metadata `{detect.CONFIG_METADATA_KEY}` does not build this U-Net: {mismatch}")
        return metadata.get(detect.FAMILY_METADATA_KEY, detect.family_of(config)), config

    try:
        structure = detect.structure_from_shapes(unet_shapes)
    except (KeyError, ValueError, IndexError) as e:
        raise UnknownLayoutError(path, f"the `{UNET_PREFIX}*` tensors are not an LDM U-Net ({e!r}); expected sd15, sd21 or sdxl") from None
    name = detect.match_preset(structure)
    if name is None:
        raise UnsupportedFamilyError(
            path,
            f"unsupported U-Net: {detect.describe(structure)}; supported: sd15 (context 768), sd21 (context 1024, "
            f"Linear projections), sdxl base (context 2048, adm 2816), or any shape given by `{detect.CONFIG_METADATA_KEY}` metadata",
        )
    config = detect.PRESETS[name]
    mismatch = detect.layout_mismatch(config, unet_shapes)
    if mismatch:
        raise UnsupportedFamilyError(path, f"looks like {name} but the tensors differ: {mismatch}")
    return name, config


def _text_encoder_prefixes(shapes) -> list[str]:
    prefixes = []
    if any(k.startswith("cond_stage_model.") for k in shapes):
        prefixes.append("cond_stage_model.")
    n = 0
    while any(k.startswith(f"conditioner.embedders.{n}.") for k in shapes):
        prefixes.append(f"conditioner.embedders.{n}.")
        n += 1
    return prefixes


def _is_4d(shapes, key: str) -> bool:
    return len(shapes.get(key, ())) == 4


def _looks_like_vae(shapes) -> bool:
    """The convolutions every AutoencoderKL has (LDM or diffusers names, optionally under `first_stage_model.`/`vae.`),
    with 4-D kernels whose image side has 3 channels: a name alone (e.g. random `encoder.*` tensors) is not enough."""
    for prefix in ("", VAE_PREFIX, "vae."):
        conv_in, conv_out = shapes.get(prefix + "encoder.conv_in.weight"), shapes.get(prefix + "decoder.conv_out.weight")
        if conv_in and conv_out and _is_4d(shapes, prefix + "encoder.conv_in.weight") and _is_4d(shapes, prefix + "decoder.conv_out.weight") \
                and conv_in[1] == 3 and conv_out[0] == 3:
            return True
    return False


def _looks_like_text_encoder(shapes) -> bool:
    """A 2-D token embedding and transformer layers (HF CLIP `text_model.*` or OpenCLIP `resblocks`)."""
    embeddings = [k for k, v in shapes.items() if k.endswith("token_embedding.weight") and len(v) == 2]
    layers = any(".encoder.layers.0." in k or ".resblocks.0." in k for k in shapes)
    return bool(embeddings) and layers


def _guess_layout(shapes) -> str:
    """What a file without an LDM U-Net is, when its tensors say so; otherwise "not a checkpoint"."""
    keys = list(shapes)
    if _is_4d(shapes, "conv_in.weight") and any(k.startswith("down_blocks.") and "attentions" in k for k in keys):
        return "this looks like a diffusers-format U-Net"
    if _is_4d(shapes, "input_blocks.0.0.weight"):
        return "this looks like a bare U-Net without the `model.diffusion_model.` prefix"
    if _looks_like_vae(shapes):
        return "this looks like a standalone VAE (load it with a VAE loader)"
    if _looks_like_text_encoder(shapes):
        return "this looks like a standalone text encoder (load it with a CLIP loader)"
    return f"not a checkpoint: no U-Net, CLIP or VAE tensors (found {len(keys)} tensors, e.g. {keys[:3]})"


__all__ = ["Checkpoint", "CheckpointInfo", "detect_checkpoint", "inspect_checkpoint", "load_checkpoint", "resolve_prediction"]
