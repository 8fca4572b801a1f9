"""Samplers: one function per sampler (k-diffusion signature), their registry, schedules, noise.

Pure torch: nothing here imports ComfyUI. Importing this package registers every sampler in
`registry.REGISTRY`.
"""
from . import classic, dpm_solver, dpm_solver_pp, extra, pndm, supreme, unipc  # noqa: F401  (register)
from .registry import REGISTRY, Option, SamplerInfo, register  # noqa: F401

# The source document's table order (its "all ComfyUI samplers, Feb 2025" table), PLMS after PNDM:
# nodes, the selector and the README list the samplers in this order.
DOCUMENT_ORDER = (
    "euler", "euler_ancestral", "euler_ancestral_dancing", "heun", "heunpp2", "lms", "pndm", "plms",
    "dpm_2", "dpm_2_ancestral", "dpm_fast", "dpm_adaptive", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_heun",
    "dpmpp_2s_ancestral", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "dpmpp_3m_sde_dynamic_eta", "ddim", "uni_pc",
    "uni_pc_bh2", "supreme", "ttm", "lcm", "lcm_custom_noise", "dpmpp_dualsde_momentumized",
    "clyb_4m_sde_momentumized", "res_momentumized",
)
assert set(DOCUMENT_ORDER) == set(REGISTRY), set(DOCUMENT_ORDER) ^ set(REGISTRY)
for _id in DOCUMENT_ORDER:  # re-insert in document order
    REGISTRY[_id] = REGISTRY.pop(_id)
