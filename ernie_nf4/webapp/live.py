"""Live previews out of a run: the run's call in a thread of its own, and what it emits (its previews, or on
ZeroGPU every progress event) yielded as it comes, then how it ended. A handler that yields them lets the page's
gallery show the image forming; a ZeroGPU worker that yields them sends them out of the GPU slot."""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass
class Finished:
    """How the call ended: its ``value``, or the ``error`` it raised."""

    value: object = None
    error: BaseException | None = None

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


QUIET = object()  # what ``streamed`` yields when nothing came for ``idle`` seconds


def streamed(call: Callable[[Callable[[object], None]], object], idle: float | None = None) -> Iterator[object]:
    """Run ``call(emit)`` in a thread (in a copy of this context, so Gradio's progress bar and popups still reach
    the page from it); yield each item it passes to ``emit``, in order, and last a ``Finished``; with ``idle``, also
    ``QUIET`` each time that many seconds pass without one. The thread ends with the call: a run stops through its
    own stop signal, not through this iterator."""
    items: queue.SimpleQueue = queue.SimpleQueue()

    def work() -> None:
        try:
            items.put(Finished(call(items.put)))
        except BaseException as err:  # handed to the consumer, which raises it
            items.put(Finished(error=err))

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(work,), name="ernie-nf4-live", daemon=True).start()
    while True:
        try:
            item = items.get(timeout=idle)
        except queue.Empty:
            yield QUIET
            continue
        yield item
        if isinstance(item, Finished):
            return
