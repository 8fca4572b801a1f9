"""The U-Net's hook points: ComfyUI's `transformer_options` and `control`, as plain dicts of callables.

ComfyUI's model-patch nodes (FreeU, PAG, SAG, ToMe, HyperTile, IP-Adapter-style packs) and
ControlNet reach into the U-Net through two arguments of its forward, read here exactly where
ComfyUI's `openaimodel.py` / `attention.py` read them, so the same patches work on this U-Net:

    options = {                                    # ComfyUI's `transformer_options`
        "patches": {name: [callable, ...]},        # run in order at the named point (table below)
        "patches_replace": {"attn1" | "attn2": {key: callable}},   # replaces softmax(q k^T) v
        ...                                        # anything else is passed on to the patches
    }
    control = {"input" | "middle" | "output": [residual or None, ...]}   # ControlNet / T2I-Adapter

| patch point | called as | where |
|---|---|---|
| `emb_patch` | `emb = p(emb, model_channels, options)` | after the time embedding, before `y` is added |
| `input_block_patch` | `h = p(h, options)` | after each input block (and its control residual) |
| `input_block_patch_after_skip` | `h = p(h, options)` | after that block's output is kept as a skip |
| `output_block_patch` | `h, skip = p(h, skip, options)` | before each output block concatenates its skip |
| `attn1_patch`, `attn2_patch` | `n, context, value = p(n, context, value, extra)` | before self/cross-attention |
| `attn1_output_patch`, `attn2_output_patch` | `n = p(n, extra)` | after it, before the residual add |
| `middle_patch` | `x = p(x, extra)` | between self- and cross-attention |

A replacement is looked up under `(block_name, block_id, index in the transformer)` first, then
`(block_name, block_id)`, and called as `out = f(q, k, v, extra)` on the projected [b, n, heads*d]
tensors. The U-Net keeps in `options` what the patches read: `original_shape` (of x),
`block` (("input", i), ("middle", 0), ("output", i)), `transformer_index` (SpatialTransformers
passed so far), `activations_shape` (input of the current SpatialTransformer), `block_index` (layer
inside it); `extra` adds `n_heads`, `dim_head`, `attn_precision`. The caller's own entries
(ComfyUI: `cond_or_uncond`, `sigmas`, ...) pass through unchanged.

Control residuals are popped from the end of each list, one per block, and added in place where
ComfyUI's `apply_control` adds them (a residual whose shape does not fit is skipped with a warning).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

Options = dict  # ComfyUI's transformer_options: a plain dict, see the module docstring
Control = dict  # {"input" | "middle" | "output": [tensor or None, ...]}


def run_patches(h: torch.Tensor, options: Options, name: str) -> torch.Tensor:
    """`h = p(h, options)` for each patch registered under `name` (input_block_patch, ...)."""
    for patch in options.get("patches", {}).get(name, ()):
        h = patch(h, options)
    return h


def run_output_block_patches(h: torch.Tensor, skip: torch.Tensor, options: Options) -> tuple[torch.Tensor, torch.Tensor]:
    """`h, skip = p(h, skip, options)` for each output_block_patch (FreeU rescales both here)."""
    for patch in options.get("patches", {}).get("output_block_patch", ()):
        h, skip = patch(h, skip, options)
    return h, skip


def add_control(h: torch.Tensor, control: Control | None, name: str) -> torch.Tensor:
    """Add the next residual of `control[name]` to `h` in place (ComfyUI's `apply_control`)."""
    residuals = control.get(name) if control is not None else None
    if residuals:
        residual = residuals.pop()
        if residual is not None:
            try:
                h += residual
            except RuntimeError:  # as ComfyUI: a residual for another size is skipped, not fatal
                logging.warning("control residual %s could not be added to %s at %s",
                                tuple(residual.shape), tuple(h.shape), name)
    return h


def patch_arguments(options: Options, heads: int, head_dim: int) -> dict:
    """The `extra_options` attention patches receive: options without the patch tables, plus the head layout."""
    extra = {k: v for k, v in options.items() if k not in ("patches", "patches_replace")}
    extra.update(n_heads=heads, dim_head=head_dim, attn_precision=None)
    return extra


def attend(attn, name: str, n: torch.Tensor, context: torch.Tensor | None, options: Options, extra: dict,
           interrupt: Callable[[], None] | None) -> torch.Tensor:
    """Attention `attn` ("attn1": self, context None; "attn2": cross) with its patches and replacement."""
    patches = options.get("patches") or {}
    value = None
    if f"{name}_patch" in patches:
        context = n if context is None else context
        value = context
        for patch in patches[f"{name}_patch"]:
            n, context, value = patch(n, context, value, extra)

    replacements = (options.get("patches_replace") or {}).get(name, {})
    block = options.get("block")
    layer = (*block, options.get("block_index", 0)) if block is not None else None
    replace = replacements.get(layer) or replacements.get(block)
    if replace is not None:
        context = n if context is None else context
        value = context if value is None else value
        n = attn.to_out(replace(attn.to_q(n), attn.to_k(context), attn.to_v(value), extra))
    else:
        n = attn(n, context, value, interrupt)

    for patch in patches.get(f"{name}_output_patch", ()):
        n = patch(n, extra)
    return n
