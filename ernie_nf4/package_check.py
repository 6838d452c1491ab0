"""Open-time checks of a pipeline folder, whoever wrote it: what can be checked without trusting anyone.

- ``model_index.json`` names an ERNIE-Image pipeline with allowed classes only (``nf4_format``);
- every component folder is there, and every ``.safetensors`` file's header parses and its tensors end exactly
  at the end of the file (a truncated or damaged file is named, with the fix);
- a ``quantization_metadata.json`` written by this project is validated strictly: every file's size, every
  safetensors header's sha256 (cheap: headers are small) and, with ``verify_sha256``, every file's sha256.
  Metadata of another tool is kept as it is, for people to read, and the package is marked not verified.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PackageError
from .metadata import METADATA_FILE, is_own_metadata, read_metadata, verify_package
from .nf4_format import read_model_index

_FIX = "re-download the package, or rebuild it with `python quantize.py --overwrite`"
_MAX_HEADER = 100 << 20  # safetensors refuses larger headers too
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


@dataclass
class PackageCheck:
    """What opening a folder found. ``verified``: this project's metadata vouched for every file."""

    folder: Path
    components: dict[str, list]
    verified: bool
    metadata: dict | None = None  # this project's metadata (validated)
    foreign_metadata: object = None  # another tool's metadata, as read (any JSON), or its raw text
    notes: list[str] = field(default_factory=list)

    @property
    def provenance(self) -> str:
        if self.verified:
            return "verified by ernie-nf4 metadata"
        return "not verified by ernie-nf4 metadata (written by another tool): safetensors headers checked"


def read_safetensors_header(path: Path) -> tuple[bytes, dict]:
    """The raw header bytes and parsed header of a safetensors file, after checking it against the file's length.
    Raises ``PackageError`` naming the file when it is truncated or damaged."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise PackageError(f"{path}: {size} bytes, too short for a safetensors file (truncated); {_FIX}")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(_MAX_HEADER, size - 8):
            raise PackageError(f"{path}: safetensors header length {length} does not fit the file; {_FIX}")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise PackageError(
            f"{path}: safetensors header is not valid JSON ({err}); the file is damaged; {_FIX}"
        ) from None
    if not isinstance(header, dict):
        raise PackageError(f"{path}: safetensors header is not an object; the file is damaged; {_FIX}")
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
                f"{path}: safetensors entry {name!r} is malformed; the file is damaged; {_FIX}"
            ) from None
        if not (0 <= start <= stop) or (expected and stop - start != expected):
            raise PackageError(f"{path}: safetensors entry {name!r} has inconsistent offsets; damaged; {_FIX}")
        end = max(end, stop)
    if 8 + length + end != size:
        raise PackageError(
            f"{path}: {size} bytes on disk, its safetensors header describes {8 + length + end} "
            f"({'truncated' if size < 8 + length + end else 'extra bytes'}); {_FIX}"
        )
    return raw, header


def header_sha256(path: Path) -> str:
    raw, _ = read_safetensors_header(path)
    return hashlib.sha256(raw).hexdigest()


def _read_foreign(path: Path) -> object:
    text = path.read_bytes().decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text[:4000]


def check_package(folder: str | Path, verify_sha256: bool = False, argument: str = "model_dir") -> PackageCheck:
    """Check ``folder`` as described in the module docstring; raises ``PackageError`` naming what is broken."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PackageError(f"{argument} {folder}: no such folder")
    _, components = read_model_index(folder, argument)
    for name in components:
        if not (folder / name).is_dir():
            raise PackageError(f"{folder / name}: component folder {name!r} is missing; {_FIX}")
    headers = {}
    for name in components:
        for file in sorted((folder / name).rglob("*.safetensors")):
            raw, _ = read_safetensors_header(file)
            headers[file.relative_to(folder).as_posix()] = hashlib.sha256(raw).hexdigest()
    meta_path = folder / METADATA_FILE
    if meta_path.is_file() and is_own_metadata(meta_path):
        metadata = verify_package(folder, check_sha256=verify_sha256, header_hashes=headers)
        return PackageCheck(folder, components, verified=True, metadata=metadata)
    check = PackageCheck(folder, components, verified=False)
    if meta_path.is_file():
        check.foreign_metadata = _read_foreign(meta_path)
        check.notes.append(f"{METADATA_FILE} was written by another tool; shown as it is")
    else:
        check.notes.append(f"no {METADATA_FILE}: sizes of the original are unknown")
    return check


def read_own_metadata(folder: Path) -> dict | None:
    """This project's metadata of ``folder`` (validated), or None when it has none or another tool's."""
    path = Path(folder) / METADATA_FILE
    return read_metadata(folder) if path.is_file() and is_own_metadata(path) else None
