"""A safetensors file's header, read and checked against the file's length without loading any tensor."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from ..errors import PackageError

REPAIR_HINT = "re-download the package, or rebuild it with `python quantize.py --overwrite`"
_MAX_HEADER = 100 << 20  # safetensors refuses larger headers too
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


def read_safetensors_header(path: Path) -> tuple[bytes, dict]:
    """The raw header bytes and parsed header of a safetensors file, after checking it against the file's length.
    Raises ``PackageError`` naming the file when it is truncated or damaged."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise PackageError(f"{path}: {size} bytes, too short for a safetensors file (truncated); {REPAIR_HINT}")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(_MAX_HEADER, size - 8):
            raise PackageError(f"{path}: safetensors header length {length} does not fit the file; {REPAIR_HINT}")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise PackageError(
            f"{path}: safetensors header is not valid JSON ({err}); the file is damaged; {REPAIR_HINT}"
        ) from None
    if not isinstance(header, dict):
        raise PackageError(f"{path}: safetensors header is not an object; the file is damaged; {REPAIR_HINT}")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = entry["data_offsets"]
            if not (type(start) is int and type(stop) is int):
                raise TypeError("offsets must be integers")
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            expected = count * _DTYPE_BYTES.get(entry["dtype"], 0)
        except (KeyError, TypeError, ValueError):
            raise PackageError(
                f"{path}: safetensors entry {name!r} is malformed; the file is damaged; {REPAIR_HINT}"
            ) from None
        if not (0 <= start <= stop) or (expected and stop - start != expected):
            raise PackageError(f"{path}: safetensors entry {name!r} has inconsistent offsets; damaged; {REPAIR_HINT}")
        end = max(end, stop)
    if 8 + length + end != size:
        raise PackageError(
            f"{path}: {size} bytes on disk, its safetensors header describes {8 + length + end} "
            f"({'truncated' if size < 8 + length + end else 'extra bytes'}); {REPAIR_HINT}"
        )
    return raw, header


def header_sha256(path: Path) -> str:
    raw, _ = read_safetensors_header(path)
    return hashlib.sha256(raw).hexdigest()
