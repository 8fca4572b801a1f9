"""Schedule nodes (SIGMAS) and a plot of a schedule (IMAGE)."""
from __future__ import annotations

import torch

from .common import CATEGORY, PREFIX


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


NODE_CLASS_MAPPINGS = {f"{PREFIX}PlotSigmas": PlotSigmas}
NODE_DISPLAY_NAME_MAPPINGS = {f"{PREFIX}PlotSigmas": "Plot Sigmas (Diffusion Anatomy)"}
