"""The SD U-Net denoiser (SD1.x, SD2.x, SDXL presets) with the original LDM module names; pure torch."""
