"""Anatomy Explorer Capture: records a whole sampling run for the editor's "Diffusion Anatomy" panel.

A thin adapter: the node gives back the MODEL with the capture's hooks (anatomy.explorer.Recording) set
through ComfyUI's own model patches: an OUTER_SAMPLE wrapper (the run's sigmas, seed, sampler and the
sampler's callback), a post-CFG function, `attn2` replacements and block patches. Any sampler node
that takes a MODEL (KSampler, SamplerCustom, the pack's U-Net Denoise) then records. When the sampler
returns (or fails, or is interrupted: the run is kept, marked partial) the run is written to the run
store in ComfyUI's temp folder and announced to the panel by the event `diffusion_anatomy.explorer`.
The pack's routes (below) serve the store's files and nothing else; they never write or delete.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import comfy.model_management as mm
import comfy.patcher_extension
import folder_paths
import torch
from aiohttp import web

from ..anatomy import explorer as ex
from .anatomy_attention_nodes import bpe
from .common import CATEGORY, PREFIX

ANATOMY = f"{CATEGORY}/anatomy"
PATCH_KEY = "diffusion_anatomy_explorer"
EVENT = "diffusion_anatomy.explorer"
ROUTE = "/diffusion_anatomy/explorer"
DEFAULT_KEEP = 16
log = logging.getLogger(__name__)


def store() -> ex.RunStore:
    return ex.RunStore(Path(folder_paths.get_temp_directory()) / "diffusion_anatomy" / "runs")


def announce(data: dict) -> None:
    try:
        from server import PromptServer

        PromptServer.instance.send_sync(EVENT, data)
    except Exception:  # no server (in-process use): nobody to tell
        pass


def sampler_name(sampler) -> str:
    """The sampler's name: the pack's samplers are partial(run_sampler, info), core's sample_<name> functions."""
    sampler = getattr(sampler, "inner", sampler)  # the Denoising Steps Recorder's wrapper
    fn = getattr(sampler, "sampler_function", None)
    if isinstance(fn, functools.partial) and fn.args:
        first = fn.args[0]  # a registry SamplerInfo (or its id)
        return str(getattr(first, "id", first))
    return getattr(fn, "__name__", type(sampler).__name__).removeprefix("sample_")


def model_name(prompt: dict | None, node_id) -> str:
    """The checkpoint the MODEL came from, found by walking the graph's model links up from this node."""
    nid, seen = str(node_id), set()
    while prompt and nid in prompt and nid not in seen:
        seen.add(nid)
        inputs = prompt[nid].get("inputs", {})
        for key in ("ckpt_name", "unet_name", "model_name"):
            if isinstance(inputs.get(key), str):
                return inputs[key]
        link = inputs.get("model")
        if not isinstance(link, list):
            return prompt[nid].get("class_type", "?")
        nid = str(link[0])
    return "?"


def prompt_tokens(clip, text: str):
    """(tokens, chunk ids, chunk weights, padding) of the prompt as this CLIP splits it (SDXL's towers agree on places)."""
    tokenized = clip.tokenize(text)
    key = "l" if "l" in tokenized else next(iter(tokenized))
    chunks = tokenized[key]
    tokens, padding = ex.prompt_tokens(chunks, lambda i: bpe().id_to_token.get(i, "?</w>"))
    ids = [[t[0] if isinstance(t[0], int) else None for t in c] for c in chunks]
    weights = [[float(t[1]) for t in c] for c in chunks]
    return tokens, ids, weights, padding


def layer_attention(unet):
    """The attention a cross-attention layer of this U-Net computes without a replacement: the pack's SDPA for
    the pack's U-Net, core's `optimized_attention` (with the layer's precision) for core's."""
    if type(unet).__module__.startswith(__package__.rpartition(".")[0] + "."):  # the pack's U-Net (nodes.bridge's class)
        from ..unet.attention import attention

        return lambda q, k, v, heads, extra: attention(q, k, v, heads)
    from comfy.ldm.modules.attention import optimized_attention

    return lambda q, k, v, heads, extra: optimized_attention(q, k, v, heads, attn_precision=extra.get("attn_precision"))


