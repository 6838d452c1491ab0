"""A local stand-in for the Hugging Face Hub, served on loopback, for upload and download tests.

It answers the endpoints huggingface_hub calls, over real HTTP:

- create a repo (``POST /api/repos/create``; a new repo holds a ``.gitattributes`` commit, as on the Hub), check a
  card's front matter (``POST /api/validate-yaml``), repo info (``/api/models/<repo>[/revision/<rev>]``) and its
  files (``/api/models/<repo>/tree/<rev>[/<path>]``, recursive or not);
- upload: pre-upload (``POST /api/models/<repo>/preupload/<rev>``: LFS for weights and files of 10 MiB or more), the
  LFS batch API (``POST /<repo>.git/info/lfs/objects/batch``) and the ``PUT`` to the href it returns (sha256
  checked), then the commit (``POST /api/models/<repo>/commit/<rev>``: NDJSON header, file, lfsFile, deletedFile and
  deletedFolder lines);
- download: ``HEAD``/``GET /<repo>/resolve/<rev>/<path>`` with ``Range``.

Repos live in memory, one ``{path: bytes}`` snapshot per commit. Uploads use the LFS protocol, so tests turn Xet off
(``HF_HUB_DISABLE_XET``); the real Hub takes Xet uploads when ``hf_xet`` is installed. Writes need an
``Authorization`` header (as on the Hub: anonymous writes get 401); ``deny = 401`` answers every request as to an
invalid token, ``deny = 403`` refuses every write as to a read-only token. ``cuts[path] = (n, size)`` cuts that
file's body short after ``size`` bytes for the next ``n`` downloads (a dropped connection).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the commit of a repo seeded from a folder
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".msgpack", ".h5", ".png")
LFS_MIN_BYTES = 10 * 2**20
_API = re.compile(r"^/api/models/([^/]+/[^/]+?)(?:/(revision|tree|preupload|commit)/([^/]+)(?:/(.*))?)?$")
_LFS_BATCH = re.compile(r"^/([^/]+/[^/]+)\.git/info/lfs/objects/batch$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_LFS_PUT = re.compile(r"^/lfs-upload/([0-9a-f]{64})$")


def git_hash(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    commits: list[tuple[str, dict[str, bytes]]]  # (commit oid, files), oldest first
    lfs: set[str] = field(default_factory=set)  # paths stored as LFS objects
    private: bool = False
    messages: list[str] = field(default_factory=lambda: ["initial commit"])  # each commit's summary

    def snapshot(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        if revision in ("main", "HEAD"):
            return self.commits[-1]
        return next((c for c in self.commits if c[0] == revision), None)


class LoopbackServer:
    """A threaded HTTP server on loopback around a handler class; ``endpoint`` is its URL, ``with`` runs it."""

    def _serve(self, handler) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class HubServer(LoopbackServer):
    def __init__(self, folder: Path | None = None, repo_id: str = "owner/ERNIE-Image-NF4"):
        self.repo_id = repo_id
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content
        self.lfs_announced: set[str] = set()  # oids a batch call handed an upload href for
        self.cuts: dict[str, tuple[int, int]] = {}  # path -> (times left, bytes to send before dropping)
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.authorizations: list[str | None] = []
        self.deny: int | None = None
        self.lock = threading.Lock()
        if folder is not None:
            folder = Path(folder)
            files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
            self.add_repo(repo_id, files, commit=COMMIT)
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                standin.handle(self, body=False)

            def do_GET(self):
                standin.handle(self, body=True)

            def do_POST(self):
                standin.handle(self, body=True)

            def do_PUT(self):
                standin.handle(self, body=True)

        self._serve(Handler)

    # --- the store -------------------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes], commit: str | None = None, private: bool = False):
        commit = commit or hashlib.sha1(repr((repo_id, sorted(files.items()))).encode()).hexdigest()
        repo = Repo([(commit, dict(files))], private=private)
        repo.lfs = {path for path, data in files.items() if self._is_lfs(path, len(data))}
        self.repos[repo_id] = repo
        return repo

    def files(self, repo_id: str | None = None, revision: str = "main") -> dict[str, bytes]:
        """The files of ``repo_id`` (default: the seeded repo) at ``revision``."""
        return dict(self.repos[repo_id or self.repo_id].snapshot(revision)[1])

    @staticmethod
    def _is_lfs(path: str, size: int) -> bool:
        return size > 0 and (path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_BYTES)

    # --- HTTP ------------------------------------------------------------------------------------------------

    @staticmethod
    def _send(request, status: int, value=None, body: bool = True, headers: dict | None = None) -> None:
        data = b"" if value is None else json.dumps(value).encode()
        request.send_response(status)
        for key, item in {"Content-Type": "application/json", **(headers or {})}.items():
            request.send_header(key, item)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            request.wfile.write(data)

    def _error(self, request, status: int, message: str, code: str | None = None, body: bool = True) -> None:
        headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
        self._send(request, status, {"error": message}, body=body, headers=headers)

    @staticmethod
    def _read_body(request) -> bytes:
        if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(request.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(request.rfile.read(size))
                request.rfile.readline()
            while request.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return request.rfile.read(int(request.headers.get("Content-Length") or 0))

    def handle(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        url = urlsplit(request.path)
        path, query = unquote(url.path), parse_qs(url.query)
        method = request.command
        self.requests.append((method, path, request.headers.get("Range")))
        self.authorizations.append(request.headers.get("Authorization"))
        data = self._read_body(request) if method in ("POST", "PUT") else b""
        if self.deny == 401:
            return self._error(request, 401, "Invalid credentials in Authorization header", body=body)
        # The LFS PUT goes to the href the batch answer gave (a presigned storage URL on the Hub): no token.
        if method in ("POST", "PUT") and path != "/api/validate-yaml" and not _LFS_PUT.match(path):
            if self.deny == 403:
                return self._error(request, 403, "You don't have the rights to write to this repository")
            if not request.headers.get("Authorization"):
                return self._error(request, 401, "Invalid username or password.")
        with self.lock:
            if path == "/api/repos/create" and method == "POST":
                return self._create(request, json.loads(data))
            if path == "/api/validate-yaml" and method == "POST":
                return self._validate_yaml(request, json.loads(data))
            if (match := _LFS_PUT.match(path)) and method == "PUT":
                return self._lfs_put(request, match.group(1), data)
            if (match := _LFS_BATCH.match(path)) and method == "POST":
                return self._lfs_batch(request, json.loads(data))
            for pattern in (_API, _RESOLVE):
                if match := pattern.match(path):
                    repo = self.repos.get(match.group(1))
                    if repo is None or (repo.private and not request.headers.get("Authorization")):
                        return self._error(request, 404, "Repository not found", "RepoNotFound", body)
                    if pattern is _RESOLVE:
                        return self._resolve(request, repo, *match.groups()[1:], body=body)
                    return self._api(request, match.group(1), repo, *match.groups()[1:], query, data, body)
        return self._error(request, 404, f"no route for {method} {path}", body=body)

    def _create(self, request, payload: dict) -> None:
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.repos:
            return self._send(request, 409, {"error": "You already created this model repo", "url": url})
        private = payload.get("visibility") == "private" or payload.get("private") is True
        self.add_repo(repo_id, {".gitattributes": GITATTRIBUTES}, private=private)
        return self._send(request, 200, {"url": url, "name": repo_id})

    def _validate_yaml(self, request, payload: dict) -> None:
        match = re.match(r"---\r?\n(.*?)\r?\n---", payload.get("content", ""), re.S)
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as err:
            return self._send(request, 400, {"errors": [{"message": f"YAML: {err}"}]})
        if not isinstance(meta, dict):
            return self._send(request, 400, {"errors": [{"message": "metadata must be a mapping"}]})
        return self._send(request, 200, {"errors": [], "warnings": []})

    def _lfs_batch(self, request, payload: dict) -> None:
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-upload/{item['oid']}"}}
                self.lfs_announced.add(item["oid"])
            objects.append(entry)
        data = {"transfer": "basic", "objects": objects}
        return self._send(request, 200, data, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, request, oid: str, data: bytes) -> None:
        if oid not in self.lfs_announced:
            return self._error(request, 403, f"no upload of {oid} was announced through the LFS batch API")
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(request, 400, f"content does not match sha256 {oid}")
        self.lfs_objects[oid] = data
        return self._send(request, 200)

    def _api(self, request, repo_id, repo, action, revision, sub, query, data, body) -> None:
        snapshot = repo.snapshot(revision or "main")
        if snapshot is None:
            return self._error(request, 404, f"Invalid rev id: {revision}", "RevisionNotFound", body)
        commit, files = snapshot
        if action in (None, "revision"):
            info = {"id": repo_id, "sha": commit, "private": repo.private}
            return self._send(request, 200, info | {"siblings": [{"rfilename": f} for f in sorted(files)]}, body)
        if action == "tree":
            return self._send(request, 200, self._tree(repo, files, sub or "", query), body)
        if action == "preupload":
            return self._send(request, 200, {"files": [self._mode(repo, files, f) for f in json.loads(data)["files"]]})
        return self._commit(request, repo_id, repo, data)

    def _tree(self, repo: Repo, files: dict[str, bytes], prefix: str, query: dict) -> list[dict]:
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        entries, folders = [], set()
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                if depth == 1 or recursive:
                    folders.add(prefix + "/".join(parts[:depth]))
            if len(parts) > 1 and not recursive:
                continue
            data = files[path]
            entry = {"type": "file", "oid": git_hash(data), "size": len(data), "path": path}
            if path in repo.lfs:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        folders = [{"type": "directory", "oid": git_hash(f.encode()), "size": 0, "path": f} for f in sorted(folders)]
        return folders + entries

    def _mode(self, repo: Repo, files: dict[str, bytes], item: dict) -> dict:
        path, size = item["path"], item["size"]
        lfs = self._is_lfs(path, size)
        oid = None
        if path in files:
            old = files[path]
            oid = hashlib.sha256(old).hexdigest() if path in repo.lfs else git_hash(old)
        return {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}

    def _commit(self, request, repo_id: str, repo: Repo, data: bytes) -> None:
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        parent, files = repo.commits[-1]
        files, lfs = dict(files), set(repo.lfs)
        summary = ""
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                if value.get("parentCommit") not in (None, parent):
                    return self._error(request, 412, "A commit has happened since. Please refresh and try again.")
                summary = value["summary"]
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                lfs.discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return self._error(request, 422, f"LFS object {value['oid']} of {value['path']} was not uploaded")
                files[value["path"]] = self.lfs_objects[value["oid"]]
                lfs.add(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(folder)}
            else:
                return self._error(request, 400, f"unknown commit line {key!r}")
        oid = hashlib.sha1(parent.encode() + data).hexdigest()
        repo.commits.append((oid, files))
        repo.messages.append(summary)
        repo.lfs = lfs & set(files)
        commit_url = f"{self.endpoint}/{repo_id}/commit/{oid}"
        return self._send(request, 200, {"commitUrl": commit_url, "commitOid": oid, "success": True})

    def _resolve(self, request, repo: Repo, revision: str, rel: str, body: bool) -> None:
        snapshot = repo.snapshot(revision)
        if snapshot is None:
            return self._error(request, 404, f"Invalid rev id: {revision}", "RevisionNotFound", body)
        commit, files = snapshot
        if rel not in files:
            return self._error(request, 404, "Entry not found", "EntryNotFound", body)
        data = files[rel]
        start = 0
        if (spec := request.headers.get("Range")) and spec.startswith("bytes="):
            start = int(spec[6:].split("-")[0])
        request.send_response(206 if start else 200)
        request.send_header("X-Repo-Commit", commit)
        request.send_header("Accept-Ranges", "bytes")
        request.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
        request.send_header("Content-Length", str(len(data) - start))
        if start:
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        request.end_headers()
        if not body:
            return
        times, size = self.cuts.get(rel, (0, 0))
        if times > 0:
            self.cuts[rel] = (times - 1, size)
            request.wfile.write(data[start : start + size])
            request.wfile.flush()
            request.close_connection = True
            request.connection.shutdown(2)
            return
        request.wfile.write(data[start:])
