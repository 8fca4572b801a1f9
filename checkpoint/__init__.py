"""Single-file safetensors checkpoints in the LDM layout: family detection and strict loading; pure torch."""
