"""Diffusion Anatomy: Stable Diffusion built from its parts as ComfyUI nodes.

ComfyUI imports this at start-up; importing stays cheap (torch is already loaded by ComfyUI, the
models are built on first use). Nodes use ComfyUI's V1 registration (NODE_CLASS_MAPPINGS): see
README.md, "Why V1 nodes".
"""
import importlib.util

WEB_DIRECTORY = "./web"

if importlib.util.find_spec("comfy") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # imported outside ComfyUI (pytest collects the repo root as a package): no nodes to offer
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
