"""Limits for an app open to anonymous users: a bounded queue, a cap on each client's jobs, a request body cap
checked before anything is parsed, JSON no deeper than a few levels, small uploads only (or none) and a few per
client, a throttle on wrong passwords, and from the output folder only the app's own images.

``RequestLimits`` is a plain ASGI middleware put on Gradio's FastAPI app through ``launch(app_kwargs=...)``.
It reads Gradio's queue (private ``Queue.event_ids_to_events`` / ``max_size``; checked, skipped with a warning
when absent) to answer "busy" before a job is accepted. Jobs are admitted atomically: a job counts from the moment
its request is let through (a reservation) until Gradio has answered it, so requests sent at the same instant
cannot all pass the same check. Generations run only through the queue: ``configure`` closes Gradio's direct run
routes (``/run/<name>``, ``/api/<name>``) for queued events (``api_open=False``).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..compat import gradio_queue
from ..errors import InvalidArgument
from .clients import Recent, client_id, request_client
from .event_values import unfit_values
from .i18n import asgi_language, say

logger = logging.getLogger(__name__)
MB = 1_000_000


@dataclass(frozen=True)
class Limits:
    max_queue: int = 32  # jobs waiting or running, all clients together
    max_jobs_per_client: int = 2  # per client address
    max_body_bytes: int = 1 * MB  # any POST but uploads (prompts are capped at 8000 characters)
    max_upload_bytes: int = 10 * MB  # 0: uploads off
    trust_forwarded_for: bool = False  # behind a proxy that appends to X-Forwarded-For (a Space)
    max_json_depth: int = 32  # nesting of a request's JSON (the app's requests use 4)
    uploads_per_window: int = 10  # uploads one client may make per upload window
    upload_bytes_per_window: int = 30 * MB  # bytes one client may upload per upload window
    upload_window_seconds: float = 600.0
    upload_keep_seconds: int = 3600  # uploaded files older than this are deleted
    login_failures: int = 5  # wrong passwords per client per login window; then 429 until the window has passed
    login_window_seconds: float = 300.0

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_jobs_per_client", "max_body_bytes", "max_json_depth", "login_failures"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {getattr(self, name)}", field=name)
        for name in ("max_upload_bytes", "uploads_per_window", "upload_bytes_per_window"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must be 0 (off) or more, got {getattr(self, name)}", field=name)
        for name in ("upload_window_seconds", "upload_keep_seconds", "login_window_seconds"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"{name} must be more than 0, got {getattr(self, name)}", field=name)

    @classmethod
    def for_environment(cls, **values) -> Limits:
        return cls(trust_forwarded_for=bool(os.environ.get("SPACE_ID")), **values)


def configure(demo, limits: Limits, outputs=None) -> dict:
    """Bound ``demo``'s queue, close the direct run routes of its queued events, delete stale uploads, and return
    the extra ``demo.launch`` arguments that put the other limits in place. ``outputs`` (an ``OutputStore``): of
    its folder, only the app's own images are served."""
    from starlette.middleware import Middleware

    demo.queue(max_size=limits.max_queue, default_concurrency_limit=1, api_open=False)
    keep = limits.upload_keep_seconds
    demo.delete_cache = (max(1, min(300, keep // 4)), keep)  # Gradio deletes its uploads older than ``keep``
    return {
        "max_file_size": limits.max_upload_bytes or 1,
        "app_kwargs": {"middleware": [Middleware(RequestLimits, limits=limits, outputs=outputs)]},
    }


def wait_words(seconds: float, lang: str = "en") -> str:
    """A wait in words: seconds up to a minute and a half, else minutes (rounded up)."""
    if seconds <= 1:
        return say("wait_second", lang)
    if seconds <= 90:
        return say("wait_seconds", lang, count=math.ceil(seconds))
    return say("wait_minutes", lang, count=math.ceil(seconds / 60))


def _is_job(path: str) -> bool:
    return path.endswith("/queue/join") or "/call/" in path


_NAMED = re.compile(r"/(run|api|call)/([^/]+)/?$")  # a route that names the event it calls: /run/swap, /call/stats


def _is_direct(path: str) -> bool:
    """A direct call (``/run/predict``, the route of the page's unqueued events, ``/run/<name>``, ``/api/<name>``)."""
    return (named := _NAMED.search(path)) is not None and named[1] != "call"


def _is_login(path: str) -> bool:
    return path.rstrip("/").endswith("/login")


def _served_file(path: str) -> str | None:
    """The file a ``/file=…`` (or ``/file/…``) route would serve, as its path text; None for other routes."""
    for marker in ("/file=", "/file/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return None


class RequestLimits:
    """Refuses, before the app reads them: bodies over the cap (413), JSON nested too deep (400), uploads over
    their size or a client's budget or when off (413/429/403), new jobs when the queue is full or the client has its
    share waiting (503/429, "busy, try again"), logins after too many wrong passwords (429), any file of the
    output folder but the app's images (404), and calls of events that name none, or send values the page never
    sends (422, ``event_values``)."""

    def __init__(self, app, limits: Limits, outputs=None):
        from gradio.utils import get_cache_folder, get_upload_folder

        self.app, self.limits, self.outputs = app, limits, outputs
        # Gradio's own folders (uploads, cached examples), which an output folder such as /tmp may hold: Gradio
        # decides what it serves from those.
        self.gradio_folders = [Path(os.path.abspath(f)).resolve() for f in (get_upload_folder(), get_cache_folder())]
        self.pending: Counter[str] = Counter()  # jobs let through whose answer Gradio has not sent yet, by client
        self.logins = Recent(limits.login_window_seconds)  # wrong passwords
        self.uploads = Recent(limits.upload_window_seconds)  # bytes uploaded

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD") and self._foreign_file(scope["path"]):
            return await _refuse(send, 404, "Not found: of the output folder only the app's images are served.")
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        client = client_id(scope["headers"], scope.get("client"), self.limits.trust_forwarded_for)
        upload = path.rstrip("/").endswith("/upload")
        refusal = self._before_body(path, client, upload, scope["headers"])
        if refusal is not None:
            return await _refuse(send, *refusal)
        body = await _read_body(receive, self._cap(upload))
        if body is None:  # the client went away
            return
        if body is _TOO_LARGE:
            return await _refuse(send, *self._too_large(upload))
        data, missing = _NOT_JSON if upload else _parsed(body), None  # parsed once, for every check below
        if not upload and _is_job(path):
            body, data, missing = _completed(scope, path, body, data)
        refusal = self._after_body(scope, path, client, upload, body, data, missing)
        if refusal is not None:
            return await _refuse(send, *refusal)
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        if _is_login(path):
            return await self.app(scope, replayed, self._login_watch(send, client))
        if _is_job(path):
            return await self._admitted(scope, replayed, send, client)
        return await self.app(scope, replayed, send)

    def _cap(self, upload: bool) -> int:
        return self.limits.max_upload_bytes + 64 * 1024 if upload else self.limits.max_body_bytes

    def _too_large(self, upload: bool) -> tuple[int, str]:
        """The refusal of a body over ``_cap``: an upload's in the file size people choose (the form's own bytes
        aside), any other request's in bytes."""
        if upload:
            return 413, f"upload too large: files of at most {self.limits.max_upload_bytes / MB:g} MB are taken here"
        return 413, f"request body too large: at most {self.limits.max_body_bytes:,} bytes"

    def _before_body(self, path: str, client: str, upload: bool, headers) -> tuple | None:
        """A refusal that needs no body: uploads off or over budget, a login throttled, a declared size too big."""
        limits = self.limits
        if upload and not limits.max_upload_bytes:
            return 403, "uploads are off on this server"
        if upload and self.uploads.count(client) >= limits.uploads_per_window:
            return self._upload_budget(client, headers)
        if _is_login(path) and self.logins.count(client) >= limits.login_failures:
            wait = self.logins.retry_after(client)
            return 429, f"Too many wrong passwords from your address; try again in {wait} s.", wait
        cap = self._cap(upload)
        length = dict(headers).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            return self._too_large(upload)
        return None

    def _upload_budget(self, client: str, headers) -> tuple:
        """The refusal of an upload past the client's budget: when it can upload again, in the page's language
        (the page shows the answer's ``error`` in a popup)."""
        limits, wait = self.limits, self.uploads.retry_after(client)
        lang = asgi_language(headers)
        message = say(
            "upload_budget",
            lang,
            files=limits.uploads_per_window,
            mb=f"{limits.upload_bytes_per_window / MB:g}",
            minutes=f"{limits.upload_window_seconds / 60:g}",
            wait=wait_words(wait, lang),
        )
        return 429, message, wait

    def _after_body(self, scope, path: str, client: str, upload: bool, body: bytes, data, missing=None) -> tuple | None:
        """A refusal that needs the body (``data``: its JSON, ``_parsed``), else None; a job let through is reserved
        (``pending``)."""
        if upload:
            if self.uploads.total(client) + len(body) > self.limits.upload_bytes_per_window:
                return self._upload_budget(client, scope["headers"])
            self.uploads.add(client, len(body))
            return None
        if problem := _json_problem(data, self.limits.max_json_depth):
            return 400, problem
        if _is_direct(path) and (problem := _bad_direct_call(scope, path, data)):
            return 422, problem
        if problem := _unknown_endpoint(scope, path):
            return 404, problem
        if (call := _called(scope, path, data)) and (problem := unfit_values(call[2], call[1], self.outputs)):
            return 422, f"/{call[2].api_name or call[2].name}: {problem}"
        if not _is_job(path):
            return None
        if missing:
            return 422, missing
        # No await between this check and the reservation below: simultaneous requests see each other.
        if busy := self._busy(scope, client):
            return busy
        self.pending[client] += 1
        return None

    async def _admitted(self, scope, receive, send, client: str):
        """Pass a reserved job to Gradio; the reservation ends once Gradio answers (the job is then in its queue
        or was refused) or the request fails."""
        reserved = True

        def release():
            nonlocal reserved
            if reserved:
                reserved = False
                self.pending[client] -= 1
                if self.pending[client] <= 0:
                    del self.pending[client]

        async def watched(message):
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            return await self.app(scope, receive, watched)
        finally:
            release()

    def _login_watch(self, send, client: str):
        """``send`` that counts a wrong password (Gradio answers 400) and forgets them after a right one."""

        async def watched(message):
            if message["type"] == "http.response.start":
                if message["status"] == 400:
                    self.logins.add(client)
                elif message["status"] < 300:
                    self.logins.clear(client)
            await send(message)

        return watched

    def _busy(self, scope, me: str) -> tuple[int, str] | None:
        queue = gradio_queue(scope.get("app"))
        if queue is None:
            return None
        events = list(queue.event_ids_to_events.values())
        waiting = len(events) + sum(self.pending.values())
        if queue.max_size is not None and waiting >= queue.max_size:
            return 503, f"The server is busy ({waiting} jobs waiting, its most); try again in a few minutes."
        trusted = self.limits.trust_forwarded_for
        mine = sum(1 for e in events if request_client(e.request, trusted) == me) + self.pending[me]
        if mine >= self.limits.max_jobs_per_client:
            return 429, (
                f"Busy: you already have {mine} jobs waiting or running (the most per client); "
                "try again when one has finished."
            )
        return None

    def _foreign_file(self, path: str) -> bool:
        """True for a file route naming a file in the output folder that is not one of the app's images."""
        if self.outputs is None or (text := _served_file(path)) is None or "://" in text:
            return False
        if not self.outputs.holds(text) or self.outputs.owns(text):
            return False
        resolved = Path(os.path.abspath(text)).resolve()
        return not any(folder == resolved or folder in resolved.parents for folder in self.gradio_folders)


_TOO_LARGE = object()  # what ``_read_body`` gives for a body over its cap


async def _read_body(receive, cap: int):
    """The request's body, read to at most ``cap`` bytes (a chunked body over it is refused without reading
    further): bytes, ``_TOO_LARGE``, or None when the client went away."""
    body, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            return _TOO_LARGE
        body.append(chunk)
        more = message.get("more_body", False)
    return b"".join(body)


_NOT_JSON, _TOO_DEEP = object(), object()  # what ``_parsed`` gives for a body that is no JSON, or nests too deep


def _parsed(body: bytes):
    """A request body's JSON, parsed once for every check of the request: ``_NOT_JSON`` for a body that is none
    (Gradio answers malformed JSON itself), ``_TOO_DEEP`` for one nested deeper than the parser follows."""
    try:
        return json.loads(body)
    except RecursionError:
        return _TOO_DEEP
    except ValueError:
        return _NOT_JSON


def _json_problem(data, max_depth: int) -> str | None:
    """Why a request's JSON (``_parsed``) is refused (nested deeper than ``max_depth``), or None; bodies that are
    not JSON are left to the app."""
    too_deep = f"request JSON nests more than {max_depth} levels deep; send the fields /gradio_api/info documents"
    if data is _TOO_DEEP:
        return too_deep
    if data is _NOT_JSON:
        return None
    level = [data]
    for _ in range(max_depth):
        level = [
            child
            for value in level
            if isinstance(value, (dict, list))
            for child in (value.values() if isinstance(value, dict) else value)
        ]
        if not level:
            return None
    return too_deep if any(isinstance(value, (dict, list)) for value in level) else None


def _called(scope, path: str, data) -> tuple | None:
    """(the request's JSON, its values, the event it names) for a call of an event with a list of values: a job
    (``/queue/join``, ``/call/<name>``) or a direct call (``_is_direct``); else None. Values as Gradio reads them:
    ``/call/<name>`` leaves out the inputs the API skips (a ``gr.State``)."""
    try:
        fns = scope["app"].get_blocks().fns
    except (AttributeError, KeyError):
        return None
    if not isinstance(data, dict) or not isinstance(values := data.get("data"), list):
        return None  # no JSON object (Gradio answers malformed JSON itself)
    named, index = _NAMED.search(path), data.get("fn_index")
    if named and (named[1] == "call" or index is None):  # /call/<name> goes by its name, the others by fn_index
        fn = next((f for f in fns.values() if f.api_name == named[2]), None)
    else:
        fn = fns.get(index) if isinstance(index, int) and not isinstance(index, bool) else None
    if fn is None:
        return None
    shown = [block for block in fn.inputs if not block.skip_api]
    if named and named[1] == "call" and len(values) != len(fn.inputs) and len(values) == len(shown):
        given = iter(values)
        values = [None if block.skip_api else next(given) for block in fn.inputs]
    return data, values, fn


def _completed(scope, path: str, body: bytes, data) -> tuple[bytes, object, str | None]:
    """A job request's body and its JSON (``data``), with the trailing inputs it leaves out that have a default (a
    client written before they came, e.g. ``/generate``'s ``previews``) filled in, so it gets what it got before;
    and, when a left-out field has no default, a message naming the missing ones (Gradio would answer
    ``{"error": null}``)."""
    call = _called(scope, path, data)
    if call is None or len(call[1]) >= len(call[2].inputs):
        return body, data, None
    data, values, fn = call
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = [p for p in inspect.signature(fn.fn).parameters.values() if p.kind in positional] if fn.fn else []
    parameters = parameters[: len(fn.inputs)]
    left_out = parameters[len(values) :]
    named = len(parameters) == len(fn.inputs)  # a function of ``*args`` names no input
    if named and all(p.default is not inspect.Parameter.empty for p in left_out):
        data = {**data, "data": values + [p.default for p in left_out]}
        return json.dumps(data).encode(), data, None
    missing = [p.name for p in left_out] if named else [f"{len(fn.inputs) - len(values)} of its values"]
    takes = f"it takes {len(fn.inputs)} values" + (f": {', '.join(p.name for p in parameters)}" if named else "")
    return body, data, f"/{fn.api_name or fn.name} is missing {', '.join(missing)} ({takes})"


def _bad_direct_call(scope, path: str, data) -> str | None:
    """What is wrong with a direct call (``_is_direct``) that names no event with a server function (by its
    ``fn_index``, else by the name in its route), or sends a number of values other than the event's inputs (Gradio
    would answer 500 and print a traceback)."""
    if data is _NOT_JSON or data is _TOO_DEEP:
        return None  # Gradio answers malformed JSON itself; too deep is refused before
    try:
        fns = scope["app"].get_blocks().fns
    except (AttributeError, KeyError):
        return None
    if not isinstance(data, dict):
        return "a call must be a JSON object with fn_index and data"
    index, values, name = data.get("fn_index"), data.get("data"), _NAMED.search(path)[2]
    if index is None and name != "predict":
        fn = next((f for f in fns.values() if f.api_name == name), None)
        called = f"/{name}"
    else:
        fn = fns.get(index) if isinstance(index, int) and not isinstance(index, bool) else None
        called = f"fn_index {index!r}"
    if fn is None or fn.fn is None:
        return f"{called} names no event this server runs; /gradio_api/info lists the API"
    if not isinstance(values, list) or len(values) != len(fn.inputs):
        count = len(values) if isinstance(values, list) else "no list of"
        return f"{called} takes {len(fn.inputs)} values in data, got {count}"
    return None


def _unknown_endpoint(scope, path: str) -> str | None:
    """For ``/call/v2/<name>``, which reads the API's description: a message when ``name`` is none of its endpoints
    (the public events; a private or undocumented event, or none: Gradio would answer 500 and print a traceback);
    else None."""
    named = re.search(r"/call/v2/([^/]+)/?$", path)
    try:
        fns = scope["app"].get_blocks().fns.values() if named else ()
    except (AttributeError, KeyError):
        return None
    if not named or any(f.api_name == named[1] and f.fn and f.api_visibility == "public" for f in fns):
        return None
    return f"/{named[1]} is no endpoint of this server's API; /gradio_api/info lists them"


async def _refuse(send, status: int, message: str, retry_after: int = 30) -> None:
    body = json.dumps({"error": message, "detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status in (429, 503):
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
