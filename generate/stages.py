"""The stages of the bundled workflows, each with one title and the note that explains it in the source document's
words: the one place both generators read (generate/ui_workflow.py groups any graph's nodes by their type into
`STAGES`; generate/anatomy_workflows.py names its stages from `ANATOMY`, which reuses the pipeline's stages where
they are the same stage).
"""
from __future__ import annotations

from typing import NamedTuple


class Stage(NamedTuple):
    title: str
    types: tuple[str, ...]  # node types (class_type suffixes) that belong to it, for graphs without _meta groups
    note: str


DOC = "the source document"
STAGES: list[Stage] = [
    Stage("1. Model: CLIP, U-Net, VAE", ("CheckpointLoader",),
     "Stable Diffusion uses three main models, CLIP, U-Net and VAE, to get a picture from the text we write "
     f"({DOC}, 'What is Stable Diffusion'). The loader reads all three from one checkpoint; this one is the "
     "pack's tiny embedded model of coloured shapes (64x64 pictures)."),
    Stage("2. Prompt: CLIP text encoder", ("CLIPTextEncode",),
     "The U-Net receives the Text Embedding from the CLIP Text Encoder and uses Cross-Attention to connect the "
     f"picture with the text, so that the picture matches the prompt ({DOC}, 'U-Net in Stable Diffusion', steps 2-3). "
     "The negative prompt is what the picture should move away from (CFG)."),
    Stage("3. Start: pure noise in latent space", ("EmptyLatent", "EmptyLatentImage"),
     "The U-Net works in Latent Space: 4x64x64 for a 512x512 picture, 4x8x8 for this model's 64x64. "
     f"Reverse diffusion starts from a random picture that is pure Gaussian noise ({DOC}, 'Diffusion Process')."),
    Stage("3. Start: a picture, through the VAE encoder", ("ExamplePicture", "LoadImage", "VAEEncode"),
     "Image to image: the VAE encoder turns the starting picture into a latent; denoise below 1 adds only part of "
     "the noise, so the sampler keeps the details of the original picture. The document recommends Euler "
     f"Ancestral or DDIM for image-to-image ({DOC}, 'Choosing a sampler by use')."),
    Stage("4. Sampler Lab: samplers x steps x schedules", ("SamplerLab",),
     "Comparing samplers: Euler gives sharp pictures and is very fast; Euler Ancestral high contrast; DDIM smooth "
     "pictures with realistic colours; DPM-Solver++ balances speed and quality; Karras high detail; LMS realistic and "
     f"smooth ({DOC}, 'Comparing samplers'). The lab measures it: every sampler at every step count and schedule, "
     "each picture's error against a converged reference (a run with many steps)."),
    Stage("4. Sampler and schedule", ("Sampler", "Scheduler", "Schedule_", "BasicScheduler", "KarrasScheduler"),
     "The sampler is the algorithm that controls how the U-Net removes noise from the picture; it decides the "
     f"picture's quality and the speed ({DOC}, 'What is a sampler'). Euler / Euler Ancestral: fast, sharp, few "
     "steps; DPM-Solver++ / Karras: high quality, few steps; DDIM: smooth, fewer steps; LMS / PNDM: a balance of "
     "quality and speed. The schedule gives the noise level (sigma) at each step."),
    Stage("5. Denoising loop: the U-Net", ("UNetDenoise", "SamplerCustom", "KSampler"),
     "Reverse diffusion: the U-Net with Cross-Attention removes the noise one step at a time. Its encoder shrinks "
     "the latent, the bottleneck does Self-Attention, the decoder grows it back with skip connections; the output "
     f"is a latent with less noise, and the loop repeats it over many steps to build the picture ({DOC}, "
     "'U-Net in Stable Diffusion', steps 4-7)."),
    Stage("6. VAE decoder: latent to pixels", ("VAEDecode",),
     f"Finally the VAE Decoder turns the Latent Space back into a real picture, in Pixel Space ({DOC}, "
     "'Diffusion Process', summary; 'U-Net in Stable Diffusion', step 8)."),
    Stage("Plot: the schedule", ("PlotSigmas",),
     "Each dot is one step's noise level, log sigma from the first step (left, most noise) to the last (right). "
     "Karras spaces the steps densely near the end, where the fine details form."),
    Stage("7. Result", ("SaveImage", "PreviewImage"),
     "The picture is saved in ComfyUI's output folder and shown in the node."),
]

