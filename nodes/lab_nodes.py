"""Sampler Lab: samplers x step counts x schedules on one model, each measured by its error against a
converged reference, per model call (NFE) and per second; a labelled grid, a log-log plot, a table.

Thin: the sweep, the reference, the rows and the pictures are the pure room `lab/` (shared with the
command line bench/sampler_lab.py); here the model calls go through ComfyUI's sampling
(`comfy.sample.sample_custom`, as the U-Net Denoise node does), so core's models work too.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import latent_preview
import torch

from ..anatomy import draw
from ..lab import judged, report
from ..lab.sweep import SAMPLED_VALUES, LabError, Schedule, fingerprint, identity, parse_samplers, parse_schedules, parse_steps, sweep, expected_progress
from ..samplers.schedules import calculate_sigmas
from .common import CATEGORY, PREFIX


class ComfyBackend:
    """The sweep's backend on ComfyUI: any MODEL, CONDITIONING, LATENT; runs through sample_custom."""

    def __init__(self, model, positive, negative, latent: dict, cfg: float, seed: int):
        self.model, self.positive, self.negative, self.cfg, self.seed = model, positive, negative, cfg, seed
        self.latent = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        self.batch_index, self.noise_mask = latent.get("batch_index"), latent.get("noise_mask")
        self.sampling = model.get_model_object("model_sampling")
        table = getattr(self.sampling, "sigmas", None)
        self.model_sigmas = table.detach().float().cpu() if table is not None else None
        self._key = None

    def sigmas(self, schedule: str, steps: int) -> torch.Tensor:
        return calculate_sigmas(schedule, steps, model_sigmas=self.model_sigmas, sigma_min=float(self.sampling.sigma_min),
                                sigma_max=float(self.sampling.sigma_max)).float()

    def run(self, fn, sigmas: torch.Tensor, callback=None) -> torch.Tensor:
        noise = comfy.sample.prepare_noise(self.latent, self.seed, self.batch_index)
        step = (lambda i, x0, x, total: callback({"i": i})) if callback is not None else None
        return comfy.sample.sample_custom(self.model, noise, self.cfg, comfy.samplers.KSAMPLER(fn), sigmas, self.positive, self.negative,
                                          self.latent, noise_mask=self.noise_mask, callback=step, disable_pbar=True, seed=self.seed)

    def key(self) -> tuple:
        """What the reference depends on, by value where it has one (lab/sweep.py identity): the weights (sampled),
        the weight patches (LoRA), the object patches and model options (FreeU, ModelSampling*, CFG functions:
        by identity), the prediction type, the conditioning with its extras (a ControlNet: by identity), the
        latent, its mask and batch index, cfg and seed. So a re-run after other graphs (the loader run again:
        the same file) reuses the reference, and a patched clone of the model never takes its base's."""
        if self._key is None:
            m, inner = self.model, self.model.model
            self._key = ("comfy", type(inner).__name__, str(getattr(inner, "model_type", "")),
                         identity(inner.state_dict(), sample=SAMPLED_VALUES), identity(m.patches, sample=SAMPLED_VALUES),
                         identity(m.object_patches), identity(m.model_options), identity([*self.positive, *self.negative]),
                         fingerprint(self.latent), identity(self.noise_mask), identity(self.batch_index), self.cfg, self.seed)
        return self._key


def reference_store() -> Path:
    """Where the lab keeps its references across restarts: `DA_LAB_REFERENCES` if set (servers that share one
    folder share their references), else diffusion_anatomy/lab_references in ComfyUI's user directory."""
    return Path(os.environ.get("DA_LAB_REFERENCES") or Path(folder_paths.get_user_directory()) / "diffusion_anatomy" / "lab_references")


def pictures(model, vae, latents: list[torch.Tensor]) -> list[torch.Tensor]:
    """One [H, W, 3] picture in 0..1 per latent: decoded with the VAE when given (one batch), else ComfyUI's
    latent-to-RGB preview colours (or, for a latent format without them, its first three channels)."""
    if vae is not None:
        return list(vae.decode(torch.cat(latents))[..., :3].float().cpu())
    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
    out = []
    for latent in latents:
        if previewer is not None:
            shown = previewer.decode_latent_to_preview_image("PNG", model.model.process_latent_in(latent))[1]
            out.append(draw.to_image_batch(shown.convert("RGB"))[0])
        else:
            x = latent[0, :3].float()
            out.append(((x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)).permute(1, 2, 0))
    return out


