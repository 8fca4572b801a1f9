"""Train the embedded tiny text-to-image model on procedural shapes; write one SD1-layout .safetensors.

    python embedded/train.py --out tiny.safetensors --minutes 120 --batch 32 --threads 2

Two stages, as latent diffusion is trained (Rombach et al. 2022, arXiv:2112.10752):
1. the VAE alone: reconstruction (MSE on [-1, 1] pixels) + a small KL to N(0, I) on the posterior.
   LDM also uses LPIPS and a patch GAN; flat-coloured shapes do not need them. It trains on random
   32x32 crops (a quarter of the pixels per image: the network is convolutional, so the same
   weights decode 64x64; the mid-block attention then sees 4x4 instead of 8x8 latents).
2. the VAE frozen; the latent scale factor set to 1 / std of posterior samples of training images
   (how SD's 0.18215 was derived), measured on a pool of `--latent-pool` images encoded once (the
   encoder would otherwise cost as much as the U-Net every step); then U-Net and text encoder together with the eps-prediction loss
   ||eps - eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t, c)||^2 (Ho et al. 2020, arXiv:2006.11239)
   on SD1's discrete schedule (betas linear in sqrt from 0.00085 to 0.012, 1000 steps, "scaled
   linear"), with 10% of captions replaced by the empty prompt so classifier-free guidance works
   (Ho & Salimans 2022, arXiv:2207.12598). Two departures from SD1's recipe, both for the layout
   (where the shape goes), which plain eps training on SD1's schedule never tied to the position
   words in 6000 steps (README, "Position words"): each sample's loss is weighted by
   min(1/abar_t, 50), the v-prediction loss of the same network (Salimans & Ho 2022,
   arXiv:2202.00512) capped as in Min-SNR weighting (arXiv:2303.09556), and a quarter of each
   batch takes its timestep from [750, 999], where x_t shows the layout least.

Time-bounded (`--minutes`, split by `--vae-share`) and resumable: every `--save-every` steps and at
the end, `<out>.state.pt` keeps fp32 weights, optimiser states, the data generator and the log;
`--resume` continues from it. The .safetensors is written at the end (and at each save) in fp16
with the three configs in its metadata (`config.to_metadata`).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: the repo root as the pack (harness/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
    import diffusion_anatomy  # noqa: F401
    __package__ = "diffusion_anatomy.embedded"

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..checkpoint.reader import TEXT_PREFIXES, UNET_PREFIX, VAE_PREFIX  # noqa: F401  (names of the layout)
from ..clip.encoder import TextEncoder
from ..clip.tokenizer import EOS, BPETokenizer, find_tokenizer_dir, tokenize_prompt
from .config import TINY, TinyConfig, build, to_metadata
from .data import sample_batch

TRAIN_LOG_METADATA_KEY = "diffusion_anatomy.train_log"


# ----------------------------------------------------------------------------------------------
# Schedule, text, layout
# ----------------------------------------------------------------------------------------------

def sd1_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """abar_t of SD1's training schedule: betas linear in sqrt(beta) ("scaled_linear"), float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class Prompts:
    """Prompt -> (77 token ids, EOS index) through the real CLIP BPE, cached (the captions repeat)."""

    def __init__(self, bpe: BPETokenizer, text_encoder: TextEncoder):
        self.bpe, self.chunks = bpe, text_encoder.config.towers[0][1].chunks
        self.cache: dict[str, tuple[list[int], int]] = {}

    def ids(self, prompt: str) -> tuple[list[int], int]:
        if prompt not in self.cache:
            chunk = tokenize_prompt(prompt, self.bpe, self.chunks, parse_prompt_weights=False)[0]
            ids = [int(t) for t, _ in chunk]
            self.cache[prompt] = ids, ids.index(EOS)
        return self.cache[prompt]

    def encode(self, text_encoder: TextEncoder, prompts: list[str]) -> torch.Tensor:
        """[B, 77, width] context, SD1's policy (last layer, final layer norm), batched."""
        rows = [self.ids(p) for p in prompts]
        ids = torch.tensor([r for r, _ in rows])
        eos = torch.tensor([e for _, e in rows])
        tower = text_encoder.tower("l")
        spec = tower.spec
        hidden, _ = tower.transformer(tower.transformer.token_embedding(ids), eos, spec.layer, spec.norm_hidden)
        return hidden


