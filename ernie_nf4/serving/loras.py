"""The LoRAs an app offers: named sources (``NAME=PATH_OR_HUB_ID``, a folder of ``.safetensors``) and getting
their files, from disk or through the Hugging Face cache like the package.

A source is a local ``.safetensors`` file, a Hub repo ``owner/repo`` holding one ``.safetensors`` file (or several,
one of them ``pytorch_lora_weights.safetensors``, diffusers' name), or a file in a repo,
``owner/repo/path/in/repo.safetensors``. Only ``.safetensors`` files are ever fetched or read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgument, PackageUnavailable
from ..progress import ProgressCallback, detail, report
from ..request import LoraChoice
from ..runtime.lora_files import check_lora_file

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# A source ending so is a file, never a Hub repo (``folder/style.bin`` is not the repo ``folder/style.bin``).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_HUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


@dataclass(frozen=True)
class LoraSource:
    """A LoRA the app offers under ``name``, from ``source`` (a local file or a Hub id, see the module)."""

    name: str
    source: str

    def __post_init__(self) -> None:
        LoraChoice(self.name)  # the same rules as a request's name
        if not isinstance(self.source, str) or not self.source.strip():
            raise InvalidArgument(f"lora {self.name!r}: give a file or a Hub id after '='", field="lora")


def parse_lora(text: str, argument: str = "--lora") -> LoraSource:
    """``NAME=PATH_OR_HUB_ID`` as ``--lora`` takes it."""
    name, sep, source = str(text).partition("=")
    if not sep or not name.strip() or not source.strip():
        raise InvalidArgument(
            f"{argument} takes NAME=PATH_OR_HUB_ID (like style=./style.safetensors or style=owner/repo), got {text!r}",
            field=argument,
        )
    try:
        return LoraSource(name.strip(), source.strip())
    except InvalidArgument as err:
        raise InvalidArgument(f"{argument} {text!r}: {err}", field=argument) from None


def parse_lora_list(text: str | None, argument: str = "ERNIE_NF4_LORA") -> list[LoraSource]:
    """Several ``NAME=PATH_OR_HUB_ID`` separated by ``;`` or new lines (a Space's variable)."""
    entries = [e.strip() for e in re.split(r"[;\n]", text or "") if e.strip()]
    return [parse_lora(entry, argument) for entry in entries]


def loras_in_folder(folder: str | Path, argument: str = "--lora-dir") -> list[LoraSource]:
    """Every ``.safetensors`` file directly in ``folder``, named by its file name without the suffix."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InvalidArgument(f"{argument} {folder}: not a folder; give a folder of .safetensors files", field=argument)
    found = []
    for path in sorted(folder.glob("*.safetensors")):
        if path.is_file():
            try:
                found.append(LoraSource(path.stem, str(path)))
            except InvalidArgument as err:
                message = f"{argument} {folder}: {path.name}: {err}; rename the file"
                raise InvalidArgument(message, field=argument) from None
    return found


def offered_loras(*groups: list[LoraSource]) -> tuple[LoraSource, ...]:
    """The groups together, in order; a name given twice is refused, naming it."""
    sources: dict[str, LoraSource] = {}
    for source in (s for group in groups for s in group):
        if source.name in sources and sources[source.name] != source:
            raise InvalidArgument(
                f"lora {source.name!r} is given twice ({sources[source.name].source} and {source.source}); "
                "name them apart (NAME=...)",
                field="lora",
            )
        sources[source.name] = source
    return tuple(sources.values())


def _hub_parts(source: str) -> tuple[str, str | None] | None:
    """(repo id, file in it or None) when ``source`` reads as a Hub id, else None."""
    parts = source.split("/")
    if len(parts) < 2 or source.startswith((".", "/", "~")) or "\\" in source:
        return None
    repo = "/".join(parts[:2])
    if not _HUB_REPO.fullmatch(repo):
        return None
    if len(parts) == 2:
        return None if source.endswith(WEIGHT_SUFFIXES) else (repo, None)
    return repo, "/".join(parts[2:])


def _pick_file(repo: str, files: list[str]) -> str:
    """The one LoRA file among ``files`` (diffusers' name when there are several)."""
    files = sorted(f for f in files if f.endswith(".safetensors"))
    if len(files) == 1:
        return files[0]
    if DIFFUSERS_WEIGHT_NAME in files:
        return DIFFUSERS_WEIGHT_NAME
    if not files:
        raise PackageUnavailable(f"the repo {repo} holds no .safetensors file")
    raise PackageUnavailable(
        f"the repo {repo} holds {len(files)} .safetensors files ({', '.join(files[:5])}); name one as "
        f"{repo}/FILE.safetensors"
    )


def _cached_files(repo: str) -> list[str] | None:
    """The files of ``repo`` in the Hugging Face cache (what an earlier fetch got), or None when it holds none."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not in the cache
        return None
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors")] or None


def _repo_file(repo: str, endpoint: str | None) -> str:
    """The one LoRA file in ``repo``: from the Hub's list of its files, else (offline) from the cache."""
    from huggingface_hub import HfApi

    try:
        files = HfApi(endpoint=endpoint).list_repo_files(repo)
    except Exception:
        cached = _cached_files(repo)
        if cached is None:
            raise
        files = cached
    return _pick_file(repo, files)


def local_file(source: LoraSource) -> Path | None:
    """The file of a local ``source`` (checked: it exists and is a ``.safetensors`` file of a LoRA layout:
    ``check_lora_file``); None for a Hub id. Raises ``InvalidArgument`` naming the LoRA."""
    path = Path(source.source).expanduser()
    if not path.exists() and _hub_parts(source.source) is not None:
        return None
    if not path.is_file():
        raise InvalidArgument(f"lora {source.name!r}: {path} is not a file; give a .safetensors file or a Hub id")
    if path.suffix != ".safetensors":
        raise InvalidArgument(f"lora {source.name!r}: {path.name} is not a .safetensors file; only those are read")
    check_lora_file(source.name, path)  # at start, rather than failing each load
    return path


def fetch_lora(source: LoraSource, endpoint: str | None = None, on_progress: ProgressCallback | None = None) -> Path:
    """The local file of ``source``: the file itself, or the Hub file through the Hugging Face cache (downloaded
    once, reused offline). Raises ``InvalidArgument`` for a missing or non-safetensors local file and
    ``PackageUnavailable`` when the Hub file cannot be got, each naming the LoRA."""
    if (path := local_file(source)) is not None:
        return path
    repo, filename = _hub_parts(source.source)
    if filename is not None and not filename.endswith(".safetensors"):
        raise InvalidArgument(f"lora {source.name!r}: {filename} is not a .safetensors file; only those are read")
    from huggingface_hub import hf_hub_download

    report(on_progress, "download", detail("download_lora", name=source.name, source=source.source))
    try:
        filename = filename or _repo_file(repo, endpoint)
        return Path(hf_hub_download(repo, filename, endpoint=endpoint))
    except PackageUnavailable as err:
        raise PackageUnavailable(f"lora {source.name!r}: {err}") from None
    except Exception as err:  # offline, no such repo or file
        raise PackageUnavailable(
            f"lora {source.name!r}: could not get {source.source} from the Hub ({type(err).__name__}: {err}); "
            "check the id and the network, or give a local file"
        ) from err