def judged_markdown(result, decoded: list[torch.Tensor], per_cell: int, vae, caption: str) -> str:
    """The judged columns as a Markdown table (lab/judged.py), or the line that says why they are absent."""
    if vae is None:
        return "Judged columns absent: no VAE input (the judge reads decoded pictures of the embedded model's world).\n"
    batches = [torch.stack(decoded[k * per_cell:(k + 1) * per_cell]) for k in range(len(result.cells))]
    rows, why = judged.judged_columns(batches, caption)
    if rows is None:
        return f"Judged columns absent: {why}.\n"
    out = ["Judged (embedded/judge.py): share of the cell's pictures right, with 95% Wilson intervals; sharpness 1 = as crisp as the render.", "",
           "| sampler | schedule | steps | NFE | right in all five | shape | colour | size | position | background | sharpness |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, r in zip(result.cells, rows):
        a = r["adherence"]
        share = lambda s: f"{s.k}/{s.n} [{s.lo:.2f}, {s.hi:.2f}]"  # noqa: E731
        out.append(f"| {c.name} | {c.schedule} | {c.steps} | {c.nfe} | {share(a['all'])} | "
                   + " | ".join(f"{a[x].k}/{a[x].n}" for x in judged.ATTRIBUTES) + f" | {r['sharpness']:.2f} |")
    return "\n".join(out) + "\n"


class SamplerLab:
    DESCRIPTION = ("Measures samplers instead of rating them by hand: runs every chosen sampler at every step count (and schedule) on your "
                   "model, prompt and seed, and measures each result's error against a converged reference solution of the same "
                   "probability-flow ODE (relative RMS of the final latent), the model calls it took (NFE) and its seconds. Gives a labelled "
                   "grid (sampler rows, step columns, each cell captioned with NFE and seconds), an error-vs-NFE log-log plot, a Markdown "
                   "table, and the same rows as a CSV in ComfyUI's output folder (sampler_lab/). The reference is cached per model, "
                   "conditioning, latent, seed and schedule, in memory and as files in ComfyUI's user folder "
                   "(diffusion_anatomy/lab_references, the newest 64), so a restarted server reuses it. Stochastic samplers with Brownian noise are measured against their own "
                   "high-step run on the same path; those with independent noise per step have no pathwise limit: their distance to the "
                   "ODE reference is shown and marked. On the embedded model, with a VAE and the prompt's text in `caption`, the "
                   "table also gives judged columns: how many of each cell's pictures show what the prompt says (per attribute and in "
                   "all five, 95% intervals) and their edge sharpness; on other models it says why they are absent.")
    CATEGORY = f"{CATEGORY}/lab"
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("grid", "plot", "markdown")
    OUTPUT_TOOLTIPS = ("The pictures: sampler rows, step-count columns, each captioned with its NFE and seconds.",
                       "Error against model calls (NFE), log-log, one line per sampler, with a legend.",
                       "The rows as a Markdown table, with the reference and the timing.")
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "Any ComfyUI MODEL: the pack's loader or core's."}),
            "positive": ("CONDITIONING", {"tooltip": "What the picture should show."}),
            "negative": ("CONDITIONING", {"tooltip": "The unconditional branch of CFG."}),
            "latent_image": ("LATENT", {"tooltip": "The starting latent (an Empty Latent for text-to-image)."}),
            "samplers": ("STRING", {"default": "all", "tooltip": "'all' (every sampler of the pack) or a comma list of sampler ids, e.g. 'euler, heun, dpmpp_2m'."}),
            "steps": ("STRING", {"default": "5, 10, 20, 40", "tooltip": "Comma list of step counts, each at least 1."}),
            "schedules": ("STRING", {"default": "karras", "tooltip": "Comma list of schedule names (karras, normal, exponential, ...); a SIGMAS input adds one more."}),
            "cfg": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": "Classifier-free guidance scale, the same for every run."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True, "tooltip": "Seed of the starting noise and of the samplers' noise, the same for every run."}),
            "verify_reference": ("BOOLEAN", {"default": False, "tooltip": "Also solve the reference with every step halved and report the change (3x the reference's cost)."}),
        }, "optional": {
            "vae": ("VAE", {"tooltip": "Decodes the grid's pictures; without it they are ComfyUI's latent preview colours."}),
            "sigmas": ("SIGMAS", {"tooltip": "A schedule of your own (e.g. Align Your Steps), run with its own step count as one more schedule."}),
            "sampler": ("SAMPLER", {"tooltip": "One more sampler from any node (core's KSamplerSelect, a pack sampler node with options), named by sampler_name."}),
            "sampler_name": ("STRING", {"default": "input sampler", "tooltip": "The name of the SAMPLER input in the grid, plot and table."}),
            "caption": ("STRING", {"default": "", "tooltip": "The prompt's text, for the judge: on the embedded model (64x64 pictures, a VAE "
                                   "given) each cell's pictures are read back into shape, colour, size, position and background and the "
                                   "table gains judged columns (right in all five, per attribute, sharpness); elsewhere it says why they are absent."}),
        }}

    def run(self, model, positive, negative, latent_image, samplers, steps, schedules, cfg, seed, verify_reference,
            vae=None, sigmas=None, sampler=None, sampler_name="input sampler", caption=""):
        try:
            sampler_ids = parse_samplers(samplers) if samplers.strip() or sampler is None else []
            step_counts = parse_steps(steps)
            schedule_list = parse_schedules(schedules) if schedules.strip() or sigmas is None else []
        except LabError as error:
            raise ValueError(f"Sampler Lab: {error}") from None
        extra = {}
        if sampler is not None:
            name = sampler_name.strip() or "input sampler"
            extra[name] = lambda m, x, s, extra_args=None, callback=None, disable=None: sampler.sampler_function(
                m, x, s, extra_args=extra_args, callback=callback, disable=disable, **sampler.extra_options)
            sampler_ids.append(name)
        if sigmas is not None:
            if sigmas.ndim != 1 or len(sigmas) < 2:
                raise ValueError(f"Sampler Lab: sigmas needs at least 2 values (1 step); got shape {tuple(sigmas.shape)}")
            schedule_list.append(Schedule("input sigmas", sigmas.float().cpu()))
        if not sampler_ids:
            raise ValueError(f"Sampler Lab: samplers: the list is empty ({samplers!r}); give 'all' or ids such as 'euler, heun'")
        backend = ComfyBackend(model, positive, negative, latent_image, cfg, seed)
        total = expected_progress(backend, sampler_ids, schedule_list, step_counts, verify_reference)
        pbar = comfy.utils.ProgressBar(total)
        done = [0]
        previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

        last = [0.0]

        def on_step():  # every step counts; the bar is sent at most 10 times a second (thousands of reference steps)
            done[0] += 1
            now = time.monotonic()
            if now - last[0] >= 0.1:
                last[0] = now
                pbar.update_absolute(min(done[0], total), total)

        def on_cell(cell, k, n):  # each cell's picture as it finishes
            if previewer is not None:
                pbar.update_absolute(min(done[0], total), total,
                                     previewer.decode_latent_to_preview_image("JPEG", model.model.process_latent_in(cell.latent)))

        try:
            result = sweep(backend, sampler_ids, schedule_list, step_counts, verify_reference=verify_reference, on_cell=on_cell,
                           on_step=on_step, on_call=comfy.model_management.throw_exception_if_processing_interrupted, sampler_fns=extra,
                           store=reference_store())
        except LabError as error:
            raise ValueError(f"Sampler Lab: {error}") from None
        pbar.update_absolute(total, total)
        decoded = pictures(model, vae, [c.latent for c in result.cells])
        per_cell = len(decoded) // max(1, len(result.cells))  # a latent batch gives each cell that many pictures
        images = decoded[::per_cell] if per_cell > 1 else decoded
        grid = report.grid_image(result, images, f"Sampler Lab: cfg {cfg:g}, seed {seed}; error against the converged reference")
        plot = report.plot_image(result, f"error against model calls ({', '.join(s.name for s in result.schedules)})")
        md = report.markdown(result) + "\n" + judged_markdown(result, decoded, per_cell, vae, caption)
        folder, filename, counter, _, _ = folder_paths.get_save_image_path("sampler_lab/lab", folder_paths.get_output_directory())
        path = Path(folder) / f"{filename}_{counter:05}_.csv"
        path.write_text(report.csv_text(result.cells))
        return {"ui": {"text": [md], "csv": [str(path.relative_to(folder_paths.get_output_directory()))]},
                "result": (draw.to_image_batch(grid), draw.to_image_batch(plot), md)}


NODE_CLASS_MAPPINGS = {f"{PREFIX}SamplerLab": SamplerLab}
NODE_DISPLAY_NAME_MAPPINGS = {f"{PREFIX}SamplerLab": "Sampler Lab (Diffusion Anatomy)"}
