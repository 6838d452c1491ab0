"""Resolve an ERNIE-Image original (a Hub id or a local diffusers folder) to a checked local folder."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgument, PackageUnavailable
from ..package.format import read_model_index

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedSource:
    path: Path
    id: str
    revision: str | None
    commit: str | None


def check_pipeline_folder(folder: Path, argument: str = "source") -> dict:
    """The folder's ``model_index.json``, after checking it describes an ERNIE-Image pipeline of allowed classes."""
    return read_model_index(folder, argument)[0]


def is_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text))


def precheck_source(source: str) -> Path | None:
    """Cheap checks before heavy work: the checked local folder, or None for a well-formed Hub id."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InvalidArgument(f"source {source}: is a file; pass a diffusers folder or a Hub id")
        check_pipeline_folder(path)
        return path.resolve()
    if not is_hub_id(source):
        raise InvalidArgument(f"source {source}: no such folder, and not a Hub id of the form owner/name")
    return None


def resolve_source(source: str, revision: str | None = None) -> ResolvedSource:
    """A local folder as it is, or a Hub repo downloaded (resumably) into the Hugging Face cache."""
    local = precheck_source(source)
    if local is not None:
        return ResolvedSource(path=local, id=str(local), revision=None, commit=None)

    from huggingface_hub import snapshot_download

    logger.info("downloading %s (revision %s)", source, revision or "main")
    try:
        folder = Path(snapshot_download(source, revision=revision))
    except Exception as err:  # the hub client raises many types; all mean "could not get it"
        raise PackageUnavailable(
            f"source {source}: could not download it ({type(err).__name__}: {err}). "
            "Check the network and the repo id, or pass a local folder with --source"
        ) from err
    check_pipeline_folder(folder)
    commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None
    return ResolvedSource(path=folder, id=source, revision=revision, commit=commit)
