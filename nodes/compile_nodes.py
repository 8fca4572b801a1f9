"""Compile U-Net: an opt-in fast path that runs a MODEL's U-Net through `torch.compile`.

Inside ComfyUI's model management, as core's TorchCompileModel (comfy_api/torch_helpers/torch_compile.py)
does it: an APPLY_MODEL wrapper on a clone of the MODEL swaps `diffusion_model` for its compiled twin
while the model runs. The twin wraps the very module ModelPatcher patches, so weight patches (LoRA)
applied after this node are what the compiled code reads (parameters are inputs of the compiled graph,
not constants). Nothing is compiled until the first sampling step. `dynamic=None` (torch's "automatic
dynamic"): the second shape seen recompiles once into a graph with symbolic sizes, later shapes reuse it.

Where compiling cannot work (no torch.compile, a platform dynamo does not support, inductor without a C++
compiler on the CPU or without Triton on the GPU) the node warns once and the MODEL runs eager; so does a
compile that fails at the first step (the error is logged once, the step is rerun eager).
"""
from __future__ import annotations

import logging
import os
import shutil
import time

import comfy.model_management as mm
import comfy.utils
import torch
from comfy.patcher_extension import WrappersMP

from .common import CATEGORY, PREFIX

COMPILE_KEY = "diffusion_anatomy.compile"
BACKENDS = ("inductor", "cudagraphs", "aot_eager")
MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
log = logging.getLogger(__name__)


def unavailable_reason(backend, device: torch.device) -> str | None:
    """Why `backend` cannot compile for `device` here, or None where it can (as far as can be told up front)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    from torch import _dynamo

    if not _dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python or platform"
    if backend != "inductor":
        return None
    if device.type == "cpu":
        compiler = os.environ.get("CXX", "g++")
        if shutil.which(compiler) is None and shutil.which("c++") is None:
            return f"inductor needs a C++ compiler on the CPU ({compiler} not found)"
    elif device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "inductor needs Triton on the GPU"
    return None


class CompiledUNet:
    """The state of one compiled U-Net: the compiled twin, and whether compiling failed (then eager for good)."""

    def __init__(self, module: torch.nn.Module, backend, mode: str | None, dynamic: bool | None = None):
        kwargs = {"backend": backend, "dynamic": dynamic}
        if mode not in (None, "default") and backend == "inductor":
            kwargs["mode"] = mode
        self.compiled = torch.compile(module, **kwargs)
        self.failed: Exception | None = None
        self.first_call_s: float | None = None  # the first (compiling) step's time, for the log

    def wrapper(self, executor, *args, **kwargs):
        """APPLY_MODEL wrapper: run `BaseModel._apply_model` with diffusion_model swapped for the compiled twin."""
        if self.failed is not None:
            return executor(*args, **kwargs)
        base = executor.class_obj
        eager = comfy.utils.get_attr(base, "diffusion_model")
        start = time.perf_counter()
        try:
            comfy.utils.set_attr(base, "diffusion_model", self.compiled)
            out = executor(*args, **kwargs)
        except mm.InterruptProcessingException:
            raise
        except Exception as error:  # a compile failure; a model error raises again below, eager
            comfy.utils.set_attr(base, "diffusion_model", eager)
            out = executor(*args, **kwargs)
            self.failed = error
            log.warning("Compile U-Net (Diffusion Anatomy): compiling failed (%s: %s); running eager from now on",
                        type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            return out
        finally:
            comfy.utils.set_attr(base, "diffusion_model", eager)
        if self.first_call_s is None:
            self.first_call_s = time.perf_counter() - start
            log.info("Compile U-Net (Diffusion Anatomy): first step (compiling) took %.1f s", self.first_call_s)
        return out


_warned: set[str] = set()


def warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        log.warning("Compile U-Net (Diffusion Anatomy): %s; the model runs eager", reason)


def compile_model(model, backend="inductor", mode: str | None = "default", dynamic: bool | None = None):
    """A clone of ModelPatcher `model` whose U-Net runs compiled (or the plain clone, with one warning, where it cannot).

    Returns (clone, CompiledUNet or None)."""
    clone = model.clone()
    reason = unavailable_reason(backend, torch.device(model.load_device))
    if reason is not None:
        warn_once(reason)
        return clone, None
    state = CompiledUNet(clone.get_model_object("diffusion_model"), backend, mode, dynamic)
    clone.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY)
    clone.add_wrapper_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY, state.wrapper)
    return clone, state


class CompileUNet:
    DESCRIPTION = ("Opt-in fast path: run the model's U-Net through torch.compile (the first sampling step compiles, which takes "
                   "from seconds to minutes; later steps at the same size are faster). LoRA and other weight patches still apply. "
                   "A second image size recompiles once into a size-independent graph. Where compiling is unavailable (no compiler, "
                   "an unsupported platform) it warns once and the model runs as before.")
    CATEGORY = f"{CATEGORY}/models"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The same model, its U-Net compiled when it first runs.",)
    FUNCTION = "compile"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model whose U-Net to compile (the pack's loader or core's)."}),
            "backend": (list(BACKENDS), {"default": "inductor", "tooltip": "inductor: generated kernels (fastest; needs a C++ compiler on CPU, Triton on GPU). cudagraphs: replay the eager kernels as CUDA graphs (GPU only). aot_eager: traces only (for checking)."}),
            "mode": (list(MODES), {"default": "default", "tooltip": "inductor's mode. reduce-overhead adds CUDA graphs (the fastest on a GPU at a fixed size; more memory). max-autotune-no-cudagraphs tries more kernels (longer compile)."}),
        }}

    def compile(self, model, backend, mode):
        if backend not in BACKENDS:
            raise ValueError(f"Compile U-Net: backend must be one of {BACKENDS}, not {backend!r}")
        if mode not in MODES:
            raise ValueError(f"Compile U-Net: mode must be one of {MODES}, not {mode!r}")
        return (compile_model(model, backend, mode)[0],)


NODE_CLASS_MAPPINGS = {f"{PREFIX}CompileUNet": CompileUNet}
NODE_DISPLAY_NAME_MAPPINGS = {f"{PREFIX}CompileUNet": "Compile U-Net (Diffusion Anatomy)"}
