"""The SD U-Net denoiser (SD1.x, SD2.x, SDXL presets) with the original LDM module names; pure torch."""
from .config import PRESETS, SD15, SD21, SD21_V, SDXL, UNetConfig
from .model import UNetModel

__all__ = ["UNetModel", "UNetConfig", "PRESETS", "SD15", "SD21", "SD21_V", "SDXL"]
