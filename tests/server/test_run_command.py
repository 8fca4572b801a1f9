"""The README's main command, `host/run.sh`, as a user runs it: it starts its own ComfyUI, queues the
bundled text-to-image workflow (the embedded model) and writes a picture of the prompt. Also the
loader offers the embedded model first."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_server import free_port
from diffusion_anatomy.clip.tokenizer import BPETokenizer
from diffusion_anatomy.embedded import LOADER_NAME as EMBEDDED_NAME
from diffusion_anatomy.embedded import WEIGHTS
from diffusion_anatomy.embedded import judge
from diffusion_anatomy.embedded import sample as es
from diffusion_anatomy.embedded import train as et
from support import shapes
from support.graphs import positive_prompt

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]


def test_loader_offers_the_embedded_model_first(server):
    choices = server.get("/object_info/DiffusionAnatomyCheckpointLoader")["DiffusionAnatomyCheckpointLoader"]["input"]["required"]["ckpt_name"][0]
    assert choices[0] == EMBEDDED_NAME
    assert choices.count(EMBEDDED_NAME) == 1 and len(choices) > 1  # the fixtures' checkpoints follow it


def run_command(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[Path]]:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    done = subprocess.run(["bash", str(REPO / "host" / "run.sh"), "--port", str(free_port()), "--work", str(tmp_path / "work"), *args],
                          capture_output=True, text=True, timeout=600, env=env)
    written = [Path(p) for p in re.findall(r"\[run\] image written: (.+)", done.stdout)]
    return done, written


@pytest.mark.parametrize("prompt", [None, "a small yellow triangle at the bottom left on a black background"])
def test_run_command_draws_the_prompt_with_the_embedded_model(tmp_path, prompt):
    done, written = run_command(tmp_path, *(["--prompt", prompt] if prompt else []))
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(written) == 1 and written[0].is_file()
    graph = json.loads((REPO / "workflows" / "api" / "text_to_image.json").read_text())
    text = prompt or positive_prompt(graph)
    cap = shapes.parse(text)
    rgb = torch.from_numpy(np.asarray(Image.open(written[0]).convert("RGB")).astype(np.float32))
    assert rgb.shape == (64, 64, 3)
    verdict = judge.judge_rgb(rgb[None])[0]  # shape, colour, size, position and background, read from the PNG
    assert judge.correct(verdict, cap)["all"], f"{verdict.as_dict()} for {cap.text!r}"
    # the same picture as the pure-torch path that tests/pure/test_embedded_draws.py measures rates on:
    # same noise, schedule, sampler and guidance; one 8-bit level for float32 rounding at the PNG
    settings = {n["class_type"]: n["inputs"] for n in graph.values()}
    sampler = next(c.removeprefix("DiffusionAnatomySampler_") for c in settings if c.startswith("DiffusionAnatomySampler_"))
    denoise, schedule = settings["DiffusionAnatomyUNetDenoise"], settings["DiffusionAnatomyScheduler"]
    pure = es.sample(es.load(WEIGHTS), [text], BPETokenizer.from_dir(et.default_tokenizer_dir()), steps=schedule["steps"],
                     cfg=denoise["cfg"], seed=denoise["seed"], sampler=sampler, schedule=schedule["scheduler"])[0]
    assert (shapes.to_rgb(pure) - rgb).abs().max() <= 1


def test_run_command_names_a_missing_checkpoint(tmp_path):
    done, written = run_command(tmp_path, "--checkpoint", str(tmp_path / "missing.safetensors"))
    assert done.returncode == 1 and not written
    assert "no such checkpoint file" in done.stderr
