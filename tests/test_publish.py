"""Publishing a package: a push to a local Hub stand-in (real huggingface_hub HTTP calls), then a download of the
same repo through the app's provider; refusals for missing rights and for a repo that holds something else."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ernie_nf4.build.model_card import model_card
from ernie_nf4.build.publish import push_to_hub
from ernie_nf4.package.metadata import read_metadata, verify_package
from ernie_nf4.serving.provider import ensure_package

from .support.hub_server import GITATTRIBUTES, HubServer, LoopbackServer

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_dummy_write_token"


@pytest.fixture(autouse=True)
def lfs_uploads(monkeypatch):
    """The stand-in speaks the LFS upload protocol, not Xet (which huggingface_hub prefers with hf_xet installed)."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_XET", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def package(tiny_package, tmp_path):
    """A copy: pushing rewrites the card (its snippets name the repo)."""
    return Path(shutil.copytree(tiny_package, tmp_path / "ERNIE-Image-tiny-NF4"))


def sha256s(files: dict[str, bytes]) -> dict[str, str]:
    return {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}


def local_sha256s(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(folder).parts
    }


def api_tokens(hub: HubServer) -> set:
    """The Authorization headers sent to the Hub API (the LFS PUTs go to presigned storage URLs without one)."""
    return {
        auth for (_, path, _), auth in zip(hub.requests, hub.authorizations, strict=True) if path.startswith("/api/")
    }


def test_push_then_the_app_downloads_the_same_package(package, tmp_path):
    with HubServer() as hub:
        url = push_to_hub(package, "me/ERNIE-Image-tiny-NF4", token=TOKEN, endpoint=hub.endpoint)
        repo = hub.repos["me/ERNIE-Image-tiny-NF4"]
        assert url == f"{hub.endpoint}/me/ERNIE-Image-tiny-NF4/commit/{repo.commits[-1][0]}"
        assert not repo.private
        remote = hub.files("me/ERNIE-Image-tiny-NF4")
        assert remote.pop(".gitattributes") == GITATTRIBUTES  # what the Hub creates with the repo
        assert sha256s(remote) == local_sha256s(package), "every file lands with its bytes"
        weights = {p for p in remote if p.endswith(".safetensors")}
        assert weights and repo.lfs == weights, "weights go as LFS, small files inline"
        assert api_tokens(hub) == {f"Bearer {TOKEN}"}
        paths = [f"{method} {path}" for method, path, _ in hub.requests]
        for call in ("POST /api/repos/create", "POST /api/models/me/ERNIE-Image-tiny-NF4/preupload/main"):
            assert call in paths
        for call in ("POST /me/ERNIE-Image-tiny-NF4.git/info/lfs/objects/batch", "PUT /lfs-upload/"):
            assert any(p.startswith(call) for p in paths)
        assert paths[-1] == "POST /api/models/me/ERNIE-Image-tiny-NF4/commit/main"
        card = remote["README.md"].decode()
        assert card == model_card(read_metadata(package), repo_id="me/ERNIE-Image-tiny-NF4")
        assert "python app.py --repo-id me/ERNIE-Image-tiny-NF4" in card

        out = ensure_package(tmp_path / "dl", repo_id="me/ERNIE-Image-tiny-NF4", source=None, endpoint=hub.endpoint)
    verify_package(out, check_sha256=True)
    downloaded = local_sha256s(out)
    assert downloaded.pop(".gitattributes") == hashlib.sha256(GITATTRIBUTES).hexdigest()
    assert downloaded == local_sha256s(package)


