"""Import the host ComfyUI's own modules into the test process (for parity tests against core)."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

_loaded: types.SimpleNamespace | None = None


def load_comfy(comfy_dir: Path) -> types.SimpleNamespace:
    global _loaded
    if _loaded is not None:
        return _loaded
    if not (comfy_dir / "main.py").is_file():
        pytest.fail(f"no ComfyUI at {comfy_dir}: run host/install.sh (or set COMFYUI_PATH)", pytrace=False)
    sys.path.insert(0, str(comfy_dir))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management
    import utils.extra_config  # noqa: F401  must precede `nodes`, which puts comfy/ on sys.path
    import comfy.k_diffusion.sampling
    import comfy.model_sampling
    import comfy.samplers
    import comfy.sd
    import comfy.utils
    import nodes

    _loaded = types.SimpleNamespace(
        dir=comfy_dir,
        model_management=comfy.model_management,
        k_sampling=comfy.k_diffusion.sampling,
        samplers=comfy.samplers,
        model_sampling=comfy.model_sampling,
        sd=comfy.sd,
        utils=comfy.utils,
        nodes=nodes,
    )
    return _loaded
