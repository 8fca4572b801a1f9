"""ComfyUI nodes: thin adapters from ComfyUI types to the pure rooms. The only room importing comfy.*.

Every node id starts with `PREFIX` so it cannot collide with another pack's.
"""
from . import denoise_nodes, example_nodes, model_nodes, sampler_nodes, schedule_nodes

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in (model_nodes, denoise_nodes, sampler_nodes, schedule_nodes, example_nodes):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
