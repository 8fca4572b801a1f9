"""GroupNorm (Wu & He 2018, arXiv:1803.08494) that can take image-wide statistics from the tiler.

Plain use is `torch.nn.GroupNorm`, as in ComfyUI: no manual upcast is needed for fp16/bf16 inputs,
torch's group_norm kernels (CPU and CUDA) already accumulate the statistics in float32. Inside `image_statistics(plan)` the module does not look at its own input's statistics: the
i-th GroupNorm called in a forward pass either normalises with the i-th image-wide (mean, rstd) the
plan already knows, or, if it is the first unknown one, adds its input's owned window to the plan's
running sums and stops the forward pass (`StatisticsGathered`). See `vae/tiled.py`.
"""
from __future__ import annotations

from contextvars import ContextVar

import torch
from einops import repeat
from torch import nn

_PLAN: ContextVar = ContextVar("diffusion_anatomy_vae_image_statistics", default=None)


class StatisticsGathered(Exception):
    """Raised by the GroupNorm whose image-wide statistics are being gathered: the rest of the pass is not needed."""


class GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` (same parameters and state-dict keys) that defers to a tiling plan when one is active."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = _PLAN.get()
        if plan is not None:
            return plan.group_norm(self, x)
        return super().forward(x)


def normalize_with(gn: GroupNorm, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """GroupNorm with given per-(sample, group) statistics [B, G]: one fused x * a + b per channel,
    a = weight * rstd, b = bias - mean * a (computed in float32)."""
    per_channel = lambda t: repeat(t, "b g -> b (g c) 1 1", c=x.shape[1] // gn.num_groups)
    a = per_channel(rstd) * gn.weight.float()[:, None, None]
    b = gn.bias.float()[:, None, None] - per_channel(mean) * a
    return torch.addcmul(b.to(x.dtype), x, a.to(x.dtype))


def group_moments(gn: GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per (sample, group): mean and sum of squared deviations M2 of x (float64 [B, G]), and the count.
    torch's var_mean is accurate within a window; windows are merged with Chan's formula (see tiled.py)."""
    b, c, h, w = x.shape
    xg = x.view(b, gn.num_groups, c // gn.num_groups, h, w)  # a view, also of a strided window
    var, mean = torch.var_mean(xg.float(), dim=(2, 3, 4), correction=0)
    n = xg[0, 0].numel()
    return mean.double(), var.double() * n, n


class image_statistics:
    """Context manager: GroupNorms called inside it defer to `plan.group_norm(module, x)`."""

    def __init__(self, plan):
        self.plan = plan

    def __enter__(self):
        self._token = _PLAN.set(self.plan)
        return self.plan

    def __exit__(self, *exc):
        _PLAN.reset(self._token)
        return False
