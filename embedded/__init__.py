"""An embedded tiny text-to-image model in the SD1.x checkpoint layout, trained on procedural shapes; pure torch.

- `data`: seeded 64x64 images of coloured shapes with captions and their structured attributes;
- `config`: the tiny U-Net / VAE / CLIP configs (the pack's own config classes) and their metadata;
- `train`: VAE, then U-Net + text encoder, saved as one SD1-layout fp16 .safetensors.
See README.md.
"""
