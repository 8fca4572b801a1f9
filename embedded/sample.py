"""Draw with a trained embedded model: load the file, run any of the pack's samplers with classifier-free guidance, decode.

The same maths as ComfyUI's graph for an SD1 eps model, in pure torch (so the tests that check what
the model draws need no ComfyUI): the denoiser is k-diffusion's discrete eps wrapper (Karras et al.
2022, arXiv:2206.00364, eq. 7 with c_in = 1/sqrt(sigma^2 + 1), c_out = -sigma), on SD1's training
schedule (sigma_t = sqrt((1 - abar_t) / abar_t), t = 0..999); a sigma is given to the U-Net as the
nearest training timestep (ComfyUI's `ModelSamplingDiscrete.timestep`); the schedule comes from
`samplers.schedules` on those model sigmas, the steps from `samplers.runner.run_sampler`.
CFG: eps = eps_uncond + cfg * (eps_cond - eps_uncond) (Ho & Salimans 2022, arXiv:2207.12598).

    python embedded/sample.py tiny.safetensors "a large red circle in the centre on a blue background" out.png \
        [--sampler euler] [--schedule karras] [--steps 20] [--cfg 5] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: the repo root as the pack (harness/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
    import diffusion_anatomy  # noqa: F401
    __package__ = "diffusion_anatomy.embedded"

import torch

from ..checkpoint.reader import load_checkpoint
from ..clip.encoder import TextEncoder
from ..clip.tokenizer import BPETokenizer
from ..samplers.runner import run_sampler
from ..samplers.schedules import calculate_sigmas
from ..unet.model import UNetModel
from ..vae.model import AutoencoderKL
from .config import IMAGE_SIZE, TinyConfig, from_metadata
from .train import Prompts, default_tokenizer_dir, sd1_alphas_cumprod


@dataclass
class TinyModel:
    config: TinyConfig
    unet: UNetModel
    vae: AutoencoderKL
    text_encoder: TextEncoder


def load(path: str | Path) -> TinyModel:
    """The three networks of an embedded-model file, float32, eval mode."""
    ck = load_checkpoint(path, dtype=torch.float32)
    config = from_metadata(ck.metadata)
    vae = AutoencoderKL(config.vae)
    vae.load_state_dict(dict(ck.vae.items()))
    text_encoder = TextEncoder(config.text_encoder)
    text_encoder.load_checkpoint(dict(ck.tensors("", torch.float32).items()))
    return TinyModel(config, ck.unet.float().eval(), vae.eval(), text_encoder.eval())


class DiscreteEpsDenoiser:
    """model(x, sigma) -> denoised x0 for an SD1-schedule eps U-Net, with classifier-free guidance.

    `context` holds the prompts' contexts [n, 77, C], `uncond` the negative prompt's [1 or n, 77, C];
    with cfg == 1 the unconditional pass is skipped (it would cancel out).
    """

    def __init__(self, unet: UNetModel, context: torch.Tensor, uncond: torch.Tensor, cfg: float):
        abar = sd1_alphas_cumprod()
        self.sigmas = ((1 - abar) / abar).sqrt().float()  # ascending, the 1000 training sigmas
        self.log_sigmas = self.sigmas.log()
        self.unet, self.cfg = unet, cfg
        self.context, self.uncond = context, uncond.expand_as(context)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep whose sigma is nearest in log space."""
        return (sigma.log()[:, None] - self.log_sigmas[None, :]).abs().argmin(dim=1).float()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_) -> torch.Tensor:
        t = self.timestep(sigma)
        scaled = x / (sigma**2 + 1).sqrt()[:, None, None, None]
        if self.cfg == 1.0:
            eps = self.unet(scaled, t, self.context)
        else:
            both = self.unet(torch.cat([scaled, scaled]), torch.cat([t, t]), torch.cat([self.context, self.uncond]))
            eps_cond, eps_uncond = both.chunk(2)
            eps = eps_uncond + self.cfg * (eps_cond - eps_uncond)
        return x - sigma[:, None, None, None] * eps


