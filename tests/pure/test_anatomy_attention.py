"""The pure parts of the cross-attention and U-Net-levels views (anatomy/attention_maps.py, anatomy/levels.py).

- The DAAM aggregator against a plain re-computation of its definition (per-head softmax of q k^T /
  sqrt(d), mean over heads, bilinear to the latent size, summed, conditional rows only), and its
  attention output against softmax(q k^T / sqrt(d)) v written out.
- Tokens back to words with CLIP's real BPE vocabulary.
- The level shapes derived from the SD1.5, SD2.1 and SDXL presets against the pack's U-Net itself,
  run on the meta device (shapes only, no memory) with the block outputs read by forward hooks.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusion_anatomy.anatomy import attention_maps as am
from diffusion_anatomy.anatomy import levels as lv
from diffusion_anatomy.clip.tokenizer import BPETokenizer
from diffusion_anatomy.embedded import train as et
from diffusion_anatomy.unet import PRESETS, UNetModel


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.from_dir(et.default_tokenizer_dir())


def naive(q, k, v, heads):
    """Attention written out per head: (probs [b, h, n, m], output [b, n, h*d])."""
    b, n, hd = q.shape
    d = hd // heads
    qh, kh, vh = (t.reshape(b, -1, heads, d).transpose(1, 2).double() for t in (q, k, v))
    probs = torch.softmax(qh @ kh.transpose(-1, -2) / d**0.5, dim=-1)
    return probs, (probs @ vh).transpose(1, 2).reshape(b, n, hd)


def test_aggregator_is_daams_sum_over_layers_of_the_conditional_rows_and_returns_attention():
    g = torch.Generator().manual_seed(0)
    latent, heads, m, per = (12, 10), 4, 77, 2
    maps = am.CrossAttentionMaps()
    expected = torch.zeros(per, m, *latent, dtype=torch.float64)
    # three layers at three resolutions; the batch is [uncond (2 pictures), cond (2 pictures)]
    # one model call: its first cross-attention layer (transformer 0) records the call's sigma
    for index, (h, w) in enumerate(((12, 10), (6, 5), (3, 3))):
        q = torch.randn(2 * per, h * w, heads * 8, generator=g)
        k = torch.randn(2 * per, m, heads * 8, generator=g)
        v = torch.randn(2 * per, m, heads * 8, generator=g)
        out = maps(q, k, v, {"n_heads": heads, "cond_or_uncond": [1, 0], "original_shape": [2 * per, 4, *latent],
                             "sigmas": torch.tensor([3.0, 3.0, 3.0, 3.0]), "transformer_index": index, "block_index": 0})
        probs, reference = naive(q, k, v, heads)
        torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-6)
        grid = probs[per:].mean(dim=1).transpose(1, 2).reshape(per, m, h, w)  # cond rows, heads averaged
        expected += F.interpolate(grid, size=latent, mode="bilinear", align_corners=False) if (h, w) != latent else grid
    assert maps.calls == 3 and [float(s) for s in maps.sigmas] == [3.0]
    torch.testing.assert_close(maps.sums.double(), expected, rtol=1e-5, atol=1e-6)
    # bilinear upsampling keeps each place's distribution over the tokens: the sums add up to the calls
    torch.testing.assert_close(maps.sums.sum(dim=1), torch.full((per, *latent), 3.0))
    maps.reset()
    assert maps.sums is None and maps.calls == 0


def test_aggregator_skips_unconditional_only_calls_and_sums_several_positive_chunks():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 16, 32, generator=g), torch.randn(3, 77, 32, generator=g), torch.randn(3, 77, 32, generator=g)
    maps = am.CrossAttentionMaps()
    maps(q[:1], k[:1], v[:1], {"n_heads": 4, "cond_or_uncond": [1], "original_shape": [1, 4, 4, 4]})
    assert maps.sums is None
    maps(q, k, v, {"n_heads": 4, "cond_or_uncond": [0, 1, 0], "original_shape": [3, 4, 4, 4]})
    probs, _ = naive(q, k, v, 4)
    expected = (probs[0] + probs[2]).mean(dim=0).T.reshape(1, 77, 4, 4)
    torch.testing.assert_close(maps.sums.double(), expected, rtol=1e-5, atol=1e-6)


def test_feature_size_rounds_up_as_stride_two_convolutions_do():
    assert am.feature_size(9 * 7, (9, 7)) == (9, 7)
    assert am.feature_size(5 * 4, (9, 7)) == (5, 4)
    assert am.feature_size(3 * 2, (9, 7)) == (3, 2)
    assert am.feature_size(12, (8, 8), activations_shape=[1, 320, 3, 4]) == (3, 4)
    with pytest.raises(ValueError, match="cannot lay 7"):
        am.feature_size(7, (8, 8))


def test_a_repeated_context_folds_back_to_the_prompts_own_map():
    """ComfyUI repeats a 77-token prompt to 154 tokens when the negative is 154 long: each copy of a key gets
    half the probability, so folding the copies gives the unrepeated map."""
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(1, 16, 32, generator=g), torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    once, twice = am.CrossAttentionMaps(), am.CrossAttentionMaps()
    opts = {"n_heads": 4, "original_shape": [1, 4, 4, 4]}
    once(q, k, v, opts)
    twice(q, k.repeat(1, 2, 1), v.repeat(1, 2, 1), opts)
    assert twice.sums.shape[1] == 154
    torch.testing.assert_close(am.fold_tokens(twice.sums, 77), once.sums, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError):
        am.fold_tokens(twice.sums, 76)


def chunk(bpe, text):
    ids = bpe.encode(text)
    return [am.BOS] + ids + [am.EOS] * (76 - len(ids))


def test_words_come_back_from_bpe_tokens_with_their_positions(bpe):
    text = "a large red circle, photorealistic"
    ids = bpe.encode(text)
    words = am.words_of([chunk(bpe, text)], lambda i: bpe.id_to_token[i])
    assert [w.text for w in words] == ["a", "large", "red", "circle", ",", "photorealistic"]
    assert [p for w in words for p in w.positions] == list(range(1, 1 + len(ids)))  # every token once, after BOS
    assert len(words[-1].positions) > 1  # "photorealistic" is several BPE tokens: one word
    # SD2's padding (id 0, "!") after EOS is not read as words; an embedding is a word of its own
    sd2 = chunk(bpe, "a red circle")[:5] + [0] * 72
    assert [w.text for w in am.words_of([sd2], lambda i: bpe.id_to_token[i])] == ["a", "red", "circle"]
    with_embedding = [am.BOS, None] + bpe.encode("cat") + [am.EOS]
    assert [w.text for w in am.words_of([with_embedding], lambda i: bpe.id_to_token[i])] == ["<embedding>", "cat"]


def test_positions_run_on_across_77_token_chunks(bpe):
    second = chunk(bpe, "blue square")
    words = am.words_of([chunk(bpe, "red circle"), second], lambda i: bpe.id_to_token[i])
    assert [(w.text, w.positions) for w in words][2:] == [("blue", (78,)), ("square", (79,))]


def test_choosing_words_and_the_error_naming_the_input(bpe):
    words = am.words_of([chunk(bpe, "a large red circle")], lambda i: bpe.id_to_token[i])
    assert [w.text for w in am.choose_words(words, "Circle, red")] == ["red", "circle"]
    assert am.choose_words(words, "  ") == words
    with pytest.raises(ValueError, match=r"words: 'dog' not in the prompt; its words are: a, large, red, circle"):
        am.choose_words(words, "red dog")


def test_word_heatmap_sums_its_tokens_and_region_mass():
    sums = torch.zeros(5, 4, 4)
    sums[1, :2, :2] = 1.0  # token 1: top left
    sums[2, :2, :2] = 2.0  # token 2: top left too
    sums[3] = 1.0  # token 3: everywhere
    heat = am.word_heatmaps(sums, [am.Word("two-token", (1, 2)), am.Word("flat", (3,))])
    torch.testing.assert_close(heat[0], sums[1] + sums[2])
    assert am.region_mass(heat[0], ((0, 2), (0, 2))) == 1.0
    assert am.region_mass(heat[0], ((2, 4), (2, 4))) == 0.0
    assert am.region_mass(heat[1], ((0, 2), (0, 2))) == 0.0  # a flat map has no mass above its minimum


@pytest.mark.parametrize("family,side", [("sd15", 64), ("sd21", 96), ("sdxl", 128)])
def test_level_shapes_are_what_the_unet_of_each_preset_computes(family, side):
    """SD1.5 at 512x512 (latent 64), SD2.1 at 768 (96), SDXL at 1024 (128): the shapes the view labels equal
    the outputs of the pack's U-Net's blocks, in the block patches' order (the last output block is not seen)."""
    config = PRESETS[family]
    seen = []
    with torch.device("meta"):
        unet = UNetModel(config)
        blocks = [(f"input {i}", b) for i, b in enumerate(unet.input_blocks)] + [("middle", unet.middle_block)]
        blocks += [(f"output {i}", b) for i, b in enumerate(unet.output_blocks)]
        for name, block in blocks:
            block.register_forward_hook(lambda _m, _a, out, name=name: seen.append((name, tuple(out.shape[1:]))))
        y = torch.zeros(1, config.adm_in_channels) if config.adm_in_channels else None
        unet(torch.zeros(1, 4, side, side), torch.zeros(1), torch.zeros(1, 77, config.context_dim), y)
    assert [(lv_.name, lv_.shape) for lv_ in lv.level_shapes(config, side, side)] == seen[:-1]


