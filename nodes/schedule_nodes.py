"""Schedule nodes (SIGMAS) and a plot of a schedule (IMAGE)."""
from __future__ import annotations

import torch

from ..samplers.schedules import SCHEDULES, Schedule, calculate_sigmas
from .common import CATEGORY, PREFIX, SUFFIX, widget

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
    """Draws a sigma schedule as an image: log(sigma) against step, one dot per sigma."""

    DESCRIPTION = "Draw a SIGMAS schedule as a picture: log sigma (vertical) against the step (horizontal); the last sigma (0) sits on the bottom edge."
    CATEGORY = f"{CATEGORY}/schedules"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The plot, white dots on black, as an IMAGE batch of one.",)
    FUNCTION = "plot"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sigmas": ("SIGMAS", {"tooltip": "A descending schedule, e.g. from BasicScheduler."}),
            "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip": "Image width in pixels."}),
            "height": ("INT", {"default": 256, "min": 64, "max": 4096, "step": 8, "tooltip": "Image height in pixels."}),
        }}

    def plot(self, sigmas, width, height):
        return (plot_sigmas(sigmas, width, height),)


def plot_sigmas(sigmas: torch.Tensor, width: int, height: int) -> torch.Tensor:
    sigmas = sigmas.detach().float().cpu()
    if sigmas.ndim != 1 or len(sigmas) < 1:
        raise ValueError(f"PlotSigmas needs a 1-D SIGMAS tensor, got shape {tuple(sigmas.shape)}")
    positive = sigmas[sigmas > 0]
    if len(positive) == 0:
        raise ValueError("PlotSigmas: every sigma is 0; nothing to plot")
    logs = torch.where(sigmas > 0, sigmas.clamp_min(positive.min()).log(), positive.min().log())
    lo, hi = float(logs.min()), float(logs.max())
    span = hi - lo or 1.0
    image = torch.zeros(1, height, width, 3)
    n, margin = len(sigmas), 4
    for i in range(n):
        px = margin + round(i * (width - 2 * margin - 1) / max(n - 1, 1))
        py = margin + round((hi - float(logs[i])) / span * (height - 2 * margin - 1))
        if sigmas[i] <= 0:
            py = height - 1 - margin
        image[0, max(py - 2, 0):py + 3, max(px - 2, 0):px + 3, :] = 1.0
    return image


NODE_CLASS_MAPPINGS = {f"{PREFIX}PlotSigmas": PlotSigmas, f"{PREFIX}Scheduler": Scheduler}
NODE_DISPLAY_NAME_MAPPINGS = {f"{PREFIX}PlotSigmas": "Plot Sigmas (Diffusion Anatomy)", f"{PREFIX}Scheduler": "Scheduler (Diffusion Anatomy)"}
for _name, _entry in SCHEDULES.items():
    NODE_CLASS_MAPPINGS[f"{PREFIX}Schedule_{_name}"] = schedule_node(_name, _entry)
    NODE_DISPLAY_NAME_MAPPINGS[f"{PREFIX}Schedule_{_name}"] = f"Schedule: {_name}{SUFFIX}"
