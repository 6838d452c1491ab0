"""Upload a package to the Hugging Face Hub: the library behind ``python quantize.py --push-to-hub``.

The package is verified (sizes and sha256 against its metadata) and its model card rewritten for the target repo
before anything is sent. The repo is created when missing; one that already holds files is replaced only with
``overwrite``. huggingface_hub does the transfer (``upload_folder``: one commit, large files as LFS or Xet as it
decides) and finds the token as usual (``HF_TOKEN``, or ``hf auth login``) unless one is passed.

Every request waits at most ``timeout`` seconds for the Hub (to connect, and between the bytes of an answer), so a
silent server ends the push with a message instead of a hang. What a server answers is quoted only with anything
that looks like a credential (``Bearer ...``, ``hf_...``, ``Authorization: ...``, the token itself) redacted: a
server that echoes the request's headers never puts the token in a log.
"""

from __future__ import annotations

import logging
import math
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
DEFAULT_TIMEOUT = 60.0  # seconds to wait for the Hub's next bytes, per request
_CREDENTIAL = re.compile(
    r"(?i)\b(bearer|basic|token)(\s+|\s*[:=]\s*)[^\s\"',;}\]]+"
    r"|\b(authorization|cookie|x-api-key)(\"?\s*[:=]\s*\"?)[^\"',;}\]\r\n]+"
    r"|\bhf_[A-Za-z0-9_-]{4,}"
)
_QUOTED_CHARS = 500  # of a server's answer, at most


def _mask(match: re.Match) -> str:
    """Keep the word that names a credential (``Bearer``, ``Authorization:``), hide what follows it."""
    name, separator = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
    return f"{name}{separator}[redacted]" if name else "[redacted]"


def redact(text: object, token: str | None = None) -> str:
    """``text`` (something a server sent) with credentials replaced by ``[redacted]``, cut to a readable length."""
    text = _CREDENTIAL.sub(_mask, str(text))
    if token:
        text = text.replace(token, "[redacted]")
    return text if len(text) <= _QUOTED_CHARS else text[:_QUOTED_CHARS] + " ..."


def check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (0 < timeout < math.inf):
        raise ValueError(f"timeout {timeout!r}: must be a number of seconds above 0, e.g. {DEFAULT_TIMEOUT:g}")
    return float(timeout)


@contextmanager
def _network_timeout(seconds: float):
    """huggingface_hub's shared HTTP client waits at most ``seconds`` per request while the push runs."""
    from huggingface_hub.utils import get_session

    client = get_session()
    before = client.timeout
    client.timeout = seconds
    try:
        yield
    finally:
        client.timeout = before


def _is_timeout(err: BaseException) -> bool:
    return isinstance(err, TimeoutError) or any(c.__name__ == "TimeoutException" for c in type(err).__mro__)


def check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith(".git"):
        raise ValueError(f"repo_id {repo_id!r}: must be a Hub model id of the form USER/REPO, e.g. me/ERNIE-Image-NF4")
    return repo_id


@contextmanager
def _hub_errors(repo_id: str, endpoint: str, timeout: float, token: str | None):
    """Turn huggingface_hub's HTTP errors into errors that name the repo and the fix, quoting the server redacted."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        with _network_timeout(timeout):
            yield
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403) or isinstance(err, (RepositoryNotFoundError, GatedRepoError)):
            raise PermissionError(
                f"repo_id {repo_id}: the Hub at {endpoint} refused (HTTP {status}): the token is missing, invalid "
                f"or cannot write there; {_LOGIN}"
            ) from None
        raise RuntimeError(
            f"repo_id {repo_id}: the Hub at {endpoint} answered HTTP {status}: {redact(err, token)}"
        ) from None
    except Exception as err:  # the HTTP client's own errors (connection refused, timeout, ...)
        if _is_timeout(err):
            raise TimeoutError(
                f"repo_id {repo_id}: the Hub at {endpoint} sent no answer within {timeout:g} s; check the network, "
                "or wait longer with --hub-timeout (timeout=)"
            ) from None
        if isinstance(err, (OSError, ValueError)) and not type(err).__module__.startswith(("httpx", "huggingface")):
            raise  # ours, and local file errors: as they are
        raise RuntimeError(
            f"repo_id {repo_id}: the upload to {endpoint} failed ({type(err).__name__}: {redact(err, token)}); "
            "check the network, or HF_ENDPOINT if you set it"
        ) from None


def push_to_hub(
    package_dir: str | Path,
    repo_id: str,
    private: bool = False,
    commit_message: str | None = None,
    overwrite: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Upload the package at ``package_dir`` to the Hub model repo ``repo_id``; returns the commit URL.

    ``private`` applies when the repo is created here. A repo that already holds files (other than the
    ``.gitattributes`` the Hub creates) is refused unless ``overwrite``, which makes the repo hold exactly the
    package. ``token`` and ``endpoint`` default to huggingface_hub's own (``HF_TOKEN`` or the saved login;
    ``HF_ENDPOINT``). ``timeout``: seconds each request may wait for the Hub (``--hub-timeout``).

    Raises ``ValueError`` (bad ``repo_id`` or ``timeout``; ``PackageError`` when the package does not verify),
    ``FileExistsError`` (repo has other content), ``PermissionError`` (no token, or one without write rights),
    ``TimeoutError`` (the Hub did not answer within ``timeout``) and ``RuntimeError`` (any other refusal by the Hub).
    Nothing the server sends is quoted with a credential in it.
    """
    from huggingface_hub import HfApi, get_token

    repo_id = check_repo_id(repo_id)
    timeout = check_timeout(timeout)
    package_dir = Path(package_dir).expanduser().resolve()
    logger.info("verifying %s (sizes and sha256) before the upload", package_dir)
    verify_package(package_dir, check_sha256=True)

    api = HfApi(endpoint=endpoint, token=token)
    secret = token if isinstance(token, str) else get_token()
    with _hub_errors(repo_id, api.endpoint, timeout, secret):
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        logger.info("repo %s is ready", redact(url, secret))
        existing = sorted(set(api.list_repo_files(repo_id, repo_type="model")) - _FRESH_REPO_FILES)
        if existing and not overwrite:
            shown = redact(", ".join(existing[:5]), secret) + (
                f" and {len(existing) - 5} more" if len(existing) > 5 else ""
            )
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
    commit_url = redact(info.commit_url, secret)
    logger.info("uploaded %s to %s: %s", package_dir, repo_id, commit_url)
    return commit_url