def vae_render(vae, fmt):
    """A batch of latents [N, C, h, w] in the working space -> pictures [N, H, W, 3] through the run's VAE."""
    def render(latents: torch.Tensor) -> torch.Tensor:
        out = []
        for k in range(0, len(latents), 8):  # a few at a time: bounded memory at 512x512
            mm.throw_exception_if_processing_interrupted()
            pixels = vae.decode(fmt.process_out(latents[k:k + 8].to(mm.intermediate_device())))
            out.append(pixels.reshape(-1, *pixels.shape[-3:]).float().cpu())
        return torch.cat(out)
    return render


class ExplorerCapture:
    DESCRIPTION = ("Anatomy Explorer: records everything one sampling run does, step by step, for the \"Diffusion Anatomy\" panel "
                   "in the editor's sidebar: the noisy latent x_t, the U-Net's prediction of the clean picture x0 and of the noise, "
                   "the conditional and unconditional predictions of classifier-free guidance, every word's cross-attention map "
                   "per step and per level of the U, the U-Net's feature maps, and the prompt's tokens. Wire its MODEL into any "
                   "sampler (U-Net Denoise, SamplerCustom, KSampler); sampling is unchanged (bit-identical). Open the panel to "
                   "replay, click and compare. Runs are kept in ComfyUI's temp folder, the newest keep_runs of them.")
    CATEGORY = ANATOMY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The same model with the recording hooks: sample with it; each sampling is one run in the panel.",)
    FUNCTION = "capture"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "Any MODEL (the pack's loader or core's); word maps and levels need an SD-style U-Net."}),
                "clip": ("CLIP", {"tooltip": "The CLIP that encodes the positive prompt: it splits the text into the tokens the maps are for."}),
                "text": ("STRING", {"multiline": True, "default": "", "tooltip": "The positive prompt, exactly as given to the text encoder."}),
                "pictures": (["vae", "latent_preview"], {"default": "vae", "tooltip": "vae: every picture decoded by the VAE (at most 128 px a "
                             "side; costs one decode per picture); latent_preview: ComfyUI's linear latent-to-RGB preview at latent size (no cost)."}),
                "levels_every": ("INT", {"default": 1, "min": 0, "max": 1000, "tooltip": "Keep the U-Net levels' feature pictures at every k-th "
                                 "step and the last; 0: none."}),
                "keep_runs": ("INT", {"default": DEFAULT_KEEP, "min": 1, "max": 200, "tooltip": "Runs kept in the store; the oldest are deleted."}),
                "label": ("STRING", {"default": "", "tooltip": "A name for the run in the panel (e.g. A and B for Compare)."}),
            },
            "optional": {"vae": ("VAE", {"tooltip": "Decodes the pictures when pictures = vae."})},
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    def capture(self, model, clip, text, pictures, levels_every, keep_runs, label, vae=None, unique_id=None, prompt=None):
        node = "Anatomy Explorer Capture"
        if not text.strip():
            raise ValueError(f"{node}: text: the prompt is empty; give the positive prompt used for sampling")
        if pictures == "vae" and vae is None:
            raise ValueError(f"{node}: pictures = vae needs the `vae` input connected (or choose latent_preview)")
        tokens, ids, weights, padding = prompt_tokens(clip, text)
        unet = getattr(model.model, "diffusion_model", None)
        has_u = unet is not None and hasattr(unet, "input_blocks") and hasattr(unet, "output_blocks")
        recording = ex.Recording(tokens=tokens, context_length=sum(len(c) for c in ids), levels_every=levels_every if has_u else 0,
                                 layer_attention=layer_attention(unet))
        patched = model.clone()
        patched.set_model_sampler_post_cfg_function(recording.post_cfg)
        note = None
        if has_u:
            for number in range(len(unet.input_blocks)):
                patched.set_model_attn2_replace(recording.attn2, "input", number)
            patched.set_model_attn2_replace(recording.attn2, "middle", 0)
            for number in range(len(unet.output_blocks)):
                patched.set_model_attn2_replace(recording.attn2, "output", number)
            if levels_every:
                patched.set_model_input_block_patch(recording.input_block_patch)
                patched.set_model_output_block_patch(recording.output_block_patch)
        else:
            note = f"this model ({type(model.model).__name__}) has no SD U-Net the pack can read: no word maps and no levels, only the steps"
        fmt = model.model.latent_format
        preview = ex.preview_map(fmt.latent_rgb_factors, getattr(fmt, "latent_rgb_factors_bias", None)) if fmt.latent_rgb_factors is not None else None
        render = vae_render(vae, fmt) if pictures == "vae" else None
        base = {"label": label.strip(), "prompt": text, "model": model_name(prompt, unique_id), "chunks": ids, "chunk_weights": weights,
                "padding": padding, "pictures": pictures, "attention_note": note}
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, PATCH_KEY,
                                     functools.partial(record_run, recording, base, render, preview, keep_runs))
        return (patched,)


