"""Prompt chunks -> conditioning, the way Stable Diffusion checkpoints are used in ComfyUI.

A checkpoint's text encoder is one or two CLIP towers (`model.CLIPTextModel`), each with its own
policy: which layer feeds the U-Net, whether that layer is layer-normed, how chunks are padded.

| preset | towers | context | pooled |
|---|---|---|---|
| `SD1` | l: CLIP ViT-L/14, last layer, normed, EOS padding | [1, 77k, 768] | l's final EOS state |
| `SD2` | h: OpenCLIP ViT-H, penultimate layer, normed, 0 padding | [1, 77k, 1024] | h's projected EOS state |
| `SDXL` | l: ViT-L penultimate, g: OpenCLIP bigG penultimate, neither normed | [1, 77k, 768+1280] | g's projected EOS state |

Prompt weights follow ComfyUI's `ClipTokenWeightEncoder.encode_token_weights` (`comfy/sd1_clip.py`):
an "empty" prompt (BOS EOS pad...) is encoded in the same batch and every token with weight w != 1
is moved along the line from the empty prompt's state at its position: z' = (z - z_empty) * w + z_empty.
Chunks of 77 are encoded independently and concatenated along the token axis; the pooled output is the
first chunk's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import torch
from einops import rearrange
from torch import nn

from .model import OPENCLIP_BIGG, OPENCLIP_VIT_H, VIT_L_14, CLIPTextConfig, CLIPTextModel, openclip_to_clip_keys
from .tokenizer import OPENCLIP_CHUNKS, SD1_CHUNKS, BPETokenizer, Chunk, ChunkSpec, EmbeddingLookup, tokenize_prompt


@dataclass(frozen=True)
class TowerSpec:
    clip: CLIPTextConfig
    chunks: ChunkSpec
    layer: int  # encoder layer whose output is the context: -1 last, -2 penultimate
    norm_hidden: bool  # final_layer_norm on that output
    checkpoint_prefix: str  # where the tower sits in an LDM checkpoint
    openclip_layout: bool  # stored with OpenCLIP names (resblocks, in_proj_weight)
    other_prefixes: tuple[str, ...] = ()  # other layouts seen in the wild (first one present wins)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Towers by name ("l", "h", "g": ComfyUI's names, also the keys of the token dict).
    The context is the towers' outputs side by side (channels, in this order); pooled is the last tower's."""

    towers: tuple[tuple[str, TowerSpec], ...]


SD1 = TextEncoderConfig((
    ("l", TowerSpec(VIT_L_14, SD1_CHUNKS, layer=-1, norm_hidden=True,
                    checkpoint_prefix="cond_stage_model.transformer.", openclip_layout=False)),
))
SD2 = TextEncoderConfig((
    ("h", TowerSpec(OPENCLIP_VIT_H, OPENCLIP_CHUNKS, layer=-2, norm_hidden=True,
                    checkpoint_prefix="cond_stage_model.model.", openclip_layout=True,
                    other_prefixes=("conditioner.embedders.0.model.",))),  # SD2 saved by sgm
))
SDXL = TextEncoderConfig((
    ("l", TowerSpec(VIT_L_14, SD1_CHUNKS, layer=-2, norm_hidden=False,
                    checkpoint_prefix="conditioner.embedders.0.transformer.", openclip_layout=False)),
    ("g", TowerSpec(OPENCLIP_BIGG, OPENCLIP_CHUNKS, layer=-2, norm_hidden=False,
                    checkpoint_prefix="conditioner.embedders.1.model.", openclip_layout=True)),
))


