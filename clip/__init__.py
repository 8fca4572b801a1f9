"""CLIP text encoders (ViT-L/14, OpenCLIP ViT-H, bigG), BPE tokenizer, prompt-weight syntax; pure torch.

- `tokenizer`: byte-level BPE over ComfyUI's `comfy/sd1_tokenizer` files, ComfyUI's prompt syntax
  (`(text:1.2)`, `embedding:name`), 77-token chunks;
- `model`: the CLIP text transformer with checkpoint names, presets, OpenCLIP key renaming;
- `encoder`: a checkpoint's towers (SD1, SD2, SDXL presets), prompt weights, chunk concatenation,
  loading from an LDM single-file state dict.
"""
