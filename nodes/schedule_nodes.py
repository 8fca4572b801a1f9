"""Schedule nodes (SIGMAS) and a plot of a schedule (IMAGE)."""
from __future__ import annotations

import torch

from ..samplers.schedules import SCHEDULES, Schedule, calculate_sigmas
from ..anatomy.sigmas import sigma_plot
from .common import CATEGORY, PREFIX, SUFFIX, widget
from .view_output import shown

STEPS = ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "Number of sampling steps (sigmas returned: steps + 1)."})
DENOISE = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                     "tooltip": "1 starts from pure noise; lower keeps more of the input latent (image-to-image): "
                                "the schedule is made for steps/denoise steps and its last steps+1 sigmas are kept."})
MODEL = ("MODEL", {"tooltip": "The model whose noise levels (sigma table, sigma_min/max) the schedule follows."})


def model_schedule(model, name: str, steps: int, denoise: float, **options) -> torch.Tensor:
    """The schedule `name` for a ComfyUI MODEL, with BasicScheduler's rule for denoise < 1."""
    if denoise <= 0.0:
        return torch.FloatTensor([])
    total = steps if denoise >= 1.0 else int(steps / denoise)
    sampling = model.get_model_object("model_sampling")
    table = getattr(sampling, "sigmas", None)
    sigmas = calculate_sigmas(name, total, model_sigmas=table.detach().cpu() if table is not None else None,
                              sigma_min=float(sampling.sigma_min), sigma_max=float(sampling.sigma_max), **options)
    return sigmas[-(steps + 1):].float()


class Scheduler:
    DESCRIPTION = ("A noise schedule for any model, by name: the descending sigmas the sampler walks from pure noise to the image. "
                   "Equal to core BasicScheduler for the schedules core has.")
    CATEGORY = f"{CATEGORY}/schedules"
    RETURN_TYPES = ("SIGMAS",)
    OUTPUT_TOOLTIPS = ("Descending sigmas ending in 0, steps + 1 of them.",)
    FUNCTION = "schedule"

    @classmethod
    def INPUT_TYPES(cls):
        tooltip = "\n".join(["The schedule:", *(f"{k}: {v.description}" for k, v in SCHEDULES.items())])
        return {"required": {"model": MODEL, "scheduler": (list(SCHEDULES), {"default": "karras", "tooltip": tooltip}),
                             "steps": STEPS, "denoise": DENOISE}}

    def schedule(self, model, scheduler, steps, denoise):
        return (model_schedule(model, scheduler, steps, denoise),)


def schedule_node(name: str, entry: Schedule) -> type:
    class ScheduleNode:
        DESCRIPTION = f"The {name} noise schedule: {entry.description}"
        CATEGORY = f"{CATEGORY}/schedules"
        RETURN_TYPES = ("SIGMAS",)
        OUTPUT_TOOLTIPS = ("Descending sigmas ending in 0.",)
        FUNCTION = "schedule"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model": MODEL, "steps": STEPS, "denoise": DENOISE, **{o.name: widget(o) for o in entry.options}}}

        def schedule(self, model, steps, denoise, **options):
            return (model_schedule(model, name, steps, denoise, **options),)

    ScheduleNode.__name__ = ScheduleNode.__qualname__ = f"{PREFIX}Schedule_{name}"
    return ScheduleNode


class PlotSigmas:
    """Draws one or several sigma schedules as a line plot with real axes."""

    DESCRIPTION = ("The noise schedule as a plot: sigma, the noise level (on a log axis by default), against the step number, with "
                   "ticks and values on both axes. Up to four SIGMAS overlaid in colours with a legend, to compare schedules: "
                   "the sampler walks these sigmas from pure noise (the largest) down to 0, the clean picture.")
    CATEGORY = f"{CATEGORY}/schedules"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The plot as an IMAGE batch of one.",)
    OUTPUT_NODE = True  # shows the plot in the node
    FUNCTION = "plot"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sigmas": ("SIGMAS", {"tooltip": "A descending schedule, e.g. from a scheduler node."}),
                "width": ("INT", {"default": 640, "min": 64, "max": 4096, "step": 8, "tooltip": "Image width in pixels."}),
                "height": ("INT", {"default": 360, "min": 64, "max": 4096, "step": 8, "tooltip": "Image height in pixels."}),
            },
            "optional": {
                "log_sigma": ("BOOLEAN", {"default": True, "tooltip": "Sigma on a log axis (the final 0 then falls off the plot)."}),
                "labels": ("STRING", {"default": "", "tooltip": "Legend names for sigmas, sigmas_2, ... separated by commas (default: the input names)."}),
                "sigmas_2": ("SIGMAS", {"tooltip": "Another schedule to overlay."}),
                "sigmas_3": ("SIGMAS", {"tooltip": "Another schedule to overlay."}),
                "sigmas_4": ("SIGMAS", {"tooltip": "Another schedule to overlay."}),
            },
        }

    def plot(self, sigmas, width, height, log_sigma=True, labels="", sigmas_2=None, sigmas_3=None, sigmas_4=None):
        named = [(n, s) for n, s in (("sigmas", sigmas), ("sigmas_2", sigmas_2), ("sigmas_3", sigmas_3), ("sigmas_4", sigmas_4)) if s is not None]
        given = [x.strip() for x in labels.split(",")] if labels.strip() else []
        schedules = [(given[k] if k < len(given) and given[k] else n, s) for k, (n, s) in enumerate(named)]
        if width < 320 or height < 200:
            raise ValueError(f"Plot Sigmas: width {width} x height {height} is too small for the axes and labels; use at least 320 x 200")
        return shown(sigma_plot(schedules, log_sigma, width, height))


NODE_CLASS_MAPPINGS = {f"{PREFIX}PlotSigmas": PlotSigmas, f"{PREFIX}Scheduler": Scheduler}
NODE_DISPLAY_NAME_MAPPINGS = {f"{PREFIX}PlotSigmas": "Plot Sigmas (Diffusion Anatomy)", f"{PREFIX}Scheduler": "Scheduler (Diffusion Anatomy)"}
for _name, _entry in SCHEDULES.items():
    NODE_CLASS_MAPPINGS[f"{PREFIX}Schedule_{_name}"] = schedule_node(_name, _entry)
    NODE_DISPLAY_NAME_MAPPINGS[f"{PREFIX}Schedule_{_name}"] = f"Schedule: {_name}{SUFFIX}"
