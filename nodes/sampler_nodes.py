"""One SAMPLER node per registered sampler, plus one selector over all of them.

Each outputs a standard `comfy.samplers.KSAMPLER`, so core SamplerCustom / SamplerCustomAdvanced
(and the pack's own denoise node) take it with any model.
"""
from __future__ import annotations

from functools import partial

import comfy.samplers
import torch

from ..samplers import REGISTRY, SamplerInfo
from ..samplers.registry import check_options
from ..samplers.runner import run_sampler
from .common import CATEGORY, PREFIX, SUFFIX, widget



def discrete_sigmas(model) -> torch.Tensor | None:
    """The sigma table (index = timestep) of the model ComfyUI samples, as core's samplers read its model_sampling
    (the guider's patcher, so a ModelSamplingDiscrete patch counts); None for a model without one."""
    patcher = getattr(getattr(model, "inner_model", None), "model_patcher", None)
    sampling = patcher.get_model_object("model_sampling") if patcher is not None else None
    return getattr(sampling, "sigmas", None)


def sample(info: SamplerInfo, model, x, sigmas, **kwargs):
    """The KSAMPLER function: the registered sampler, given the model's sigma table where its entry uses it."""
    if info.uses_model_sigmas:
        kwargs["model_sigmas"] = discrete_sigmas(model)
    return run_sampler(info, model, x, sigmas, **kwargs)


def make_ksampler(info: SamplerInfo, options: dict) -> comfy.samplers.KSAMPLER:
    check_options(info, options)  # a value outside the maths' domain fails here, naming it, not mid-run
    return comfy.samplers.KSAMPLER(partial(sample, info), extra_options=dict(options))


def describe(info: SamplerInfo) -> str:
    facts = f"order {info.order}, {info.calls_per_step} model call(s) per step, {'stochastic' if info.stochastic else 'deterministic'}"
    source = "; ".join(s for s in (info.paper, info.reference) if s)
    return f"{info.name}: {info.description} ({facts}). {source}".strip()


def sampler_node(info: SamplerInfo) -> type:
    shown = [o for o in info.options if o.name not in info.fixed_options]

    class SamplerNode:
        DESCRIPTION = describe(info)
        CATEGORY = f"{CATEGORY}/samplers"
        RETURN_TYPES = ("SAMPLER",)
        OUTPUT_TOOLTIPS = (f"{info.name}, for SamplerCustom / SamplerCustomAdvanced or the pack's U-Net Denoise.",)
        FUNCTION = "get_sampler"

        @classmethod
        def INPUT_TYPES(cls):
            # options added after a node first shipped are optional, so API graphs saved before still validate
            # (a missing one takes the registry default)
            return {"required": {o.name: widget(o) for o in shown if not o.added_later},
                    "optional": {o.name: widget(o) for o in shown if o.added_later}}

        def get_sampler(self, **options):
            return (make_ksampler(info, options),)

    SamplerNode.__name__ = SamplerNode.__qualname__ = f"{PREFIX}Sampler_{info.id}"
    return SamplerNode


class SamplerSelect:
    """Any sampler of the pack by name, with its default options."""

    DESCRIPTION = "Pick any sampler of the source document by name; its options take their defaults (use the sampler's own node to tune them)."
    CATEGORY = f"{CATEGORY}/samplers"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        lines = [f"{info.id}: {info.name}: {info.description}" for info in REGISTRY.values()]
        tooltip = "\n".join(["The sampler, by id; what the source document says of each:", *lines])
        return {"required": {"sampler": (list(REGISTRY), {"tooltip": tooltip})}}

    def get_sampler(self, sampler):
        if sampler not in REGISTRY:
            raise ValueError(f"unknown sampler {sampler!r}; known: {', '.join(REGISTRY)}")
        return (make_ksampler(REGISTRY[sampler], {}),)


NODE_CLASS_MAPPINGS = {f"{PREFIX}SamplerSelect": SamplerSelect}
NODE_DISPLAY_NAME_MAPPINGS = {f"{PREFIX}SamplerSelect": f"Sampler Select{SUFFIX}"}
for _info in REGISTRY.values():
    NODE_CLASS_MAPPINGS[f"{PREFIX}Sampler_{_info.id}"] = sampler_node(_info)
    NODE_DISPLAY_NAME_MAPPINGS[f"{PREFIX}Sampler_{_info.id}"] = _info.name + SUFFIX
