"""U-Net Levels: the feature map after each block of the U-Net at one sampling step, laid out as the U.

The LDM U-Net (Rombach et al. 2022, arXiv:2112.10752, Fig. 3; Ronneberger et al. 2015,
arXiv:1505.04597) halves the feature map at each level on the way down (input blocks, the encoder),
works at the smallest size in the middle block (the bottleneck), and doubles it on the way up (output
blocks, the decoder), each output block reading one input block's output through a skip connection.

`LevelRecorder` captures those feature maps through ComfyUI's block patches (`input_block_patch`: the
output of each input block; `output_block_patch`: what enters each output block, i.e. the middle
block's output, then each output block's output but the last, which no block patch sees: it goes
straight into the output layer). `level_shapes` says what the shapes must be for a config and a
latent size; `render_u` draws the U.

Each feature map [C, h, w] is shown by its channel PCA: the three principal components of the C
channels over the h*w positions as red, green and blue (each scaled to its 1st..99th percentile), so
positions with similar features get similar colours; `mean_abs` shows mean |activation| over the
channels instead (viridis).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from einops import rearrange
from PIL import Image, ImageDraw

from ..unet.config import UNetConfig
from . import draw
from .attention_maps import colormap, normalise


@dataclass(frozen=True)
class Level:
    kind: str  # "input", "middle" or "output"
    index: int
    shape: tuple[int, int, int]  # channels, height, width

    @property
    def name(self) -> str:
        return "middle" if self.kind == "middle" else f"{self.kind} {self.index}"

    @property
    def label(self) -> str:
        return "x".join(str(s) for s in self.shape)


def level_shapes(config: UNetConfig, height: int, width: int) -> list[Level]:
    """The shapes of what the block patches see for a latent of height x width: every input block's
    output, the middle block's, then every output block's but the last (see the module docstring).
    Follows the U-Net's construction: stride-2 convolutions round up (ceil(h / 2)); an Upsample
    resizes to the skip it meets next."""
    base = config.model_channels
    h, w, ch = height, width, base
    inputs = [Level("input", 0, (base, h, w))]
    for level, mult in enumerate(config.channel_mult):
        for _ in range(config.num_res_blocks):
            ch = mult * base
            inputs.append(Level("input", len(inputs), (ch, h, w)))
        if level != len(config.channel_mult) - 1:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
            inputs.append(Level("input", len(inputs), (ch, h, w)))
    middle = Level("middle", 0, (ch, h, w))
    skips = [lv.shape for lv in inputs]
    outputs = []
    for level, mult in reversed(list(enumerate(config.channel_mult))):
        for i in range(config.num_res_blocks + 1):
            skips.pop()
            ch = mult * base
            if level != 0 and i == config.num_res_blocks:
                h, w = skips[-1][1:]
            outputs.append(Level("output", len(outputs), (ch, h, w)))
    return inputs + [middle] + outputs[:-1]


def first_cond_row(h: torch.Tensor, options: dict) -> int:
    """The batch row of the first picture's positive prompt (ComfyUI's `cond_or_uncond`: 0 marks a positive chunk)."""
    chunks = options.get("cond_or_uncond") or [0]
    return chunks.index(0) * (h.shape[0] // len(chunks)) if 0 in chunks else 0


class BlockPatches:
    """ComfyUI's block patches as two methods that hand each level's feature map, named as `Level.name`,
    to `self._take(name, h, transformer_options)` and return what they got (sampling unchanged)."""

    def _take(self, name: str, h: torch.Tensor, options: dict) -> None:
        raise NotImplementedError

    def input_block_patch(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        self._take(f"input {transformer_options['block'][1]}", h, transformer_options)
        return h

    def output_block_patch(self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict):
        index = transformer_options["block"][1]
        self._take("middle" if index == 0 else f"output {index - 1}", h, transformer_options)
        return h, hsp


@dataclass
class LevelRecorder(BlockPatches):
    """Block patches that keep the feature maps of one step: the first conditional picture of the batch,
    at the U-Net's first evaluation at sigma = sample_sigmas[step] (the step's start)."""

    step: int
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # Level.name -> [C, h, w] float32, CPU
    steps: int | None = None  # the schedule's number of steps, seen at the first call

    def reset(self) -> None:
        self.features, self.steps = {}, None

    def __deepcopy__(self, memo):
        """Shared, not copied, when ComfyUI clones the model (see CrossAttentionMaps.__deepcopy__)."""
        return self

    def _take(self, name: str, h: torch.Tensor, options: dict) -> None:
        sample_sigmas = options.get("sample_sigmas")
        sigma = options.get("sigmas")
        if sample_sigmas is None or sigma is None:
            return
        self.steps = len(sample_sigmas) - 1
        if not 0 <= self.step < self.steps:
            raise ValueError(f"step: {self.step} is out of range: the schedule has {self.steps} steps (0..{self.steps - 1})")
        target = float(sample_sigmas[self.step])
        if name in self.features or not math.isclose(float(sigma.flatten()[0]), target, rel_tol=1e-5, abs_tol=1e-8):
            return
        self.features[name] = h[first_cond_row(h, options)].detach().float().cpu()

    def levels(self) -> list[Level]:
        """What was captured, in the U's order (input blocks, middle, output blocks)."""
        order = {"input": 0, "middle": 1, "output": 2}
        found = [Level(*(("middle", 0) if n == "middle" else (n.split()[0], int(n.split()[1]))), tuple(f.shape)) for n, f in self.features.items()]
        return sorted(found, key=lambda lv: (order[lv.kind], lv.index))


