"""``quantization_metadata.json``: what a package holds, measured from its files, and how it was built.

``measure_folder`` reads sizes and sha256 from disk; ``read_metadata`` validates the file and names the
path and the field when something is wrong; ``verify_package`` checks the files still match it: every file's
size, every small file's sha256 (configs, tokenizers: everything but the weights), the weights' safetensors
headers, and with ``check_sha256`` the weights' sha256 too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..atomic import write_text
from ..errors import PackageError
from .json_file import read_json
from .safetensors_header import REPAIR_HINT, header_sha256

METADATA_FILE = "quantization_metadata.json"
FORMAT_VERSION = 1

_REQUIRED = {
    "format_version": int,
    "created_at": str,
    "source": dict,
    "quantization": dict,
    "components": dict,
    "totals": dict,
    "versions": dict,
    "benchmarks": dict,
}
_COMPONENT_REQUIRED = {"action": str, "bytes_before": int, "bytes_after": int, "files": dict}
_TOTALS_REQUIRED = {"bytes_before": int, "bytes_after": int, "ratio": float, "reduction": float}


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def measure_folder(folder: Path, with_sha256: bool = True) -> dict[str, dict]:
    """``{relative path: {"bytes", "sha256", "header_sha256"}}`` for every file under ``folder`` (symlinks
    followed); ``header_sha256`` (safetensors files) lets every open check the headers cheaply."""

    files = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        entry = {"bytes": os.stat(path).st_size}
        if with_sha256:
            entry["sha256"] = sha256_file(path)
            if path.suffix == ".safetensors":
                entry["header_sha256"] = header_sha256(path)
        files[path.relative_to(folder).as_posix()] = entry
    return files


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (symlinks followed; 0 when it does not exist), tolerating files that
    move while it counts (a download renames its files as it goes)."""
    total = 0
    try:
        for path in Path(folder).rglob("*"):
            try:
                total += path.stat().st_size if path.is_file() else 0
            except OSError:
                continue
    except OSError:
        return total
    return total


def totals(bytes_before: int, bytes_after: int) -> dict:
    return {
        "bytes_before": bytes_before,
        "bytes_after": bytes_after,
        "ratio": round(bytes_after / bytes_before, 6) if bytes_before else 0.0,
        "reduction": round(1 - bytes_after / bytes_before, 6) if bytes_before else 0.0,
    }


def write_metadata(package_dir: Path, metadata: dict) -> Path:
    return write_text(Path(package_dir) / METADATA_FILE, json.dumps(metadata, indent=2, ensure_ascii=False) + "\n")


def is_own_metadata(path: Path) -> bool:
    """Whether a metadata file claims to be this project's (it has ``format_version``); another tool's has not."""
    try:
        data = read_json(Path(path), REPAIR_HINT)
    except (PackageError, OSError):
        return False
    return isinstance(data, dict) and "format_version" in data


def is_weights(path: Path | str) -> bool:
    """Whether a package file holds weights (safetensors): the large files, hashed only when asked; every other
    file is small and hashed at every open."""
    return str(path).endswith(".safetensors")


def _check_fields(data: dict, required: dict, where: str, path: Path) -> None:
    for field, kind in required.items():
        if field not in data:
            raise PackageError(f"{path}: field '{where}{field}' is missing")
        value = data[field]
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if not ok or (kind is int and isinstance(value, bool)):
            raise PackageError(f"{path}: field '{where}{field}' must be {kind.__name__}, got {value!r}")


def read_metadata(package_dir: str | Path) -> dict:
    """Load and validate a package's metadata; raises :class:`PackageError` naming path and field."""
    path = Path(package_dir) / METADATA_FILE
    if not path.is_file():
        raise PackageError(f"No quantization metadata found at {path}: not an ernie-nf4 package")
    data = read_json(path, REPAIR_HINT)
    if not isinstance(data, dict):
        raise PackageError(f"{path}: must hold a JSON object")
    _check_fields(data, _REQUIRED, "", path)
    if data["format_version"] != FORMAT_VERSION:
        raise PackageError(f"{path}: field 'format_version' is {data['format_version']}, expected {FORMAT_VERSION}")
    for name, component in data["components"].items():
        if not isinstance(component, dict):
            raise PackageError(f"{path}: field 'components.{name}' must be an object")
        _check_fields(component, _COMPONENT_REQUIRED, f"components.{name}.", path)
        if component["action"] not in ("quantized", "copied"):
            raise PackageError(f"{path}: field 'components.{name}.action' must be 'quantized' or 'copied'")
    _check_fields(data["totals"], _TOTALS_REQUIRED, "totals.", path)
    return data


def verify_package(package_dir: str | Path, check_sha256: bool = False, header_hashes: dict | None = None) -> dict:
    """Validate the metadata and check every listed file exists with its recorded size, every small file (all but
    the weights) its recorded sha256, and with ``check_sha256`` the weights too. ``header_hashes`` (``{path:
    sha256}`` of the safetensors headers, from ``check``) are compared with the recorded ones where the metadata
    has them."""
    package_dir = Path(package_dir)
    data = read_metadata(package_dir)
    fix = REPAIR_HINT
    for name, component in data["components"].items():
        folder = package_dir / name
        if not folder.is_dir():
            raise PackageError(f"{folder}: component folder '{name}' is missing; {fix}")
        for rel, entry in component["files"].items():
            file = folder / rel
            if not file.is_file():
                raise PackageError(f"{file}: file is missing; {fix}")
            size = file.stat().st_size
            if size != entry["bytes"]:
                raise PackageError(f"{file}: {size} bytes on disk, metadata says {entry['bytes']}; {fix}")
            key = f"{name}/{rel}"
            if header_hashes and "header_sha256" in entry and header_hashes.get(key) != entry["header_sha256"]:
                raise PackageError(f"{file}: its safetensors header differs from the metadata (damaged); {fix}")
            if (check_sha256 or not is_weights(file)) and sha256_file(file) != entry.get("sha256"):
                raise PackageError(f"{file}: sha256 differs from the metadata (edited or corrupted); {fix}")
    _verify_package_files(package_dir, data, path=package_dir / METADATA_FILE)
    return data


def _verify_package_files(package_dir: Path, data: dict, path: Path) -> None:
    """The files beside the components that the metadata lists under ``files`` (the live previews' map): each
    there, of its recorded size and sha256 (they are small). Packages written before it have no ``files``."""
    files = data.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        raise PackageError(f"{path}: field 'files' must map file names to objects")
    for rel, entry in files.items():
        file = package_dir / rel
        if "/" in rel or "\\" in rel or rel in ("", ".", "..") or not file.is_file():
            raise PackageError(f"{file}: file is missing; {REPAIR_HINT}")
        if file.stat().st_size != entry.get("bytes") or sha256_file(file) != entry.get("sha256"):
            raise PackageError(f"{file}: differs from the metadata (edited or corrupted); {REPAIR_HINT}")