class TextTower(nn.Module):
    """One CLIP tower with its policy; `transformer` holds the weights (as in ComfyUI's `clip_l.transformer`)."""

    def __init__(self, spec: TowerSpec, device=None, dtype=None):
        super().__init__()
        self.spec = spec
        self.transformer = CLIPTextModel(spec.clip, device, dtype)

    def embed_chunk(self, chunk: Chunk) -> tuple[torch.Tensor, int]:
        """[T, C] input embeddings of one chunk and the index of its EOS (ComfyUI's `process_tokens`).

        Textual-inversion vectors replace token embeddings at their positions; a vector of the wrong
        width is dropped (with a warning) and a padding token appended, so the length stays T."""
        width, pad = self.spec.clip.width, self.spec.chunks.pad
        w = self.transformer.text_model.embeddings.token_embedding.weight
        sequence: list[int | torch.Tensor] = []
        for token, _ in chunk:
            if isinstance(token, torch.Tensor):
                vectors = token.reshape(-1, token.shape[-1])
                if vectors.shape[-1] != width:
                    logging.warning("embedding of width %d ignored by a %d-wide text encoder", vectors.shape[-1], width)
                    continue
                sequence += list(vectors)
            else:
                sequence.append(int(token))
        dropped = len(chunk) - len(sequence)
        # the pooled state is read at the first EOS; vectors count as tokens before it
        eos_index = next((i for i, t in enumerate(sequence) if isinstance(t, int) and t == self.spec.chunks.eos), None)
        if eos_index is None:
            eos_index = len(sequence) - 1
        sequence += [pad] * max(dropped, 0)
        at = [i for i, t in enumerate(sequence) if isinstance(t, torch.Tensor)]  # Python lists: no device syncs
        ids = torch.tensor([0 if isinstance(t, torch.Tensor) else t for t in sequence], device=w.device)
        x = self.transformer.token_embedding(ids)
        if at:
            x[at] = torch.stack([sequence[i] for i in at]).to(x)
        return x, eos_index

    def forward(self, chunks: list[Chunk], layer: int | None = None, project_pooled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunks -> (context [1, T*k, C], pooled [1, P]), prompt weights applied."""
        assert chunks, "a prompt tokenizes to at least one chunk"
        layer = self.spec.layer if layer is None else layer
        weights = torch.tensor([[w for _, w in chunk] for chunk in chunks])  # [k, T]
        weighted = bool((weights != 1.0).any())
        rows = list(chunks)
        if weighted:
            spec = self.spec.chunks
            length = max(len(c) for c in chunks)
            rows.append([(spec.bos, 1.0), (spec.eos, 1.0)] + [(spec.pad, 1.0)] * (length - 2))
        embedded = [self.embed_chunk(c) for c in rows]
        embeds = torch.stack([e for e, _ in embedded])
        eos_index = torch.tensor([i for _, i in embedded], device=embeds.device)
        hidden, pooled = self.transformer(embeds, eos_index, layer, self.spec.norm_hidden, project_pooled)
        hidden, pooled = _at_least_fp32(hidden), _at_least_fp32(pooled)  # conditioning leaves in fp32, as ComfyUI's
        z = hidden[: len(chunks)]
        if weighted:
            empty = hidden[-1]
            w = weights.to(z)[..., None]
            z = torch.where(w != 1.0, (z - empty) * w + empty, z)
        return rearrange(z, "k t c -> 1 (k t) c"), pooled[:1]


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class TextEncoder(nn.Module):
    """A checkpoint's text encoder: towers registered as `clip_l` / `clip_h` / `clip_g`, so the
    state-dict keys read like ComfyUI's (`clip_l.transformer.text_model.encoder.layers.0...`)."""

    def __init__(self, config: TextEncoderConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        for name, spec in config.towers:
            self.add_module(f"clip_{name}", TextTower(spec, device, dtype))

    def tower(self, name: str) -> TextTower:
        return getattr(self, f"clip_{name}")

    def tokenize(self, text: str, bpe: BPETokenizer, embedding_lookups: Mapping[str, EmbeddingLookup] | None = None,
                 parse_prompt_weights: bool = True) -> dict[str, list[Chunk]]:
        """Chunks per tower; `embedding_lookups[name]` resolves `embedding:x` for that tower (widths differ)."""
        lookups = embedding_lookups or {}
        return {name: tokenize_prompt(text, bpe, spec.chunks, lookups.get(name), parse_prompt_weights)
                for name, spec in self.config.towers}

    def encode(self, tokens: Mapping[str, list[Chunk]], layer: int | None = None,
               project_pooled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(context [1, 77k, sum of widths], pooled) from each tower's chunks; `layer` overrides
        every tower's layer (ComfyUI's CLIPSetLastLayer: -1 last, -2 "clip skip 2", ...)."""
        contexts, pooled = [], None
        for name, _ in self.config.towers:
            context, pooled = self.tower(name)(tokens[name], layer, project_pooled)
            contexts.append(context)
        shortest = min(c.shape[1] for c in contexts)  # towers may chunk a prompt differently
        return torch.cat([c[:, :shortest] for c in contexts], dim=-1), pooled

    def load_checkpoint(self, checkpoint: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load the towers from an LDM single-file state dict (keys with their prefixes).
        `assign=True` adopts the tensors themselves (for a model built on the meta device)."""
        return self.load_state_dict(text_encoder_state_dict(checkpoint, self.config), strict=strict, assign=assign)


def text_encoder_state_dict(checkpoint: Mapping[str, torch.Tensor], config: TextEncoderConfig) -> dict[str, torch.Tensor]:
    """`TextEncoder` keys from an LDM checkpoint: prefixes swapped, OpenCLIP towers renamed.

    Very old SD1 files lack the `text_model.` level; `position_ids` buffers are dropped, and so is a
    `text_projection` that a tower without one does not use (ComfyUI ignores it too)."""
    out = {}
    for name, spec in config.towers:
        prefixes = (spec.checkpoint_prefix, *spec.other_prefixes)
        prefix = next((p for p in prefixes if any(k.startswith(p) for k in checkpoint)), spec.checkpoint_prefix)
        sd = {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}
        if spec.openclip_layout:
            sd = openclip_to_clip_keys(sd, spec.clip.layers)
        else:
            sd = {(k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}"): v for k, v in sd.items()}
            sd.pop("text_model.embeddings.position_ids", None)
        if spec.clip.projection_dim is None:
            sd.pop("text_projection.weight", None)
        out.update({f"clip_{name}.transformer.{k}": v for k, v in sd.items()})
    return out
