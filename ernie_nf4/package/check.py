"""Open-time checks of a pipeline folder, whoever wrote it: what can be checked without trusting anyone.

- ``model_index.json`` names an ERNIE-Image pipeline with allowed classes only (``format``);
- every component folder is there, and every ``.safetensors`` file's header parses and its tensors end exactly
  at the end of the file (a truncated or damaged file is named, with the fix);
- a ``quantization_metadata.json`` written by this project is validated strictly: every file's size, every
  safetensors header's sha256 (cheap: headers are small) and, with ``verify_sha256``, every file's sha256.
  Metadata of another tool is kept as it is, for people to read, and the package is marked not verified.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PackageError
from .format import read_model_index
from .metadata import METADATA_FILE, is_own_metadata, verify_package
from .safetensors_header import REPAIR_HINT, read_safetensors_header


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
            raise PackageError(f"{folder / name}: component folder {name!r} is missing; {REPAIR_HINT}")
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
