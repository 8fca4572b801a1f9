"""Reverse diffusion, step by step: what a sampler reports at each step through its callback.

Every k-diffusion style sampler (the pack's and ComfyUI's) calls `callback({"i", "x", "sigma",
"denoised"})` once per step: x is the noisy latent x_sigma it is at, denoised the model's prediction
of the clean latent x0 there. The noise the model sees in x is eps = (x - denoised) / sigma
(Karras et al. 2022, arXiv 2206.00364, eq. 3: D(x; sigma) = x - sigma * eps).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from PIL import Image

from . import draw


@dataclass
class Step:
    i: int
    sigma: float
    x: torch.Tensor  # [C, H, W] of the first batch item, on the CPU
    denoised: torch.Tensor

    @property
    def noise(self) -> torch.Tensor:
        """The noise the model predicts in x: eps = (x - x0) / sigma."""
        return (self.x - self.denoised) / self.sigma if self.sigma > 0 else torch.zeros_like(self.x)


@dataclass
class StepRecorder:
    """Keeps every `every`-th step a sampler reports (and always the last one), first batch item only.

    `on_step` (if set) is called after each kept step, e.g. to send a live preview. Recording copies
    tensors to the CPU and never writes into the sampler's own ones, so the sampling is unchanged."""
    every: int = 1
    steps: list[Step] = field(default_factory=list)
    total: int = 0
    on_step: Callable[["StepRecorder"], None] | None = None

    def start(self, total: int) -> None:
        self.steps, self.total = [], total

    def __call__(self, payload: dict) -> None:
        i = int(payload["i"])
        if i % self.every and i != self.total - 1:
            return
        sigma = payload["sigma"]
        sigma = float(sigma.flatten()[0]) if torch.is_tensor(sigma) else float(sigma)
        self.steps.append(Step(i, sigma, payload["x"][0].detach().float().cpu().clone(),
                               payload["denoised"][0].detach().float().cpu().clone()))
        if self.on_step is not None:
            self.on_step(self)


def steps_grid(columns: Sequence[Step], rows: dict[str, Sequence[Image.Image]], min_side: int = 96,
               title: str = "Reverse diffusion: the sampler's steps") -> Image.Image:
    """One column per recorded step (labelled step and sigma), one row per quantity (x_t, x0 prediction, noise)."""
    names = list(rows)
    cells = [[draw.upscale(p, min_side) for p in rows[name]] for name in names]
    col_labels = [f"step {s.i}\nsigma {s.sigma:.3g}" for s in columns]
    return draw.grid(cells, row_labels=names, col_labels=col_labels, title=title)
