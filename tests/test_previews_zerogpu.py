"""Live previews on ZeroGPU: the run goes through a generator function in a worker process forked as ``spaces``
forks it, each yield crossing back as a pickle; the previews (and the run's progress) arrive before the result, and
Stop ends them."""

from __future__ import annotations

import inspect
import threading

import pytest

from ernie_nf4.errors import GenerationCancelled
from ernie_nf4.request import GenerationRequest
from ernie_nf4.webapp.zerogpu import STOP_FLAGS, gpu_generate

from .support.app import FakeService


def _live_worker(task, args_queue, out_queue) -> None:
    while (args := args_queue.get()) is not None:
        try:
            for value in task(*args):
                out_queue.put(("yield", value))
            out_queue.put(("end", None))
        except Exception as err:  # spaces sends back a generic error
            out_queue.put(("error", f"{type(err).__name__}: {err}"))


class ForkedLiveGPU:
    """What ``spaces.GPU`` does on ZeroGPU with a generator function: the task runs in a process forked when it is
    decorated (reused for every call), its arguments and each value it yields cross as pickles. Plain functions run
    in this process (their fork is ``test_serving``'s)."""

    def __init__(self):
        self.workers = []

    def __call__(self, duration):
        import multiprocessing

        def wrap(task):
            if not inspect.isgeneratorfunction(task):
                return task
            context = multiprocessing.get_context("fork")
            args_queue, out_queue = context.Queue(), context.Queue()
            worker = context.Process(target=_live_worker, args=(task, args_queue, out_queue), daemon=True)
            worker.start()
            self.workers.append((worker, args_queue))

            def handler(*args):
                duration(*args)
                args_queue.put(args)
                while True:
                    kind, value = out_queue.get(timeout=300)
                    if kind == "end":
                        return
                    if kind == "error":
                        raise RuntimeError(f"ZeroGPU worker error: {value}")
                    yield value

            return handler

        return wrap

    def close(self):
        for worker, args_queue in self.workers:
            args_queue.put(None)
            worker.join(10)
            if worker.is_alive():
                worker.kill()


@pytest.fixture
def forked_gpu():
    gpu = ForkedLiveGPU()
    yield gpu
    gpu.close()


def request(prompt="a cat", steps=6) -> GenerationRequest:
    return GenerationRequest(prompt, width=64, height=64, num_inference_steps=steps, seed=3, use_pe=False)


def test_previews_come_out_of_the_gpu_worker_before_the_result(forked_gpu):
    generate = gpu_generate(FakeService(), forked_gpu)  # the worker is forked here
    free, events = STOP_FLAGS.free_count, []
    result = generate(request(), on_progress=events.append, cancel=threading.Event(), previews=True)
    previews = [event for event in events if event.preview is not None]
    assert [event.done for event in previews] == [1, 2, 3, 4, 5]
    assert all(event.preview.size == (8, 8) for event in previews)
    assert [event.stage for event in events][-1] == "vae_decode"  # the run's progress comes out too
    assert result.images[0].size == (64, 64) and result.seeds == [3]
    assert STOP_FLAGS.free_count == free


def test_stop_ends_the_previews_in_the_gpu_worker(forked_gpu):
    generate = gpu_generate(FakeService(), forked_gpu)
    cancel, previews = threading.Event(), []

    def on_progress(event):
        if event.preview is not None:
            previews.append(event.done)
            cancel.set()  # Stop pressed on the first preview

    with pytest.raises(GenerationCancelled):
        generate(request("slow cat", steps=40), on_progress=on_progress, cancel=cancel, previews=True)
    assert previews and previews[-1] <= previews[0] + 2  # the bridge looks every 0.1 s; a step takes 0.2 s