def start_latent(noise: torch.Tensor, sigmas: torch.Tensor, model_sigmas: torch.Tensor) -> torch.Tensor:
    """x at sigmas[0] for a full denoise from unit noise.

    From the top of the schedule the start is scaled by sqrt(1 + sigma^2), the std of x_T in this
    parametrisation (x = x0 + sigma * eps with unit-variance data), as ComfyUI's `noise_scaling` does
    for a full denoise: the pictures then equal the bundled workflow's."""
    start = (1 + sigmas[0] ** 2).sqrt() if torch.isclose(sigmas[0], model_sigmas[-1]) else sigmas[0]
    return noise * start


@torch.no_grad()
def sample(model: TinyModel, prompts: list[str], bpe: BPETokenizer, steps: int = 20, cfg: float = 5.0,
           seed: int | list[int] = 0, sampler: str = "euler", schedule: str = "karras", negative: str = "") -> torch.Tensor:
    """[n, 3, 64, 64] images in about [-1, 1], one per prompt. `seed` is one seed for the whole batch's
    starting noise (ComfyUI's way) or a list with one seed per prompt (so a picture does not depend on
    its neighbours in the batch); stochastic samplers draw their noise from the first seed."""
    n = len(prompts)
    encoder = Prompts(bpe, model.text_encoder)
    context = encoder.encode(model.text_encoder, list(prompts) + [negative])
    denoiser = DiscreteEpsDenoiser(model.unet, context[:n], context[n:], cfg)
    sigmas = calculate_sigmas(schedule, steps, model_sigmas=denoiser.sigmas)
    side = IMAGE_SIZE // model.config.vae.downscale
    shape = (model.config.unet.in_channels, side, side)
    seeds = seed if isinstance(seed, list) else None
    if seeds is None:
        noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
    else:
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    x = run_sampler(sampler, denoiser, start_latent(noise, sigmas, denoiser.sigmas), sigmas,
                    extra_args={"seed": seeds[0] if seeds else seed}, disable=True)
    return model.vae.decode(model.vae.from_latent(x))


def sample_in_batches(model: TinyModel, prompts: list[str], bpe: BPETokenizer, seeds: list[int], batch: int = 50,
                      **kwargs) -> torch.Tensor:
    """`sample` over a long list of prompts, `batch` at a time, one seed per picture (`kwargs`: steps, cfg, sampler,
    schedule): [n, 3, 64, 64]."""
    return torch.cat([sample(model, prompts[i:i + batch], bpe, seed=seeds[i:i + batch], **kwargs)
                      for i in range(0, len(prompts), batch)])


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] in [-1, 1] (a decoded image) -> [H, W, 3] in 0..255, rounded as a PNG stores it."""
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0)


def judged_sample(file: str | Path, n: int, sampler: str = "euler", schedule: str = "karras", steps: int = 20,
                  cfg: float = 5.0, seed: int = 0, batch: int = 50):
    """(verdicts, captions): n held-out captions (`data.eval_captions`, drawn from `seed`), picture i
    started from seed `seed * 100003 + i`, drawn in batches and read by `judge.judge`."""
    from .data import eval_captions  # noqa: PLC0415
    from .judge import judge  # noqa: PLC0415

    model, bpe = load(file), BPETokenizer.from_dir(default_tokenizer_dir())
    captions = eval_captions(n, torch.Generator().manual_seed(seed))
    images = sample_in_batches(model, [c.text for c in captions], bpe, [seed * 100003 + i for i in range(n)], batch,
                               steps=steps, cfg=cfg, sampler=sampler, schedule=schedule)
    return judge(images), captions


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("prompt")
    ap.add_argument("out", type=Path)
    ap.add_argument("--sampler", default="euler")
    ap.add_argument("--schedule", default="karras")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    image = sample(load(args.file), [args.prompt], BPETokenizer.from_dir(default_tokenizer_dir()), steps=args.steps,
                   cfg=args.cfg, seed=args.seed, sampler=args.sampler, schedule=args.schedule)[0]
    from PIL import Image  # noqa: PLC0415  (only the command line needs PIL; ComfyUI's venv has it)

    Image.fromarray(to_rgb(image).byte().numpy()).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
