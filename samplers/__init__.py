"""Samplers: one function per sampler (k-diffusion signature), their registry, schedules, noise.

Pure torch: nothing here imports ComfyUI. Importing this package registers every sampler in
`registry.REGISTRY`.
"""
from . import classic, dpm_solver, dpm_solver_pp, extra, pndm, supreme, unipc  # noqa: F401  (register)
from .registry import REGISTRY, Option, SamplerInfo, register  # noqa: F401
