"""The anatomy views as nodes: forward diffusion, the sampler's steps, the latent's channels, CLIP's
tokens and the noise schedule, each an IMAGE with its labels drawn in. Thin adapters: the pictures
are made by the pure functions in anatomy/."""
from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch

from ..anatomy import draw, forward, latents, steps as steps_view, tokens as token_view
from .common import CATEGORY, PREFIX
from .model_nodes import LATENT_FORMAT_KEY
from .view_output import shown

ANATOMY = f"{CATEGORY}/anatomy"
STEPS_TYPE = "DA_DENOISING_STEPS"  # a recorder filled while the wrapped sampler runs


def check_latent_family(model, latent: dict, node: str, name: str = "latent") -> torch.Tensor:
    """The LATENT's samples, after checking they were made for this model's latent space."""
    samples = latent["samples"]
    made_for = latent.get(LATENT_FORMAT_KEY)
    model_format = type(model.model.latent_format).__name__
    if made_for is not None and made_for != model_format:
        raise ValueError(f"{node}: the {name} was made for a {made_for} model but the model is {model_format}; use a latent of this model")
    want = model.model.latent_format.latent_channels
    if samples.ndim != 4 or samples.shape[1] != want:
        raise ValueError(f"{node}: the {name} has shape {tuple(samples.shape)}, but this model ({model_format}) works on "
                         f"{want}-channel latents [batch, {want}, height/8, width/8]; make it with this model's Empty Latent or VAE Encode")
    return samples


def decode_first(vae, latent_in: torch.Tensor, model) -> "draw.Image.Image":
    """The first picture of a latent given in the model's working space (process_latent_in), through the VAE."""
    pixels = vae.decode(model.model.process_latent_out(latent_in[:1].to(comfy.model_management.intermediate_device())))
    return draw.to_pil(pixels.reshape(-1, *pixels.shape[-3:])[0])


# --------------------------------------------------------------------------- 1. forward diffusion

