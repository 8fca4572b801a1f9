"""The CLIP text transformer (Radford et al. 2021, arXiv:2103.00020, section 2.4), one module for all
three text towers Stable Diffusion uses:

- OpenAI CLIP ViT-L/14 (SD1.x, and SDXL's first tower), quick-GELU;
- OpenCLIP ViT-H/14 (SD2.x) and OpenCLIP ViT-bigG/14 (SDXL's second tower), exact GELU
  (Cherti et al. 2023, "Reproducible scaling laws for contrastive language-image learning", arXiv:2212.07143).

Module names are those of the SD1 checkpoints (`text_model.embeddings.token_embedding`,
`text_model.encoder.layers.N.self_attn.q_proj`, `text_model.final_layer_norm`, `text_projection`),
which are also the names ComfyUI gives all three towers, so LoRA keys fit. OpenCLIP checkpoints
(`transformer.resblocks.N.attn.in_proj_weight`, `positional_embedding`, `ln_final`, ...) are renamed
on load by `openclip_to_clip_keys`, a plain table plus one split of the fused q/k/v projection.

Pre-norm transformer: x += attn(ln1(x)); x += mlp(ln2(x)); causal self-attention over the 77 tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU; the ViT-L/14 weights were trained with it."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


@dataclass(frozen=True)
class CLIPTextConfig:
    width: int
    layers: int
    heads: int
    activation: str  # "quick_gelu" (OpenAI CLIP) or "gelu" (OpenCLIP)
    projection_dim: int | None = None  # `text_projection` for the pooled output; None: no projection
    vocab_size: int = 49408
    context_length: int = 77
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        assert self.width % self.heads == 0, "width must split evenly into heads"
        assert self.activation in ACTIVATIONS, f"unknown activation {self.activation}"

    @property
    def mlp_width(self) -> int:
        return 4 * self.width


# SD checkpoints store CLIP-L as transformers' CLIPTextModel, which has no text_projection.
VIT_L_14 = CLIPTextConfig(width=768, layers=12, heads=12, activation="quick_gelu")
OPENCLIP_VIT_H = CLIPTextConfig(width=1024, layers=24, heads=16, activation="gelu", projection_dim=1024)
OPENCLIP_BIGG = CLIPTextConfig(width=1280, layers=32, heads=20, activation="gelu", projection_dim=1280)


class CLIPAttention(nn.Module):
    def __init__(self, cfg: CLIPTextConfig, device=None, dtype=None):
        super().__init__()
        self.heads = cfg.heads
        kw = dict(device=device, dtype=dtype)
        self.q_proj = nn.Linear(cfg.width, cfg.width, **kw)
        self.k_proj = nn.Linear(cfg.width, cfg.width, **kw)
        self.v_proj = nn.Linear(cfg.width, cfg.width, **kw)
        self.out_proj = nn.Linear(cfg.width, cfg.width, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (rearrange(p(x), "b t (h d) -> b h t d", h=self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # token t sees tokens <= t
        return self.out_proj(rearrange(out, "b h t d -> b t (h d)"))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: CLIPTextConfig, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_width, device=device, dtype=dtype)
        self.fc2 = nn.Linear(cfg.mlp_width, cfg.width, device=device, dtype=dtype)
        self.activation = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig, device=None, dtype=None):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps, device=device, dtype=dtype)
        self.self_attn = CLIPAttention(cfg, device, dtype)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps, device=device, dtype=dtype)
        self.mlp = CLIPMLP(cfg, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig, device=None, dtype=None):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(cfg, device, dtype) for _ in range(cfg.layers)])


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig, device=None, dtype=None):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width, device=device, dtype=dtype)
        self.position_embedding = nn.Embedding(cfg.context_length, cfg.width, device=device, dtype=dtype)


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig, device=None, dtype=None):
        super().__init__()
        self.embeddings = CLIPEmbeddings(cfg, device, dtype)
        self.encoder = CLIPEncoder(cfg, device, dtype)
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps, device=device, dtype=dtype)


class CLIPTextModel(nn.Module):
    """Token embeddings in, (hidden states of one layer, pooled output) out.

    `layer` picks the encoder layer whose output is returned (-1 last, -2 penultimate = "clip skip 2");
    out of range means "the final output", as in ComfyUI. `norm_hidden` applies `final_layer_norm` to
    it (SD1/SD2 do, SDXL does not). The pooled output is always the final, normed state at the EOS
    token, through `text_projection` when the tower has one and `project` is set.
    """

    def __init__(self, cfg: CLIPTextConfig, device=None, dtype=None):
        super().__init__()
        self.config = cfg
        self.text_model = CLIPTextTransformer(cfg, device, dtype)
        if cfg.projection_dim is not None:
            self.text_projection = nn.Linear(cfg.width, cfg.projection_dim, bias=False, device=device, dtype=dtype)

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_model.embeddings.token_embedding(ids)

    def forward(
        self,
        embeds: torch.Tensor,  # [B, T, C] token embeddings (before positions)
        eos_index: torch.Tensor,  # [B] position of each row's EOS token, for the pooled output
        layer: int = -1,
        norm_hidden: bool = True,
        project: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tm = self.text_model
        layers = tm.encoder.layers
        tokens = embeds.shape[1]
        x = embeds + tm.embeddings.position_embedding.weight[:tokens]
        if not -len(layers) <= layer < len(layers):
            layer, norm_hidden = -1, True
        pick = layer % len(layers)
        hidden = x
        for i, block in enumerate(layers):
            x = block(x)
            if i == pick:
                hidden = x
        x = tm.final_layer_norm(x)
        if norm_hidden:
            hidden = tm.final_layer_norm(hidden)
        pooled = x[torch.arange(x.shape[0], device=x.device), eos_index]
        if project and hasattr(self, "text_projection"):
            pooled = self.text_projection(pooled)
        return hidden, pooled


def openclip_to_clip_keys(sd: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Rename an OpenCLIP text tower's state dict (keys without prefix) to `CLIPTextModel` keys.

    The fused `attn.in_proj_weight` [3C, C] is q, k, v stacked; OpenCLIP's `text_projection` is a
    [C, P] matrix applied as `x @ P`, so it becomes the transposed weight of a bias-free Linear.
    Keys that are no part of the text tower (`logit_scale`, `attn_mask`, ...) are dropped.
    """
    rename = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
    }
    block = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    out = {new: sd[old] for old, new in rename.items() if old in sd}
    if "text_projection" in sd:
        out["text_projection.weight"] = sd["text_projection"].t().contiguous()
    for n in range(layers):
        src, dst = f"transformer.resblocks.{n}.", f"text_model.encoder.layers.{n}."
        for old, new in block.items():
            for p in ("weight", "bias"):
                if f"{src}{old}.{p}" in sd:
                    out[f"{dst}{new}.{p}"] = sd[f"{src}{old}.{p}"]
        for p in ("weight", "bias"):
            if f"{src}attn.in_proj_{p}" in sd:
                q, k, v = rearrange(sd[f"{src}attn.in_proj_{p}"], "(three c) ... -> three c ...", three=3)
                out[f"{dst}self_attn.q_proj.{p}"] = q
                out[f"{dst}self_attn.k_proj.{p}"] = k
                out[f"{dst}self_attn.v_proj.{p}"] = v
    return out
