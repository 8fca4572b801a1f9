"""Opening a .safetensors file defensively, and lazy views of its tensors.

safetensors layout: 8 bytes little-endian header size N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the data.
The header is checked here before `safetensors.safe_open` sees the file, so a truncated download or
a file of another kind gets an error that says so instead of a parser message.

Pickle checkpoints (.ckpt/.pt/.pth/.bin, or any file that starts like a pickle or a torch zip) are
refused rather than read with `torch.load(weights_only=True)`: one format to support, and no
unpickling of downloaded files at all. Convert them once with a trusted tool.
"""
from __future__ import annotations

import io
import json
import math
import pickletools
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from .errors import NotSafetensorsError, PickleCheckpointError, TruncatedCheckpointError

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
PICKLE_PROBE_BYTES = 1 << 16
# opcodes a pickle of any protocol can start with: PROTO (2+), MARK, EMPTY_DICT/LIST/TUPLE, GLOBAL, NONE, the
# protocol-0 text opcodes for numbers and strings
PICKLE_FIRST_OPCODES = set(b"\x80(}])cNIJKLFGSVUTXB\x8c")
ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def looks_like_pickle(head: bytes) -> bool:
    """True for a torch zip archive or for bytes that parse as pickle opcodes, protocol 0 to 5.

    Nothing is unpickled: `pickletools.genops` only decodes the opcode stream. A pickle is recognised
    when the stream reaches STOP within the probe, or runs to the end of the probe without an invalid
    opcode after at least 16 opcodes (a large protocol-0/1 pickle); the first opcode must be one a pickle
    starts with (protocol 2+ files start with PROTO, 0x80; 0 and 1 with MARK, EMPTY_DICT, GLOBAL, ...)."""
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return True  # torch.save's zip format (its data.pkl inside), or PROTO 2-5
    if not head or head[0] not in PICKLE_FIRST_OPCODES:
        return False
    count, pos = 0, 0
    try:
        for opcode, _, pos in pickletools.genops(io.BytesIO(head)):
            count += 1
            if opcode.name == "STOP":
                return True
    except Exception:  # an invalid opcode, or the probe ended (possibly inside an argument)
        return count >= 16 and pos > len(head) - 4096
    return count >= 16


def check_tensor_entry(path: Path, name: str, info: dict) -> tuple[int, ...]:
    """The shape of one header entry, after checking that its dtype, shape and byte range agree."""
    dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), (int(o) for o in info["data_offsets"])
    if dtype not in ST_ITEMSIZE or any(d < 0 for d in shape):
        raise NotSafetensorsError(path, f"tensor {name!r}: dtype {dtype!r} / shape {shape} is not a safetensors tensor")
    claimed = math.prod(shape) * ST_ITEMSIZE[dtype]
    if not 0 <= begin <= end or end - begin != claimed:
        raise NotSafetensorsError(path, f"tensor {name!r} claims shape {list(shape)} {dtype} ({claimed} bytes) but its data "
                                        f"offsets [{begin}, {end}] span {end - begin} bytes; the header is corrupt")
    return shape
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(name -> shape, metadata) of a safetensors file, after checking it is whole."""
    if not path.is_file():
        raise NotSafetensorsError(path, "no such file; expected a .safetensors checkpoint")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        # A safetensors file is an 8-byte little-endian header size, then the JSON header. Test that
        # first: a header size whose low byte is 0x80 (one file in 256) starts like a pickle.
        n = struct.unpack("<Q", head[:8])[0] if len(head) == 9 else None
        safetensors_like = n is not None and n <= size - 8 and head[8:9] == b"{"
        pickle_like = False
        if not safetensors_like:
            f.seek(0)
            pickle_like = looks_like_pickle(f.read(PICKLE_PROBE_BYTES))
        if path.suffix.lower() in PICKLE_SUFFIXES or (not safetensors_like and pickle_like):
            raise PickleCheckpointError(
                path,
                "a pickle checkpoint (.ckpt/.pt); these are refused because unpickling a file can run "
                "arbitrary code. Expected a .safetensors file: convert it once with a trusted tool.",
            )
        if n is None:
            raise NotSafetensorsError(path, f"only {size} bytes; expected a .safetensors file (8-byte header size first)")
        f.seek(8)
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise NotSafetensorsError(
                path, f"the first 8 bytes give a header of {n} bytes in a {size}-byte file; expected a .safetensors file"
            )
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise NotSafetensorsError(path, f"the header is not JSON ({e}); expected a .safetensors file") from None
    if not isinstance(header, dict):
        raise NotSafetensorsError(path, "the header is not a JSON object; expected a .safetensors file")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise NotSafetensorsError(path, "`__metadata__` is not a JSON object; expected a .safetensors file")
    shapes, end = {}, 0
    try:
        for name, info in header.items():
            shapes[name] = check_tensor_entry(path, name, info)
            end = max(end, int(info["data_offsets"][1]))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        if isinstance(e, NotSafetensorsError):  # ours (a ValueError too): already says what is wrong
            raise
        raise NotSafetensorsError(path, f"header entry {name!r} lacks shape/data_offsets; expected a .safetensors file") from None
    if size < 8 + n + end:
        raise TruncatedCheckpointError(
            path, f"truncated: the header describes {8 + n + end} bytes but the file has {size} (an interrupted download?)"
        )
    if size > 8 + n + end:
        raise NotSafetensorsError(path, f"{size - 8 - n - end} bytes after the last tensor; expected a .safetensors file")
    return shapes, dict(metadata)


def open_safetensors(path: Path, device: str = "cpu"):
    try:
        return safe_open(str(path), framework="pt", device=device)
    except Exception as e:  # the library raises its own SafetensorError
        raise NotSafetensorsError(path, f"safetensors could not open it: {e}") from None


class LazyStateDict(Mapping):
    """`prefix`-stripped view of a checkpoint's tensors; each tensor is read from the file when asked for.

    A `Mapping`, so `module.load_state_dict(view)` works; values are cast to `dtype` (floating
    tensors only) when one is given.
    """

    def __init__(self, handle, prefix: str, shapes: Mapping[str, tuple[int, ...]], dtype: torch.dtype | None = None):
        self.prefix, self.dtype, self._handle = prefix, dtype, handle
        self._shapes = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._shapes:
            raise KeyError(key)
        t = self._handle.get_tensor(self.prefix + key)
        return t.to(self.dtype) if self.dtype is not None and t.is_floating_point() else t

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def __repr__(self) -> str:
        return f"LazyStateDict(prefix={self.prefix!r}, {len(self)} tensors)"