class ForwardDiffusion:
    OUTPUT_NODE = True  # shows its picture in the node
    DESCRIPTION = ("Forward diffusion, the first half of the diffusion process: start from the real picture x0 (its latent) and add "
                   "Gaussian noise step by step, a Markov chain, until only Gaussian noise is left: x_t = sqrt(abar_t) x0 + "
                   "sqrt(1 - abar_t) eps. The strip shows x_t (decoded by the VAE) for each chosen timestep t, labelled with t, the "
                   "model's sigma_t and sqrt(abar_t) = 1/sqrt(1 + sigma_t^2), the clean picture's share. The second output is the "
                   "noised latent at one chosen t in ComfyUI's form x0 + sigma_t eps, with the sigmas from that t down to 0: give both "
                   "to U-Net Denoise (add_noise off) and reverse diffusion brings the picture back from that point.")
    CATEGORY = ANATOMY
    RETURN_TYPES = ("IMAGE", "LATENT", "SIGMAS")
    RETURN_NAMES = ("strip", "noised_latent", "sigmas_from_t")
    OUTPUT_TOOLTIPS = ("x0 and x_t for each timestep, labelled.",
                       "The latent noised to chosen_t (x0 + sigma_t * eps, the seed's noise): U-Net Denoise with add_noise off continues from it.",
                       "The model's sigmas from chosen_t down to 0 in `steps` steps, for U-Net Denoise.")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model whose noise schedule (sigma for each timestep t) is used."}),
                "vae": ("VAE", {"tooltip": "Encodes the picture to a latent (when `image` is given) and decodes each x_t to show it."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Seed of the noise eps; the same seed gives U-Net Denoise's noise."}),
                "count": ("INT", {"default": 6, "min": 1, "max": 64,
                                  "tooltip": "How many timesteps, evenly spaced from 0 to the last (999), when `timesteps` is empty."}),
                "timesteps": ("STRING", {"default": "", "tooltip": "Timesteps to show, comma separated (e.g. 0, 100, 250, 500, 999); empty: `count` evenly spaced."}),
                "chosen_t": ("INT", {"default": 500, "min": 1, "max": 999,
                                     "tooltip": "The timestep whose noised latent is output, for reverse diffusion from there."}),
                "steps": ("INT", {"default": 10, "min": 1, "max": 1000, "tooltip": "Steps of the output sigmas, from chosen_t down to 0."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "The clean picture x0 (encoded by the VAE). Give this or `latent`."}),
                "latent": ("LATENT", {"tooltip": "The clean latent x0. Used when no image is given."}),
            },
        }

    def run(self, model, vae, seed, count, timesteps, chosen_t, steps, image=None, latent=None):
        node = "Forward Diffusion"
        sampling = model.get_model_object("model_sampling")
        table = getattr(sampling, "sigmas", None)
        if table is None:
            raise ValueError(f"{node}: the model has no discrete timesteps (sigma table); it needs a DDPM-style model such as SD1.x, SD2.x or SDXL")
        last = len(table) - 1
        chosen = forward.parse_timesteps(timesteps, count, last)
        if not 1 <= chosen_t <= last:
            raise ValueError(f"{node}: chosen_t {chosen_t} is out of range; this model's timesteps run from 1 to {last}")
        if image is not None:
            latent = {"samples": vae.encode(image[:, :, :, :3])}
        elif latent is None:
            raise ValueError(f"{node}: connect an `image` or a `latent` (the clean x0 to add noise to)")
        clean_user = check_latent_family(model, latent, node)
        x0 = model.model.process_latent_in(clean_user.float())
        eps = comfy.sample.prepare_noise(clean_user, seed, latent.get("batch_index")).float()

        def noised(t: int) -> tuple[float, torch.Tensor]:
            sigma = sampling.sigma(torch.tensor(float(t)))
            return float(sigma), sampling.noise_scaling(sigma.reshape(1), eps, x0)

        frames = []
        for t in chosen:
            comfy.model_management.throw_exception_if_processing_interrupted()
            sigma, x_sigma = noised(t)
            frames.append(forward.NoisedFrame(t, sigma, decode_first(vae, forward.vp_from_ve(x_sigma, sigma), model)))
        strip = forward.forward_strip(decode_first(vae, x0, model), frames)

        sigma_c, x_c = noised(chosen_t)
        out_latent = dict(latent, samples=model.model.process_latent_out(x_c))
        out_latent.pop("noise_mask", None)
        ts = torch.linspace(float(chosen_t), 0.0, steps)
        sigmas_out = torch.cat([sampling.sigma(ts).float().cpu(), torch.zeros(1)]) if steps > 1 else torch.tensor([sigma_c, 0.0])
        return shown(strip, out_latent, sigmas_out)


# --------------------------------------------------------------------------- 2. denoising steps

class RecordingSampler(comfy.samplers.Sampler):
    """A SAMPLER that runs another one unchanged and records what its callback reports at each step.

    Only the callback is wrapped: the inner sampler gets the same model, sigmas, noise and options,
    so the sampled latent is bit-identical to the inner sampler's alone."""

    def __init__(self, inner: comfy.samplers.Sampler, recorder: steps_view.StepRecorder):
        self.inner, self.recorder = inner, recorder

    def max_denoise(self, model_wrap, sigmas):
        return self.inner.max_denoise(model_wrap, sigmas)

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        recorder = self.recorder
        recorder.start(len(sigmas) - 1)
        recorder.latent_format = model_wrap.inner_model.latent_format

        def record(step, x0, x, total_steps):
            recorder({"i": step, "x": x, "sigma": sigmas[step], "denoised": x0})
            if callback is not None:
                callback(step, x0, x, total_steps)

        return self.inner.sample(model_wrap, sigmas, extra_args, record, noise, latent_image, denoise_mask, disable_pbar)


