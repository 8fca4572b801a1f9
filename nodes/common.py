"""What every node module shares: the id prefix, categories, and Option -> widget mapping."""
from __future__ import annotations

from ..samplers.registry import Option

PREFIX = "DiffusionAnatomy"
CATEGORY = "Diffusion Anatomy"
SUFFIX = " (Diffusion Anatomy)"  # every display name ends with it, so users tell the pack's nodes apart


def widget(option: Option) -> tuple:
    """The ComfyUI input spec for one registry Option (its type decided by the default's type)."""
    spec: dict = {"default": option.default, "tooltip": option.tooltip}
    if option.choices is not None:
        return (list(option.choices), spec)
    if isinstance(option.default, bool):
        return ("BOOLEAN", spec)
    for key in ("min", "max", "step"):
        if getattr(option, key) is not None:
            spec[key] = getattr(option, key)
    if isinstance(option.default, int):
        return ("INT", spec)
    spec.setdefault("step", 0.01)
    return ("FLOAT", spec)
