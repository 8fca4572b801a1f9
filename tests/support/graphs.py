"""API-format graphs the server tests queue: the pack's text-to-image graph and core's twin."""
from __future__ import annotations

import numpy as np
from PIL import Image

PROMPT, NEGATIVE = "a small red circle at the top left on a blue background", "blurry"


def pack_graph(ckpt: str, sampler: str, scheduler: str, steps: int, seed: int, cfg: float = 5.0, size: int = 64) -> dict:
    return {
        "ckpt": {"class_type": "DiffusionAnatomyCheckpointLoader", "inputs": {"ckpt_name": ckpt, "prediction": "auto"}},
        "pos": {"class_type": "DiffusionAnatomyCLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": PROMPT}},
        "neg": {"class_type": "DiffusionAnatomyCLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": NEGATIVE}},
        "latent": {"class_type": "DiffusionAnatomyEmptyLatent", "inputs": {"model": ["ckpt", 0], "width": size, "height": size, "batch_size": 1}},
        "sigmas": {"class_type": "DiffusionAnatomyScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": scheduler, "steps": steps, "denoise": 1.0}},
        "sampler": {"class_type": "DiffusionAnatomySamplerSelect", "inputs": {"sampler": sampler}},
        "denoise": {"class_type": "DiffusionAnatomyUNetDenoise", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "sampler": ["sampler", 0], "sigmas": ["sigmas", 0], "cfg": cfg, "seed": seed, "add_noise": True}},
        "decode": {"class_type": "DiffusionAnatomyVAEDecode", "inputs": {"samples": ["denoise", 0], "vae": ["ckpt", 2], "tiled": False, "tile_size": 512}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": f"pack_{sampler}"}},
    }


def core_graph(ckpt: str, sampler: str, scheduler: str, steps: int, seed: int, cfg: float = 5.0, size: int = 64) -> dict:
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": PROMPT}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": NEGATIVE}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["ckpt", 0], "scheduler": scheduler, "steps": steps, "denoise": 1.0}},
        "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
        "denoise": {"class_type": "SamplerCustom", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "sampler": ["sampler", 0], "sigmas": ["sigmas", 0], "cfg": cfg, "noise_seed": seed, "add_noise": True}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["denoise", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": f"core_{sampler}"}},
    }


def image(server, graph: dict) -> np.ndarray:
    (path,) = server.output_files(server.run(graph))
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def positive_prompt(graph: dict) -> str:
    """The text of an API-format graph's node titled "Positive prompt" (as the bundled workflows name it)."""
    return next(n["inputs"]["text"] for n in graph.values() if n.get("_meta", {}).get("title") == "Positive prompt")


def interrupt_at_progress(server, graph: dict, node: str, at: int) -> tuple[list[str], list[int], int | None]:
    """Queue `graph`, watch the websocket, POST /interrupt once `node` reports progress >= `at`.

    Returns (event types, the node's progress values, the value at which it interrupted)."""
    import json
    import time
    import urllib.request

    import websocket

    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={server.client_id}", timeout=300)
    try:
        prompt_id = server.queue(graph)
        progress, interrupted_at, events = [], None, []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            raw = ws.recv()
            if isinstance(raw, bytes):
                continue  # latent previews
            msg = json.loads(raw)
            events.append(msg["type"])
            data = msg.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if msg["type"] == "progress" and data.get("node") == node:
                progress.append(data["value"])
                if interrupted_at is None and data["value"] >= at:
                    interrupted_at = data["value"]
                    urllib.request.urlopen(urllib.request.Request(server.url + "/interrupt", data=b"", method="POST"))
            if msg["type"] in ("execution_interrupted", "execution_success", "execution_error"):
                break
    finally:
        ws.close()
    return events, progress, interrupted_at
