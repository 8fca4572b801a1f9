"""Single-file safetensors checkpoints in the LDM layout: family detection and strict loading; pure torch."""
from .detect import CONFIG_METADATA_KEY, FAMILY_METADATA_KEY
from .errors import (
    CheckpointError,
    NotSafetensorsError,
    PickleCheckpointError,
    TruncatedCheckpointError,
    UnknownLayoutError,
    UnsupportedFamilyError,
)
from .files import LazyStateDict
from .reader import Checkpoint, CheckpointInfo, detect_checkpoint, inspect_checkpoint, load_checkpoint

__all__ = [
    "Checkpoint",
    "CheckpointInfo",
    "inspect_checkpoint",
    "detect_checkpoint",
    "load_checkpoint",
    "LazyStateDict",
    "CONFIG_METADATA_KEY",
    "FAMILY_METADATA_KEY",
    "CheckpointError",
    "NotSafetensorsError",
    "PickleCheckpointError",
    "TruncatedCheckpointError",
    "UnknownLayoutError",
    "UnsupportedFamilyError",
]
