"""ComfyUI nodes: thin adapters from ComfyUI types to the pure rooms. The only room importing comfy.*."""