# --------------------------------------------------------------------------- pictures

def pca_rgb(feature: torch.Tensor, exact: bool = True) -> torch.Tensor:
    """[C, h, w] -> [h, w, 3] in 0..1: the first three principal components of the channels.

    exact=False finds them by randomized SVD (Halko et al. 2011, arXiv:0909.4061; torch.svd_lowrank,
    2 power iterations): a few matrix products instead of a full SVD, which takes seconds per level at
    SD1.5's 64x64 x 320 channels on a CPU; for a picture the approximate directions are as good."""
    c, h, w = feature.shape
    x = rearrange(feature.float(), "c h w -> (h w) c")
    x = x - x.mean(dim=0, keepdim=True)
    if h * w < 2:
        return torch.full((h, w, 3), 0.5)
    if exact or min(x.shape) <= 8:
        _, _, v = torch.linalg.svd(x, full_matrices=False)
        v = v[:3].T
    else:
        _, _, v = torch.svd_lowrank(x, q=6, niter=2)
        v = v[:, :3]
    comps = x @ v  # [(h w), <=3]
    if comps.shape[1] < 3:
        comps = torch.cat([comps, torch.zeros(comps.shape[0], 3 - comps.shape[1])], dim=1)
    lo = torch.quantile(comps, 0.01, dim=0)
    hi = torch.quantile(comps, 0.99, dim=0)
    rgb = ((comps - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return rearrange(rgb, "(h w) c -> h w c", h=h, w=w)


def mean_abs(feature: torch.Tensor) -> torch.Tensor:
    """[C, h, w] -> [h, w, 3]: mean |activation| over the channels, min-max normalised, viridis."""
    return colormap(normalise(feature.float().abs().mean(dim=0)))


SHOW = {"pca_rgb": pca_rgb, "mean_abs": mean_abs}
PANEL = 96  # side of each feature-map picture, pixels


def render_u(features: dict[str, torch.Tensor], levels: list[Level], mode: str, title: str,
             picture: torch.Tensor | None = None, panel: int = PANEL) -> Image.Image:
    """The U: input blocks left to right and down a row per resolution, the middle block at the bottom,
    output blocks up to the right; a line for each skip connection (input block k feeds output block
    n - 1 - k); each panel labelled with its block and shape C x h x w; the final picture top right."""
    if mode not in SHOW:
        raise ValueError(f"mode: {mode!r} is not one of {sorted(SHOW)}")
    sides = sorted({lv.shape[1] for lv in levels}, reverse=True)
    row_of = {s: r for r, s in enumerate(sides)}
    lh = draw.line_height(draw.FONT_SIZE - 2)
    cell_w, cell_h, gap = panel + 12, panel + 2 * lh + 12, 6
    top = draw.line_height(draw.FONT_SIZE + 2) + 2 * gap
    width = cell_w * len(levels) + 2 * gap + (2 * panel + 2 * gap if picture is not None else 0)
    out = Image.new("RGB", (width, top + cell_h * (len(sides) + 1)), draw.BACKGROUND)
    canvas = ImageDraw.Draw(out)
    draw.draw_text(canvas, (gap, gap), title, draw.FONT_SIZE + 2)
    centres: dict[str, tuple[float, float]] = {}
    for k, lv in enumerate(levels):
        row = row_of[lv.shape[1]] + (1 if lv.kind == "middle" else 0)
        x, y = gap + k * cell_w + 6, top + row * cell_h
        tile = Image.fromarray((SHOW[mode](features[lv.name]) * 255).round().byte().numpy())
        tile = tile.resize((panel, max(1, round(panel * lv.shape[1] / lv.shape[2]))), Image.NEAREST)
        out.paste(tile, (x, y))
        canvas.rectangle((x - 1, y - 1, x + tile.width, y + tile.height), outline=draw.MUTED)
        draw.draw_text(canvas, (x + panel / 2, y + tile.height + 2), f"{lv.name}\n{lv.label}", draw.FONT_SIZE - 2, anchor="ma")
        centres[lv.name] = (x + panel / 2, y + tile.height / 2)
    # skip connections: input block k is read by output block (number of output blocks - 1 - k), whose
    # input is drawn at the panel before it ("output j" shows output block j's result, which enters j + 1)
    n_out = sum(lv.kind == "output" for lv in levels) + 1
    for lv in levels:
        if lv.kind != "input":
            continue
        reader = n_out - 1 - lv.index  # the output block that concatenates this skip
        target = "middle" if reader == 0 else f"output {reader - 1}"
        if target in centres and lv.name in centres:
            (x0, y0), (x1, y1) = centres[lv.name], centres[target]
            ya = min(y0, y1) - panel / 2 - 3 - 2 * (lv.index % 3)  # staggered so neighbouring skips stay apart
            canvas.line([(x0, y0 - panel / 2 - 1), (x0, ya), (x1, ya), (x1, y1 - panel / 2 - 1)], fill=draw.PALETTE[0], width=1)
    if picture is not None:
        pic = draw.fit(draw.to_pil(picture), 2 * panel)
        out.paste(pic, (width - pic.width - gap, top))
        draw.draw_text(canvas, (width - pic.width / 2 - gap, top + pic.height + 2), "the final picture", draw.FONT_SIZE - 2, anchor="ma")
    return out