def test_sd15_at_512_goes_from_320x64x64_down_to_1280x8x8_and_back():
    levels = lv.level_shapes(PRESETS["sd15"], 64, 64)
    labels = [x.label for x in levels]
    assert labels[0] == "320x64x64" and labels[11] == "1280x8x8" and levels[12].name == "middle"
    assert labels[12] == "1280x8x8" and labels[-1] == "320x64x64" and len(levels) == 12 + 1 + 11


def options(step_sigma, schedule, block):
    return {"sigmas": torch.tensor([step_sigma, step_sigma]), "sample_sigmas": torch.tensor(schedule),
            "cond_or_uncond": [1, 0], "block": block}


def test_recorder_keeps_the_conditional_picture_at_the_chosen_step_only():
    schedule = [10.0, 5.0, 1.0, 0.0]
    rec = lv.LevelRecorder(step=1)
    h = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # [uncond, cond]
    rec.input_block_patch(h, options(10.0, schedule, ("input", 0)))
    assert rec.features == {}
    out = rec.input_block_patch(h, options(5.0, schedule, ("input", 0)))
    assert out is h and torch.equal(rec.features["input 0"], h[1])
    rec.output_block_patch(h + 1, h, options(5.0, schedule, ("output", 0)))
    rec.output_block_patch(h + 2, h, options(5.0, schedule, ("output", 1)))
    rec.input_block_patch(h * 0, options(5.0, schedule, ("input", 0)))  # a second call at that sigma (Heun's): the first stays
    assert torch.equal(rec.features["input 0"], h[1])
    assert torch.equal(rec.features["middle"], h[1] + 1) and torch.equal(rec.features["output 0"], h[1] + 2)
    assert [x.name for x in rec.levels()] == ["input 0", "middle", "output 0"]