def checkpoint_state_dict(unet, vae, text_encoder: TextEncoder) -> dict[str, torch.Tensor]:
    """All weights under their SD1 LDM single-file names (the inverse of `clip.encoder.text_encoder_state_dict`)."""
    out = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    out.update({VAE_PREFIX + k: v for k, v in vae.state_dict().items()})
    for name, spec in text_encoder.config.towers:
        ours = f"clip_{name}.transformer."
        out.update({spec.checkpoint_prefix + k[len(ours):]: v
                    for k, v in text_encoder.state_dict().items() if k.startswith(ours)})
    return out


def save_checkpoint(path: Path, config: TinyConfig, unet, vae, text_encoder, log: dict | None = None) -> None:
    """One fp16 .safetensors in the SD1 layout, configs (and a training summary) in the metadata."""
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in checkpoint_state_dict(unet, vae, text_encoder).items()}
    metadata = to_metadata(config)
    if log is not None:
        metadata[TRAIN_LOG_METADATA_KEY] = json.dumps(log, sort_keys=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


POSTERIOR_LOGVAR_INIT = -8.0


def init_weights(unet, vae, text_encoder: TextEncoder) -> None:
    """The VAE posterior starts nearly deterministic (logvar = -8, std 0.02): with the default init
    its std is ~1 while the encoder's mean is ~0.1, the decoder sees mostly noise and reconstruction
    stalls for hundreds of steps; the small KL term lets the std grow back where it costs nothing.
    CLIP's init for the embeddings (std 0.02 tokens, 0.01 positions, as OpenAI CLIP); the U-Net's
    last conv and transformer output projections start at zero (LDM's `zero_module`), so the
    untrained network is the identity around each block and predicts eps = 0."""
    logvar = slice(vae.cfg.embed_dim, None)  # quant_conv's output is [mean, logvar] along channels
    torch.nn.init.zeros_(vae.quant_conv.weight[logvar])
    torch.nn.init.constant_(vae.quant_conv.bias[logvar], POSTERIOR_LOGVAR_INIT)
    emb = text_encoder.tower("l").transformer.text_model.embeddings
    torch.nn.init.normal_(emb.token_embedding.weight, std=0.02)
    torch.nn.init.normal_(emb.position_embedding.weight, std=0.01)
    for name, module in unet.named_modules():
        if name == "out.2" or name.endswith("proj_out") or name.endswith("out_layers.3"):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

def default_tokenizer_dir() -> Path:
    """ComfyUI's `comfy/sd1_tokenizer` (COMFYUI_PATH, else $DA_HOST_DIR/ComfyUI, else the repo's .host/ComfyUI)."""
    comfyui = os.environ.get("COMFYUI_PATH") or Path(os.environ.get("DA_HOST_DIR", Path(__file__).resolve().parents[1] / ".host")) / "ComfyUI"
    return find_tokenizer_dir(comfyui)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help=".safetensors to write")
    p.add_argument("--steps", type=int, default=20000, help="diffusion steps (stage 2)")
    p.add_argument("--vae-steps", type=int, default=5000, help="VAE steps (stage 1)")
    p.add_argument("--batch", type=int, default=32, help="stage 2 batch")
    p.add_argument("--vae-batch", type=int, default=8, help="stage 1 batch")
    p.add_argument("--vae-crop", type=int, default=32, help="stage 1 trains on random crops this wide (the VAE is convolutional)")
    p.add_argument("--latent-pool", type=int, default=4096, help="images encoded once for stage 2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--minutes", type=float, default=120.0, help="wall-clock budget for both stages")
    p.add_argument("--vae-share", type=float, default=0.25, help="part of --minutes stage 1 may use")
    p.add_argument("--lr", type=float, default=3e-4, help="stage 2 learning rate (AdamW)")
    p.add_argument("--vae-lr", type=float, default=3e-4, help="stage 1 learning rate (AdamW, betas 0.5/0.9)")
    p.add_argument("--kl-weight", type=float, default=1e-4, help="KL per latent element vs MSE per pixel")
    p.add_argument("--ema", type=float, default=0.999, help="decay of the weights' exponential moving average (stage 2), which is what the file ships")
    p.add_argument("--late-share", type=float, default=0.25, help="stage 2: part of each batch whose timesteps are drawn from [--late-from, 999] instead of all of [0, 999]")
    p.add_argument("--late-from", type=int, default=750, help="first timestep of the late range (see --late-share)")
    p.add_argument("--high-noise-weight", type=float, default=50.0, help="stage 2: weight each sample's eps loss by min(1/abar_t, this) (0: unweighted; see the note in main)")
    p.add_argument("--uncond-prob", type=float, default=0.1, help="caption dropout for CFG")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--resume", action="store_true", help="continue from <out>.state.pt")
    p.add_argument("--init", type=Path, default=None, help="start all three networks from this trained file (e.g. refine_vae.py's; with --vae-steps 0 its VAE is kept as it is)")
    p.add_argument("--tokenizer-dir", type=Path, default=None, help="CLIP vocab.json + merges.txt (default: ComfyUI's)")
    return p.parse_args(argv)


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), mean over elements."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()


