"""An embedded tiny text-to-image model in the SD1.x checkpoint layout, trained on procedural shapes; pure torch.

- `data`: seeded 64x64 images of coloured shapes with captions and their structured attributes;
- `config`: the tiny U-Net / VAE / CLIP configs (the pack's own config classes) and their metadata;
- `train`: VAE, then U-Net + text encoder, saved as one SD1-layout fp16 .safetensors.
See README.md.
"""
from pathlib import Path

WEIGHTS = Path(__file__).with_name("tiny_shapes_sd1.safetensors")  # the trained model, committed (16.9 MiB)
LOADER_NAME = "DiffusionAnatomy/tiny_shapes_sd1.safetensors"  # how the loader node lists it, first
