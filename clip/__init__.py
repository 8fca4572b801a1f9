"""CLIP text encoders (ViT-L/14, OpenCLIP ViT-H, bigG), BPE tokenizer, prompt-weight syntax; pure torch."""
