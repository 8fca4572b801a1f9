"""CLIP text transformer and prompt encoding, checked against independent references at small widths.

- attention/blocks: an OpenCLIP-layout reference built from `torch.nn.MultiheadAttention` (fused
  in_proj, like OpenCLIP) with an explicit causal mask, loaded through `openclip_to_clip_keys`;
- prompt weights, chunking, embeddings, clip skip: re-derived from separate unweighted runs;
- presets: parameter counts from the architecture's closed form.
float64 throughout, so the tolerances are round-off of a few layers (1e-10 relative).
"""
import math

import pytest
import torch
from torch import nn

from diffusion_anatomy.clip.encoder import SD1, SD2, SDXL, TextEncoder, TextEncoderConfig, TowerSpec, text_encoder_state_dict
from diffusion_anatomy.clip.model import (
    OPENCLIP_BIGG,
    OPENCLIP_VIT_H,
    VIT_L_14,
    CLIPTextConfig,
    CLIPTextModel,
    openclip_to_clip_keys,
)
from diffusion_anatomy.clip.tokenizer import BOS, EOS, OPENCLIP_CHUNKS, SD1_CHUNKS

TINY = CLIPTextConfig(width=32, layers=3, heads=4, activation="quick_gelu", vocab_size=49408)
TINY_G = CLIPTextConfig(width=48, layers=3, heads=4, activation="gelu", projection_dim=24)