def test_private_repo_commit_message_and_token_from_hf_token(package, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    with HubServer() as hub:
        push_to_hub(package, "me/private-nf4", private=True, commit_message="NF4 v1", endpoint=hub.endpoint)
        repo = hub.repos["me/private-nf4"]
        assert repo.private
        assert repo.messages == ["initial commit", "NF4 v1"]  # the repo's creation, then one upload commit
        assert api_tokens(hub) == {"Bearer hf_from_env"}


@pytest.mark.parametrize("status", [401, 403])
def test_missing_rights_are_refused_naming_the_repo(package, status):
    with HubServer() as hub:
        hub.deny = status
        with pytest.raises(PermissionError, match=rf"repo_id me/nf4: .*HTTP {status}.*hf auth login.*HF_TOKEN"):
            push_to_hub(package, "me/nf4", token=TOKEN, endpoint=hub.endpoint)
        assert "me/nf4" not in hub.repos


def test_anonymous_push_is_refused_with_the_login_hint(package):
    with HubServer() as hub:
        with pytest.raises(PermissionError, match=r"repo_id me/nf4: .*HTTP 401.*log in"):
            push_to_hub(package, "me/nf4", token=False, endpoint=hub.endpoint)


def test_repo_with_other_content_needs_overwrite(package):
    other = {"model_index.json": b'{"_class_name": "StableDiffusionPipeline"}', "unet/weights.safetensors": b"x" * 99}
    with HubServer() as hub:
        hub.add_repo("me/taken", {".gitattributes": GITATTRIBUTES, **other})
        with pytest.raises(FileExistsError, match=r"repo_id me/taken: the repo already holds 2 file\(s\).*--overwrite"):
            push_to_hub(package, "me/taken", token=TOKEN, endpoint=hub.endpoint)
        assert len(hub.repos["me/taken"].commits) == 1, "nothing was committed"

        push_to_hub(package, "me/taken", token=TOKEN, endpoint=hub.endpoint, overwrite=True)
        remote = hub.files("me/taken")
        assert ".gitattributes" in remote and "unet/weights.safetensors" not in remote, "the old files are gone"
        remote.pop(".gitattributes")
        assert sha256s(remote) == local_sha256s(package)


def test_a_package_that_does_not_verify_is_not_pushed(package):
    (package / "vae" / "config.json").write_text("{}")
    with HubServer() as hub:
        with pytest.raises(ValueError, match=r"vae/config.json"):
            push_to_hub(package, "me/nf4", token=TOKEN, endpoint=hub.endpoint)
        assert not hub.requests


def test_an_unreachable_hub_is_named(package):
    with HubServer() as hub:
        endpoint = hub.endpoint  # a port nobody listens on once the stand-in has stopped
    with pytest.raises(RuntimeError, match=rf"repo_id me/nf4: the upload to {endpoint} failed.*check the network"):
        push_to_hub(package, "me/nf4", token=TOKEN, endpoint=endpoint)


@pytest.mark.parametrize("repo_id", ["nf4", "me/", "a/b/c", "me/x.git", ""])
def test_bad_repo_id_is_named(package, repo_id):
    with pytest.raises(ValueError, match=r"repo_id .*USER/REPO"):
        push_to_hub(package, repo_id, token=TOKEN, endpoint="http://127.0.0.1:9")


def test_cli_pushes_an_existing_package_without_rebuilding(package):
    with HubServer() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"}
        before = (package / "quantization_metadata.json").read_bytes()
        result = run_cli(
            "--output",
            package,
            "--push-to-hub",
            "me/cli-nf4",
            "--private",
            "--revision-message",
            "from the CLI",
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert (package / "quantization_metadata.json").read_bytes() == before, "the package was not rebuilt"
        assert f"{hub.endpoint}/me/cli-nf4/commit/" in result.stdout
        assert hub.repos["me/cli-nf4"].private
        remote = hub.files("me/cli-nf4")
        remote.pop(".gitattributes")
        assert sha256s(remote) == local_sha256s(package)

        assert hub.repos["me/cli-nf4"].messages[-1] == "from the CLI"
        again = run_cli("--output", package, "--push-to-hub", "me/cli-nf4", env=env)
        assert again.returncode == 2 and "repo_id me/cli-nf4: the repo already holds" in again.stderr


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "quantize.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_publish_flags_are_checked_before_any_build(tmp_path):
    result = run_cli("--output", tmp_path / "out", "--private")
    assert result.returncode == 2 and "--private and --commit-message go with --push-to-hub" in result.stderr
    result = run_cli("--source", tmp_path / "nowhere", "--output", tmp_path / "out", "--push-to-hub", "not-a-repo")
    assert result.returncode == 2 and "repo_id 'not-a-repo': must be a Hub model id" in result.stderr
    assert not (tmp_path / "out").exists()
    assert "--revision-message" in run_cli("--help").stdout


# ---------------------------------------------------------------- a Hub that hangs, a Hub that echoes headers


class SilentServer:
    """Accepts connections on loopback, reads what comes, never answers."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.sock.close()
        for conn in self.connections:
            conn.close()
        self.thread.join(timeout=5)


class EchoServer(LoopbackServer):
    """Answers every request with HTTP 500 whose body and X-Error-Message header quote the request's headers."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _echo(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = f"bad request; your headers were:\n{self.headers}".encode()
                self.send_response(500)
                self.send_header("Content-Type", "text/plain")
                self.send_header("X-Error-Message", f"echo: authorization: {self.headers.get('Authorization')}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = _echo

        self._serve(Handler)


def test_a_silent_hub_times_out_with_a_message(package):
    import time

    with SilentServer() as hub:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=rf"repo_id me/nf4: the Hub at {hub.endpoint} sent no answer within 1 s"):
            push_to_hub(package, "me/nf4", token=TOKEN, endpoint=hub.endpoint, timeout=1)
        assert time.monotonic() - started < 15
        assert hub.connections, "the push did reach the server"
    with pytest.raises(ValueError, match="timeout 0: must be a number of seconds above 0"):
        push_to_hub(package, "me/nf4", token=TOKEN, endpoint="http://127.0.0.1:9", timeout=0)


def test_cli_hub_timeout_flag_ends_a_silent_push(package):
    import time

    with SilentServer() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"}
        started = time.monotonic()
        result = run_cli("--output", package, "--push-to-hub", "me/nf4", "--hub-timeout", "1", env=env)
        assert time.monotonic() - started < 60
    assert result.returncode == 2, result.stderr
    assert "sent no answer within 1 s" in result.stderr and "--hub-timeout" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_hub_echoing_the_request_headers_never_puts_the_token_in_messages_or_logs(package, caplog):
    import logging

    with EchoServer() as hub, caplog.at_level(logging.INFO):  # the CLI's level
        with pytest.raises(RuntimeError, match=r"repo_id me/nf4: the Hub at .* answered HTTP 500") as info:
            push_to_hub(package, "me/nf4", token=TOKEN, endpoint=hub.endpoint, timeout=5)
    message = str(info.value)
    assert "[redacted]" in message and TOKEN not in message and "Bearer" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained error carries it either
    assert TOKEN not in caplog.text

    with EchoServer() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"}
        result = run_cli("--output", package, "--push-to-hub", "me/nf4", "--hub-timeout", "5", env=env)
    assert result.returncode == 2 and "answered HTTP 500" in result.stderr, result.stderr
    assert TOKEN not in result.stdout + result.stderr and "Bearer hf_" not in result.stderr
