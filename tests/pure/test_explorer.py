"""The explorer's pure parts: the prompt's token strip, the run store's refusals and limit, the atlas layout,
the linear latent-to-RGB maps, and the recording's step bookkeeping (fed by hand, as the hooks would)."""
from __future__ import annotations

import os

import pytest
import torch

from diffusion_anatomy.anatomy import explorer as ex

BOS, EOS = 49406, 49407
VOCAB = {1: "a</w>", 2: "cir", 3: "cle</w>", 4: "red</w>"}


def test_prompt_tokens_joins_pieces_keeps_weights_and_counts_padding():
    chunk = [(BOS, 1.0), (1, 1.0), (4, 1.2), (2, 1.0), (3, 1.0), (EOS, 1.0)] + [(EOS, 1.0)] * 71
    tokens, padding = ex.prompt_tokens([chunk], VOCAB.get)
    assert [(t.text, t.kind, t.positions) for t in tokens] == [
        ("<BOS>", "bos", (0,)), ("a", "word", (1,)), ("red", "word", (2,)), ("circle", "word", (3, 4)), ("<EOS>", "eos", (5,))]
    assert tokens[2].weight == 1.2 and padding == 77 - 6


def test_store_hands_out_run_files_only(tmp_path):
    store = ex.RunStore(tmp_path / "runs")
    run, folder = store.new_run(keep=3)
    (folder / "index.json").write_text("{}")
    assert store.file(run, "index.json") == folder / "index.json"
    (tmp_path / "secret.json").write_text("{}")
    os.symlink(tmp_path / "secret.json", folder / "link.json")
    for name in ("../secret.json", "a/b.json", "/etc/passwd", "..", "index.py", "link.json", "missing.png", ""):
        with pytest.raises(ex.StoreError):
            store.file(run, name)
    for bad in ("..", "../runs", run + "/..", "/tmp", "x"):
        with pytest.raises(ex.StoreError):
            store.file(bad, "index.json")
    other = "20000101-000000-000-abcd"
    os.symlink(folder, store.root / other)
    with pytest.raises(ex.StoreError):
        store.file(other, "index.json")
    assert store.run_ids() == [run]  # a link is not a run


def test_store_keeps_the_newest_runs(tmp_path):
    store = ex.RunStore(tmp_path / "runs")
    ids = []
    for k in range(5):
        run, folder = store.new_run(keep=2)
        (folder / "index.json").write_text("{}")
        ids.append(run)
    assert store.run_ids() == sorted(ids, reverse=True)[:2]
    (store.root / "not-a-run").mkdir()  # never touched: not named like a run
    store.prune(0)
    assert store.run_ids() == [] and (store.root / "not-a-run").is_dir()


def test_atlas_places_tile_k_at_column_k_mod_16():
    tiles = [torch.full((2, 3, 3), k, dtype=torch.uint8).numpy() for k in range(20)]
    picture = torch.from_numpy(__import__("numpy").array(ex.atlas(tiles)))
    assert picture.shape == (4, 48, 3)
    for k in range(20):
        r, c = divmod(k, ex.ATLAS_COLUMNS)
        assert (picture[r * 2:(r + 1) * 2, c * 3:(c + 1) * 3] == k).all()


def test_fit_map_recovers_an_affine_decoder_and_preview_map_is_comfys():
    g = torch.Generator().manual_seed(0)
    matrix, offset = torch.randn(4, 3, generator=g) * 0.1, torch.tensor([0.5, 0.4, 0.6])
    latents = [torch.randn(4, 8, 8, generator=g) for _ in range(3)]
    # a "VAE" that is affine and enlarges 8 times: its pictures averaged back to 8x8 give the map exactly
    pictures = [torch.einsum("chw,ck->hwk", z, matrix).add(offset).repeat_interleave(8, 0).repeat_interleave(8, 1) for z in latents]
    fitted, fitted_offset = ex.fit_map(latents, pictures)
    assert torch.allclose(fitted, matrix, atol=1e-5) and torch.allclose(fitted_offset, offset, atol=1e-5)
    factors = [[0.3, 0.2, 0.1], [0.1, 0.2, 0.3], [0.0, 0.1, 0.0], [-0.1, 0.0, 0.1]]
    m, b = ex.preview_map(factors)
    z = torch.randn(4, 2, 2, generator=g)
    comfy = ((torch.einsum("chw,ck->hwk", z, torch.tensor(factors)) + 1) / 2).clamp(0, 1)  # anatomy.latents.latent_to_rgb
    assert torch.allclose(ex.apply_map(z, m, b), comfy, atol=1e-6)


def test_recording_gives_each_step_its_calls_and_the_rest_to_the_last():
    tokens = [ex.Token("<BOS>", "bos", (0,)), ex.Token("red", "word", (1,)), ex.Token("<EOS>", "eos", (2,))]
    rec = ex.Recording(tokens=tokens, context_length=3)
    rec.reset([2.0, 1.0, 0.0])
    ones = torch.ones(1, 4, 2, 2)

    def call(sigma, block):
        rec.post_cfg({"sigma": torch.tensor([sigma]), "cond_scale": 3.0, "cond_denoised": ones * 2, "uncond_denoised": ones,
                      "denoised": ones * 4})
        probs = torch.full((1, 4, 3), 1 / 3)  # one positive row, 2x2 places, 3 tokens
        rec._add_attention(probs, {"cond_or_uncond": [0], "original_shape": [1, 4, 2, 2], "block": (block, 0)})

    call(2.0, "input")
    call(2.0, "output")
    rec.step(0, ones * 4, ones * 9)
    call(1.0, "middle")
    rec.step(1, ones * 4, ones * 5)
    call(0.5, "output")  # a second-order sampler's half step after the last callback
    rec.finish()
    first, last = rec.steps
    assert first.scale == 3.0 and torch.equal(first.cond, 2 * torch.ones(4, 2, 2))
    assert first.maps.shape == (3, 3, 2, 2)
    assert torch.allclose(first.maps.sum(dim=(1,)), torch.tensor([1.0, 0.0, 1.0])[:, None, None].expand(3, 2, 2))
    assert torch.allclose(last.maps[1].sum(0), torch.ones(2, 2)) and torch.allclose(last.maps[2].sum(0), torch.ones(2, 2))
    assert rec.attention_calls == 4
    assert torch.equal(first.noise, (ones[0] * 9 - ones[0] * 4) / 2.0)
