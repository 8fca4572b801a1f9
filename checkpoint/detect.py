"""Which U-Net a checkpoint holds, from tensor names and shapes alone (no tensor is read).

The shapes give every structural field of `UNetConfig` (widths, depths, context width, Linear vs
Conv projections, SDXL's vector conditioning); they do not give the attention head split, which
is a reshape. So the structure is matched against the presets, as ComfyUI's
`model_detection.detect_unet_config` + `supported_models.*.matches` do, and the preset supplies
the heads. A config stored in the file's metadata (`diffusion_anatomy.config`) is used instead,
after checking it builds exactly the file's tensors.

Prediction type (eps or v) does not show in the layout either; `resolve_prediction` documents the
order of evidence.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import torch

from ..unet.config import PRESETS, UNetConfig

Shapes = Mapping[str, tuple[int, ...]]

CONFIG_METADATA_KEY = "diffusion_anatomy.config"
FAMILY_METADATA_KEY = "diffusion_anatomy.family"

# Fields the shapes cannot tell; compared from the preset, not from the file.
_NOT_IN_SHAPES = {"num_heads": None, "head_dim": None, "prediction": "eps"}


def _count(shapes: Shapes, prefix: str) -> int:
    """Number of consecutive `prefix{i}.` groups (i = 0, 1, ...)."""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in shapes):
        n += 1
    return n


def structure_from_shapes(shapes: Shapes) -> dict:
    """The structural UNetConfig fields of an LDM U-Net state dict (prefix already stripped).

    Raises KeyError/ValueError on a layout that is not an LDM U-Net; the caller words the error.
    """
    model_channels, in_channels = shapes["input_blocks.0.0.weight"][:2]
    out_channels = shapes["out.2.weight"][0]

    # Walk the encoder: ResBlocks grouped into levels, a level closed by a Downsample (`op`).
    levels: list[list[int]] = [[]]
    for n in range(1, _count(shapes, "input_blocks.")):
        if f"input_blocks.{n}.0.op.weight" in shapes:
            levels.append([])
        else:
            levels[-1].append(n)
    res_blocks = {len(level) for level in levels}
    if len(res_blocks) != 1:
        raise ValueError(f"levels with different numbers of ResBlocks {[len(l) for l in levels]}")

    channel_mult, depth = [], []
    for level in levels:
        first = level[0]
        channel_mult.append(shapes[f"input_blocks.{first}.0.out_layers.3.weight"][0] // model_channels)
        depth.append(_count(shapes, f"input_blocks.{first}.1.transformer_blocks."))

    attn2 = sorted(k for k in shapes if re.search(r"\.transformer_blocks\.\d+\.attn2\.to_k\.weight$", k))
    proj_in = sorted(k for k in shapes if k.endswith(".proj_in.weight"))
    if not attn2 or not proj_in:
        raise ValueError("no cross-attention (`attn2`) tensors: not a text-conditioned U-Net")
    adm = shapes.get("label_emb.0.0.weight")
    return dict(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        channel_mult=tuple(channel_mult),
        num_res_blocks=res_blocks.pop(),
        transformer_depth=tuple(depth),
        transformer_depth_middle=_count(shapes, "middle_block.1.transformer_blocks."),
        context_dim=shapes[attn2[0]][1],
        use_linear_in_transformer=len(shapes[proj_in[0]]) == 2,
        adm_in_channels=adm[1] if adm is not None else None,
    )


def _structure(config: UNetConfig) -> dict:
    fields = dataclasses.asdict(config)
    for name in _NOT_IN_SHAPES:
        fields.pop(name)
    return fields


def match_preset(structure: dict) -> str | None:
    """The name of the preset with exactly this structure, or None."""
    for name, preset in PRESETS.items():
        if _structure(preset) == structure:
            return name
    return None


def family_of(config: UNetConfig) -> str:
    """The family whose conditioning a (possibly scaled-down) config takes: SDXL's `y`, SD2's Linear projections, else SD1."""
    if config.adm_in_channels is not None:
        return "sdxl"
    return "sd21" if config.use_linear_in_transformer else "sd15"


def describe(structure: dict) -> str:
    """A one-line summary of a structure, with a guess at well-known models we do not support."""
    s = structure
    text = (
        f"model_channels={s['model_channels']}, channel_mult={list(s['channel_mult'])}, "
        f"transformer_depth={list(s['transformer_depth'])}, context_dim={s['context_dim']}, "
        f"in_channels={s['in_channels']}, adm_in_channels={s['adm_in_channels']}"
    )
    guesses = []
    if s["in_channels"] != 4:
        guesses.append(f"in_channels={s['in_channels']} is an inpainting / instruct model")
    if s["adm_in_channels"] in (1536, 2048):
        guesses.append("adm_in_channels 1536/2048 is SD2.1 unCLIP")
    if s["model_channels"] == 384 and s["adm_in_channels"] == 2560:
        guesses.append("this is the SDXL refiner")
    if s["adm_in_channels"] == 2816 and s["transformer_depth"] != PRESETS["sdxl"].transformer_depth:
        guesses.append("a distilled SDXL (SSD-1B, Vega, ...)")
    return text + (f" ({'; '.join(guesses)})" if guesses else "")


def expected_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the state dict our U-Net has for `config` (built on the meta device)."""
    from ..unet.model import UNetModel

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in UNetModel(config).state_dict().items()}


def layout_mismatch(config: UNetConfig, shapes: Shapes) -> str | None:
    """None when `config` builds exactly these tensors, else a short account of the difference."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in expected if k in shapes and tuple(shapes[k]) != expected[k])
    if not (missing or unexpected or wrong):
        return None
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", wrong)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
    return ", ".join(parts)
