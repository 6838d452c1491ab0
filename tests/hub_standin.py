"""A local stand-in for the Hugging Face Hub's file API, served on loopback, for download tests.

Serves one folder as model repo ``owner/name`` at one commit: the revision info
(``/api/models/<repo>/revision/<rev>``) and files (``/<repo>/resolve/<rev>/<path>``, HEAD and GET with Range).
``cuts[path] = (n, size)`` cuts that file's body short after ``size`` bytes for the next ``n`` requests (a dropped
connection), to test interrupted downloads.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    def __init__(self, folder: Path, repo_id: str = "owner/ERNIE-Image-NF4"):
        self.folder, self.repo_id = Path(folder), repo_id
        self.cuts: dict[str, tuple[int, int]] = {}  # path -> (times left, bytes to send before dropping)
        self.requests: list[tuple[str, str, str | None]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                standin.handle(self, body=False)

            def do_GET(self):
                standin.handle(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file())

    @staticmethod
    def _json(request: BaseHTTPRequestHandler, value, body: bool) -> None:
        data = json.dumps(value).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            request.wfile.write(data)

    def handle(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(request.path.split("?", 1)[0])
        self.requests.append((request.command, path, request.headers.get("Range")))
        info_prefix = f"/api/models/{self.repo_id}/revision/"
        tree_prefix = f"/api/models/{self.repo_id}/tree/"
        if path.startswith(tree_prefix):
            entries = [
                {
                    "type": "file",
                    "path": f,
                    "size": (self.folder / f).stat().st_size,
                    "oid": hashlib.sha1(f.encode()).hexdigest(),
                }
                for f in self.files()
            ]
            self._json(request, entries, body)
            return
        file_prefix = f"/{self.repo_id}/resolve/"
        if path.startswith(info_prefix):
            info = {"id": self.repo_id, "sha": COMMIT, "siblings": [{"rfilename": f} for f in self.files()]}
            self._json(request, info, body)
            return
        if not path.startswith(file_prefix):
            request.send_error(404)
            return
        rel = path[len(file_prefix) :].split("/", 1)[1]
        file = self.folder / rel
        if not file.is_file():
            request.send_response(404)
            request.send_header("X-Error-Code", "EntryNotFound")
            request.end_headers()
            return
        data = file.read_bytes()
        start = 0
        if (spec := request.headers.get("Range")) and spec.startswith("bytes="):
            start = int(spec[6:].split("-")[0])
        request.send_response(206 if start else 200)
        request.send_header("X-Repo-Commit", COMMIT)
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
