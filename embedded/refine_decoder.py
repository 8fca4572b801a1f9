"""Stage 3 of the embedded model's recipe: a new VAE decoder for a trained model, everything else kept.

The first shipped model's VAE gave back true renders at ~18.6 dB PSNR, with an 8-px dot grid, a
lighter frame and shapes the judge could not read in most round trips (`judge.py roundtrip`): its
decoder had 5,000 steps on 32x32 crops with an MSE loss. The encoder's latents still hold the
picture, so only the decoder is trained again, on the latents the encoder gives (posterior samples,
as the U-Net's samples are), which leaves the latent space, the U-Net and the text encoder as they
are. What changes from stage 1, and why:

- crops of the latent aligned to the 8-px grid (`--crop` latent pixels, so the decoded crop is
  exactly the picture's crop) and every `--full-every`-th step the whole 64x64 picture, so the
  decoder also learns the picture's real border (stage 1 encoded each crop on its own: a crop's
  edge was the only border it saw, and its pictures have a lighter frame);
- a pool of `--pool` renders of training captions encoded once (the encoder is frozen: its
  posterior of a picture never changes), a fresh posterior sample at every step;
- L1 loss, not MSE: on hard-edged pictures a pixel is one colour or the other, and L1's optimum is
  the likelier colour (the median) where MSE's is their blur (the mean);
- the encoder and `quant_conv` frozen, so the latent scale factor and everything trained on it hold;
- a learning rate decaying by a cosine to a tenth, and an EMA of the weights (what the file gets).

    python embedded/refine_decoder.py FROM.safetensors --out NEW.safetensors [--steps 6000] [--minutes 60] [--resume]

Every `--save-every` steps it writes the file and `<out>.state.pt` (decoder weights, EMA, optimiser,
generators, log), so `--resume` continues where a stopped run left off; the clock counts across resumes.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: the repo root as the pack (harness/)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
    import diffusion_anatomy  # noqa: F401
    __package__ = "diffusion_anatomy.embedded"

import torch
import torch.nn.functional as F
from safetensors import safe_open

from .data import render, training_captions
from .sample import load
from .train import TRAIN_LOG_METADATA_KEY, save_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", type=Path, help="the trained model file whose decoder is replaced")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--minutes", type=float, default=90.0, help="time budget across resumes")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=4, help="latent pixels per side of a crop (image: 8x that)")
    ap.add_argument("--full-every", type=int, default=4, help="every N-th step decodes whole pictures")
    ap.add_argument("--pool", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--resume", action="store_true")
    return ap.parse_args(argv)


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over 100 steps, then a cosine from `peak` down to `peak / 10` at `total`."""
    if step < 100:
        return peak * (step + 1) / 100
    progress = min(1.0, (step - 100) / max(1, total - 100))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # Adam's second moments (beta2 0.9) of weights with ~no gradient decay into subnormal floats, ~100x
    # slower on CPUs; flushing them to zero holds for this thread only, so --threads 1 avoids the slowdown
    torch.set_flush_denormal(True)
    state_path = args.out.with_suffix(args.out.suffix + ".state.pt")
    model = load(args.source)
    with safe_open(str(args.source), "pt") as f:
        import json  # noqa: PLC0415

        source_log = json.loads(f.metadata().get(TRAIN_LOG_METADATA_KEY, "{}"))
    vae = model.vae
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.5, 0.9), weight_decay=0.0)
    data = torch.Generator().manual_seed(args.seed)
    noise = torch.Generator().manual_seed(args.seed + 1)
    log = {"decoder_step": 0, "decoder_seconds": 0.0, "decoder_loss": []}
    ema = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    if args.resume and state_path.exists():
        s = torch.load(state_path, weights_only=True)
        vae.load_state_dict(s["vae"]); opt.load_state_dict(s["opt"]); ema = s["ema"]
        data.set_state(s["data"]); noise.set_state(s["noise"]); log = s["log"]
        print(f"resumed at decoder step {log['decoder_step']}", flush=True)
    start, spent = time.monotonic(), log["decoder_seconds"]

    def elapsed() -> float:
        return spent + time.monotonic() - start

    def checkpoint() -> None:
        log["decoder_seconds"] = elapsed()
        torch.save({"vae": vae.state_dict(), "opt": opt.state_dict(), "ema": ema, "data": data.get_state(),
                    "noise": noise.get_state(), "log": log}, state_path)
        shipped = copy.deepcopy(vae)
        shipped.load_state_dict(ema)
        summary = source_log | {"decoder_step": log["decoder_step"], "decoder_seconds": round(log["decoder_seconds"], 1),
                                "decoder_last_l1": log["decoder_loss"][-1][2] if log["decoder_loss"] else None}
        save_checkpoint(args.out, model.config, model.unet, shipped, model.text_encoder, summary)

    # the pool depends only on the seed, so a resumed run rebuilds the same one
    pool_images = torch.stack([render(c) for c in training_captions(args.pool, torch.Generator().manual_seed(args.seed + 2))])
    with torch.no_grad():
        moments = [vae.posterior(x) for x in pool_images.split(256)]
    pool_mean = torch.cat([q.mean for q in moments])
    pool_std = torch.cat([q.std for q in moments])
    side, f = pool_mean.shape[-1], vae.cfg.downscale
    print(f"pool: {args.pool} renders encoded, t {elapsed():.1f}s", flush=True)

    trained = {k: v for k, v in vae.state_dict(keep_vars=True).items() if v.requires_grad}
    vae.train()
    window, steps_at, time_at = [], log["decoder_step"], elapsed()
    while log["decoder_step"] < args.steps and elapsed() < args.minutes * 60:
        pick = torch.randint(args.pool, (args.batch,), generator=data)
        images = pool_images[pick]
        z = pool_mean[pick] + pool_std[pick] * torch.randn(pool_mean[pick].shape, generator=noise)
        if log["decoder_step"] % args.full_every != 0:
            oy, ox = torch.randint(side - args.crop + 1, (2,), generator=data).tolist()
            z = z[..., oy:oy + args.crop, ox:ox + args.crop]
            images = images[..., oy * f:(oy + args.crop) * f, ox * f:(ox + args.crop) * f]
        for group in opt.param_groups:
            group["lr"] = lr_at(log["decoder_step"], args.steps, args.lr)
        loss = F.l1_loss(vae.decode(z), images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log["decoder_step"] += 1
        with torch.no_grad():
            decay = min(args.ema, (1 + log["decoder_step"]) / (10 + log["decoder_step"]))
            for k, v in trained.items():  # the frozen encoder's entries are its weights, unchanged
                ema[k].lerp_(v.detach(), 1 - decay)
        window.append(loss.item())
        if log["decoder_step"] % args.log_every == 0:
            now = elapsed()
            rate = (log["decoder_step"] - steps_at) / max(now - time_at, 1e-9)
            steps_at, time_at = log["decoder_step"], now
            log["decoder_loss"].append([log["decoder_step"], round(now, 1), sum(window) / len(window)])
            print(f"decoder step {log['decoder_step']:6d}  t {now:7.1f}s  l1 {sum(window) / len(window):.5f}  {rate:.2f} steps/s", flush=True)
            window = []
        if log["decoder_step"] % args.save_every == 0:
            checkpoint()
    checkpoint()
    print(f"wrote {args.out} after decoder step {log['decoder_step']} ({elapsed():.0f} s)", flush=True)
    return log


if __name__ == "__main__":
    main()
