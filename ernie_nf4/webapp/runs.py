"""Run control: one stop signal per run, set by Stop, by the client going away or by an API client's cancel, and
Stop for queued jobs.

Gradio (6.31) leaves the worker thread computing in two cases, and ``RunSignal.is_set()`` reads both, so the
generator stops after its current step:

- the client's event stream closes: Gradio marks the running job dead (``Event.alive = False``,
  ``routes.queue_data_helper`` → ``Queue.clean_events``);
- an API client cancels (``gradio_client``'s ``Job.cancel()``, ``POST /gradio_api/cancel``): Gradio cancels the
  asyncio task that waits for the worker and takes the job out of ``Queue.active_jobs``.

A run finds its own job in ``active_jobs`` by the HTTP request that queued it (``Event.request`` is the request
behind the handler's ``gr.Request``), so a cancel reaches that run only. Those Gradio attributes are private: they
are read here only, checked with ``compat.gradio_queue`` and skipped (with one logged warning) when a Gradio version
lacks them.
"""

from __future__ import annotations

import logging
import threading

from ..compat import gradio_queue

logger = logging.getLogger(__name__)


def _queue_of(request):
    """Gradio's queue behind a ``gr.Request`` (None for a direct call or an unknown Gradio)."""
    app = getattr(getattr(request, "request", None), "app", None)
    return None if app is None else gradio_queue(app)


def client_gone(queue, session_hash: str) -> bool:
    """True when Gradio has marked this session's running job dead (its client closed the stream)."""
    try:
        return any(
            job.session_hash == session_hash and not job.alive for jobs in queue.active_jobs if jobs for job in jobs
        )
    except RuntimeError:  # the list changed while read; the next step checks again
        return False


def running_event(queue, request):
    """The queue's running job whose HTTP request is ``request``'s (the run's own job), or None."""
    http_request = getattr(request, "request", None)
    if http_request is None:
        return None
    try:
        return next(
            (
                event
                for jobs in queue.active_jobs
                if jobs
                for event in jobs
                if getattr(event, "request", None) is http_request
            ),
            None,
        )
    except RuntimeError:  # the list changed while read
        return None


def job_ended(queue, event) -> bool:
    """True when the run's job is dead (its client closed the stream) or no longer running (cancelled)."""
    try:
        return not event.alive or not any(jobs and event in jobs for jobs in list(queue.active_jobs))
    except RuntimeError:  # the list changed while read; the next step checks again
        return False


class RunSignal(threading.Event):
    """A run's stop signal: set by Stop, or reads as set once the run's client has gone or cancelled its job."""

    def __init__(self, request=None, session_hash: str | None = None):
        super().__init__()
        self._queue = _queue_of(request) if request is not None else None
        self._session_hash = session_hash
        self._event = running_event(self._queue, request) if self._queue is not None else None

    def _ended(self) -> bool:
        if self._queue is None:
            return False
        if self._event is not None:
            return job_ended(self._queue, self._event)
        return client_gone(self._queue, self._session_hash)

    def is_set(self) -> bool:
        if super().is_set():
            return True
        if self._ended():
            self.set()
            return True
        return False


class RunRegistry:
    """The stop signals of the runs in progress, by session; each run has its own."""

    def __init__(self):
        self._runs: dict[str, set[RunSignal]] = {}
        self._lock = threading.Lock()

    def start(self, key: str, request=None) -> RunSignal:
        signal = RunSignal(request, key)
        with self._lock:
            self._runs.setdefault(key, set()).add(signal)
        return signal

    def end(self, key: str, signal: RunSignal) -> None:
        with self._lock:
            runs = self._runs.get(key, set())
            runs.discard(signal)
            if not runs:
                self._runs.pop(key, None)

    def stop_running(self, key: str) -> int:
        with self._lock:
            runs = list(self._runs.get(key, ()))
        for signal in runs:
            signal.set()
        return len(runs)


async def drop_queued(request, key: str, outputs, notice=None) -> int:
    """Remove the session's jobs still waiting in Gradio's queue; each client gets ``outputs`` (the event's
    output values, as sent on the wire; or a function of the event giving them) as a normal completion, so nothing
    shows an error; before it, ``notice(event)`` (when given, and not None) as a popup, as ``gr.Info`` shows one
    (which reaches only a running event's client)."""
    from gradio.server_messages import LogMessage, ProcessCompletedMessage

    queue = _queue_of(request)
    if queue is None:
        return 0
    async with queue.delete_lock:
        waiting = [
            event
            for event_queue in queue.event_queue_per_concurrency_id.values()
            for event in event_queue.queue
            if event.session_hash == key
        ]
        for event in waiting:
            queue.event_queue_per_concurrency_id[event.concurrency_id].queue.remove(event)
            queue.event_ids_to_events.pop(event._id, None)
    for event in waiting:
        data = outputs(event) if callable(outputs) else outputs
        if notice is not None and (text := notice(event)) is not None:
            queue.send_message(event, LogMessage(log=text, level="info", title="Info"))
        queue.send_message(event, ProcessCompletedMessage(output={"data": data, "is_generating": False}, success=True))
    return len(waiting)
