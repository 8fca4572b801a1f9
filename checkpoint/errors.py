"""Why a checkpoint file could not be read; every message names the file and what was expected."""
from __future__ import annotations

from pathlib import Path


class CheckpointError(ValueError):
    """Base class: `path` is the file, the message says what was found and what was expected."""

    def __init__(self, path: str | Path, message: str):
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class PickleCheckpointError(CheckpointError):
    """A .ckpt/.pt/.pth/.bin pickle: refused, since unpickling can run arbitrary code."""


class NotSafetensorsError(CheckpointError):
    """The bytes are not a safetensors file (bad header length, header not JSON, ...)."""


class TruncatedCheckpointError(CheckpointError):
    """A safetensors header that promises more tensor bytes than the file holds."""


class UnknownLayoutError(CheckpointError):
    """A safetensors file, but not an LDM single-file checkpoint (no `model.diffusion_model.` U-Net)."""


class UnsupportedFamilyError(CheckpointError):
    """An LDM U-Net whose shapes match none of the supported families (sd15, sd21, sdxl)."""