def record_run(recording: ex.Recording, base: dict, render, preview, keep: int, executor, noise, latent_image, sampler, sigmas,
               denoise_mask=None, callback=None, disable_pbar=False, seed=None, **kwargs):
    """The OUTER_SAMPLE wrapper: one sampling call = one run in the store."""
    runs = store()
    run_id, folder = runs.new_run(keep)
    shape = latent_image.shape
    info = ex.RunInfo(run_id=run_id, sampler=sampler_name(sampler), seed=seed, width=shape[-1] * 8, height=shape[-2] * 8,
                      batch=shape[0], **base)
    recording.reset(sigmas.flatten().tolist())
    total = len(recording.sigmas) - 1
    ex.write_json(folder / "index.json", ex.base_index(info, recording, "running"))
    announce({"run": run_id, "status": "running", "step": 0, "steps": total})

    def on_step(rec: ex.Recording) -> None:
        announce({"run": run_id, "status": "running", "step": len(rec.steps), "steps": total})

    recording.on_step = on_step

    def step(i, x0, x, total_steps):
        recording.step(i, x0, x)
        if callback is not None:
            callback(i, x0, x, total_steps)

    try:
        out = executor(noise, latent_image, sampler, sigmas, denoise_mask, step, disable_pbar, seed, **kwargs)
    except BaseException as error:
        recording.finish()
        why = "interrupted" if type(error).__name__ == "InterruptProcessingException" else f"failed: {error}"
        message = f"{why} after {len(recording.steps)} of {total} steps"
        try:
            ex.write_run(folder, info, recording, None if render is None else render, preview, "partial", message)
        except BaseException:  # the run stays listed as it was (running -> unreadable tables); the error is the sampler's
            log.exception("Anatomy Explorer: writing the partial run %s failed", run_id)
            ex.write_json(folder / "index.json", ex.base_index(info, recording, "partial", message))
        announce({"run": run_id, "status": "partial", "step": len(recording.steps), "steps": total, "message": message})
        raise
    recording.finish()
    index = ex.write_run(folder, info, recording, render, preview, "complete")
    announce({"run": run_id, "status": "complete", "step": len(recording.steps), "steps": total, "bytes": index["bytes"]})
    return out


# --------------------------------------------------------------------------- routes: the store, read-only

def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def list_runs(request: web.Request) -> web.Response:
    runs = store()
    return web.json_response({"runs": runs.summaries(), "bytes": runs.bytes()}, headers={"Cache-Control": "no-store"})


async def run_file(request: web.Request) -> web.Response:
    run_id, name = request.match_info["run"], request.match_info["name"]
    try:
        path = store().file(run_id, name)
    except ex.StoreError as err:
        bad = not ex.RUN_ID.match(run_id) or not ex.FILE_NAME.match(name)
        return error(400 if bad else 404, str(err))
    kind = {".json": "application/json", ".png": "image/png", ".f16": "application/octet-stream"}[path.suffix]
    headers = {"Content-Type": kind, "Cache-Control": "no-store" if name == "index.json" else "max-age=3600"}
    return web.FileResponse(path, headers=headers)


def add_routes() -> None:
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return
    server.routes.get(f"{ROUTE}/runs")(list_runs)
    server.routes.get(f"{ROUTE}/runs/{{run}}/{{name}}")(run_file)


add_routes()

NODE_CLASS_MAPPINGS = {f"{PREFIX}ExplorerCapture": ExplorerCapture}
NODE_DISPLAY_NAME_MAPPINGS = {f"{PREFIX}ExplorerCapture": "Anatomy Explorer Capture (Diffusion Anatomy)"}
