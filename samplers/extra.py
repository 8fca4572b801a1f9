"""Samplers of the ComfyUI-Extra-Samplers pack (Euler Ancestral Dancing, 3M SDE Dynamic ETA, TTM, LCM Custom Noise, momentumized samplers)."""
