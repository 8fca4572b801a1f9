"""Parity of the pack's CLIP tokenizer and text encoders with ComfyUI's own (`comfy/sd1_clip.py`,
`comfy/sdxl_clip.py`, `comfy/text_encoders/sd2_clip.py`, `comfy/supported_models.py`).

- tokens: ids, weights and embedding vectors equal, exactly, for SD1 (EOS padding), SD2 and SDXL (0 padding);
- SD1 at the full ViT-L/14 shape (123M parameters) on the same seeded random weights: context and
  pooled output within 1e-5 relative (max |ours - comfy| / max |comfy|; both fp32, they differ only in
  the order of floating-point operations; seen: <= 1e-6), with weights, 2 chunks, embeddings and clip skip;
- SD2 and SDXL: state-dict keys and shapes at full size (built on the meta device), both ways through
  ComfyUI's checkpoint (de)conversion; forward parity at full depth and the real head size (64) but
  fewer heads (ViT-H: 24 layers, 4 heads, width 256; SDXL: CLIP-L 12 layers, 3 heads, width 192; bigG
  32 layers, 5 heads, width 320), which keeps every layer index, the q/k/v split and the attention
  scale under test while the run takes seconds and a few hundred MB instead of 2.8 GB (bigG fp32).
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import safetensors.torch
import torch

from diffusion_anatomy.clip.encoder import SD1, SD2, SDXL, TextEncoder, TextEncoderConfig, text_encoder_state_dict
from diffusion_anatomy.clip.tokenizer import OPENCLIP_CHUNKS, SD1_CHUNKS, BPETokenizer, find_tokenizer_dir, tokenize_prompt

LONG = ", ".join(f"{adj} {noun}" for adj in ("red", "shiny", "ancient", "tiny", "glowing", "wet", "broken")
                 for noun in ("castle", "forest", "robot", "river", "lantern"))
PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "(masterpiece:1.2), best quality, (detailed eyes), ((sharp focus)), [blurry], (bad hands:0.5)",
    "A  Photo\tOF\nTHE   Thing!!! 12345 3.14 $100 #hashtag @user e-mail_address",
    "naïve café, Ünïcödé, 東京タワー, 🐱🚀, Ελληνικά, Русский, ｆｕｌｌ width",
    r"\(escaped\) brackets \(and (real:1.3)\) \\(odd",
    "(nested (deeper (deepest:1.5) mid) outer:0.8)",
    "(a:b) (c:) (:1.5) (d:1e-1) (e: 2) unmatched) ((open",
    "it's don't I'M we'LL they've ''s",
    "text<|endoftext|>more <|startoftext|>",
    "",
    "   ",
    LONG,
    "(" + LONG + ":1.1)",
    "a, " * 36 + "(red hair:1.1) more",
    "word " * 70 + "(pneumonoultramicroscopicsilicovolcanoconiosis:1.2) tail",
    "embedding:style a cat, embedding:one, embedding:missing b",
    "portrait\nembedding:style, (embedding:one:1.2) and embedding:missing, x",
    "embedding:wide test",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Small matmuls on a shared 2-core machine run ~10x faster without intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def encode_cases(skip: int, first: int):
    """(prompt, clip layers) to encode; few, each covering much (encodes are slow on shared CPUs)."""
    return [
        (PROMPTS[1], [None, skip]),  # weights, nesting; the preset's layer and a clip skip
        (PROMPTS[12], [None]),  # 2 chunks, every token weighted 1.1
        (PROMPTS[15] + " " + PROMPTS[17], [None]),  # embeddings: 2-row, 1-D, missing, wrong width (dropped)
        (PROMPTS[0], [-1, first, first - 1]),  # last; the first layer; out of range = the last, normed
    ]


@pytest.fixture(scope="module")
def bpe(comfy):
    return BPETokenizer.from_dir(find_tokenizer_dir(comfy.dir))


def write_embeddings(folder, widths: dict[str, int], seed=0):
    """Textual-inversion files: `style` [2, w], `one` [w] (1-D), `wide` [3, w+7] (wrong width)."""
    g = torch.Generator().manual_seed(seed)
    files = {"style": (2,), "one": (), "wide": (3,)}
    for name, lead in files.items():
        extra = 7 if name == "wide" else 0
        tensors = {key: torch.randn(*lead, w + extra, generator=g) for key, w in widths.items()}
        safetensors.torch.save_file(tensors, str(folder / f"{name}.safetensors"))
    return folder


def lookup_in(folder, key):
    """name -> vectors, picking the tensor stored under `key` (ComfyUI's `embedding_key`)."""
    def lookup(name):
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            return None
        tensors = safetensors.torch.load_file(str(path))
        return tensors.get(key, next(iter(tensors.values())))
    return lookup


def assert_same_tokens(ours, theirs):
    assert len(ours) == len(theirs)
    for c_ours, c_theirs in zip(ours, theirs):
        assert len(c_ours) == len(c_theirs)
        for (t, w), (t_ref, w_ref) in zip(c_ours, c_theirs):
            assert w == w_ref
            if isinstance(t_ref, torch.Tensor):
                assert isinstance(t, torch.Tensor) and torch.equal(t, t_ref)
            else:
                assert t == t_ref


def test_bpe_ids_equal_transformers(comfy, bpe):
    from transformers import CLIPTokenizer  # what ComfyUI calls

    ref = CLIPTokenizer.from_pretrained(str(find_tokenizer_dir(comfy.dir)))
    gen = torch.Generator().manual_seed(0)
    alphabet = "abcXYZ019 ,.!?'\"()-_:;éü東🐱\t\n\u00a0\u200b"
    texts = PROMPTS + ["".join(alphabet[i] for i in torch.randint(0, len(alphabet), (n,), generator=gen))
                       for n in torch.randint(1, 40, (300,), generator=gen).tolist()]
    for text in texts:
        assert bpe.encode(text) == ref(text)["input_ids"][1:-1], repr(text)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokens_equal_comfyui_sd1_sd2_sdxl(comfy, bpe, tmp_path, prompt):
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.text_encoders.sd2_clip

    folder = write_embeddings(tmp_path, {"clip_l": 768, "clip_g": 1280})
    sd1 = comfy.sd1_clip.SD1Tokenizer(embedding_directory=str(folder)).tokenize_with_weights(prompt)["l"]
    assert_same_tokens(tokenize_prompt(prompt, bpe, SD1_CHUNKS, lookup_in(folder, "clip_l")), sd1)

    sd2 = comfy.text_encoders.sd2_clip.SD2Tokenizer(embedding_directory=str(folder)).tokenize_with_weights(prompt)["h"]
    assert_same_tokens(tokenize_prompt(prompt, bpe, OPENCLIP_CHUNKS, lookup_in(folder, "clip_h")), sd2)

    xl = comfy.sdxl_clip.SDXLTokenizer(embedding_directory=str(folder)).tokenize_with_weights(prompt)
    ours = TextEncoder(SDXL, device="meta").tokenize(prompt, bpe, {"l": lookup_in(folder, "clip_l"), "g": lookup_in(folder, "clip_g")})
    assert_same_tokens(ours["l"], xl["l"])
    assert_same_tokens(ours["g"], xl["g"])


def test_tokens_without_weight_parsing(comfy, bpe):
    import comfy.sd1_clip

    prompt = "(literal:1.5) [x]"
    theirs = comfy.sd1_clip.SD1Tokenizer().tokenize_with_weights(prompt, disable_weights=True)["l"]
    assert_same_tokens(tokenize_prompt(prompt, bpe, SD1_CHUNKS, parse_prompt_weights=False), theirs)


# ----------------------------------------------------------------------------------------------
# encoders
# ----------------------------------------------------------------------------------------------

def random_state_dict(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """Weights at CLIP's initialisation scales (std 0.02 matrices, ~1 norm gains), so activations
    stay O(1) through all layers and the comparison is meaningful."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in sorted(shapes.items()):
        if "norm" in k:
            out[k] = (1.0 if k.endswith("weight") else 0.0) + 0.05 * torch.randn(shape, generator=g)
        elif k.endswith("position_embedding.weight"):
            out[k] = 0.01 * torch.randn(shape, generator=g)
        elif len(shape) >= 2:
            out[k] = 0.02 * torch.randn(shape, generator=g)
        else:
            out[k] = 0.01 * torch.randn(shape, generator=g)
    return out


def shapes(module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


OPTIONAL_IN_COMFY = (".logit_scale", ".transformer.text_projection.weight")  # comfy/sd.py tolerates these missing


def assert_keys_match_comfy(ours: TextEncoder, comfy_model):
    theirs, mine = shapes(comfy_model), shapes(ours)
    assert set(mine) <= set(theirs)
    assert all(k.endswith(OPTIONAL_IN_COMFY) for k in set(theirs) - set(mine))
    assert {k: theirs[k] for k in mine} == mine


def comfy_load(comfy_model, state: dict[str, torch.Tensor]):
    """Adopt `state` (shared with ours, no copy); parameters ComfyUI has and checkpoints lack get zeros."""
    expected = comfy_model.state_dict()
    fill = {k: torch.zeros(v.shape) for k, v in expected.items() if k not in state}
    kept = {k: v for k, v in state.items() if k in expected}  # ComfyUI ignores the rest (position_ids)
    comfy_model.load_state_dict({**kept, **fill}, strict=True, assign=True)
    return comfy_model.eval()


def comfy_encode(model, tokens, layer=None):
    model.reset_clip_options()
    if layer is not None:
        model.set_clip_options({"layer": layer})
    try:
        return model.encode_token_weights(tokens)
    finally:
        model.reset_clip_options()


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def check_encodes(ours, theirs, our_tokens, their_tokens, layers, tol=1e-5):
    for layer in layers:
        with torch.no_grad():
            ctx, pooled = ours.encode(our_tokens, layer=layer)
            ctx_ref, pooled_ref = comfy_encode(theirs, their_tokens, layer)
        assert ctx.shape == ctx_ref.shape and pooled.shape == pooled_ref.shape
        assert rel_err(ctx, ctx_ref) <= tol, (layer, rel_err(ctx, ctx_ref))
        assert rel_err(pooled, pooled_ref) <= tol, (layer, rel_err(pooled, pooled_ref))


@pytest.mark.slow
def test_sd1_full_size_matches_comfyui(comfy, bpe, tmp_path):
    import comfy.sd1_clip
    import comfy.supported_models

    theirs = comfy.sd1_clip.SD1ClipModel(device="meta", dtype=torch.float32)
    ours = TextEncoder(SD1, device="meta")
    assert_keys_match_comfy(ours, theirs)
    weights = random_state_dict(shapes(ours), seed=1)
    # through the checkpoint layout: ComfyUI saves an SD1 checkpoint, both load it
    checkpoint = comfy.supported_models.SD15({}).process_clip_state_dict_for_saving(dict(weights))
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in checkpoint)
    ours.load_checkpoint(checkpoint, assign=True)
    comfy_load(theirs, comfy.supported_models.SD15({}).process_clip_state_dict(dict(checkpoint)))

    folder = write_embeddings(tmp_path, {"clip_l": 768})
    tokenizer = comfy.sd1_clip.SD1Tokenizer(embedding_directory=str(folder))
    for prompt, layers in encode_cases(skip=-2, first=-12):
        check_encodes(ours, theirs, {"l": tokenize_prompt(prompt, bpe, SD1_CHUNKS, lookup_in(folder, "clip_l"))},
                      tokenizer.tokenize_with_weights(prompt), layers)


def full_and_saved_keys(comfy, model_config, ours_config, theirs):
    """Full-size key sets: our model vs ComfyUI's, and ComfyUI's saved checkpoint read back by ours."""
    ours = TextEncoder(ours_config, device="meta")
    assert_keys_match_comfy(ours, theirs)
    checkpoint = model_config.process_clip_state_dict_for_saving(dict(theirs.state_dict()))
    assert shapes_of(text_encoder_state_dict(checkpoint, ours_config)) == shapes(ours)
    read_back = set(model_config.process_clip_state_dict(dict(checkpoint))) - {"clip_l.transformer.text_model.embeddings.position_ids"}
    assert read_back <= set(theirs.state_dict())  # ComfyUI's own round trip, for reference


def shapes_of(sd):
    return {k: v.shape for k, v in sd.items()}


def test_sd2_and_sdxl_full_size_key_layout(comfy):
    import comfy.sdxl_clip
    import comfy.supported_models
    import comfy.text_encoders.sd2_clip

    full_and_saved_keys(comfy, comfy.supported_models.SD20({}), SD2,
                        comfy.text_encoders.sd2_clip.SD2ClipModel(device="meta", dtype=torch.float32))
    full_and_saved_keys(comfy, comfy.supported_models.SDXL({}), SDXL,
                        comfy.sdxl_clip.SDXLClipModel(device="meta", dtype=torch.float32))


def narrow(config: TextEncoderConfig, widths: dict[str, tuple[int, int]]) -> TextEncoderConfig:
    towers = []
    for name, spec in config.towers:
        width, heads = widths[name]
        clip = replace(spec.clip, width=width, heads=heads,
                       projection_dim=None if spec.clip.projection_dim is None else width)
        towers.append((name, replace(spec, clip=clip)))
    return TextEncoderConfig(tuple(towers))


def comfy_config(width, heads):
    return {"hidden_size": width, "num_attention_heads": heads, "intermediate_size": 4 * width}


def test_sd2_narrow_matches_comfyui(comfy, bpe, tmp_path):
    import comfy.supported_models
    import comfy.text_encoders.sd2_clip

    config = narrow(SD2, {"h": (256, 4)})
    theirs = comfy.text_encoders.sd2_clip.SD2ClipModel(device="meta", dtype=torch.float32,
                                                       model_options={"clip_h_model_config": comfy_config(256, 4)})
    ours = TextEncoder(config, device="meta")
    assert_keys_match_comfy(ours, theirs)
    model_config = comfy.supported_models.SD20({})
    checkpoint = model_config.process_clip_state_dict_for_saving(random_state_dict(shapes(ours), seed=2))
    assert any(".attn.in_proj_weight" in k for k in checkpoint)  # OpenCLIP layout, as SD2 files store it
    ours.load_checkpoint(checkpoint, assign=True)
    comfy_load(theirs, model_config.process_clip_state_dict(dict(checkpoint)))

    folder = write_embeddings(tmp_path, {"clip_h": 256})
    tokenizer = comfy.text_encoders.sd2_clip.SD2Tokenizer(embedding_directory=str(folder))
    for prompt, layers in encode_cases(skip=-5, first=-24):
        check_encodes(ours, theirs, {"h": tokenize_prompt(prompt, bpe, OPENCLIP_CHUNKS, lookup_in(folder, "clip_h"))},
                      tokenizer.tokenize_with_weights(prompt), layers)


def test_sdxl_narrow_matches_comfyui(comfy, bpe, tmp_path):
    import comfy.sdxl_clip
    import comfy.supported_models

    config = narrow(SDXL, {"l": (192, 3), "g": (320, 5)})
    theirs = comfy.sdxl_clip.SDXLClipModel(device="meta", dtype=torch.float32, model_options={
        "clip_l_model_config": comfy_config(192, 3), "clip_g_model_config": comfy_config(320, 5)})
    ours = TextEncoder(config, device="meta")
    assert_keys_match_comfy(ours, theirs)
    model_config = comfy.supported_models.SDXL({})
    checkpoint = model_config.process_clip_state_dict_for_saving(random_state_dict(shapes(ours), seed=3))
    ours.load_checkpoint(checkpoint, assign=True)
    comfy_load(theirs, model_config.process_clip_state_dict(dict(checkpoint)))

    folder = write_embeddings(tmp_path, {"clip_l": 192, "clip_g": 320})
    tokenizer = comfy.sdxl_clip.SDXLTokenizer(embedding_directory=str(folder))
    lookups = {"l": lookup_in(folder, "clip_l"), "g": lookup_in(folder, "clip_g")}
    for prompt, layers in encode_cases(skip=-3, first=-12):  # -13: out of range for L, layer 19 of bigG
        check_encodes(ours, theirs, ours.tokenize(prompt, bpe, lookups), tokenizer.tokenize_with_weights(prompt), layers)
