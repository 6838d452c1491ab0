"""Who a request comes from, and what each client did lately.

- ``client_id``: the peer's address; on a Space (behind the platform's proxy) the address that proxy appended to
  ``X-Forwarded-For``, its rightmost entry. The entries to its left are whatever the client wrote, so they are never
  used: a client cannot take another's identity or use up a chosen victim's share.
- ``Recent``: each client's events within a sliding window (when, how much), for the login throttle and the upload
  budget.
"""

from __future__ import annotations

import time
from collections import deque

MAX_TRACKED = 4096  # clients with events in their window; beyond it the expired ones are swept out


def forwarded_client(values: list[str]) -> str | None:
    """The address the nearest proxy appended: the rightmost entry of the ``X-Forwarded-For`` header(s)."""
    entries = [entry.strip() for value in values for entry in value.split(",")]
    entries = [entry for entry in entries if entry]
    return entries[-1] if entries else None


def client_id(headers: list[tuple[bytes, bytes]], client, trust_forwarded_for: bool) -> str:
    """The client of an ASGI request (``scope["headers"]``, ``scope["client"]``)."""
    if trust_forwarded_for:
        values = [v.decode("latin-1") for k, v in headers if k.lower() == b"x-forwarded-for"]
        if (forwarded := forwarded_client(values)) is not None:
            return forwarded
    return client[0] if client else "?"


def request_client(request, trust_forwarded_for: bool) -> str:
    """The client of a Starlette request (a queued job's), by the same rule as ``client_id``."""
    if request is None:
        return "?"
    if trust_forwarded_for and (forwarded := forwarded_client(request.headers.getlist("x-forwarded-for"))):
        return forwarded
    return request.client.host if request.client else "?"


class Recent:
    """Each client's events of the last ``seconds``, as (time, amount), oldest first."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._events: dict[str, deque] = {}

    def _live(self, client: str, now: float) -> deque:
        events = self._events.get(client, deque())
        while events and now - events[0][0] >= self.seconds:
            events.popleft()
        if not events:
            self._events.pop(client, None)
        return events

    def count(self, client: str) -> int:
        return len(self._live(client, time.monotonic()))

    def total(self, client: str) -> float:
        return sum(amount for _, amount in self._live(client, time.monotonic()))

    def add(self, client: str, amount: float = 1) -> None:
        now = time.monotonic()
        if len(self._events) >= MAX_TRACKED:
            for other in list(self._events):
                self._live(other, now)
        self._events.setdefault(client, deque()).append((now, amount))

    def retry_after(self, client: str) -> int:
        """Whole seconds until the client's oldest event leaves the window."""
        now = time.monotonic()
        events = self._live(client, now)
        return max(1, int(self.seconds - (now - events[0][0]) + 0.999)) if events else 0

    def clear(self, client: str) -> None:
        self._events.pop(client, None)