_NOTES = {
    "model": "Stable Diffusion is three models: CLIP reads the text, the U-Net removes noise in the latent space, the VAE turns the "
             "latent into a picture. This is the pack's embedded tiny model (64x64 pictures of coloured shapes).",
    "text": "CLIP turns the prompt into tokens (77 per chunk: BOS, up to 75 words, EOS, padding) and then into the conditioning the "
            "U-Net's cross-attention reads.",
    "tokens": "Tokens: how CLIP reads the prompt: byte-pair pieces, their ids, the weights from (word:1.2), BOS/EOS/padding.",
    "sample": "Reverse diffusion (denoising): start from pure Gaussian noise and let the U-Net remove noise step by step, guided by "
              "the prompt (classifier-free guidance), as the sampler and the schedule say.",
    "forward": "Forward diffusion: take the real picture x0 and add Gaussian noise step by step (a Markov chain): x_t = sqrt(abar_t) x0 "
               "+ sqrt(1 - abar_t) eps. Each picture is labelled with t, sigma_t and sqrt(abar_t).",
    "reverse_from_t": "Reverse diffusion from a chosen point: the latent noised to t = 500 goes back into U-Net Denoise (add_noise "
                      "off, the sigmas from t down to 0), and the U-Net brings a picture back.",
    "steps": "Denoising Steps: the recorder wraps the sampler and keeps what it does at every step: the noisy x_t and the U-Net's "
             "prediction of the clean picture x0. The sampling itself is unchanged; the strip updates live while it runs.",
    "latent": "The latent space: the U-Net works on a latent 8 times smaller each side (4x64x64 for 512x512; 4x8x8 here). The VAE "
              "decoder turns it into the picture.",
    "capture": "The U-Net inside: two capture nodes patch the MODEL through ComfyUI's own hooks (attention patches, block patches) "
               "to watch cross-attention (the words of the prompt meet places in the picture) and each level of the U while it denoises.",
    "capture_attention": "The U-Net inside: the capture node patches the MODEL through ComfyUI's own attention hooks and keeps, while the "
                         "U-Net denoises, where cross-attention connects each word of the prompt (the text embedding) with places in the picture.",
    "capture_levels": "The U-Net inside: the capture node patches the MODEL through ComfyUI's own block hooks and keeps the feature map "
                      "after each level of the U (encoder, bottleneck, decoder) at one chosen denoising step.",
    "levels": "U-Net levels: the encoder goes down (64x64 -> 8x8 for SD1.5 at 512; 8x8 -> 1x1 here), the bottleneck has self- and "
              "cross-attention, the decoder goes back up with skip connections from the encoder.",
    "attention": "Cross-attention per word: where in the picture the U-Net looked at each word of the prompt (DAAM: summed over heads, "
                 "layers and steps).",
    "explorer": "Anatomy Explorer: the capture node hooks the MODEL (ComfyUI's own sampler, guidance, attention and block hooks) "
                "and records this whole run: every step's x_t, x0 and noise, the conditional and unconditional predictions, each "
                "word's cross-attention map per step and per level, the U-Net's levels. Sampling is unchanged. After the run, open "
                "the sidebar tab \"Diffusion Anatomy\" (the eye icon on the left) to scrub the steps, click words, try another "
                "guidance scale and look inside the U.",
    "explorer_compare": "Anatomy Explorer Compare: two runs with the same seed and two prompts that differ in one word (circle, "
                        "square), each recorded by its own capture node (labels A and B). In the panel \"Diffusion Anatomy\" pick "
                        "run A, open Compare and choose run B: both on one timeline, the differing word highlighted, their x0 "
                        "distance per step and their trajectories.",
    "sigmas": "Samplers and schedules: the sampler walks a descending list of noise levels sigma from pure noise to 0. Different "
              "schedules spend their steps differently; here three side by side on a log axis.",
}


def _anatomy(title: str, *notes: str) -> Stage:
    return Stage(title, (), " ".join(_NOTES[n] for n in notes))


ANATOMY: dict[str, Stage] = {
    "model": STAGES[0],  # the pipeline's own stages, with their titles and notes
    "text": STAGES[1],
    "sample": _anatomy("Reverse diffusion: noise -> picture", "sample"),
    "tokens": _anatomy("Tokens: how CLIP reads the prompt", "tokens"),
    "forward": _anatomy("Forward diffusion: picture -> noise", "forward"),
    "reverse_from_t": _anatomy("Reverse diffusion from t = 500", "reverse_from_t"),
    "steps": _anatomy("Reverse diffusion, step by step", "steps"),
    "latent": _anatomy("The latent and the VAE decoder", "latent"),
    "capture": _anatomy("The U-Net inside: capture while it denoises", "capture"),
    "inside": _anatomy("U-Net levels and cross-attention per word", "levels", "attention"),
    "capture_attention": _anatomy("The U-Net inside: capture cross-attention", "capture_attention"),
    "attention": _anatomy("Cross-attention per word", "attention"),
    "capture_levels": _anatomy("The U-Net inside: capture each level", "capture_levels"),
    "levels": _anatomy("U-Net levels: down, bottleneck, up", "levels"),
    "sigmas": _anatomy("Samplers walk a noise schedule", "sigmas"),
    "explorer": _anatomy("Record the run, then open the panel \"Diffusion Anatomy\"", "explorer"),
    "explorer_a": _anatomy("Run A: circle", "explorer_compare"),
    "explorer_b": _anatomy("Run B: square, the same seed", "explorer_compare"),
}
