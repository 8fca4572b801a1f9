"""The pure rooms run with torch alone: importing them loads no ComfyUI module."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = f"""
import sys
sys.path.insert(0, {str(REPO / "harness")!r})  # harness/diffusion_anatomy.py, as every script and test imports the pack
import diffusion_anatomy.samplers, diffusion_anatomy.samplers.schedules, diffusion_anatomy.samplers.runner
import diffusion_anatomy.unet.model, diffusion_anatomy.vae.model, diffusion_anatomy.vae.tiled
import diffusion_anatomy.clip.encoder, diffusion_anatomy.checkpoint.reader
import diffusion_anatomy.embedded.data, diffusion_anatomy.embedded.config, diffusion_anatomy.embedded.train
import diffusion_anatomy.lab.sweep, diffusion_anatomy.lab.report, diffusion_anatomy.lab.torch_backend
import diffusion_anatomy.anatomy.draw
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("comfy", "comfy_extras", "folder_paths", "nodes", "server", "execution"))
print(",".join(bad))
"""


def test_pure_rooms_import_no_comfyui():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "", f"pure rooms imported ComfyUI modules: {out.stdout}"
