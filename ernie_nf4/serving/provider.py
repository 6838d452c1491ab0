"""Get a package: a loadable local folder, else a pre-quantized download, else a build from the original.

Any ERNIE-Image diffusers folder is accepted (``package.check``), whoever wrote it. A download may hold the
package at the repo's root or in one subfolder; its size is compared with free disk before anything is fetched;
bytes done/total and an ETA are reported while it runs; it lands in ``<model_dir>.download`` (where
huggingface_hub resumes an interrupted download) and is moved into place only once complete and checked. A
download that completes but cannot be loaded is removed, and the error says why.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..atomic import cannot_write_in, replace
from ..build.quantize import quantize_package
from ..errors import EnvironmentUnsupported, PackageError, PackageUnavailable
from ..formatting import format_bytes
from ..package.check import check_package
from ..package.metadata import folder_bytes
from ..progress import ProgressCallback, RateMeter, detail, report
from ..variants import VARIANTS

logger = logging.getLogger(__name__)

DEFAULT_REPO_ID = VARIANTS["ernie-image"].repo_id


@dataclass(frozen=True)
class RepoLayout:
    root: str  # "" (the repo's root) or the one subfolder that holds the package
    files: dict[str, int]  # path in the repo -> bytes, of the package's files
    skipped: tuple[str, ...] = ()  # folders ("name/") of other pipelines in the repo, left out

    @property
    def bytes(self) -> int:
        return sum(self.files.values())


def repo_layout(repo_id: str, revision: str | None = None, endpoint: str | None = None) -> RepoLayout:
    """Where in ``repo_id`` the package lies and the bytes of its files (from the repo's file list)."""
    from huggingface_hub import HfApi

    entries = HfApi(endpoint=endpoint).list_repo_tree(repo_id, revision=revision, recursive=True)
    sizes = {e.path: int(getattr(e, "size", 0) or 0) for e in entries if type(e).__name__ == "RepoFile"}
    indexes = [p for p in sizes if p == "model_index.json" or p.endswith("/model_index.json")]
    roots = sorted({p.rsplit("/", 1)[0] if "/" in p else "" for p in indexes})
    roots = [r for r in roots if r.count("/") == 0]  # the root, or one level down
    if not roots:
        raise PackageError(f"repo_id {repo_id}: no model_index.json at its root or in a subfolder; not a pipeline")
    root = "" if "" in roots else roots[0]
    if len(roots) > 1 and root:
        raise PackageError(f"repo_id {repo_id}: several subfolders hold a pipeline ({roots}); pass a repo with one")
    prefix = f"{root}/" if root else ""
    others = tuple(f"{r}/" for r in roots if r != root)  # other pipelines beside a root package: not fetched
    files = {p: s for p, s in sizes.items() if p.startswith(prefix) and not p.startswith(others)}
    return RepoLayout(root, files, others)


def _watch(folder: Path, total: int, on_progress: ProgressCallback | None, stop: threading.Event) -> None:
    """Report the bytes under ``folder`` (finished and partial files) against ``total`` until ``stop``."""
    meter = RateMeter()
    while not stop.wait(0.5):
        done = min(folder_bytes(folder), total)
        report(on_progress, "download", done=done, total=total, unit="bytes", eta_seconds=meter.eta(done, total))


def download_package(
    repo_id: str,
    model_dir: Path,
    revision: str | None = None,
    endpoint: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Download the package of ``repo_id`` into ``model_dir`` (see the module docstring). Returns ``model_dir``."""
    from huggingface_hub import snapshot_download

    model_dir = Path(model_dir)
    layout = repo_layout(repo_id, revision, endpoint)
    partial = model_dir.with_name(model_dir.name + ".download")
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    needed = layout.bytes - folder_bytes(partial)
    free = shutil.disk_usage(model_dir.parent).free
    if needed > free:
        raise EnvironmentUnsupported(
            f"model_dir {model_dir}: the package needs {format_bytes(needed)} more, {format_bytes(free)} free there; "
            "free some disk or pass --model-dir on another disk"
        )
    report(
        on_progress,
        "download",
        detail("download_files", repo=repo_id, files=len(layout.files), size=format_bytes(layout.bytes)),
        done=0,
        total=layout.bytes,
        unit="bytes",
    )
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(partial, layout.bytes, on_progress, stop), daemon=True)
    watcher.start()
    try:
        snapshot_download(
            repo_id,
            revision=revision,
            local_dir=partial,
            endpoint=endpoint,
            allow_patterns=[f"{layout.root}/*"] if layout.root else None,
            ignore_patterns=[f"{folder}*" for folder in layout.skipped] or None,
        )
    except Exception as err:
        raise PackageUnavailable(
            f"download of {repo_id} stopped ({type(err).__name__}: {err}); what arrived stays in {partial} and the "
            "next start resumes from there"
        ) from err
    finally:
        stop.set()
        watcher.join()
    package = partial / layout.root if layout.root else partial
    shutil.rmtree(package / ".cache", ignore_errors=True)
    try:
        check_package(package, argument="download")
    except PackageError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise PackageError(f"{repo_id} downloaded but cannot be loaded, so it was removed: {err}") from err
    report(on_progress, "download", detail("download_complete"), done=layout.bytes, total=layout.bytes, unit="bytes")
    replace(package, model_dir)
    shutil.rmtree(partial, ignore_errors=True)  # what lay beside a subfolder package (README, demo images)
    return model_dir


def ensure_package(
    model_dir: str | Path,
    repo_id: str | None = DEFAULT_REPO_ID,
    source: str | None = None,
    on_progress: ProgressCallback | None = None,
    build: Callable[..., Path] | None = None,
    endpoint: str | None = None,
) -> Path:
    """The package at ``model_dir``, got in this order: local folder → download ``repo_id`` → build ``source``.

    ``build(source=, output=, on_progress=)`` defaults to ``quantize_package``; ``endpoint`` overrides the Hub
    address (default: ``HF_ENDPOINT``). A local folder that is broken raises ``PackageError`` naming the file;
    when nothing works, ``PackageUnavailable`` lists what was tried and what to do.
    """
    model_dir = Path(model_dir).expanduser().resolve()
    if model_dir.exists():
        check_package(model_dir, argument="model_dir")
        report(on_progress, "load", detail("load_found", name=model_dir.name))
        return model_dir
    if problem := cannot_write_in(model_dir.parent):  # no download or build could be kept there
        raise PackageUnavailable(
            f"model_dir {model_dir}: no package there, and none can be written there ({problem}); give a folder "
            "this user can write, or one that holds a package"
        )
    tried = []
    if repo_id:
        try:
            return download_package(repo_id, model_dir, endpoint=endpoint, on_progress=on_progress)
        except EnvironmentUnsupported:
            raise
        except Exception as err:  # offline, no such repo, bad package: fall through to a build
            failed = detail("download_failed", repo=repo_id, error=f"{type(err).__name__}: {err}")
            tried.append(failed.text)
            report(on_progress, "download", failed)
    if source:
        build = quantize_package if build is None else build
        report(on_progress, "build", detail("build_from", source=source))
        try:
            return build(source=source, output=model_dir, on_progress=on_progress)
        except Exception as err:
            tried.append(f"build from {source} failed ({type(err).__name__}: {err})")
    raise PackageUnavailable(
        "Could not get the NF4 package: "
        + "; ".join(tried or ["no --repo-id or --source given"])
        + ". Check the network, pass --model-dir to a package you have, or build one with `python quantize.py`."
    )
