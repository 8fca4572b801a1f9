"""ComfyUI nodes: thin adapters from ComfyUI types to the pure rooms. The only room importing comfy.*.

Every node id starts with `PREFIX` so it cannot collide with another pack's.
"""
from . import (
    anatomy_attention_nodes,
    anatomy_nodes,
    compile_nodes,
    denoise_nodes,
    example_nodes,
    explorer_nodes,
    lab_nodes,
    model_nodes,
    sampler_nodes,
    schedule_nodes,
)

MODULES = (
    model_nodes,
    denoise_nodes,
    sampler_nodes,
    schedule_nodes,
    anatomy_nodes,
    anatomy_attention_nodes,
    explorer_nodes,
    lab_nodes,
    compile_nodes,
    example_nodes,
)

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
