"""The Anatomy Explorer's capture and run store: everything one sampling run did, step by step, kept on
disk for the editor's panel (web/explorer.js) to replay.

`Recording` is one more consumer of the hooks the views use (plain callables, ComfyUI-free):
- the sampler's callback (step i, x_t, the x0 prediction; the noise is eps = (x_t - x0) / sigma);
- a post-CFG function (ComfyUI's `sampler_post_cfg_function`): the conditional and unconditional x0
  predictions of each model call and the guidance scale s, with guided x0 = uncond + s (cond - uncond)
  (Ho & Salimans 2022, arXiv:2207.12598, eq. 6, in x0 form); it returns what it is given, so the
  sampling is unchanged;
- an `attn2` replacement: DAAM's per-word maps (anatomy.attention_maps), kept per step and per U-Net
  level (down = input blocks, middle, up = output blocks) instead of one running sum;
- block patches: at the chosen steps each level's feature map, reduced at once to its channel-PCA
  picture and its strongest channels (anatomy.levels), so no full feature map is held.

A model call belongs to the step whose callback comes next (a sampler reports step i right after its
first model call there); calls after the last callback (a second-order sampler's last half step) go to
the last step, so the per-step maps add up to Cross-Attention per Word's running sum.

`RunStore` is a folder of runs, `<root>/<run id>/index.json` plus image atlases (PNG, one tile per
step) and raw little-endian float16 arrays; the newest `keep` runs are kept, older ones deleted, and
`file()` hands out only plain files inside a run folder (names checked, links refused).
"""
from __future__ import annotations

import calendar
import json
import math
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from PIL import Image

from . import attention_maps as am
from . import levels as lv
from .forward import vp_from_ve

LEVELS = ("down", "middle", "up")
LEVEL_OF_BLOCK = {"input": "down", "middle": "middle", "output": "up"}
KINDS = ("x_t", "x0", "cond", "uncond")  # rows of latents.f16, in this order
TOP_CHANNELS = 4  # strongest channels kept per U-Net level (by mean |activation|)
ATLAS_COLUMNS = 16  # tiles per atlas row; tile k sits at column k % 16, row k // 16
FORMAT = 1


# --------------------------------------------------------------------------- the prompt's tokens

@dataclass(frozen=True)
class Token:
    text: str
    kind: str  # "bos", "word", "eos" or "embedding"
    positions: tuple[int, ...]  # places in the context (chunk * chunk length + index)
    weight: float = 1.0


def prompt_tokens(chunks: Sequence[Sequence[tuple]], token_text: Callable[[int], str]) -> tuple[list[Token], int]:
    """BOS, the prompt's words (anatomy.attention_maps.words_of: BPE pieces joined at "</w>"), EOS, and the
    number of padding places, from the tokenizer's chunks of (id, weight, ...). Each chunk's BOS is its
    place 0 and its EOS the first end-of-text after it; a word's weight is its first piece's."""
    ids = [[t[0] if isinstance(t[0], int) else None for t in chunk] for chunk in chunks]
    weights = {c * len(chunk) + i: float(t[1]) for c, chunk in enumerate(chunks) for i, t in enumerate(chunk)}
    words = am.words_of(ids, token_text)
    bos = tuple(c * len(chunk) for c, chunk in enumerate(ids) if chunk and chunk[0] == am.BOS)
    eos = tuple(c * len(chunk) + chunk.index(am.EOS, 1) for c, chunk in enumerate(ids) if am.EOS in chunk[1:])
    tokens = [Token("<BOS>", "bos", bos)]
    tokens += [Token(w.text, "embedding" if w.text == "<embedding>" else "word", w.positions, weights[w.positions[0]]) for w in words]
    tokens.append(Token("<EOS>", "eos", eos))
    used = len(bos) + len(eos) + sum(len(w.positions) for w in words)
    return tokens, sum(len(c) for c in ids) - used


# --------------------------------------------------------------------------- capture

@dataclass
class StepRecord:
    i: int
    sigma: float
    x: torch.Tensor  # [C, h, w] float32 CPU, the model's working space (x_sigma = x0 + sigma eps)
    x0: torch.Tensor  # the (guided) x0 prediction the sampler reported
    cond: torch.Tensor | None = None  # conditional / unconditional x0 of the same model call (CFG > 1)
    uncond: torch.Tensor | None = None
    scale: float | None = None
    maps: torch.Tensor | None = None  # [levels, tokens, h, w] float32 CPU: the words' attention in this step

    @property
    def noise(self) -> torch.Tensor:
        """The noise the model sees in x_t: eps = (x_t - x0) / sigma (anatomy.steps.Step)."""
        return (self.x - self.x0) / self.sigma if self.sigma > 0 else torch.zeros_like(self.x)


