"""Anatomy views of the U-Net at work: cross-attention per word (DAAM) and the U-Net's levels.

Each view is two nodes. A capture node takes a MODEL and gives back a clone of it carrying ComfyUI
model patches (an `attn2` replacement for the cross-attention; `input_block_patch` and
`output_block_patch` for the levels) plus a handle to what they record; wire that MODEL into any
sampler (the pack's U-Net Denoise, core SamplerCustom or KSampler). A view node, wired to the handle
and to the decoded picture (so it runs after sampling), draws what the last sampling recorded. The
patches go through ComfyUI's own mechanism, so the views work on core's U-Net as on the pack's; a
model that never passes a capture node carries no patch and pays nothing.
"""
from __future__ import annotations

import functools
from pathlib import Path

import comfy.patcher_extension
import comfy.sd1_clip

from ..anatomy import attention_maps as am
from ..anatomy import levels as lv
from ..clip.tokenizer import BPETokenizer, find_tokenizer_dir
from .common import CATEGORY, PREFIX
from .view_output import shown

ANATOMY = f"{CATEGORY}/anatomy"
ATTENTION_TYPE, LEVELS_TYPE = "DA_ATTENTION_MAPS", "DA_UNET_LEVELS"
PATCH_KEY = "diffusion_anatomy_view"


@functools.lru_cache(maxsize=1)
def bpe() -> BPETokenizer:
    """CLIP's BPE vocabulary (the same 49,408 tokens for SD1.x, SD2.x and SDXL), from ComfyUI's copy."""
    return BPETokenizer.from_dir(find_tokenizer_dir(Path(comfy.sd1_clip.__file__).resolve().parents[1]))


def diffusion_model(model):
    unet = getattr(model.model, "diffusion_model", None)
    if unet is None or not hasattr(unet, "input_blocks") or not hasattr(unet, "output_blocks"):
        raise ValueError(f"model: {type(model.model).__name__} has no U-Net with input and output blocks (these views need an SD1.x/SD2.x/SDXL U-Net)")
    return unet


def reset_before_each_run(model, recorder) -> None:
    """Empty the recorder when a sampling run starts (ComfyUI calls ON_PRE_RUN once per sampling)."""
    model.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN, PATCH_KEY, lambda _patcher: recorder.reset())


def words_of_prompt(clip, text: str) -> tuple[list[am.Word], int]:
    """The prompt's words with their places in the context, as `clip` tokenizes it, and the context's length."""
    tokens = clip.tokenize(text)
    key = "l" if "l" in tokens else next(iter(tokens))  # SDXL's two towers put the words at the same places
    chunks = [[t[0] if isinstance(t[0], int) else None for t in chunk] for chunk in tokens[key]]
    words = am.words_of(chunks, lambda i: bpe().id_to_token.get(i, "?</w>"))
    if not words:
        raise ValueError(f"text: {text!r} has no words after tokenization")
    return words, sum(len(c) for c in chunks)


class CrossAttentionCapture:
    DESCRIPTION = ("Cross-attention per word, part 1: the attention that ties the words of the prompt to places in the picture. "
                   "Gives back the MODEL with a capture in each cross-attention layer (a ComfyUI attn2 patch): at every step, "
                   "for the positive prompt only, each layer's attention of every latent position to every token, averaged over "
                   "the heads, is enlarged to the latent's size and added to one running sum (DAAM, Tang et al. 2022). Sampling "
                   "is unchanged. Wire the MODEL into U-Net Denoise, core SamplerCustom or KSampler, and the maps into "
                   "Cross-Attention per Word (after VAE Decode).")
    CATEGORY = ANATOMY
    RETURN_TYPES = ("MODEL", ATTENTION_TYPE)
    RETURN_NAMES = ("model", "attention_maps")
    OUTPUT_TOOLTIPS = ("The same model with the capture patches: sample with it.",
                       "What the last sampling with that model recorded: wire into Cross-Attention per Word.")
    FUNCTION = "capture"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {"tooltip": "Any SD1.x/SD2.x/SDXL MODEL: the pack's loader or core's."})}}

    def capture(self, model):
        unet = diffusion_model(model)
        maps = am.CrossAttentionMaps()
        patched = model.clone()
        # one replacement per block that may hold cross-attention; ComfyUI looks a block's transformers up by
        # (block, number) when no per-transformer key is set, so deep SDXL blocks are covered too
        for number in range(len(unet.input_blocks)):
            patched.set_model_attn2_replace(maps, "input", number)
        patched.set_model_attn2_replace(maps, "middle", 0)
        for number in range(len(unet.output_blocks)):
            patched.set_model_attn2_replace(maps, "output", number)
        reset_before_each_run(patched, maps)
        return (patched, maps)