def random_crop(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random size x size window (a multiple of 8) per image; the whole image when size >= its side."""
    side = images.shape[-1]
    if size >= side:
        return images
    corner = torch.randint(0, (side - size) // 8 + 1, (images.shape[0], 2), generator=generator) * 8
    return torch.stack([im[:, y:y + size, x:x + size] for im, (y, x) in zip(images, corner.tolist())])


@torch.no_grad()
def encode_pool(vae, data: torch.Generator, noise: torch.Generator, n: int, batch: int) -> dict:
    """n fresh training images through the frozen encoder: posterior mean and std (unscaled) with their captions.
    Stage 2 draws z = mean + std * eps from it each step, so the encoder runs once, not every step."""
    means, stds, captions = [], [], []
    while len(captions) < n:
        images, texts, _ = sample_batch(min(batch, n - len(captions)), data, hold_out=True)
        q = vae.posterior(images)
        means.append(q.mean); stds.append(q.std); captions += texts
    return {"mean": torch.cat(means), "std": torch.cat(stds), "captions": captions}


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # subnormal Adam moments are ~100x slower (refine_decoder.py); this thread only
    state_path = args.out.with_suffix(args.out.suffix + ".state.pt")
    config = TINY
    torch.manual_seed(args.seed)
    unet, vae, text_encoder = build(config)
    with torch.no_grad():
        init_weights(unet, vae, text_encoder)
    if args.init is not None:  # fine-tuning: a trained file's weights instead of the init above
        from .sample import load  # noqa: PLC0415  (sample imports this module)

        trained = load(args.init)
        unet.load_state_dict(trained.unet.state_dict()); vae.load_state_dict(trained.vae.state_dict())
        text_encoder.load_state_dict(trained.text_encoder.state_dict())
    prompts = Prompts(BPETokenizer.from_dir(args.tokenizer_dir or default_tokenizer_dir()), text_encoder)
    data = torch.Generator().manual_seed(args.seed)
    noise = torch.Generator().manual_seed(args.seed + 1)
    # LDM's autoencoder optimiser betas; with the default 0.9/0.999 and lr 1e-3 the loss rose back
    # to its start after ~100 steps, 3e-4 with these fell steadily (README, "Measured")
    opt_vae = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, betas=(0.5, 0.9), weight_decay=0.0)
    diffusion_params = list(unet.parameters()) + list(text_encoder.parameters())
    # no weight decay: it would also shrink the ~49k token rows no caption ever uses
    opt = torch.optim.AdamW(diffusion_params, lr=args.lr, weight_decay=0.0)
    log = {"seed": args.seed, "batch": args.batch, "vae_step": 0, "step": 0, "seconds": 0.0,
           "vae_loss": [], "loss": [], "scale_factor": None}
    ema = None  # stage 2's averaged U-Net and text encoder (state dicts), what the .safetensors gets
    pool = None  # stage 2's encoded images: posterior mean/std [N, 4, 8, 8] (unscaled) and captions

    if args.resume and state_path.exists():
        s = torch.load(state_path, weights_only=True)  # tensors and plain containers only: no pickle code runs
        unet.load_state_dict(s["unet"]); vae.load_state_dict(s["vae"]); text_encoder.load_state_dict(s["clip"])
        opt_vae.load_state_dict(s["opt_vae"]); opt.load_state_dict(s["opt"])
        data.set_state(s["data"]); noise.set_state(s["noise"]); log, pool = s["log"], s["pool"]
        ema = s.get("ema")
        print(f"resumed at VAE step {log['vae_step']}, diffusion step {log['step']}", flush=True)
    if args.init is not None and "init" not in log:  # the file's history: where its VAE (and first weights) came from
        from safetensors import safe_open  # noqa: PLC0415

        with safe_open(str(args.init), "pt") as f:
            log["init"] = {"file": args.init.name, "train_log": json.loads(f.metadata().get(TRAIN_LOG_METADATA_KEY, "null"))}
    if log["scale_factor"] is not None:
        config = dataclasses.replace(config, vae=dataclasses.replace(config.vae, scale_factor=log["scale_factor"]))
        vae.cfg = config.vae

    start, spent = time.monotonic(), log["seconds"]
    budget = args.minutes * 60.0

    def elapsed() -> float:
        return spent + time.monotonic() - start

    def checkpoint():
        log["seconds"] = elapsed()
        torch.save({"unet": unet.state_dict(), "vae": vae.state_dict(), "clip": text_encoder.state_dict(),
                    "opt_vae": opt_vae.state_dict(), "opt": opt.state_dict(), "data": data.get_state(),
                    "noise": noise.get_state(), "log": log, "pool": pool, "ema": ema}, state_path)
        if ema is None:
            save_checkpoint(args.out, config, unet, vae, text_encoder, _summary(log))
        else:
            shipped_unet, shipped_text = copy.deepcopy(unet), copy.deepcopy(text_encoder)
            shipped_unet.load_state_dict(ema["unet"]); shipped_text.load_state_dict(ema["clip"])
            save_checkpoint(args.out, config, shipped_unet, vae, shipped_text, _summary(log))

    # Stage 1: the VAE.
    vae.train()
    window, steps_at, time_at = [], log["vae_step"], elapsed()
    while log["vae_step"] < args.vae_steps and log["scale_factor"] is None and elapsed() < budget * args.vae_share:
        images = random_crop(sample_batch(args.vae_batch, data, hold_out=True)[0], args.vae_crop, data)
        q = vae.posterior(images)
        z = q.mean + q.std * torch.randn(q.mean.shape, generator=noise)
        recon = vae.decode(z)
        rec, kl = F.mse_loss(recon, images), kl_to_standard_normal(q.mean, q.logvar)
        loss = rec + args.kl_weight * kl
        opt_vae.zero_grad(set_to_none=True)
        loss.backward()
        opt_vae.step()
        log["vae_step"] += 1
        window.append((rec.item(), kl.item()))
        if log["vae_step"] % args.log_every == 0 or log["vae_step"] == args.vae_steps:
            rec_mean, kl_mean = (sum(v) / len(v) for v in zip(*window))
            now = elapsed()
            log["vae_loss"].append([log["vae_step"], round(now, 1), rec_mean, kl_mean])
            rate = (log["vae_step"] - steps_at) / max(now - time_at, 1e-9)
            steps_at, time_at = log["vae_step"], now
            print(f"vae  step {log['vae_step']:6d}  t {now:7.1f}s  mse {rec_mean:.5f}  kl {kl_mean:.3f}  {rate:.2f} steps/s", flush=True)
            window = []
        if log["vae_step"] % args.save_every == 0:
            checkpoint()

    # Between the stages: freeze the VAE, encode a pool of training images once, measure the latent scale.
    vae.eval().requires_grad_(False)
    if pool is None:
        pool = encode_pool(vae, data, noise, args.latent_pool, args.batch)
    if log["scale_factor"] is None:
        samples = pool["mean"] + pool["std"] * torch.randn(pool["mean"].shape, generator=noise)
        log["scale_factor"] = 1.0 / samples.flatten().std().item()
        config = dataclasses.replace(config, vae=dataclasses.replace(config.vae, scale_factor=log["scale_factor"]))
        vae.cfg = config.vae
        print(f"latent scale factor {log['scale_factor']:.5f} (latent mean {samples.mean().item():+.4f}, "
              f"{len(pool['captions'])} pooled images, t {elapsed():.1f}s)", flush=True)
        checkpoint()

    # Stage 2: U-Net + text encoder, eps prediction, on pooled posteriors with fresh posterior noise.
    alphas_cumprod = sd1_alphas_cumprod().float()
    unet.train(); text_encoder.train()
    # An exponential moving average of the weights samples far better than the last noisy iterate at
    # a constant learning rate (as in DDPM's and LDM's training); warmed up so early steps are not frozen in.
    if ema is None:
        ema = {"unet": {k: v.detach().clone() for k, v in unet.state_dict().items()},
               "clip": {k: v.detach().clone() for k, v in text_encoder.state_dict().items()}}
    live, averaged = [], []
    for module, key in ((unet, "unet"), (text_encoder, "clip")):
        for name, tensor in module.state_dict().items():  # detached views of the parameters: they follow opt.step()
            if tensor.is_floating_point():
                live.append(tensor); averaged.append(ema[key][name])
    window, steps_at, time_at = [], log["step"], elapsed()
    while log["step"] < args.steps and elapsed() < budget:
        pick = torch.randint(len(pool["captions"]), (args.batch,), generator=noise)
        drop = (torch.rand(args.batch, generator=noise) < args.uncond_prob).tolist()
        captions = ["" if d else pool["captions"][i] for i, d in zip(pick.tolist(), drop)]
        z = pool["mean"][pick] + pool["std"][pick] * torch.randn(pool["mean"][pick].shape, generator=noise)
        x0 = vae.to_latent(z)
        t = torch.randint(0, len(alphas_cumprod), (args.batch,), generator=noise)
        if args.late_share > 0:
            # SD1's schedule leaves a trace of x0 at t = 999 (its terminal SNR is not zero; Lin et al. 2023,
            # arXiv:2305.08891), enough on 8x8 latents to say where the shape is, so the network learns to
            # read the layout from x_t and ignores the position words; at sampling time the layout then
            # follows the seed. Extra late timesteps, where x_t says little, put the weight on the words.
            late = torch.rand(args.batch, generator=noise) < args.late_share
            t = torch.where(late, torch.randint(args.late_from, len(alphas_cumprod), (args.batch,), generator=noise), t)
        eps = torch.randn(x0.shape, generator=noise)
        abar = alphas_cumprod[t][:, None, None, None]
        xt = abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps
        per_sample = (unet(xt, t.float(), prompts.encode(text_encoder, captions)) - eps).square().mean(dim=(1, 2, 3))
        if args.high_noise_weight > 0:
            # The eps loss barely sees the layout: at t near 999 an error in the predicted x0 costs only
            # abar_t (~0.005) times as much in eps, and at lower t x_t shows the layout anyway. Weighting
            # by 1/abar_t is the v-prediction loss (Salimans & Ho 2022, arXiv:2202.00512) for the same
            # eps network; capped, as Min-SNR weighting caps (Hang et al. 2023, arXiv:2303.09556).
            weight = (1.0 / alphas_cumprod[t]).clamp(max=args.high_noise_weight)
            loss = (weight * per_sample).mean() / weight.mean()
        else:
            loss = per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion_params, 1.0)
        opt.step()
        log["step"] += 1
        with torch.no_grad():
            torch._foreach_lerp_(averaged, live, 1.0 - min(args.ema, (1 + log["step"]) / (10 + log["step"])))
        window.append(loss.item())
        if log["step"] % args.log_every == 0 or log["step"] == args.steps:
            now = elapsed()
            rate = (log["step"] - steps_at) / max(now - time_at, 1e-9)
            steps_at, time_at = log["step"], now
            log["loss"].append([log["step"], round(now, 1), sum(window) / len(window)])
            print(f"unet step {log['step']:6d}  t {now:7.1f}s  loss {sum(window) / len(window):.5f}  {rate:.2f} steps/s", flush=True)
            window = []
        if log["step"] % args.save_every == 0:
            checkpoint()

    checkpoint()
    print(f"wrote {args.out} after {elapsed():.0f}s", flush=True)
    return log


def _summary(log: dict) -> dict:
    """What goes into the file's metadata: the settings and the last logged losses, not the whole curve."""
    return {k: (v[-1] if isinstance(v, list) and v else v) for k, v in log.items()}


if __name__ == "__main__":
    main()