@dataclass
class LevelPictures:
    shape: tuple[int, int, int]  # channels, h, w
    pca: torch.Tensor  # [h, w, 3] 0..1
    channels: list[int]  # the strongest channels, strongest first
    strength: list[float]  # their mean |activation|
    maps: torch.Tensor  # [TOP_CHANNELS, h, w], each min-max scaled to 0..1


def level_pictures(feature: torch.Tensor) -> LevelPictures:
    """One feature map [C, h, w] reduced to what the panel shows: its channel PCA (anatomy.levels.pca_rgb)
    and its TOP_CHANNELS strongest channels by mean |activation|."""
    feature = feature.detach().float()
    strength = feature.abs().mean(dim=(1, 2))
    top = torch.topk(strength, min(TOP_CHANNELS, feature.shape[0])).indices
    maps = torch.stack([am.normalise(feature[c]) for c in top]).cpu()
    return LevelPictures(tuple(feature.shape), lv.pca_rgb(feature, exact=False).cpu(), [int(c) for c in top],
                         [float(strength[c]) for c in top], maps)


@dataclass
class Recording(lv.BlockPatches):
    """What one sampling run did, for the explorer; the instance is the hook of every kind (see the module docstring).

    tokens: the prompt's BOS / words / EOS (prompt_tokens) and context_length its tokens in all chunks;
    levels_every: keep the U-Net levels at every k-th step and the last (0: never); the first picture of
    a batch is the one recorded."""

    tokens: list[Token] = field(default_factory=list)
    context_length: int = 77
    levels_every: int = 0
    steps: list[StepRecord] = field(default_factory=list)
    sigmas: list[float] = field(default_factory=list)
    levels: dict[int, dict[str, LevelPictures]] = field(default_factory=dict)  # step -> Level.name -> pictures
    attention_calls: int = 0
    on_step: Callable[["Recording"], None] | None = None
    # (q, k, v, heads, extra_options) -> the layer's output: what the U-Net computes without the patch
    layer_attention: Callable = field(default=lambda q, k, v, heads, extra: am.attention_output(q, k, v, heads))
    _calls: list = field(default_factory=list)  # (sigma, cond, uncond, scale) of the model calls since the last step
    _maps: torch.Tensor | None = None  # [levels, tokens, h, w] attention since the last step, on the U-Net's device

    def __deepcopy__(self, memo):
        """Shared, not copied, when ComfyUI clones the model (as anatomy.attention_maps.CrossAttentionMaps)."""
        return self

    def reset(self, sigmas: Sequence[float] = ()) -> None:
        self.steps, self.levels, self.attention_calls = [], {}, 0
        self.sigmas = [float(s) for s in sigmas]
        self._calls, self._maps = [], None

    # ---- the sampler's callback
    def step(self, i: int, x0: torch.Tensor, x: torch.Tensor) -> None:
        sigma = self.sigmas[i] if i < len(self.sigmas) else float("nan")
        record = StepRecord(i, sigma, x[0].detach().float().cpu().clone(), x0[0].detach().float().cpu().clone())
        # the call the sampler reports: its last one at this step's sigma (else its last one)
        at = [c for c in self._calls if math.isclose(c[0], sigma, rel_tol=1e-5, abs_tol=1e-8)] or self._calls
        if at:
            _, record.cond, record.uncond, record.scale = at[-1]
        self._calls = []
        record.maps = self._take_maps()
        self.steps.append(record)
        if self.on_step is not None:
            self.on_step(self)

    def finish(self) -> None:
        """After the sampler returns: attention of calls after the last callback goes to the last step."""
        rest = self._take_maps()
        if rest is not None and self.steps:
            last = self.steps[-1]
            last.maps = rest if last.maps is None else last.maps + rest

    def _take_maps(self):
        maps, self._maps = self._maps, None
        return None if maps is None else maps.float().cpu()

    # ---- sampler_post_cfg_function
    def post_cfg(self, args: dict) -> torch.Tensor:
        sigma = args["sigma"]
        sigma = float(sigma.flatten()[0]) if torch.is_tensor(sigma) else float(sigma)
        scale = float(args["cond_scale"])
        cond, uncond = args.get("cond_denoised"), args.get("uncond_denoised")
        if cond is not None and uncond is not None and not math.isclose(scale, 1.0):
            self._calls.append((sigma, cond[0].detach().float().cpu().clone(), uncond[0].detach().float().cpu().clone(), scale))
        else:  # CFG 1: ComfyUI skips the unconditional pass; only the scale is worth keeping
            self._calls.append((sigma, None, None, scale))
        return args["denoised"]

    # ---- attn2 replacement
    def attn2(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        """The layer's own attention output (`layer_attention`, the function the U-Net would have called,
        so the sampled latent stays bit-identical), and its probabilities once more in float32 for the maps
        (cross-attention has only 77 keys per chunk: the second pass is small)."""
        heads = extra_options["n_heads"]
        out = self.layer_attention(q, k, v, heads, extra_options)
        with torch.no_grad():
            self._add_attention(reduce(am.attention_probabilities(q, k, heads), "b h n m -> b n m", "mean"), extra_options)
        return out

    def _add_attention(self, probs: torch.Tensor, extra_options: dict) -> None:
        grid = am.layer_grid(probs, extra_options)  # [b, m, H, W], the conditional rows
        if grid is None:
            return
        grid = am.fold_tokens(grid[0], self.context_length)  # the first picture, folded onto its own context
        words = torch.stack([grid[list(t.positions)].sum(0) if t.positions else torch.zeros_like(grid[0]) for t in self.tokens])
        level = LEVELS.index(LEVEL_OF_BLOCK.get(extra_options.get("block", ("middle",))[0], "middle"))
        if self._maps is None:
            self._maps = words.new_zeros((len(LEVELS), *words.shape))
        self._maps[level] += words
        self.attention_calls += 1

    # ---- block patches (U-Net levels): input_block_patch / output_block_patch of lv.BlockPatches call this
    def _take(self, name: str, h: torch.Tensor, options: dict) -> None:
        sample_sigmas, sigma = options.get("sample_sigmas"), options.get("sigmas")
        if not self.levels_every or sample_sigmas is None or sigma is None:
            return
        s = float(sigma.flatten()[0])
        last = len(sample_sigmas) - 2
        wanted = [i for i in range(last + 1) if (i % self.levels_every == 0 or i == last)
                  and math.isclose(float(sample_sigmas[i]), s, rel_tol=1e-5, abs_tol=1e-8)]
        if not wanted:
            return
        kept = self.levels.setdefault(wanted[0], {})
        if name in kept:  # a later call at the same sigma (second-order samplers): the step's first is kept
            return
        kept[name] = level_pictures(h[lv.first_cond_row(h, options)])


# --------------------------------------------------------------------------- pictures and the linear preview

def noise_picture(noise: torch.Tensor) -> torch.Tensor:
    """The predicted noise's first three channels as RGB, -3..3 mapped to 0..1 (as Denoising Steps shows it): [h, w, 3]."""
    return ((noise[:3].clamp(-3, 3) + 3) / 6).permute(1, 2, 0)


def preview_map(factors, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's latent-to-RGB preview (rgb = factors^T x + bias, shown as (rgb + 1) / 2) as one affine map
    to 0..1: (matrix [C, 3], offset [3])."""
    f = torch.as_tensor(factors, dtype=torch.float32)
    b = torch.zeros(3) if bias is None else torch.as_tensor(bias, dtype=torch.float32)
    return f / 2, (b + 1) / 2


def apply_map(latent: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """[C, h, w] -> [h, w, 3] in 0..1 through an affine latent-to-RGB map."""
    return (torch.einsum("chw,ck->hwk", latent.float(), matrix) + offset).clamp(0, 1)


def fit_map(latents: Sequence[torch.Tensor], pictures: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine latent-to-RGB map that best matches this run's VAE pictures (least squares over every
    latent position, each picture area-averaged to the latent's size): how the panel shows a latent it
    has no VAE picture of, such as the guidance what-if."""
    xs, ys = [], []
    for lat, pic in zip(latents, pictures):
        small = F.adaptive_avg_pool2d(pic.permute(2, 0, 1)[None].float(), lat.shape[-2:])[0]
        xs.append(rearrange(lat.float(), "c h w -> (h w) c"))
        ys.append(rearrange(small, "k h w -> (h w) k"))
    x, y = torch.cat(xs), torch.cat(ys)
    x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    solution = torch.linalg.lstsq(x1.double(), y.double()).solution.float()
    return solution[:-1], solution[-1]


def atlas(tiles: Sequence[np.ndarray]) -> Image.Image:
    """Tiles [h, w, 3] uint8, ATLAS_COLUMNS to a row, in one picture."""
    h, w = tiles[0].shape[:2]
    cols = min(len(tiles), ATLAS_COLUMNS)
    out = np.zeros((h * math.ceil(len(tiles) / cols), w * cols, 3), dtype=np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    return Image.fromarray(out)


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    return (rgb.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def fit_tile(rgb: torch.Tensor, max_side: int) -> torch.Tensor:
    """[H, W, 3] shrunk (area average) so that its longer side is at most max_side."""
    h, w = rgb.shape[:2]
    scale = max(h, w) / max_side
    if scale <= 1:
        return rgb
    size = (max(1, round(h / scale)), max(1, round(w / scale)))
    return F.interpolate(rgb.permute(2, 0, 1)[None].float(), size=size, mode="area")[0].permute(1, 2, 0)


# --------------------------------------------------------------------------- the run store

RUN_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9]{3}-[0-9a-f]{4}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\.(json|png|f16)$")


class StoreError(LookupError):
    """A run or file the store does not hold (or will not hand out); the message says which."""


@dataclass
class RunStore:
    root: Path

    def new_run(self, keep: int) -> tuple[str, Path]:
        """A new empty run folder, after deleting the oldest runs so that `keep` remain with it. Ids are the UTC
        start time to the millisecond, later than every run in the store, so their order is the runs' order."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.prune(max(keep - 1, 0))
        newest = self.run_ids()[:1]
        stamp = int(time.time() * 1000)
        if newest:
            day, clock, ms, _ = newest[0].split("-")
            last = calendar.timegm(time.strptime(day + clock, "%Y%m%d%H%M%S"))
            stamp = max(stamp, last * 1000 + int(ms) + 1)
        while True:
            run_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(stamp // 1000))}-{stamp % 1000:03d}-{secrets.token_hex(2)}"
            folder = self.root / run_id
            try:
                folder.mkdir()
                return run_id, folder
            except FileExistsError:
                stamp += 1

    def run_ids(self) -> list[str]:
        """The store's runs, newest first (by the folder's name: its UTC start time, then its random part)."""
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if RUN_ID.match(p.name) and p.is_dir() and not p.is_symlink()]
        return sorted(found, reverse=True)

    def prune(self, keep: int) -> list[str]:
        """Delete all runs but the newest `keep`; returns the deleted ids."""
        gone = self.run_ids()[keep:]
        for run_id in gone:
            shutil.rmtree(self.root / run_id, ignore_errors=True)
        return gone

    def run_dir(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not RUN_ID.match(run_id):
            raise StoreError(f"run {run_id!r}: not a run id (YYYYMMDD-HHMMSS-mmm-xxxx)")
        folder = self.root / run_id
        if folder.is_symlink() or not folder.is_dir():
            raise StoreError(f"run {run_id}: not in the store (only the newest runs are kept; it may have been deleted)")
        return folder

    def file(self, run_id: str, name: str) -> Path:
        """The path of one of a run's files; StoreError for a bad name, a link or a file outside the run."""
        folder = self.run_dir(run_id)
        if not isinstance(name, str) or not FILE_NAME.match(name):
            raise StoreError(f"file {name!r}: not a run file name (letters, digits, _ and -, then .json, .png or .f16)")
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise StoreError(f"run {run_id} has no file {name}")
        if path.resolve().parent != folder.resolve() or not path.resolve().is_relative_to(self.root.resolve()):
            raise StoreError(f"file {name}: outside the run store")
        return path

    def index(self, run_id: str) -> dict:
        return json.loads(self.file(run_id, "index.json").read_text())

    def summaries(self) -> list[dict]:
        """Each run's index without its big tables (newest first); runs whose index cannot be read are skipped."""
        out = []
        for run_id in self.run_ids():
            try:
                idx = self.index(run_id)
            except (StoreError, OSError, ValueError):
                continue
            out.append({k: idx.get(k) for k in ("id", "created", "status", "message", "label", "prompt", "model", "sampler",
                                                  "seed", "cfg", "steps", "recorded_steps", "size", "bytes")})
        return out

    def bytes(self) -> int:
        return sum(f.stat().st_size for r in self.run_ids() for f in (self.root / r).iterdir() if f.is_file())


def write_json(path: Path, data: dict) -> None:
    """Write atomically (a reader never sees half an index)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


def write_f16(path: Path, array: torch.Tensor) -> None:
    path.write_bytes(array.detach().to(torch.float16).cpu().contiguous().numpy().astype("<f2").tobytes())


# --------------------------------------------------------------------------- writing a run

@dataclass
class RunInfo:
    """What the capture node knows about the run besides the recording."""
    run_id: str
    label: str
    prompt: str
    model: str
    sampler: str = "?"
    seed: int | None = None
    width: int = 0
    height: int = 0
    batch: int = 1
    created: float = field(default_factory=time.time)
    chunks: list = field(default_factory=list)  # [[id, ...], ...] per 77-token chunk
    chunk_weights: list = field(default_factory=list)
    padding: int = 0
    pictures: str = "latent_preview"
    attention_note: str | None = None  # why there are no maps (a model without cross-attention)


def base_index(info: RunInfo, recording: Recording, status: str, message: str | None = None) -> dict:
    return {
        "format": FORMAT, "id": info.run_id, "label": info.label, "created": info.created, "status": status, "message": message,
        "prompt": info.prompt, "model": info.model, "sampler": info.sampler, "seed": info.seed,
        "size": {"width": info.width, "height": info.height, "batch": info.batch, "picture": 0},
        "steps": max(len(recording.sigmas) - 1, 0), "sigmas": recording.sigmas, "recorded_steps": len(recording.steps),
        "tokens": {"chunks": info.chunks, "weights": info.chunk_weights, "padding": info.padding,
                   "items": [{"text": t.text, "kind": t.kind, "positions": list(t.positions), "weight": t.weight} for t in recording.tokens]},
    }


def write_run(folder: Path, info: RunInfo, recording: Recording, decode: Callable[[torch.Tensor], torch.Tensor] | None,
              preview: tuple[torch.Tensor, torch.Tensor] | None, status: str, message: str | None = None, tile: int = 128) -> dict:
    """Write a run's files and index.json (last, atomically); returns the index.

    decode(latents [N, C, h, w] in the working space) -> [N, H, W, 3] 0..1 is the run's VAE (None: pictures are the
    linear preview `preview`, ComfyUI's latent-to-RGB factors as (matrix, offset)); tiles are at most `tile`
    pixels a side. Without a VAE and without factors the preview map is fitted to nothing and is grey."""
    steps = recording.steps
    index = base_index(info, recording, status, message)
    files: dict[str, str] = {}
    if steps:
        c, h, w = steps[0].x.shape
        zeros = torch.zeros(c, h, w)
        guided = all(s.cond is not None for s in steps)
        lat = torch.stack([torch.stack([s.x, s.x0, s.cond if s.cond is not None else zeros, s.uncond if s.uncond is not None else zeros])
                           for s in steps])  # [steps, 4, C, h, w]
        write_f16(folder / "latents.f16", lat)
        files["latents"] = "latents.f16"
        if decode is not None:
            render, source = decode, "vae"
        else:
            matrix, offset = preview if preview is not None else (torch.zeros(c, 3), torch.full((3,), 0.5))
            render, source = (lambda z: torch.stack([apply_map(one, matrix, offset) for one in z])), "latent_preview"
        wanted = {"x_t": [vp_from_ve(s.x, s.sigma) for s in steps], "x0": [s.x0 for s in steps]}
        if guided:
            wanted.update(cond=[s.cond for s in steps], uncond=[s.uncond for s in steps])
        names = [k for k in wanted for _ in wanted[k]]
        rendered = render(torch.stack([z for k in wanted for z in wanted[k]]))  # one batch: the VAE decodes 8 at a time
        pictures = {k: [] for k in ("x_t", "x0", "noise", "cond", "uncond")}
        for k, picture in zip(names, rendered):
            pictures[k].append(picture)
        pictures["noise"] = [noise_picture(s.noise) for s in steps]
        if source == "vae":
            matrix, offset = fit_map([s.x0 for s in steps], pictures["x0"])
            map_source = "fitted to this run's VAE pictures of x0 (least squares)"
        else:
            map_source = "ComfyUI's latent-to-RGB preview factors"
        size = fit_tile(pictures["x0"][0], tile).shape[:2]
        for kind, pics in pictures.items():
            if not pics:
                continue
            tiles = [to_uint8(fit_tile(p, tile) if kind != "noise" else
                              F.interpolate(p.permute(2, 0, 1)[None], size=size, mode="nearest")[0].permute(1, 2, 0)) for p in pics]
            atlas(tiles).save(folder / f"{kind}.png", compress_level=6)
            files[kind] = f"{kind}.png"
        index["pictures"] = {"source": source, "tile": list(size), "columns": ATLAS_COLUMNS,
                             "kinds": [k for k in pictures if pictures[k]]}
        index["rgb"] = {"matrix": matrix.tolist(), "offset": offset.tolist(), "source": map_source}
        index["latents"] = {"file": "latents.f16", "shape": list(lat.shape), "kinds": list(KINDS)}
        index["cfg"] = steps[-1].scale
        index["guidance"] = guided
        index["recorded"] = [{"i": s.i, "sigma": s.sigma} for s in steps]
        maps = [s.maps for s in steps]
        if all(m is not None for m in maps) and recording.tokens:
            stacked = torch.stack(maps)  # [steps, levels, tokens, h, w]
            write_f16(folder / "attention.f16", stacked)
            files["attention"] = "attention.f16"
            index["attention"] = {"file": "attention.f16", "shape": list(stacked.shape), "levels": list(LEVELS),
                                  "calls": recording.attention_calls}
        else:
            index["attention"] = None
            index["attention_note"] = info.attention_note or "no cross-attention was recorded"
        if recording.levels:
            index["unet"] = write_levels(folder, recording.levels, (h, w), files)
    index["files"] = files
    index["bytes"] = sum((folder / f).stat().st_size for f in files.values())
    write_json(folder / "index.json", index)
    return index


LEVEL_TILE = 32  # side of a level's tiles at most, pixels (SD1.5 at 512: 24 levels x 5 tiles of 32x32 per kept step)


def write_levels(folder: Path, levels: dict[int, dict[str, LevelPictures]], latent_hw: tuple[int, int], files: dict) -> dict:
    """One atlas per kept step: a row per level (in the U's order), the PCA picture then the strongest channels,
    every tile resized to the latent's size, at most LEVEL_TILE a side (smaller levels enlarged, nearest;
    larger ones averaged down)."""
    scale = max(latent_hw) / LEVEL_TILE
    if scale > 1:
        latent_hw = (max(1, round(latent_hw[0] / scale)), max(1, round(latent_hw[1] / scale)))

    def resize(t: torch.Tensor) -> np.ndarray:
        x = t.permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=latent_hw, mode="area" if x.shape[-1] > latent_hw[1] else "nearest")
        return to_uint8(x[0].permute(1, 2, 0))

    order = {"input": 0, "middle": 1, "output": 2}

    def key(name: str):
        kind, _, num = name.partition(" ")
        return order[kind], int(num or 0)

    names = sorted({n for per in levels.values() for n in per}, key=key)
    steps_out = []
    for i, per in sorted(levels.items()):
        rows = []
        for name in names:
            if name not in per:
                rows.append([np.zeros((*latent_hw, 3), np.uint8)] * (1 + TOP_CHANNELS))
                continue
            p = per[name]
            tiles = [p.pca] + [m[..., None].expand(-1, -1, 3) for m in p.maps]
            tiles += [torch.zeros(*p.maps.shape[1:], 3)] * (1 + TOP_CHANNELS - len(tiles))
            rows.append([resize(t) for t in tiles])
        picture = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
        name = f"levels_{i:04d}.png"
        Image.fromarray(picture).save(folder / name, compress_level=6)
        files[f"levels_{i}"] = name
        steps_out.append({"i": i, "file": name,
                          "levels": {n: {"channels": per[n].channels, "strength": per[n].strength} for n in names if n in per}})
    shapes = {}
    for per in levels.values():
        for n, p in per.items():
            shapes[n] = list(p.shape)
    return {"names": names, "shapes": shapes, "tile": list(latent_hw), "top": TOP_CHANNELS, "steps": steps_out}
