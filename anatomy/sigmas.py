"""A noise schedule as a plot: sigma (optionally on a log axis) against the step number, several schedules overlaid."""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from . import draw


def sigma_plot(schedules: Sequence[tuple[str, torch.Tensor]], log_sigma: bool = True, width: int = 640, height: int = 360,
               title: str = "Noise schedule: sigma at each step") -> Image.Image:
    """Plot each (label, sigmas). On a log axis the final sigma 0 cannot be drawn; the title says so."""
    series = []
    for label, sigmas in schedules:
        sigmas = sigmas.detach().float().cpu()
        if sigmas.ndim != 1 or len(sigmas) == 0:
            raise ValueError(f"Sigma plot: {label} must be a 1-D SIGMAS with at least one value, got shape {tuple(sigmas.shape)}")
        if not torch.isfinite(sigmas).all():
            raise ValueError(f"Sigma plot: {label} holds NaN or inf")
        series.append(draw.Series(sigmas.tolist(), label=f"{label} ({len(sigmas) - 1} steps)"))
    if log_sigma and not any(v > 0 for s in series for v in s.y):
        raise ValueError("Sigma plot: every sigma is 0; nothing to plot on a log axis (turn log_sigma off)")
    if log_sigma and any(v <= 0 for s in series for v in s.y):
        title += " (sigma = 0 at the end is off a log axis)"
    last_step = max(len(s.y) for s in series) - 1
    return draw.line_plot(series, draw.Axis("step", limits=(0, max(1, last_step))), draw.Axis("sigma", log=log_sigma), title=title, width=width, height=height)
