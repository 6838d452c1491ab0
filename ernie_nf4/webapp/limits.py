"""Limits for an app open to anonymous users: a bounded queue, a cap on each client's jobs, a request body cap
checked before anything is parsed, and small uploads only (or none).

``RequestLimits`` is a plain ASGI middleware put on Gradio's FastAPI app through ``launch(app_kwargs=...)``.
It reads Gradio's queue (private ``Queue.event_ids_to_events`` / ``max_size``; checked, skipped with a warning
when absent) to answer "busy" before a job is accepted.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import dataclass

from ..compat import gradio_queue
from ..errors import InvalidArgument

logger = logging.getLogger(__name__)
MB = 1_000_000


@dataclass(frozen=True)
class Limits:
    max_queue: int = 32  # jobs waiting or running, all clients together
    max_jobs_per_client: int = 2  # per client address
    max_body_bytes: int = 1 * MB  # any POST but uploads (prompts are capped at 8000 characters)
    max_upload_bytes: int = 10 * MB  # 0: uploads off
    trust_forwarded_for: bool = False  # behind a proxy that sets X-Forwarded-For (a Space)

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_jobs_per_client", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be at least 1, got {getattr(self, name)}", field=name)
        if self.max_upload_bytes < 0:
            raise InvalidArgument(
                f"max_upload_bytes must be 0 (uploads off) or more, got {self.max_upload_bytes}",
                field="max_upload_bytes",
            )

    @classmethod
    def for_environment(cls, **values) -> Limits:
        return cls(trust_forwarded_for=bool(os.environ.get("SPACE_ID")), **values)


def configure(demo, limits: Limits) -> dict:
    """Bound ``demo``'s queue and return the extra ``demo.launch`` arguments that put the other limits in place."""
    from starlette.middleware import Middleware

    demo.queue(max_size=limits.max_queue, default_concurrency_limit=1)
    return {
        "max_file_size": limits.max_upload_bytes or 1,
        "app_kwargs": {"middleware": [Middleware(RequestLimits, limits=limits)]},
    }


def _client_id(headers: dict[bytes, bytes], client, trust_forwarded_for: bool) -> str:
    if trust_forwarded_for and (forwarded := headers.get(b"x-forwarded-for")):
        return forwarded.decode("latin-1").split(",")[0].strip()
    return client[0] if client else "?"


def _event_client(event, trust_forwarded_for: bool) -> str:
    request = event.request
    if request is None:
        return "?"
    headers = {k.lower().encode(): v.encode() for k, v in request.headers.items()}
    return _client_id(headers, (request.client.host,) if request.client else None, trust_forwarded_for)


def _is_job(path: str) -> bool:
    return path.endswith("/queue/join") or "/call/" in path


class RequestLimits:
    """Refuses, before the app reads them: bodies over the cap (413), uploads over theirs or when off (413/403),
    and new jobs when the queue is full or the client has its share waiting (503/429, "busy, try again")."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        upload = path.rstrip("/").endswith("/upload")
        if upload and not self.limits.max_upload_bytes:
            return await _refuse(send, 403, "uploads are off on this server")
        cap = self.limits.max_upload_bytes + 64 * 1024 if upload else self.limits.max_body_bytes
        headers = dict(scope["headers"])
        what = "upload" if upload else "request body"
        too_big = f"{what} too large: at most {cap:,} bytes"
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            return await _refuse(send, 413, too_big)
        if _is_job(path) and (busy := self._busy(scope, headers)):
            return await _refuse(send, busy[0], busy[1])
        body, more = [], True
        size = 0
        while more:  # read at most cap bytes; a chunked body over it is refused without reading further
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                return await _refuse(send, 413, too_big)
            body.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(body)
        if _is_job(path) and (problem := _missing_fields(scope, path, body)):
            return await _refuse(send, 422, problem)
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replayed, send)

    def _busy(self, scope, headers) -> tuple[int, str] | None:
        queue = gradio_queue(scope.get("app"))
        if queue is None:
            return None
        events = list(queue.event_ids_to_events.values())
        if queue.max_size is not None and len(events) >= queue.max_size:
            return 503, f"The server is busy ({len(events)} jobs waiting, its most); try again in a few minutes."
        me = _client_id(headers, scope.get("client"), self.limits.trust_forwarded_for)
        mine = sum(1 for e in events if _event_client(e, self.limits.trust_forwarded_for) == me)
        if mine >= self.limits.max_jobs_per_client:
            return 429, (
                f"Busy: you already have {mine} jobs waiting or running (the most per client); "
                "try again when one has finished."
            )
        return None


def _missing_fields(scope, path: str, body: bytes) -> str | None:
    """Name the fields a job request left out (Gradio would answer ``{"error": null}``)."""
    try:
        data = json.loads(body)
        fns = scope["app"].get_blocks().fns.values()
    except (ValueError, AttributeError, KeyError):
        return None  # Gradio answers malformed JSON itself
    if not isinstance(data, dict) or not isinstance(values := data.get("data"), list):
        return None
    api_name = path.rstrip("/").rsplit("/call/", 1)[1] if "/call/" in path else None
    fn = next((f for f in fns if (f.api_name == api_name if api_name else f._id == data.get("fn_index"))), None)
    if fn is None or len(values) >= len(fn.inputs):
        return None
    names = list(inspect.signature(fn.fn).parameters)[: len(fn.inputs)] if fn.fn else []
    missing = names[len(values) :] or [f"{len(fn.inputs) - len(values)} values"]
    takes = f"it takes {len(fn.inputs)} values: {', '.join(names)}"
    return f"/{fn.api_name or fn.name} is missing {', '.join(missing)} ({takes})"


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status in (429, 503):
        headers.append((b"retry-after", b"30"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
