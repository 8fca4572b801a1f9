"""Cross-attention per word: DAAM's aggregation of the U-Net's text attention into one heatmap per word.

Tang et al. (2022), "What the DAAM: Interpreting Stable Diffusion Using Cross Attention",
arXiv:2210.04885, Sec. 3: every cross-attention layer gives, for each latent position, a softmax
over the prompt's tokens, softmax(q k^T / sqrt(d)); DAAM takes it per head, upsamples each layer's
h x w map to the latent size, and sums over heads, layers and timesteps; a word's map is the sum of
its BPE tokens' maps.

`CrossAttentionMaps` is that aggregator as a ComfyUI `attn2` replacement patch (`patches_replace`):
called with the projected q, k, v and the transformer options, it returns the normal attention output
(so sampling is unchanged) and adds the conditional half's maps into one running sum of shape
[batch, tokens, H, W]; no per-step or per-layer maps are kept. Differences from DAAM's code: the mean
over heads instead of the sum (a constant factor), bilinear instead of bicubic upsampling (stays
non-negative, no clamp needed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange, reduce

BOS, EOS = 49406, 49407  # CLIP's <|startoftext|>, <|endoftext|>


def attention_output(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over `heads` heads, [b, n, heads*d] in and out: what ComfyUI's
    optimized attention computes for the layer."""
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    return rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """[b, h, n, m]: each head's softmax over the m keys for each query position (float32)."""
    q, k = (rearrange(t.float(), "b n (h d) -> b h n d", h=heads) for t in (q, k))
    logits = torch.einsum("bhnd,bhmd->bhnm", q, k) * q.shape[-1] ** -0.5
    return logits.softmax(dim=-1)


def feature_size(tokens: int, latent_hw: tuple[int, int], activations_shape=None) -> tuple[int, int]:
    """The h x w of a layer whose sequence has `tokens` positions: the transformer's input shape when
    the host reports it, else the latent size halved (rounding up, as the U-Net's stride-2
    convolutions do) until it holds `tokens` positions."""
    if activations_shape is not None and activations_shape[-2] * activations_shape[-1] == tokens:
        return int(activations_shape[-2]), int(activations_shape[-1])
    h, w = latent_hw
    while h * w > tokens:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != tokens:
        raise ValueError(f"cannot lay {tokens} attention positions out on a grid from a {latent_hw} latent")
    return h, w


def fold_tokens(maps: torch.Tensor, tokens: int) -> torch.Tensor:
    """[..., k*tokens, H, W] -> [..., tokens, H, W]: ComfyUI repeats a shorter prompt's context to the
    length of the longer one when it batches them; the copies share the attention, so summing them
    gives the map of the prompt itself."""
    if maps.shape[-3] == tokens:
        return maps
    if maps.shape[-3] % tokens:
        raise ValueError(f"cannot fold {maps.shape[-3]} context tokens onto {tokens}")
    return reduce(maps, "... (k t) h w -> ... t h w", "sum", t=tokens)


def layer_grid(probs: torch.Tensor, extra_options: dict) -> torch.Tensor | None:
    """One layer call's head-averaged probabilities [b, n, m] as maps [batch, m, H, W] at the latent's size,
    the conditional rows only (ComfyUI's `cond_or_uncond`: 0 marks the positive prompt's chunks, 1 the
    negative's; several positive conds add up); None for an unconditional-only call."""
    chunks = extra_options.get("cond_or_uncond") or [0]
    per = probs.shape[0] // len(chunks)
    rows = [i for i, c in enumerate(chunks) if c == 0]
    if not rows:  # an unconditional-only call (e.g. some guiders): nothing to learn about the prompt
        return None
    probs = torch.cat([probs[i * per:(i + 1) * per] for i in rows])  # [r*per, n, m]
    latent = tuple(extra_options["original_shape"][-2:])
    h, w = feature_size(probs.shape[1], latent, extra_options.get("activations_shape"))
    grid = rearrange(probs, "b (h w) m -> b m h w", h=h, w=w)
    grid = F.interpolate(grid, size=latent, mode="bilinear", align_corners=False) if (h, w) != latent else grid
    return reduce(grid, "(r b) m h w -> b m h w", "sum", r=len(rows))