def live_picture(step: steps_view.Step, fmt, vae) -> "draw.Image.Image":
    """One recorded step's x0 prediction, small: decoded by the VAE if one is given, else ComfyUI's linear latent preview."""
    x0 = step.denoised[None]
    if vae is not None:
        pixels = vae.decode(fmt.process_out(x0))
        return draw.upscale(draw.to_pil(pixels.reshape(-1, *pixels.shape[-3:])[0]), 64)
    factors = torch.tensor(fmt.latent_rgb_factors) if fmt.latent_rgb_factors is not None else torch.eye(x0.shape[1], 3)
    bias = torch.tensor(fmt.latent_rgb_factors_bias) if getattr(fmt, "latent_rgb_factors_bias", None) is not None else None
    return draw.upscale(draw.to_pil(latents.latent_to_rgb(x0[0], factors, bias)), 64)


def live_strip(recorder: steps_view.StepRecorder, pictures: list) -> "draw.Image.Image":
    """The last 12 x0 predictions so far, captioned step: sigma."""
    shown = recorder.steps[-12:]
    captions = [f"{s.i}: {s.sigma:.2g}" for s in shown]
    return draw.strip(pictures[-len(shown):], captions, title=f"x0 prediction, step {shown[-1].i + 1} of {recorder.total}", size=11)


class DenoisingStepsRecorder:
    DESCRIPTION = ("Reverse diffusion, watched: wraps any SAMPLER (the pack's or core's) so that what it does at every step (the "
                   "noisy latent x_t, the U-Net's prediction of the clean picture x0) is recorded while U-Net Denoise or core "
                   "SamplerCustom runs it. The sampling itself is not changed (bit-identical latents). While sampling, this node shows "
                   "a live strip of the x0 predictions; connect `steps` to Denoising Steps for the full labelled picture.")
    CATEGORY = ANATOMY
    RETURN_TYPES = ("SAMPLER", STEPS_TYPE)
    RETURN_NAMES = ("sampler", "steps")
    OUTPUT_TOOLTIPS = ("The same sampler, recording: use it in U-Net Denoise or SamplerCustom.",
                       "The recording, for Denoising Steps (filled when the sampler runs).")
    FUNCTION = "wrap"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sampler": ("SAMPLER", {"tooltip": "Any SAMPLER: a sampler node of the pack or core's KSamplerSelect."}),
                "every": ("INT", {"default": 1, "min": 1, "max": 1000, "tooltip": "Record every k-th step (the last step is always recorded)."}),
                "live_preview": ("BOOLEAN", {"default": True, "tooltip": "Show the x0 predictions in this node while sampling."}),
            },
            "optional": {"vae": ("VAE", {"tooltip": "Decode the live strip with this VAE (else ComfyUI's linear latent preview colours)."})},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def wrap(self, sampler, every, live_preview, vae=None, unique_id=None):
        recorder = steps_view.StepRecorder(every=every)
        if live_preview and unique_id is not None:
            bar = comfy.utils.ProgressBar(1, node_id=unique_id)
            pictures: list = []  # one small picture per recorded step, each decoded once

            def preview(rec: steps_view.StepRecorder) -> None:
                if len(rec.steps) == 1:
                    pictures.clear()  # a new run
                pictures.append(live_picture(rec.steps[-1], rec.latent_format, vae))
                bar.update_absolute(rec.steps[-1].i + 1, rec.total, ("JPEG", live_strip(rec, pictures), 2048))

            recorder.on_step = preview
        return (RecordingSampler(sampler, recorder), recorder)