class CrossAttentionView:
    OUTPUT_NODE = True  # shows its picture in the node
    DESCRIPTION = ("Cross-attention per word, part 2: one heatmap per word of the prompt over the final picture, showing where "
                   "the U-Net looked at that word while it removed the noise (DAAM: attention summed over heads, layers and "
                   "steps; each map scaled from its own least (dark blue) to its most (yellow)). A word of several BPE tokens gets the sum of its tokens. Give it the "
                   "same prompt text as the positive CLIP Text Encode.")
    CATEGORY = ANATOMY
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The picture, then one panel per word with its heatmap and the word under it.",)
    FUNCTION = "view"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "attention_maps": (ATTENTION_TYPE, {"tooltip": "From Cross-Attention Capture, whose MODEL did the sampling."}),
            "image": ("IMAGE", {"tooltip": "The final picture (VAE Decode of the sampled latent); wiring it also makes this view run after sampling."}),
            "clip": ("CLIP", {"tooltip": "The CLIP that encoded the prompt: it splits the text into tokens as the encoder did."}),
            "text": ("STRING", {"multiline": True, "default": "", "tooltip": "The positive prompt, exactly as given to CLIP Text Encode."}),
            "words": ("STRING", {"default": "", "tooltip": "Words to show, separated by commas or spaces; empty shows every word of the prompt."}),
        }}

    def view(self, attention_maps, image, clip, text, words):
        if attention_maps.sums is None:
            raise ValueError("attention_maps: nothing was captured: sample with the MODEL output of Cross-Attention Capture before this view runs")
        if not text.strip():
            raise ValueError("text: the prompt is empty; give the positive prompt used for sampling")
        prompt_words, n_tokens = words_of_prompt(clip, text)
        chosen = am.choose_words(prompt_words, words)
        sums = attention_maps.sums.float().cpu()
        if sums.shape[1] % n_tokens:
            raise ValueError(f"text: this prompt is {n_tokens} tokens long ({len(chunks)} chunk(s) of 77), but the sampled "
                             f"conditioning had {sums.shape[1]}; give the view the prompt used for sampling")
        sums = am.fold_tokens(sums, n_tokens)
        pictures = []
        for i in range(image.shape[0]):
            heat = am.word_heatmaps(sums[min(i, sums.shape[0] - 1)], chosen)
            title = f"cross-attention per word: {len(attention_maps.sigmas)} model calls, {attention_maps.calls} layer calls summed"
            pictures.append(am.render_words(image[i], heat, chosen, title))
        return shown(pictures)


class UNetLevelsCapture:
    DESCRIPTION = ("U-Net levels, part 1: gives back the MODEL with block patches that keep, at one sampling step, the feature "
                   "map after each input block (the encoder: 64x64 down to 8x8 for SD1.5 at 512x512), after the middle block "
                   "(the bottleneck) and after each output block but the last (the decoder, back up to 64x64; ComfyUI's block "
                   "patches cannot see the last one). Only the positive prompt's first picture is kept. Sampling is unchanged. "
                   "Wire the MODEL into U-Net Denoise, core SamplerCustom or KSampler, and the levels into U-Net Levels.")
    CATEGORY = ANATOMY
    RETURN_TYPES = ("MODEL", LEVELS_TYPE)
    RETURN_NAMES = ("model", "levels")
    OUTPUT_TOOLTIPS = ("The same model with the capture patches: sample with it.",
                       "The feature maps the last sampling recorded: wire into U-Net Levels.")
    FUNCTION = "capture"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "Any SD1.x/SD2.x/SDXL MODEL: the pack's loader or core's."}),
            "step": ("INT", {"default": 10, "min": 0, "max": 10000, "tooltip": "The sampling step to look at: 0 is the first (pure noise), steps - 1 the last."}),
        }}

    def capture(self, model, step):
        diffusion_model(model)
        recorder = lv.LevelRecorder(step)
        patched = model.clone()
        patched.set_model_input_block_patch(recorder.input_block_patch)
        patched.set_model_output_block_patch(recorder.output_block_patch)
        reset_before_each_run(patched, recorder)
        return (patched, recorder)


class UNetLevelsView:
    OUTPUT_NODE = True  # shows its picture in the node
    DESCRIPTION = ("U-Net levels, part 2: the network inside at the chosen step, drawn as the U of the document: the encoder's "
                   "blocks going down on the left (the feature map halves at each level), the bottleneck (middle block) at the "
                   "bottom, the decoder's blocks going up on the right, a line for each skip connection, each panel labelled with "
                   "its block and shape channels x height x width. pca_rgb colours each place by the first three principal "
                   "components of its channels (similar features, similar colours); mean_abs shows the mean |activation|.")
    CATEGORY = ANATOMY
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The U of feature maps, with the final picture at the top right.",)
    FUNCTION = "view"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "levels": (LEVELS_TYPE, {"tooltip": "From U-Net Levels Capture, whose MODEL did the sampling."}),
            "image": ("IMAGE", {"tooltip": "The final picture (VAE Decode); wiring it also makes this view run after sampling."}),
            "mode": (list(lv.SHOW), {"default": "pca_rgb", "tooltip": "pca_rgb: channels' first 3 principal components as RGB; mean_abs: mean |activation| over channels."}),
        }}

    def view(self, levels, image, mode):
        if not levels.features:
            raise ValueError(f"levels: nothing was captured at step {levels.step}: sample with the MODEL output of U-Net Levels Capture "
                             "before this view runs")
        found = levels.levels()
        title = f"U-Net levels at step {levels.step} of {levels.steps} ({mode})"
        picture = lv.render_u(levels.features, found, mode, title, picture=image[0])
        return shown(picture)


_NODES = {
    "CrossAttentionCapture": (CrossAttentionCapture, "Cross-Attention Capture"),
    "CrossAttentionView": (CrossAttentionView, "Cross-Attention per Word"),
    "UNetLevelsCapture": (UNetLevelsCapture, "U-Net Levels Capture"),
    "UNetLevelsView": (UNetLevelsView, "U-Net Levels"),
}
NODE_CLASS_MAPPINGS = {f"{PREFIX}{k}": cls for k, (cls, _) in _NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {f"{PREFIX}{k}": f"{name} (Diffusion Anatomy)" for k, (_, name) in _NODES.items()}