@dataclass
class CrossAttentionMaps:
    """The running DAAM sum of one sampling run; use an instance as an `attn2` replace patch.

    sums: [batch, tokens, H, W] float32 on the U-Net's device, the attention each latent position
    (upsampled to the latent's H x W) gave each token, summed over heads (mean), layers and model
    calls. Only the conditional rows of the batch count (ComfyUI's `cond_or_uncond`: 0 marks the
    positive prompt's chunks, 1 the negative's).
    """

    sums: torch.Tensor | None = None
    calls: int = 0  # cross-attention calls added in (layers x model evaluations)
    sigmas: list[torch.Tensor] = field(default_factory=list)  # the sigma of each model call (0-d tensors)

    def reset(self) -> None:
        self.sums, self.calls, self.sigmas = None, 0, []

    def __deepcopy__(self, memo):
        """ComfyUI deep-copies a model's options on every clone (a LoRA or another patch after the capture):
        the copy must keep recording into this one, which the view reads."""
        return self

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        """The layer's attention output, computed once from the probabilities the maps are made of
        (softmax in float32: no second attention pass, which is what keeps the capture cheap)."""
        heads = extra_options["n_heads"]
        probs = attention_probabilities(q, k, heads)  # [b, h, n, m]
        values = rearrange(v.float(), "b m (h d) -> b h m d", h=heads)
        out = rearrange(probs @ values, "b h n d -> b n (h d)").to(q.dtype)
        with torch.no_grad():
            self.add(reduce(probs, "b h n m -> b n m", "mean"), heads, extra_options)
        return out

    def add(self, probs: torch.Tensor, heads: int, extra_options: dict) -> None:
        """Add one layer call's head-averaged probabilities [b, n, m] (conditional rows only)."""
        grid = layer_grid(probs, extra_options)
        if grid is None:
            return
        if self.sums is None:
            self.sums = grid
        else:
            tokens = min(self.sums.shape[1], grid.shape[1])
            self.sums = fold_tokens(self.sums, tokens) + fold_tokens(grid, tokens)
        self.calls += 1
        sigma = extra_options.get("sigmas")
        if sigma is not None and extra_options.get("transformer_index", 0) == 0 and extra_options.get("block_index", 0) == 0:
            # once per model call, at its first cross-attention layer (ComfyUI's U-Net and the pack's count
            # the transformers passed); kept as a tensor: reading it here would stop the GPU once per layer
            self.sigmas.append(sigma.flatten()[0])


# --------------------------------------------------------------------------- tokens -> words

@dataclass(frozen=True)
class Word:
    text: str
    positions: tuple[int, ...]  # its BPE tokens' places in the context (chunk * 77 + index)


def words_of(chunks: list[list[int | None]], token_text) -> list[Word]:
    """The prompt's words and where their tokens sit in the context, from its 77-token chunks of ids.

    `token_text(id)` is the BPE symbol of an id (CLIP's vocabulary: "circ", "le</w>"): a word ends at
    a symbol ending in "</w>". Only the tokens between a chunk's BOS and its first EOS are the prompt's
    (the rest is padding); an embedding (id None) is one word of its own, "<embedding>".
    """
    words: list[Word] = []
    pending: list[tuple[int, str]] = []
    for c, chunk in enumerate(chunks):
        for i, tid in enumerate(chunk):
            if i == 0 and tid == BOS:
                continue
            if tid == EOS:
                break
            place = c * len(chunk) + i
            if tid is None:
                words.append(Word("<embedding>", (place,)))
                continue
            symbol = token_text(tid)
            pending.append((place, symbol))
            if symbol.endswith("</w>"):
                words.append(Word("".join(s for _, s in pending).removesuffix("</w>"), tuple(p for p, _ in pending)))
                pending = []
    if pending:  # a word cut by the end of a chunk
        words.append(Word("".join(s for _, s in pending).removesuffix("</w>"), tuple(p for p, _ in pending)))
    return words


