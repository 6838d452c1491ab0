"""Upload a package to the Hugging Face Hub: the library behind ``python quantize.py --push-to-hub``.

The package is verified (sizes and sha256 against its metadata) and its model card rewritten for the target repo
before anything is sent. The repo is created when missing; one that already holds files is replaced only with
``overwrite``. huggingface_hub does the transfer (``upload_folder``: one commit, large files as LFS or Xet as it
decides) and finds the token as usual (``HF_TOKEN``, or ``hf auth login``) unless one is passed.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path

from ..package.metadata import verify_package
from .model_card import write_model_card

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files a repo holds right after create_repo (the Hub commits a .gitattributes): not "other content".
_FRESH_REPO_FILES = {".gitattributes"}
_LOGIN = "log in with a token that has write access to it: `hf auth login`, or set HF_TOKEN"


def check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith(".git"):
        raise ValueError(f"repo_id {repo_id!r}: must be a Hub model id of the form USER/REPO, e.g. me/ERNIE-Image-NF4")
    return repo_id


@contextmanager
def _hub_errors(repo_id: str, endpoint: str):
    """Turn huggingface_hub's HTTP errors into errors that name the repo and the fix."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        yield
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403) or isinstance(err, (RepositoryNotFoundError, GatedRepoError)):
            raise PermissionError(
                f"repo_id {repo_id}: the Hub at {endpoint} refused (HTTP {status}): the token is missing, invalid "
                f"or cannot write there; {_LOGIN}"
            ) from err
        raise RuntimeError(f"repo_id {repo_id}: the Hub at {endpoint} answered HTTP {status}: {err}") from err
    except (OSError, ValueError):  # ours, and local file errors: as they are
        raise
    except Exception as err:  # the HTTP client's own errors (connection refused, timeout, ...)
        raise RuntimeError(
            f"repo_id {repo_id}: the upload to {endpoint} failed ({type(err).__name__}: {err}); "
            "check the network, or HF_ENDPOINT if you set it"
        ) from err


def push_to_hub(
    package_dir: str | Path,
    repo_id: str,
    private: bool = False,
    commit_message: str | None = None,
    overwrite: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload the package at ``package_dir`` to the Hub model repo ``repo_id``; returns the commit URL.

    ``private`` applies when the repo is created here. A repo that already holds files (other than the
    ``.gitattributes`` the Hub creates) is refused unless ``overwrite``, which makes the repo hold exactly the
    package. ``token`` and ``endpoint`` default to huggingface_hub's own (``HF_TOKEN`` or the saved login;
    ``HF_ENDPOINT``).

    Raises ``ValueError`` (bad ``repo_id``; ``PackageError`` when the package does not verify),
    ``FileExistsError`` (repo has other content), ``PermissionError`` (no token, or one without write rights)
    and ``RuntimeError`` (any other refusal by the Hub).
    """
    from huggingface_hub import HfApi

    repo_id = check_repo_id(repo_id)
    package_dir = Path(package_dir).expanduser().resolve()
    logger.info("verifying %s (sizes and sha256) before the upload", package_dir)
    verify_package(package_dir, check_sha256=True)

    api = HfApi(endpoint=endpoint, token=token)
    with _hub_errors(repo_id, api.endpoint):
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        logger.info("repo %s is ready", url)
        existing = sorted(set(api.list_repo_files(repo_id, repo_type="model")) - _FRESH_REPO_FILES)
        if existing and not overwrite:
            shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
            raise FileExistsError(
                f"repo_id {repo_id}: the repo already holds {len(existing)} file(s) ({shown}); pass --overwrite "
                "(overwrite=True) to replace its content with this package, or choose another repo"
            )
        if existing:
            logger.info("replacing the %d file(s) already in %s", len(existing), repo_id)
        write_model_card(package_dir, repo_id=repo_id)  # its snippets name this repo
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=package_dir,
            commit_message=commit_message or f"Upload ERNIE-Image NF4 package ({package_dir.name})",
            delete_patterns=["*"] if existing else None,  # files the package no longer has
        )
    logger.info("uploaded %s to %s: %s", package_dir, repo_id, info.commit_url)
    return info.commit_url