@pytest.fixture(autouse=True)
def one_thread():
    """Small matmuls on a shared 2-core machine run ~10x faster without intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name or name.startswith("ln") or ".ln_" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith("weight") else 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]) if p.ndim > 1 else 0.05 * torch.randn(p.shape, generator=g))
    return module


def tiny_encoder(config: TextEncoderConfig, seed=0) -> TextEncoder:
    return randomize(TextEncoder(config, dtype=torch.float64), seed).eval()


def sd1_tiny(layer=-1, norm=True):
    return TextEncoderConfig((("l", TowerSpec(TINY, SD1_CHUNKS, layer, norm, "cond_stage_model.transformer.", False)),))


def chunk(ids, weights=None, pad=EOS):
    ids = [BOS, *ids, EOS]
    ids += [pad] * (77 - len(ids))
    weights = weights or {}
    return [(t, weights.get(i, 1.0)) for i, t in enumerate(ids)]


# ----- reference: OpenCLIP's text tower, written with torch's fused-qkv MultiheadAttention -----

class RefBlock(nn.Module):
    def __init__(self, w, heads, act):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(w), nn.LayerNorm(w)
        self.attn = nn.MultiheadAttention(w, heads, batch_first=True)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(w, 4 * w))
        self.mlp.add_module("gelu", act)
        self.mlp.add_module("c_proj", nn.Linear(4 * w, w))

    def forward(self, x, mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class RefOpenCLIP(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        w = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, w))
        act = nn.GELU() if cfg.activation == "gelu" else QuickGELU()
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([RefBlock(w, cfg.heads, act) for _ in range(cfg.layers)])
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(torch.zeros(w, cfg.projection_dim))

    def forward(self, ids):
        t = ids.shape[1]
        mask = torch.full((t, t), float("-inf"), dtype=self.positional_embedding.dtype).triu(1)
        x = self.token_embedding(ids) + self.positional_embedding
        states = []
        for block in self.transformer.resblocks:
            x = block(x, mask)
            states.append(x)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0]), ids.argmax(-1)] @ self.text_projection  # EOS has the largest id
        return states, x, pooled


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def test_openclip_layout_matches_fused_attention_reference():
    ref = randomize(RefOpenCLIP(TINY_G).double(), seed=1).eval()
    ours = CLIPTextModel(TINY_G, dtype=torch.float64)
    ours.load_state_dict(openclip_to_clip_keys(ref.state_dict(), TINY_G.layers), strict=True)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 49000, (2, 77), generator=g)
    ids[0, 9], ids[1, 30] = EOS, EOS
    eos = torch.tensor([9, 30])
    states, final, pooled_ref = ref(ids)
    with torch.no_grad():
        last, pooled = ours(ours.token_embedding(ids), eos, layer=-1, norm_hidden=True)
        penult, _ = ours(ours.token_embedding(ids), eos, layer=-2, norm_hidden=False)
    torch.testing.assert_close(last, final, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(penult, states[-2], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pooled, pooled_ref, rtol=1e-10, atol=1e-10)


def test_attention_is_causal():
    model = randomize(CLIPTextModel(TINY, dtype=torch.float64)).eval()
    ids = torch.randint(0, 49000, (1, 77), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[0, 40] += 1
    with torch.no_grad():
        a, _ = model(model.token_embedding(ids), torch.tensor([76]))
        b, _ = model(model.token_embedding(changed), torch.tensor([76]))
    assert torch.equal(a[:, :40], b[:, :40])
    assert (a[:, 40:] - b[:, 40:]).abs().amax(-1).min() > 0


def test_layer_out_of_range_means_final_normed_output():
    model = randomize(CLIPTextModel(TINY, dtype=torch.float64)).eval()
    x = model.token_embedding(torch.randint(0, 49000, (1, 77)))
    with torch.no_grad():
        final, _ = model(x, torch.tensor([5]), layer=-1, norm_hidden=True)
        for layer in (-4, 3, -24):
            out, _ = model(x, torch.tensor([5]), layer=layer, norm_hidden=False)
            assert torch.equal(out, final)
        first, _ = model(x, torch.tensor([5]), layer=-3, norm_hidden=False)  # -3 of 3 = layer 0
        assert not torch.allclose(first, final)


@pytest.mark.parametrize("cfg, millions", [
    (VIT_L_14, 123.06),  # transformers' CLIPTextModel of openai/clip-vit-large-patch14: 123,060,480
    (OPENCLIP_VIT_H, 354.03),  # OpenCLIP's model profile, text tower of ViT-H-14
    (OPENCLIP_BIGG, 694.66),  # ... of ViT-bigG-14
])
def test_preset_sizes(cfg, millions):
    w, L = cfg.width, cfg.layers
    per_layer = 4 * (w * w + w) + 2 * (2 * w) + (w * 4 * w + 4 * w) + (4 * w * w + w)
    closed_form = (cfg.vocab_size + cfg.context_length) * w + L * per_layer + 2 * w + (w * (cfg.projection_dim or 0))
    model = CLIPTextModel(cfg, device="meta")
    assert sum(p.numel() for p in model.parameters()) == closed_form
    assert round(closed_form / 1e6, 2) == millions


def test_prompt_weights_move_tokens_along_the_line_from_the_empty_prompt():
    enc = tiny_encoder(sd1_tiny())
    tower = enc.clip_l
    ids = [320, 1125, 539, 320, 2368]
    weighted = chunk(ids, {2: 1.5, 4: 0.5})
    empty = [(BOS, 1.0), (EOS, 1.0)] + [(EOS, 1.0)] * 75
    with torch.no_grad():
        z, pooled = tower([weighted])
        plain, plain_pooled = tower([chunk(ids)])
        z_empty, _ = tower([empty])
    expected = plain.clone()
    for pos, w in ((2, 1.5), (4, 0.5)):
        expected[0, pos] = (plain[0, pos] - z_empty[0, pos]) * w + z_empty[0, pos]
    torch.testing.assert_close(z, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pooled, plain_pooled, rtol=1e-10, atol=1e-12)  # weights never touch pooled


def test_chunks_are_encoded_independently_and_concatenated():
    enc = tiny_encoder(sd1_tiny(layer=-2))
    a, b = chunk([320, 1125], {1: 1.2}), chunk([539, 2368, 1929])
    with torch.no_grad():
        both, pooled = enc.encode({"l": [a, b]})
        za, pa = enc.encode({"l": [a]})
        zb, _ = enc.encode({"l": [b]})
    assert both.shape == (1, 154, 32)
    torch.testing.assert_close(both, torch.cat([za, zb], dim=1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pooled, pa, rtol=1e-10, atol=1e-12)


def test_embedding_vector_acts_like_the_token_it_copies():
    enc = tiny_encoder(sd1_tiny())
    table = enc.clip_l.transformer.text_model.embeddings.token_embedding.weight
    with torch.no_grad():
        by_id, pooled_id = enc.encode({"l": [chunk([320, 1125, 539])]})
        by_vector, pooled_vec = enc.encode({"l": [chunk([320, table[1125].clone(), 539])]})
    torch.testing.assert_close(by_vector, by_id, rtol=0, atol=0)
    torch.testing.assert_close(pooled_vec, pooled_id, rtol=0, atol=0)


def test_embedding_of_wrong_width_is_dropped_and_padded():
    enc = tiny_encoder(sd1_tiny())
    with torch.no_grad():
        dropped, pooled = enc.encode({"l": [chunk([320, torch.ones(7), 539])]})
        without, pooled_without = enc.encode({"l": [chunk([320, 539])]})  # same tokens, one more pad
    torch.testing.assert_close(dropped, without, rtol=0, atol=0)
    torch.testing.assert_close(pooled, pooled_without, rtol=0, atol=0)


def test_pooled_is_final_state_at_eos_through_projection():
    cfg = TextEncoderConfig((("g", TowerSpec(TINY_G, OPENCLIP_CHUNKS, -2, False, "x.", True)),))
    enc = tiny_encoder(cfg)
    tower = enc.clip_g
    c = chunk([320, 1125, 539], pad=0)
    with torch.no_grad():
        _, pooled = tower([c])
        _, raw = tower([c], project_pooled=False)
        final, _ = tower([c], layer=-1)  # penultimate is the default; ask for the last one
        final = tower.transformer.text_model.final_layer_norm(final)
    torch.testing.assert_close(raw, final[:, 4], rtol=1e-10, atol=1e-12)  # BOS + 3 tokens -> EOS at 4
    torch.testing.assert_close(pooled, tower.transformer.text_projection(raw), rtol=1e-10, atol=1e-12)


def test_two_towers_concatenate_channels_and_pool_from_the_last():
    l_spec = TowerSpec(TINY, SD1_CHUNKS, -2, False, "conditioner.embedders.0.transformer.", False)
    g_spec = TowerSpec(TINY_G, OPENCLIP_CHUNKS, -2, False, "conditioner.embedders.1.model.", True)
    enc = tiny_encoder(TextEncoderConfig((("l", l_spec), ("g", g_spec))))
    tokens = {"l": [chunk([320, 1125])], "g": [chunk([320, 1125], pad=0)]}
    with torch.no_grad():
        context, pooled = enc.encode(tokens)
        zl, _ = enc.clip_l(tokens["l"])
        zg, pg = enc.clip_g(tokens["g"])
    assert context.shape == (1, 77, 32 + 48)
    torch.testing.assert_close(context, torch.cat([zl, zg], -1), rtol=0, atol=0)
    torch.testing.assert_close(pooled, pg, rtol=0, atol=0)


def test_checkpoint_keys_for_every_preset():
    """The LDM names in, our module's names out, for SD1 (both historic layouts), SD2 and SDXL."""
    for config in (SD1, SD2, SDXL):
        model = TextEncoder(config, device="meta")
        expected = {k: v.shape for k, v in model.state_dict().items()}
        checkpoint = {}
        for name, spec in config.towers:
            tower = model.tower(name).transformer.state_dict()
            if spec.openclip_layout:
                checkpoint.update({spec.checkpoint_prefix + k: v for k, v in clip_to_openclip(tower, spec.clip).items()})
            else:
                checkpoint.update({spec.checkpoint_prefix + k: v for k, v in tower.items()})
        checkpoint["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.zeros(1, 77)
        got = {k: v.shape for k, v in text_encoder_state_dict(checkpoint, config).items()}
        assert got == expected
    old = {k.replace("text_model.", ""): v for k, v in TextEncoder(SD1, device="meta").clip_l.transformer.state_dict().items()}
    old["text_projection.weight"] = torch.zeros(768, 768)  # unused by SD1: dropped
    got = text_encoder_state_dict({"cond_stage_model.transformer." + k: v for k, v in old.items()}, SD1)
    assert set(got) == set(TextEncoder(SD1, device="meta").state_dict())
    sgm = {"conditioner.embedders.0.model." + k: v for k, v in
           clip_to_openclip(TextEncoder(SD2, device="meta").clip_h.transformer.state_dict(), SD2.towers[0][1].clip).items()}
    assert set(text_encoder_state_dict(sgm, SD2)) == set(TextEncoder(SD2, device="meta").state_dict())


def clip_to_openclip(sd, cfg):
    """OpenCLIP's names for a CLIPTextModel state dict (independent of the module under test)."""
    out = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].t(),
        "logit_scale": torch.zeros(()),
    }
    for n in range(cfg.layers):
        p = f"text_model.encoder.layers.{n}."
        r = f"transformer.resblocks.{n}."
        for new, old in [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                         ("mlp.c_proj", "mlp.fc2"), ("attn.out_proj", "self_attn.out_proj")]:
            for s in ("weight", "bias"):
                out[f"{r}{new}.{s}"] = sd[f"{p}{old}.{s}"]
        for s in ("weight", "bias"):
            out[f"{r}attn.in_proj_{s}"] = torch.cat([sd[f"{p}self_attn.{q}_proj.{s}"] for q in "qkv"])
    return out


def test_load_checkpoint_roundtrip_values():
    enc = tiny_encoder(TextEncoderConfig((("g", TowerSpec(TINY_G, OPENCLIP_CHUNKS, -2, False, "m.", True)),)))
    ckpt = {"m." + k: v for k, v in clip_to_openclip(enc.clip_g.transformer.state_dict(), TINY_G).items()}
    fresh = TextEncoder(enc.config, dtype=torch.float64)
    fresh.load_checkpoint(ckpt)
    for k, v in enc.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