def test_recorder_names_the_step_when_it_is_out_of_range():
    rec = lv.LevelRecorder(step=3)
    with pytest.raises(ValueError, match=r"step: 3 is out of range: the schedule has 3 steps \(0..2\)"):
        rec.input_block_patch(torch.zeros(1, 1, 1, 1), options(10.0, [10.0, 5.0, 1.0, 0.0], ("input", 0)))


def test_pictures_have_the_layout_sizes():
    g = torch.Generator().manual_seed(0)
    config = PRESETS["sd15"]
    levels = lv.level_shapes(config, 16, 16)
    features = {x.name: torch.randn(x.shape, generator=g) for x in levels}
    for mode in ("pca_rgb", "mean_abs"):
        pic = lv.render_u(features, levels, mode, "title", picture=torch.rand(128, 128, 3, generator=g))
        assert pic.width == (lv.PANEL + 12) * len(levels) + 12 + 2 * lv.PANEL + 12
    rgb = lv.pca_rgb(features["input 0"])
    assert rgb.shape == (16, 16, 3) and rgb.min() >= 0 and rgb.max() <= 1
    # PCA colours separate two kinds of places: half the map with one feature vector, half with another
    two = torch.zeros(8, 4, 4)
    two[:, :, :2] = torch.randn(8, 1, 1, generator=g)
    two[:, :, 2:] = torch.randn(8, 1, 1, generator=g)
    rgb = lv.pca_rgb(two)
    assert (rgb[:, 0] - rgb[:, 3]).abs().max() > 0.5 and (rgb[:, 0] - rgb[:, 1]).abs().max() < 1e-6
    with pytest.raises(ValueError, match="mode"):
        lv.render_u(features, levels, "rainbow", "title")
    words = [am.Word("red", (1,)), am.Word("circle", (2,))]
    img = am.render_words(torch.rand(64, 64, 3, generator=g), torch.rand(2, 8, 8, generator=g), words, "t", panel=192)
    assert img.width >= 3 * 192 and img.height >= 192


def test_recorders_survive_a_deep_copy_of_the_model_options():
    """ComfyUI's ModelPatcher.clone deep-copies model_options: the patches must still feed the handle."""
    import copy

    maps, rec = am.CrossAttentionMaps(), lv.LevelRecorder(step=0)
    options = {"patches_replace": {"attn2": {("input", 1): maps}}, "patches": {"input_block_patch": [rec.input_block_patch]}}
    copied = copy.deepcopy(options)
    assert copied["patches_replace"]["attn2"][("input", 1)] is maps
    assert copied["patches"]["input_block_patch"][0].__self__ is rec
