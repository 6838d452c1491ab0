"""Open-time checks of a pipeline folder, whoever wrote it: what can be checked without trusting anyone.

- ``model_index.json`` names an ERNIE-Image pipeline with allowed classes only (``format``);
- every component folder is there; every component's config (``config.json``, ``scheduler_config.json``) is
  JSON of bounded size and depth, and its sizes lie within sane bounds (``bounds``), before anything is built;
- every ``.safetensors`` file's header parses and its tensors end exactly at the end of the file (a truncated or
  damaged file is named, with the fix), and a sample of every floating tensor is finite (``finite``);
- a ``quantization_metadata.json`` written by this project is validated strictly: every file's size, every small
  file's sha256 (configs, tokenizers), every safetensors header's sha256 (cheap: headers are small) and, with
  ``verify_sha256``, the weights' sha256. Metadata of another tool is kept as it is, for people to read, and the
  package is marked not verified; this project's cut short or damaged (empty, or naming its ``format_version``
  but not JSON) is refused.

``PackageCheck.provenance`` says exactly which of these ran.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PackageError
from .bounds import CONFIG_FILES, check_config_bounds
from .finite import check_finite_sample
from .format import read_model_index
from .json_file import MAX_JSON_BYTES, read_json
from .metadata import METADATA_FILE, is_own_metadata, verify_package
from .safetensors_header import REPAIR_HINT, read_safetensors_header

WEIGHTS_HASHED = "verified by ernie-nf4 metadata: sha256 of every file"
SMALL_FILES_HASHED = (
    "checked against ernie-nf4 metadata: sha256 of configs and tokenizers, size and header of the weights "
    "(--verify-sha256 hashes the weights too)"
)
logger = logging.getLogger(__name__)
FOREIGN = "not verified by ernie-nf4 metadata (written by another tool): safetensors headers and configs checked"


@dataclass
class PackageCheck:
    """What opening a folder found. ``verified``: this project's metadata vouched for every file (its size, and
    the sha256 of every small file); ``weights_hashed``: the weights' sha256 was checked too."""

    folder: Path
    components: dict[str, list]
    verified: bool
    metadata: dict | None = None  # this project's metadata (validated)
    foreign_metadata: object = None  # another tool's metadata, as read (any JSON), or its raw text
    notes: list[str] = field(default_factory=list)
    weights_hashed: bool = False

    @property
    def provenance(self) -> str:
        """What was checked, in words people read (the Stats tab, the run info)."""
        if not self.verified:
            return FOREIGN
        return WEIGHTS_HASHED if self.weights_hashed else SMALL_FILES_HASHED


def _read_foreign(path: Path) -> tuple[object, str]:
    """Another tool's metadata as read (any JSON), or its first 4000 characters when it is not JSON this app
    reads (not JSON, too large, nested too deeply); and a note saying which."""
    try:
        return read_json(path, "shown as text"), f"{METADATA_FILE} was written by another tool; shown as it is"
    except PackageError as err:
        text = path.read_bytes()[:4000].decode("utf-8", errors="replace")
        return text, str(err).replace(str(path), METADATA_FILE) + " (written by another tool)"


def _refuse_damaged_metadata(path: Path) -> None:
    """``PackageError`` for a metadata file that is this project's cut short or damaged, not another tool's: empty,
    or naming this project's ``format_version`` but not valid JSON. (Too large or too deep is noted, not refused.)"""
    if not path.is_file() or path.stat().st_size > MAX_JSON_BYTES:
        return
    raw = path.read_bytes()
    if not raw.strip():
        why = "empty"
    elif b'"format_version"' not in raw:
        return
    else:
        try:
            json.loads(raw.decode("utf-8"))
            return
        except RecursionError:
            return
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            why = f"not valid JSON: {err}"
    raise PackageError(f"{path}: ernie-nf4's metadata, cut short or damaged ({why}); {REPAIR_HINT}")


def _check_configs(folder: Path, components: dict) -> None:
    for name in components:
        for file_name in CONFIG_FILES:
            path = folder / name / file_name
            if path.is_file():
                check_config_bounds(path, read_json(path, REPAIR_HINT), REPAIR_HINT)


def _check_weights(folder: Path, components: dict) -> dict[str, str]:
    """The sha256 of every safetensors header, by path in the package, after checking each file."""
    headers = {}
    for name in components:
        for file in sorted((folder / name).rglob("*.safetensors")):
            if not file.is_file():
                raise PackageError(
                    f"{file}: not a file (a {'folder' if file.is_dir() else 'link to nothing'}); {REPAIR_HINT}"
                )
            raw, header = read_safetensors_header(file)
            check_finite_sample(file, len(raw), header)
            headers[file.relative_to(folder).as_posix()] = hashlib.sha256(raw).hexdigest()
    return headers


def check_package(folder: str | Path, verify_sha256: bool = False, argument: str = "model_dir") -> PackageCheck:
    """Check ``folder`` as described in the module docstring; raises ``PackageError`` naming what is broken."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PackageError(f"{argument} {folder}: no such folder")
    _, components = read_model_index(folder, argument)
    for name in components:
        if not (folder / name).is_dir():
            raise PackageError(f"{folder / name}: component folder {name!r} is missing; {REPAIR_HINT}")
    _check_configs(folder, components)
    headers = _check_weights(folder, components)
    meta_path = folder / METADATA_FILE
    if meta_path.is_file() and is_own_metadata(meta_path):
        metadata = verify_package(folder, check_sha256=verify_sha256, header_hashes=headers)
        return PackageCheck(folder, components, verified=True, metadata=metadata, weights_hashed=verify_sha256)
    _refuse_damaged_metadata(meta_path)
    check = PackageCheck(folder, components, verified=False)
    if verify_sha256:
        check.notes.append("verify_sha256: no ernie-nf4 metadata here to check the weights' sha256 against")
        logger.warning("%s: %s", folder, check.notes[-1])
    if meta_path.is_file():
        check.foreign_metadata, note = _read_foreign(meta_path)
        check.notes.append(note)
    else:
        check.notes.append(f"no {METADATA_FILE}: sizes of the original are unknown")
    return check
