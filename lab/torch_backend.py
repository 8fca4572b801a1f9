"""The sweep's backend in pure torch: the embedded model (or any model built by the pack), as embedded/sample.py draws.

The same maths as ComfyUI's graph for an SD1 eps model (see `embedded.sample`): so the command line
`bench/sampler_lab.py` measures what the node measures, without a server.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..embedded.sample import DiscreteEpsDenoiser, start_latent
from ..samplers.schedules import calculate_sigmas
from .sweep import Fn, fingerprint


@dataclass
class TorchBackend:
    denoiser: DiscreteEpsDenoiser
    vae: torch.nn.Module
    shape: tuple[int, ...]  # [1, C, h, w] of the latent
    seed: int
    name: str = "model"
    identity: str = ""  # what the weights are (file, size, mtime) for the reference cache; the U-Net object's id when empty

    @property
    def model_sigmas(self) -> torch.Tensor:
        return self.denoiser.sigmas

    def sigmas(self, schedule: str, steps: int) -> torch.Tensor:
        return calculate_sigmas(schedule, steps, model_sigmas=self.denoiser.sigmas)

    def noise(self) -> torch.Tensor:
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(self.seed))

    @torch.no_grad()
    def run(self, fn: Fn, sigmas: torch.Tensor, callback=None) -> torch.Tensor:
        x = start_latent(self.noise(), sigmas, self.denoiser.sigmas)
        return fn(self.denoiser, x, sigmas, extra_args={"seed": self.seed}, callback=callback, disable=True)

    def key(self) -> tuple:
        d = self.denoiser
        return ("torch", self.identity or id(d.unet), fingerprint(d.context, d.uncond), d.cfg, self.seed, tuple(self.shape))

    @torch.no_grad()
    def pictures(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """[n, H, W, 3] in 0..1, all decoded in one batch."""
        images = self.vae.decode(self.vae.from_latent(torch.cat(latents)))
        return ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)


def embedded_backend(prompt: str, negative: str = "", cfg: float = 5.0, seed: int = 0, path=None) -> TorchBackend:
    """The embedded model with one prompt, as `embedded/sample.py` draws it."""
    from ..clip.tokenizer import BPETokenizer
    from ..embedded import WEIGHTS
    from ..embedded import sample as embedded
    from ..embedded.config import IMAGE_SIZE
    from ..embedded.train import Prompts, default_tokenizer_dir

    path = Path(path) if path else WEIGHTS
    model = embedded.load(path)
    bpe = BPETokenizer.from_dir(default_tokenizer_dir())
    with torch.no_grad():
        context = Prompts(bpe, model.text_encoder).encode(model.text_encoder, [prompt, negative])
    denoiser = DiscreteEpsDenoiser(model.unet, context[:1], context[1:], cfg)
    side = IMAGE_SIZE // model.config.vae.downscale
    stat = path.stat()
    return TorchBackend(denoiser, model.vae, (1, model.config.unet.in_channels, side, side), seed, name=path.name,
                        identity=f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
