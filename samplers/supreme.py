"""Supreme, the configurable ancestral integrator of ComfyUI-Extra-Samplers."""
