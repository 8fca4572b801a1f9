"""Peak activation memory of one U-Net call or one VAE decode on a CPU, to fit unet/memory.py and vae/memory.py.

The peak resident size during the call minus the resident size just before it (model and inputs built), and
the call's seconds. The peak is the kernel's high-water mark (VmHWM), reset just before the call by writing 5 to
/proc/self/clear_refs: ru_maxrss cannot be reset, and an earlier transient peak (imports, building the model)
can hide the call's own growth behind it. fp32, two threads, no grad, seeded random weights (the
memory does not depend on their values).

    python bench/memory.py unet|vae|vaetiled SIZE BATCH [sd]     (sd: SD1.5 shapes; default: the embedded model's)

Measured on the shared 2-core CPU (MiB of growth / seconds; the seconds vary with the other jobs):
    unet tiny 256/512/1024, batch 1: 27.9 / 54.5 / 159.4 MiB (4.2 / 8.6 / 33.8 s); 512 batch 2: 87.1 MiB
    unet SD1.5 256/512, batch 1: 182.7 / 255.9 MiB (28 / 58 s)
    vae tiny 256/512/1024, batch 1: 65.0 / 216.8 / 675.8 MiB (4.7 / 9.3 / 24.6 s); 512 batch 2: 348.9 MiB
    vae SD 256, batch 1: 218.0 MiB (24.8 s)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "harness"))  # diffusion_anatomy: the repo root as the pack, without ComfyUI

from diffusion_anatomy.embedded.config import TINY  # noqa: E402
from diffusion_anatomy.unet import SD15, UNetModel  # noqa: E402
from diffusion_anatomy.vae.config import PRESETS  # noqa: E402
from diffusion_anatomy.vae.model import AutoencoderKL  # noqa: E402
from diffusion_anatomy.vae.tiled import decode_tiled  # noqa: E402


def main(kind: str, size: int, batch: int, sd: bool) -> str:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    latent = torch.randn(batch, 4, size // 8, size // 8)
    with torch.no_grad():
        if kind == "unet":
            cfg = SD15 if sd else TINY.unet
            model = UNetModel(cfg).eval()
            context, t = torch.randn(batch, 77, cfg.context_dim), torch.full((batch,), 500.0)
            call = lambda: model(latent, t, context)  # noqa: E731
        else:
            vae = AutoencoderKL(PRESETS["sd"] if sd else TINY.vae).eval()
            call = (lambda: vae.decode(latent)) if kind == "vae" else (lambda: decode_tiled(vae, latent, tile=512))  # noqa: E731
        before = status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from here
        t0 = time.monotonic()
        call()
        seconds = time.monotonic() - t0
        after = status_kib("VmHWM")
    return f"{kind} {'sd' if sd else 'tiny'} size={size} batch={batch} peak_growth_MiB={(after - before) / 1024:.1f} seconds={seconds:.2f}"


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


if __name__ == "__main__":
    print(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), len(sys.argv) > 4 and sys.argv[4] == "sd"))