class DenoisingSteps:
    OUTPUT_NODE = True  # shows its picture in the node
    DESCRIPTION = ("Reverse diffusion step by step: the sampler removes noise one step at a time with the U-Net. One column per "
                   "recorded step (its number and sigma); rows: x_t, the noisy picture the sampler is at (shown in the document's form "
                   "x_t = x_sigma / sqrt(1 + sigma^2)), the U-Net's prediction of the clean picture x0 at that step, and optionally the "
                   "noise it predicts, eps = (x_t - x0) / sigma. All decoded by the VAE.")
    CATEGORY = ANATOMY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("steps",)
    OUTPUT_TOOLTIPS = ("The labelled grid of steps.",)
    FUNCTION = "show"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "steps": (STEPS_TYPE, {"tooltip": "The recording from Denoising Steps Recorder."}),
            "vae": ("VAE", {"tooltip": "Decodes each recorded latent to a picture."}),
            "samples": ("LATENT", {"tooltip": "The sampled latent (U-Net Denoise's output): connecting it makes this node run after the sampling."}),
            "show_noise": ("BOOLEAN", {"default": False, "tooltip": "Add a row with the predicted noise eps = (x_t - x0) / sigma (channels 0-2 as RGB)."}),
            "max_columns": ("INT", {"default": 10, "min": 2, "max": 100, "tooltip": "At most this many steps are shown, evenly picked (first and last kept)."}),
        }}

    def show(self, steps, vae, samples, show_noise, max_columns):
        if not steps.steps:
            raise ValueError("Denoising Steps: the recording is empty; the recorder's sampler did not run "
                             "(use the recorder's `sampler` output in U-Net Denoise or SamplerCustom)")
        fmt = steps.latent_format
        recorded = steps.steps
        if len(recorded) > max_columns:
            picks = sorted({round(k * (len(recorded) - 1) / (max_columns - 1)) for k in range(max_columns)})
            recorded = [recorded[k] for k in picks]

        def decode(latent_in: torch.Tensor):
            pixels = vae.decode(fmt.process_out(latent_in[None]))
            return draw.to_pil(pixels.reshape(-1, *pixels.shape[-3:])[0])

        rows = {"x_t": [], "x0 prediction": []}
        if show_noise:
            rows["predicted noise"] = []
        for s in recorded:
            comfy.model_management.throw_exception_if_processing_interrupted()
            rows["x_t"].append(decode(forward.vp_from_ve(s.x, s.sigma)))
            rows["x0 prediction"].append(decode(s.denoised))
            if show_noise:
                noise = s.noise[:3]
                rows["predicted noise"].append(draw.to_pil(((noise.clamp(-3, 3) + 3) / 6).permute(1, 2, 0)))
        picture = steps_view.steps_grid(recorded, rows, title=f"Reverse diffusion: {steps.total} steps, {len(recorded)} shown")
        return shown(picture)


# --------------------------------------------------------------------------- 5. latent channels

class LatentChannels:
    OUTPUT_NODE = True  # shows its picture in the node
    DESCRIPTION = ("The latent space: Stable Diffusion does not work on pixels but on a latent 8 times smaller each side (4x64x64 for a "
                   "512x512 picture). Each channel is shown as a grey picture with its value range, beside ComfyUI's linear "
                   "latent-to-RGB preview and the VAE decoder's picture: 4x64x64 becomes 3x512x512.")
    CATEGORY = ANATOMY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("channels",)
    OUTPUT_TOOLTIPS = ("The channels, the RGB preview and the decode, labelled.",)
    FUNCTION = "show"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "samples": ("LATENT", {"tooltip": "The latent to look at (first of the batch), e.g. U-Net Denoise's output."}),
            "model": ("MODEL", {"tooltip": "The model the latent belongs to: its latent scale and its latent-to-RGB factors."}),
            "vae": ("VAE", {"tooltip": "Decodes the latent to the picture."}),
        }}

    def show(self, samples, model, vae):
        latent = check_latent_family(model, samples, "Latent Channels", "samples")
        fmt = model.model.latent_format
        working = model.model.process_latent_in(latent[:1].float())[0]  # what the U-Net sees
        rgb = None
        if fmt.latent_rgb_factors is not None:
            bias = torch.tensor(fmt.latent_rgb_factors_bias) if getattr(fmt, "latent_rgb_factors_bias", None) is not None else None
            rgb = draw.to_pil(latents.latent_to_rgb(working, torch.tensor(fmt.latent_rgb_factors), bias))
        pixels = vae.decode(latent[:1])
        decoded = draw.to_pil(pixels.reshape(-1, *pixels.shape[-3:])[0])
        return shown(latents.channels_view(working, rgb, decoded))


