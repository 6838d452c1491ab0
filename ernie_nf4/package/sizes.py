"""Stats of a package folder as found on disk, for any package (this project's or another tool's): never raises.

Bytes are measured from disk; NF4 or not is read from each component's ``quantization_config``; the original's
sizes come only from this project's metadata (unknown otherwise, never guessed); another tool's metadata is kept
as it is for people to read.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ErnieNF4Error
from ..stats import ComponentStats, PackageStats
from .check import check_package
from .format import is_nf4, quantization_config
from .json_file import read_json
from .metadata import folder_bytes

logger = logging.getLogger(__name__)


def _component_names(folder: Path) -> list[str]:
    try:
        index = read_json(folder / "model_index.json", "")
        return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and (folder / k).is_dir()]
    except (OSError, ValueError, AttributeError):  # PackageError is a ValueError
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _component(folder: Path, name: str, own: dict | None) -> ComponentStats:
    try:
        quantized, config = is_nf4(folder / name), quantization_config(folder / name)
    except ErnieNF4Error:
        quantized, config = False, None
    record = (own or {}).get("components", {}).get(name, {})
    return ComponentStats(name, quantized, folder_bytes(folder / name), record.get("bytes_before"), config)


def package_stats(folder: str | Path) -> PackageStats | None:
    """``PackageStats`` of ``folder``, or None when there is no folder yet."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    try:
        check = check_package(folder)
        verified, provenance, own = check.verified, check.provenance, check.metadata
        foreign, notes = check.foreign_metadata, list(check.notes)
    except ErnieNF4Error as err:
        logger.warning("package %s: %s", folder, err)
        verified, provenance, own, foreign = False, "cannot be loaded", None, None
        notes = [str(err).replace(str(folder), folder.name)]
    components = [_component(folder, name, own) for name in _component_names(folder)]
    before = own["totals"]["bytes_before"] if own else None
    return PackageStats(
        name=folder.name,
        verified=verified,
        provenance=provenance,
        components=components,
        bytes_before=before,
        bytes_on_disk=folder_bytes(folder),
        quantization=own["quantization"] if own else None,
        versions=own["versions"] if own else None,
        gpu=own.get("gpu") if own else None,
        benchmarks=own["benchmarks"] if own else {},
        foreign_metadata=foreign,
        notes=notes,
    )
