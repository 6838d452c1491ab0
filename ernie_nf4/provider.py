"""Get an NF4 package: a valid local folder, else a pre-quantized download, else a build from the original."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .metadata import PackageError, verify_package

logger = logging.getLogger(__name__)

DEFAULT_REPO_ID = "Xiejiehang/ERNIE-Image-NF4"


def download_package(repo_id: str, model_dir: Path, revision: str | None = None, endpoint: str | None = None) -> Path:
    """Download a pre-quantized package into ``model_dir``.

    Files go to ``<model_dir>.download`` first (``huggingface_hub`` resumes there after an interruption)
    and the folder is renamed to ``model_dir`` only once every file is in and the package verifies, so a
    partial download is never taken for a package.
    """
    from huggingface_hub import snapshot_download

    partial = model_dir.with_name(model_dir.name + ".download")
    snapshot_download(repo_id, revision=revision, local_dir=partial, endpoint=endpoint)
    shutil.rmtree(partial / ".cache", ignore_errors=True)
    verify_package(partial)
    os.replace(partial, model_dir)
    return model_dir


def ensure_package(
    model_dir: str | Path,
    repo_id: str | None = DEFAULT_REPO_ID,
    source: str | None = None,
    on_progress: Callable[[str], None] | None = None,
    build: Callable[..., Path] | None = None,
    endpoint: str | None = None,
) -> Path:
    """The package at ``model_dir``, got in this order: local folder → download ``repo_id`` → build ``source``.

    ``build`` defaults to ``quantize_package``; ``endpoint`` overrides the Hub address (default: ``HF_ENDPOINT``).
    Raises ``RuntimeError`` listing what was tried and what to do.
    """

    def report(message: str) -> None:
        logger.info(message)
        if on_progress is not None:
            on_progress(message)

    model_dir = Path(model_dir).expanduser().resolve()
    tried = []
    if model_dir.exists():
        try:
            verify_package(model_dir)
            report(f"using the package at {model_dir}")
            return model_dir
        except PackageError as err:
            raise RuntimeError(f"model_dir {model_dir} is not a usable package: {err}") from err
    if repo_id:
        report(f"downloading the pre-quantized package {repo_id} (resumable)")
        try:
            return download_package(repo_id, model_dir, endpoint=endpoint)
        except Exception as err:  # offline, no such repo, bad package: fall through to a build
            tried.append(f"download of {repo_id} failed ({type(err).__name__}: {err})")
            report(tried[-1])
    if source:
        if build is None:
            from .quantize import quantize_package as build
        report(f"building the package from {source} with quantize.py (one component at a time)")
        try:
            return build(source=source, output=model_dir, on_progress=report)
        except Exception as err:
            tried.append(f"build from {source} failed ({type(err).__name__}: {err})")
    raise RuntimeError(
        "Could not get the NF4 package: "
        + "; ".join(tried or ["no --repo-id or --source given"])
        + ". Check the network, pass --model-dir to a package you have, or build one with `python quantize.py`."
    )