def choose_words(words: list[Word], chosen: str) -> list[Word]:
    """The words named in `chosen` (comma- or space-separated, case-insensitive; empty = all), in the
    prompt's order; ValueError naming the input for a word the prompt does not have."""
    wanted = [w.strip().lower() for w in chosen.replace(",", " ").split() if w.strip()]
    if not wanted:
        return words
    have = {w.text.lower() for w in words}
    unknown = [w for w in wanted if w not in have]
    if unknown:
        raise ValueError(f"words: {', '.join(repr(u) for u in unknown)} not in the prompt; its words are: "
                         f"{', '.join(w.text for w in words)}")
    return [w for w in words if w.text.lower() in wanted]


def word_heatmaps(sums: torch.Tensor, words: list[Word]) -> torch.Tensor:
    """[len(words), H, W]: each word's map, the sum of its BPE tokens' maps in one picture's sums
    [tokens, H, W] (DAAM's default, unnormalised global heat map; DAAM can also divide each place by
    the attention all words got there, which on the embedded model spreads the maps out: a word's
    share is high wherever the other words get little)."""
    return torch.stack([sums[list(w.positions)].sum(0) for w in words])


def region_mass(heatmap: torch.Tensor, box: tuple[tuple[int, int], tuple[int, int]]) -> float:
    """Share of a heatmap's mass above its minimum inside the box ((x0, x1), (y0, y1)): the minimum is
    the attention a word gets everywhere (taken away so that a flat map counts as spread out, and
    a map's share of a box is that box's share of its area)."""
    (x0, x1), (y0, y1) = box
    m = heatmap - heatmap.min()
    return float(m[y0:y1, x0:x1].sum() / m.sum().clamp_min(1e-12))


# --------------------------------------------------------------------------- pictures

# viridis at 5 anchors (van der Walt & Smith, matplotlib 2.0): dark blue for none, yellow for most
VIRIDIS = torch.tensor([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=torch.float32)


def colormap(values: torch.Tensor) -> torch.Tensor:
    """[H, W] in 0..1 -> [H, W, 3] RGB in 0..1 along viridis (piecewise linear between its anchors)."""
    x = values.float().clamp(0, 1) * (len(VIRIDIS) - 1)
    lo = x.floor().long().clamp(max=len(VIRIDIS) - 2)
    t = (x - lo)[..., None]
    return (VIRIDIS[lo] * (1 - t) + VIRIDIS[lo + 1] * t) / 255


def normalise(heatmap: torch.Tensor) -> torch.Tensor:
    """Min-max to 0..1 (a flat map becomes all 0)."""
    lo, hi = heatmap.min(), heatmap.max()
    return (heatmap - lo) / (hi - lo) if hi > lo else torch.zeros_like(heatmap)


def overlay(image: torch.Tensor, heatmap: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """The picture [H, W, 3] (0..1) under a heatmap [h, w] resized to it (bilinear), normalised to 0..1
    and coloured with viridis, mixed `alpha` : 1 - alpha."""
    size = image.shape[:2]
    heat = F.interpolate(heatmap[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return (1 - alpha) * image.float().cpu() + alpha * colormap(normalise(heat.cpu()))


def render_words(image: torch.Tensor, heatmaps: torch.Tensor, words: list[Word], title: str, panel: int = 192):
    """One panel per word: the picture under the word's heatmap, the word underneath; the picture itself
    first. Returns a PIL picture (see anatomy.draw)."""
    from . import draw

    pictures = [draw.fit(draw.to_pil(image), panel)]
    pictures += [draw.fit(draw.to_pil(overlay(image, h)), panel) for h in heatmaps]
    names = ["picture"] + [w.text for w in words]
    cols = min(len(pictures), 6)
    rows = [pictures[i:i + cols] for i in range(0, len(pictures), cols)]
    captions = [names[i:i + cols] for i in range(0, len(names), cols)]
    return draw.grid(rows, captions=captions, title=title)