# --------------------------------------------------------------------------- 6. tokens

def clip_tokens(clip, text: str) -> list[tuple[str, list, list]]:
    """(encoder key, chunks of (id, weight), chunks of token texts) for each text encoder of a CLIP (pack's or core's)."""
    tokenized = clip.tokenize(text)
    out = []
    for key, chunks in tokenized.items():
        sub = getattr(clip.tokenizer, f"clip_{key}", clip.tokenizer)
        texts = []
        for chunk in chunks:
            pairs = [(t, w) for t, w, *_ in chunk]
            words = []
            for item in sub.untokenize(pairs):
                tok, word = item  # core: ((id, weight), text); the pack: (id, text)
                words.append(word if isinstance(word, str) else str(word))
            texts.append(words)
        out.append((key, [[(t, w) for t, w, *_ in chunk] for chunk in chunks], texts))
    return out


class Tokens:
    OUTPUT_NODE = True  # shows its picture in the node
    DESCRIPTION = ("How CLIP reads the prompt: the text is cut into byte-pair-encoding tokens (a word may become several pieces; '</w>' "
                   "marks a word's end), each with its id in CLIP's vocabulary and its weight from (word:1.2) brackets. The encoder takes "
                   "chunks of 77 tokens: BOS (start), up to 75 tokens, EOS (end), then padding; a longer prompt fills more chunks, "
                   "encoded one by one and joined.")
    CATEGORY = ANATOMY
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("table", "text")
    OUTPUT_TOOLTIPS = ("The token table as a picture.", "The same table as tab-separated text.")
    FUNCTION = "show"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "The text encoder whose tokenizer reads the prompt (the pack's or core's)."}),
            "text": ("STRING", {"multiline": True, "default": "a small (red:1.2) circle at the top left on a blue background",
                                "tooltip": "The prompt; (word:1.2) sets a weight, (word) multiplies by 1.1, [word] is not special."}),
            "show_padding": ("BOOLEAN", {"default": False, "tooltip": "List every padding token instead of one line per chunk."}),
        }}

    def show(self, clip, text, show_padding):
        if not text.strip():
            raise ValueError("Tokens: the text is empty; type a prompt to see how CLIP reads it")
        pictures, texts = [], []
        for key, chunks, words in clip_tokens(clip, text):
            rows = token_view.token_rows(chunks, words)
            name = f"clip_{key}"
            pictures.append(token_view.token_table(rows, text, show_padding, name))
            texts.append(token_view.as_text(rows, text, name))
        return shown(draw.stack(pictures, gap=12), "\n\n".join(texts))


NODE_CLASS_MAPPINGS = {
    f"{PREFIX}ForwardDiffusion": ForwardDiffusion,
    f"{PREFIX}DenoisingStepsRecorder": DenoisingStepsRecorder,
    f"{PREFIX}DenoisingSteps": DenoisingSteps,
    f"{PREFIX}LatentChannels": LatentChannels,
    f"{PREFIX}Tokens": Tokens,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    f"{PREFIX}ForwardDiffusion": "Forward Diffusion (Diffusion Anatomy)",
    f"{PREFIX}DenoisingStepsRecorder": "Denoising Steps Recorder (Diffusion Anatomy)",
    f"{PREFIX}DenoisingSteps": "Denoising Steps (Diffusion Anatomy)",
    f"{PREFIX}LatentChannels": "Latent Channels (Diffusion Anatomy)",
    f"{PREFIX}Tokens": "Tokens (Diffusion Anatomy)",
}
