"""The embedded tiny model's groundwork: the procedural data says what it draws, the configs build an
SD1-layout model under 20 MB in fp16, and a few training steps write a file the pack's reader loads."""
from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from diffusion_anatomy.checkpoint import load_checkpoint
from diffusion_anatomy.checkpoint.detect import structure_from_shapes
from diffusion_anatomy.clip.encoder import TextEncoder
from diffusion_anatomy.clip.tokenizer import BPETokenizer
from diffusion_anatomy.embedded import config as ec
from diffusion_anatomy.embedded import data as ed
from diffusion_anatomy.embedded import sample as es
from diffusion_anatomy.embedded import train as et
from diffusion_anatomy.vae.model import AutoencoderKL
from support import shapes

MB = 20e6  # the size budget, bytes

# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def test_batches_are_reproducible_per_seed():
    a = ed.sample_batch(16, torch.Generator().manual_seed(7))
    b = ed.sample_batch(16, torch.Generator().manual_seed(7))
    c = ed.sample_batch(16, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert a[1] != c[1]
    assert a[0].shape == (16, 3, 64, 64) and a[0].dtype == torch.float32
    assert a[0].min() >= -1 and a[0].max() <= 1


def test_palette_colours_are_far_apart():
    """Each colour word names a clearly different RGB value: nearest-colour naming (used below, and later
    on generated images) is then right for any pixel within half the closest distance (> 30 of 255)."""
    rgb = {k: torch.tensor(v, dtype=torch.float32) for k, v in ed.COLOURS.items()}
    closest = min((rgb[a] - rgb[b]).norm().item() for a, b in itertools.combinations(rgb, 2))
    assert closest > 60  # yellow vs orange is the closest pair, ~92 apart


def test_captions_match_pixels():
    """Recovered from the pixels alone: the shape's colour (nearest palette entry of the pixels that
    differ from the dominant colour), the background (the dominant colour), the region, the size
    (area) and the shape (how much of its bounding box it fills: square 1, disc pi/4, triangle ~1/2)."""
    images, texts, captions = ed.sample_batch(96, torch.Generator().manual_seed(0))
    rgb = ((images + 1) * 127.5).round()
    for image, text, cap in zip(rgb, texts, captions):
        assert text == cap.text and cap.colour in text and cap.shape in text and cap.background in text
        assert cap.colour != cap.background
        flat = image.reshape(3, -1).T  # [4096, 3]
        values, counts = flat.unique(dim=0, return_counts=True)
        assert len(values) == 2, "one shape on a plain background: exactly two colours"
        background, shape = values[counts.argmax()], values[counts.argmin()]
        assert counts.max() / flat.shape[0] > 0.5, "the background is most of the picture"
        assert [shapes.NAMES[i] for i in shapes.names(torch.stack([background, shape])[None]).flatten()] == [cap.background, cap.colour]

        mask = (image == shape[:, None, None]).all(dim=0)
        ys, xs = torch.nonzero(mask, as_tuple=True)
        (x0, x1), (y0, y1) = shapes.REGIONS[cap.position]
        assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1, (cap, xs, ys)

        area = mask.sum().item()
        side = 2 * cap.radius
        assert 0.35 * side**2 < area < 1.05 * side**2  # between a triangle's and a square's area
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        fill = area / box.item()
        recovered = "square" if fill > 0.95 else "circle" if fill > 0.68 else "triangle"
        assert recovered == cap.shape, (cap, fill)


def test_sizes_are_told_apart_by_area():
    """Every large shape covers more pixels than every small one of the same kind."""
    _, _, captions = ed.sample_batch(200, torch.Generator().manual_seed(1))
    for shape in ed.SHAPES:
        areas = {s: [ed.shape_mask(c).sum().item() for c in captions if c.shape == shape and c.size == s] for s in ed.SIZES}
        assert max(areas["small"]) < min(areas["large"])


def test_attributes_cover_every_value():
    _, _, captions = ed.sample_batch(400, torch.Generator().manual_seed(2))
    for field, values in (("shape", ed.SHAPES), ("colour", ed.COLOURS), ("background", ed.COLOURS),
                          ("size", ed.SIZES), ("position", ed.POSITIONS)):
        assert {getattr(c, field) for c in captions} == set(values), field


# ----------------------------------------------------------------------------------------------
# configs and layout
# ----------------------------------------------------------------------------------------------


def test_configs_keep_sd1_shapes_and_fit_20_mb():
    t = ec.TINY
    assert t.clip.vocab_size == 49408 and t.clip.context_length == 77 and t.clip.projection_dim is None
    assert t.unet.context_dim == t.clip.width and not t.unet.use_linear_in_transformer and t.unet.prediction == "eps"
    assert t.vae.downscale == 8 and t.vae.embed_dim == t.unet.in_channels == 4
    assert 2 * sum(ec.parameter_counts().values()) <= MB


def test_modules_carry_sd1_checkpoint_names():
    with torch.device("meta"):
        unet, vae, te = ec.build()
    sd = et.checkpoint_state_dict(unet, vae, te)
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(k.startswith(prefixes) for k in sd)
    for p in prefixes:
        assert any(k.startswith(p) for k in sd), p
    for key in ("model.diffusion_model.input_blocks.1.1.proj_in.weight", "first_stage_model.quant_conv.weight",
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        assert key in sd, key
    assert sum(2 * v.numel() for v in sd.values()) <= MB
    # the U-Net's structure is recoverable from the shapes, as for any LDM checkpoint
    unet_shapes = {k[len("model.diffusion_model."):]: tuple(v.shape) for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    s = structure_from_shapes(unet_shapes)
    assert (s["model_channels"], tuple(s["channel_mult"]), s["context_dim"]) == (64, (1, 2), ec.TINY.clip.width)


def test_metadata_round_trips():
    tiny = dataclasses.replace(ec.TINY, vae=dataclasses.replace(ec.TINY.vae, scale_factor=0.61))
    meta = ec.to_metadata(tiny)
    assert all(isinstance(v, str) for v in meta.values())
    assert ec.from_metadata(meta) == tiny


def test_sd1_schedule_ends_at_sd1_sigma_max():
    """SD1's sigma_max = sqrt((1 - abar_999) / abar_999) = 14.6146 (the value ComfyUI and k-diffusion print)."""
    abar = et.sd1_alphas_cumprod()
    assert abar[0].item() == pytest.approx(1 - 0.00085, abs=1e-15)
    assert math.sqrt((1 - abar[-1].item()) / abar[-1].item()) == pytest.approx(14.6146, abs=1e-4)


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.from_dir(et.default_tokenizer_dir())


def test_batched_prompt_encoding_equals_the_text_encoder(bpe):
    """Training encodes prompts in one batch; inference goes through `TextEncoder.encode` (ComfyUI's path).
    Same float32 operations on the same rows, so equal up to GEMM blocking differences (1e-5)."""
    torch.manual_seed(0)
    te = TextEncoder(ec.TINY.text_encoder).eval()
    prompts = ["a large red circle at the top left on a blue background", "", "a small white square in the centre on a black background"]
    with torch.no_grad():
        batched = et.Prompts(bpe, te).encode(te, prompts)
        for row, prompt in zip(batched, prompts):
            context, _ = te.encode(te.tokenize(prompt, bpe))
            torch.testing.assert_close(row, context[0], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# training smoke test
# ----------------------------------------------------------------------------------------------


def test_training_writes_a_loadable_sd1_file_and_resumes(tmp_path: Path, bpe):
    out = tmp_path / "tiny.safetensors"
    args = ["--out", str(out), "--vae-steps", "2", "--batch", "2", "--vae-batch", "2", "--latent-pool", "4",
            "--threads", "1", "--log-every", "1", "--save-every", "1000"]
    log = et.main(args + ["--steps", "2"])
    assert (log["vae_step"], log["step"]) == (2, 2) and log["scale_factor"] > 0
    assert out.stat().st_size <= MB

    with safe_open(str(out), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    ck = load_checkpoint(out)  # the pack's reader: U-Net config from the metadata, strict load
    assert ck.family == "sd15" and ck.config == ec.TINY.unet and ck.prediction_source == "metadata config"
    tiny = ec.from_metadata(ck.metadata)
    assert tiny.vae.scale_factor == pytest.approx(log["scale_factor"])
    vae = AutoencoderKL(tiny.vae)
    vae.load_state_dict({k: v.float() for k, v in ck.vae.items()}, strict=True)
    te = TextEncoder(tiny.text_encoder)
    te.load_checkpoint({k: v.float() for k, v in ck.tensors("").items()}, strict=True)
    assert all(torch.isfinite(v).all() for v in ck.unet.state_dict().values())

    model = es.load(out)  # the sampler's loader agrees with the file, and draws
    assert model.vae.cfg.scale_factor == pytest.approx(log["scale_factor"])
    images = es.sample(model, ["a large red circle in the centre on a blue background"], bpe, steps=2, cfg=3.0)
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()

    log = et.main(args + ["--steps", "3", "--resume"])  # one more diffusion step, no more VAE steps
    assert (log["vae_step"], log["step"]) == (2, 3) and len(log["loss"]) == 3 and len(log["vae_loss"]) == 2


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean()
    torch.testing.assert_close(et.kl_to_standard_normal(mean, logvar), expected)


def test_random_crops_are_latent_aligned_windows_of_the_images():
    """Each crop is a window of its own image at a corner on the 8-pixel latent grid."""
    images = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    crops = et.random_crop(images, 32, torch.Generator().manual_seed(1))
    assert crops.shape == (6, 3, 32, 32)
    for image, crop in zip(images, crops):
        hits = [(y, x) for y in range(0, 33, 8) for x in range(0, 33, 8) if torch.equal(image[:, y:y + 32, x:x + 32], crop)]
        assert len(hits) == 1
    assert et.random_crop(images, 64, torch.Generator()) is images
