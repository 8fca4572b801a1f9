"""The interrupt button stops U-Net Denoise within one step; core nodes accept the pack's models."""
from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest
import websocket

from support.graphs import core_graph, image, pack_graph

pytestmark = pytest.mark.server


def test_interrupt_stops_denoise_within_one_step(server, sd15):
    graph = pack_graph(sd15, "euler", "karras", steps=200, seed=3)
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
            if msg["type"] == "progress" and data.get("node") == "denoise":
                progress.append(data["value"])
                if interrupted_at is None and data["value"] >= 2:
                    interrupted_at = data["value"]
                    urllib.request.urlopen(urllib.request.Request(server.url + "/interrupt", data=b"", method="POST"))
            if msg["type"] in ("execution_interrupted", "execution_success", "execution_error"):
                break
    finally:
        ws.close()
    assert events[-1] == "execution_interrupted", events[-5:]
    assert interrupted_at is not None and max(progress) <= interrupted_at + 1, (interrupted_at, progress[-3:])
    assert image(server, pack_graph(sd15, "euler", "karras", steps=2, seed=3)).shape == (64, 64, 3)  # still serving


def test_core_nodes_take_the_packs_model_clip_and_vae(server, sd15):
    """Core CLIPTextEncode, KSampler and VAEDecode on the pack loader's outputs give what they give on core's loader's."""
    def ksampler_graph(loader: dict) -> dict:
        g = core_graph(sd15, "euler", "karras", steps=3, seed=21)
        g["ckpt"] = loader
        del g["sigmas"], g["sampler"]
        g["denoise"] = {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "seed": 21, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "karras",
            "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0], "denoise": 1.0}}
        return g

    ours = image(server, ksampler_graph({"class_type": "DiffusionAnatomyCheckpointLoader", "inputs": {"ckpt_name": sd15, "prediction": "auto"}}))
    core = image(server, ksampler_graph({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15}}))
    assert ours.std() > 10 and np.abs(ours - core).max() <= 1
