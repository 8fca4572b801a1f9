"""The VAE stops when its interrupt callable raises, between blocks, tiles and attention chunks; the
memory estimates (vae/memory.py, unet/memory.py) bound what one call really takes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion_anatomy.embedded.config import TINY
from diffusion_anatomy.unet.memory import activation_bytes
from diffusion_anatomy.vae.config import VAEConfig
from diffusion_anatomy.vae.memory import decode_bytes
from diffusion_anatomy.vae.model import AutoencoderKL, attention
from diffusion_anatomy.vae.tiled import decode_tiled

ROOT = Path(__file__).resolve().parents[2]
CFG = VAEConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4)


class Stop(Exception):
    pass


class CountDown:
    """Raises Stop on the n-th call; counts calls."""

    def __init__(self, n: int | None):
        self.n, self.calls = n, 0

    def __call__(self):
        self.calls += 1
        if self.n is not None and self.calls >= self.n:
            raise Stop


def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(CFG).eval()


@torch.no_grad()
@pytest.mark.parametrize("tiled", [False, True])
def test_decode_checks_between_blocks_and_stops_where_told(tiled):
    model, z = vae(), torch.randn(1, 4, 8, 8)
    run = (lambda i: decode_tiled(model, z, tile=4, granularity="block", interrupt=i)) if tiled else (lambda i: model.decode(z, interrupt=i))
    counter = CountDown(None)
    out = run(counter)
    # decoder: mid (3 checks), 2 levels x 2 blocks, 1 upsample, the head: >= 8 checks; tiled: one per tile too
    assert counter.calls >= (8 if not tiled else 20), counter.calls
    assert torch.allclose(out, model.decode(z), atol=1e-5)  # checking changes nothing
    for n in (1, counter.calls // 2, counter.calls):
        with pytest.raises(Stop):
            run(CountDown(n))


@torch.no_grad()
def test_encode_checks_too():
    model, counter = vae(), CountDown(None)
    model.encode(torch.randn(1, 3, 16, 16), interrupt=counter)
    assert counter.calls >= 6
    with pytest.raises(Stop):
        model.encode(torch.randn(1, 3, 16, 16), interrupt=CountDown(2))


def test_attention_checks_before_every_chunk_and_gives_the_same_numbers():
    q, k, v = (torch.randn(1, 1, 64, 8) for _ in range(3))
    counter = CountDown(None)
    chunked = attention(q, k, v, max_scores=64 * 8, interrupt=counter)  # 8 query rows per chunk: 8 chunks
    assert counter.calls == 8
    torch.testing.assert_close(chunked, torch.nn.functional.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)


def measured_growth(kind: str, size: int) -> float:
    """bench/memory.py in a fresh process: the peak resident growth (bytes) of one call."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "memory.py"), kind, str(size), "1"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    return float(out.split("peak_growth_MiB=")[1].split()[0]) * 2**20


@pytest.mark.parametrize("kind", ["unet", "vae"])
def test_estimates_bound_a_measured_call(kind):
    """The estimate is at least the measured peak growth (so a refusal is never wrong) and within 8x of it
    (so it is not a refusal of everything); the embedded model's shapes, batch 1, at a size where the
    fixed part (SD1.5's 160 MiB in the U-Net's formula) does not dominate."""
    size = 512 if kind == "unet" else 256
    measured = measured_growth(kind, size)
    estimate = (activation_bytes(TINY.unet, 1, size // 8, size // 8) if kind == "unet"
                else decode_bytes(TINY.vae, 1, size, size))
    assert measured <= estimate <= 8 * measured, (measured / 2**20, estimate / 2**20)


def test_estimates_grow_with_area_batch_and_width():
    assert decode_bytes(TINY.vae, 2, 512, 512) > decode_bytes(TINY.vae, 1, 512, 512) > decode_bytes(TINY.vae, 1, 256, 256)
    assert decode_bytes(VAEConfig(), 1, 512, 512) > decode_bytes(TINY.vae, 1, 512, 512)  # ch 128 against 32
    assert activation_bytes(TINY.unet, 4, 128, 128) > activation_bytes(TINY.unet, 1, 128, 128)
    # the case: 8192^2 on the embedded model, cond + uncond: about 9 GiB of activations per call
    assert 8 * 2**30 < activation_bytes(TINY.unet, 2, 1024, 1024) < 10 * 2**30
