"""Hostile checkpoint files for the server tests: each must give a clear error, none may run code.

The pickles carry a live payload: unpickling them calls `open(marker, "w")`, which creates the marker
file. `prove_payload_is_live` shows that on a copy (so a test that finds no marker can fail); the
files the server sees must leave their markers absent.
"""
from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file


class Payload:
    """Unpickled, it creates `marker` (as any code an attacker chose would run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_bytes(marker: Path, protocol: int) -> bytes:
    return pickle.dumps({"state_dict": {"model.diffusion_model.out.2.weight": Payload(marker)}}, protocol=protocol)


def prove_payload_is_live(folder: Path) -> bool:
    marker = folder / "live_payload_ran"
    pickle.loads(pickle_bytes(marker, 2))  # noqa: S301  (our own bytes, to show the payload works)
    return marker.is_file()


def safetensors_header(header: dict, data: bytes = b"") -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def write_hostile(folder: Path, good: Path) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """name -> (file, fragments its error must contain). `good` is a real checkpoint to truncate."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, tuple[str, ...]]] = {}

    def case(name: str, data: bytes | None, *fragments: str) -> Path:
        path = folder / f"{name}.safetensors"
        if data is not None:
            path.write_bytes(data)
        cases[name] = (path, fragments)
        return path

    raw = good.read_bytes()
    case("truncated", raw[: len(raw) // 2], "truncated", "interrupted download")
    case("huge_header", struct.pack("<Q", 2**40) + b"{" + b" " * 64, "header of 1099511627776 bytes")
    case("huge_tensor_claim", safetensors_header({"w": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 4 * 10**12]}}, bytes(16)),
         "truncated", "4000000000")
    case("shape_lies", safetensors_header({"w": {"dtype": "F32", "shape": [1000000, 1000000], "data_offsets": [0, 16]}}, bytes(16)),
         "'w' claims shape [1000000, 1000000]")
    for protocol in range(6):
        case(f"pickle_protocol_{protocol}", pickle_bytes(folder / f"ran_protocol_{protocol}", protocol), "pickle", "arbitrary code")
    zipped = case("torch_zip", None, "pickle", "arbitrary code")
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": Payload(folder / "ran_torch_zip")}}, zipped)
    random = case("random_tensors", None, "not a checkpoint: no U-Net, CLIP or VAE tensors")
    gen = torch.Generator().manual_seed(0)
    save_file({"encoder.weights": torch.randn(7, 5, generator=gen), "decoder.bias": torch.randn(3, generator=gen),
               "foo": torch.randn(2, 2, 2, generator=gen)}, str(random))
    junk = case("unet_junk_shapes", None, "model.diffusion_model")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.randn(5, 7, generator=gen),
               "model.diffusion_model.out.2.weight": torch.randn(3, generator=gen),
               "model.diffusion_model.middle_block.1.proj_in.weight": torch.randn(1, generator=gen)}, str(junk))
    return cases


def markers(folder: Path) -> list[Path]:
    return sorted(folder.glob("ran_*"))
