"""Serving on ZeroGPU (the GPU time asked for, validation before the GPU function, Stop reaching the forked worker)
and several replicas on one host."""

import threading

import pytest

from ernie_nf4.request import GenerationRequest
from ernie_nf4.webapp.zerogpu import MAX_SECONDS, gpu_generate, gpu_seconds

pytest.importorskip("gradio")
from ernie_nf4.webapp.handlers import Handlers  # noqa: E402
from ernie_nf4.webapp.outputs import OutputStore  # noqa: E402

from .support.app import FakeService  # noqa: E402


def request(**values):
    base = dict(width=1024, height=1024, num_inference_steps=50, guidance_scale=4.0, seed=1, use_pe=True)
    return GenerationRequest("a cat", **{**base, **values})


def test_gpu_seconds_grow_with_steps_size_images_and_pe():
    base = gpu_seconds(request())
    assert 30 <= base <= 60  # measured 25 s on an H100 for this request
    assert gpu_seconds(request(num_inference_steps=100)) > base
    assert gpu_seconds(request(width=2048, height=2048)) > base
    assert gpu_seconds(request(num_images=2)) > base
    assert gpu_seconds(request(use_pe=False)) == base - 12
    assert gpu_seconds(request(num_inference_steps=1, width=64, height=64, use_pe=False)) >= 10
    assert gpu_seconds(request(num_inference_steps=200, num_images=4, width=2048, height=2048)) == MAX_SECONDS


class CountingGPU:
    """The real ``spaces.GPU`` (a pass-through off ZeroGPU) with a count of entries into what it decorates."""

    def __init__(self):
        import spaces

        self.entries, self.durations, self.spaces_gpu = 0, [], spaces.GPU

    def __call__(self, duration):
        def wrap(fn):
            def counted(*args):  # (request, stop slot), as spaces passes them to the task and to duration
                self.entries += 1
                self.durations.append(duration(*args))
                return fn(*args)

            return self.spaces_gpu(duration=duration)(counted)

        return wrap


def test_validation_and_errors_happen_before_the_gpu_function(tmp_path):
    import gradio as gr

    pytest.importorskip("spaces")
    gpu = CountingGPU()
    handlers = Handlers(FakeService(), OutputStore(tmp_path), gpu_decorator=gpu)
    good = ["a cat", "", 64, 64, 2, 4.0, 7, False, False, 1, "", 1.0, None, 1]
    for bad in ({0: ""}, {2: 10**9}, {4: 0}, {9: 9}, {5: float("nan")}):
        form = [bad.get(i, v) for i, v in enumerate(good)]
        with pytest.raises(gr.Error):
            handlers.generate(*form, request=None, progress=lambda *a, **k: None)
    assert gpu.entries == 0
    gallery, seed, *_ = handlers.generate(*good, request=None, progress=lambda *a, **k: None)
    assert gpu.entries == 1 and seed == 7 and len(gallery) == 1
    assert gpu.durations == [gpu_seconds(handlers.service.requests[-1])]


def test_off_zerogpu_generate_is_the_service_itself():
    service = FakeService()
    assert gpu_generate(service) == service.generate


def test_on_zerogpu_compile_is_turned_off_with_one_line(capsys):
    from ernie_nf4.serving.service import ServiceConfig
    from ernie_nf4.webapp.zerogpu import adjust_config, on_zerogpu

    assert on_zerogpu({"SPACES_ZERO_GPU": "true"}) and not on_zerogpu({})
    config = adjust_config(ServiceConfig(tiny=True, compile=True))
    assert config.compile is False
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def test_parse_gpus():
    from ernie_nf4.errors import InvalidArgument
    from ernie_nf4.serving.replicas import parse_gpus

    assert parse_gpus("all", device_count=2) == ["cuda:0", "cuda:1"]
    assert parse_gpus("1,0", device_count=2) == ["cuda:1", "cuda:0"]
    assert parse_gpus(None, device_count=2) == []
    for bad in ("0,0", "2", "x", "all"):
        with pytest.raises(InvalidArgument, match="--gpus"):
            parse_gpus(bad, device_count=0 if bad == "all" else 2)
    for given in ("all", "0", "0,0"):  # no GPU: said as such, not as a range of numbers to pick from
        with pytest.raises(InvalidArgument, match=r"--gpus .*no CUDA GPU found; leave --gpus out"):
            parse_gpus(given, device_count=0)


@pytest.mark.slow
def test_two_cpu_replicas_serve_concurrent_requests_with_identical_images(tmp_path, nf4_everywhere):
    import numpy as np

    from ernie_nf4.serving.replicas import ReplicaService
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    config = ServiceConfig(model_dir=str(tmp_path / "tiny"), tiny=True, device="cpu", max_pe_tokens=8)
    replicas = ReplicaService(config, ["cpu", "cpu"])
    replicas.load()
    requests = [request(width=64, height=64, num_inference_steps=30, use_pe=False, seed=s) for s in (1, 2, 3, 4)]
    results, barrier = {}, threading.Barrier(4)

    def run(r):
        barrier.wait()
        results[r.seed] = replicas.generate(r)

    threads = [threading.Thread(target=run, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(set(replicas.served_by)) == [0, 1]  # both replicas worked
    single = ImageService(config)
    for r in requests:
        alone = np.asarray(single.generate(r).images[0])
        assert np.array_equal(np.asarray(results[r.seed].images[0]), alone)
    stats = replicas.stats()
    assert len(stats.replicas) == 2 and all(live.loaded for live in stats.replicas)
    assert stats.to_dict()["replicas"][1]["device"] == "cpu"


@pytest.mark.slow
def test_a_request_during_the_replicas_load_runs_once_every_replica_has_loaded(tmp_path, nf4_everywhere):
    from ernie_nf4.serving.replicas import ReplicaService
    from ernie_nf4.serving.service import ServiceConfig

    config = ServiceConfig(model_dir=str(tmp_path / "tiny"), tiny=True, device="cpu", max_pe_tokens=8)
    replicas = ReplicaService(config, ["cpu", "cpu"])
    replicas.replicas[0].load()  # the package is built; the second replica still has its load ahead
    preload = threading.Thread(target=replicas.load)
    preload.start()
    second_loaded_at_run = []

    def on_progress(event):
        if event.stage in ("pe", "text_encoding", "denoising", "vae_decode") and not second_loaded_at_run:
            second_loaded_at_run.append(replicas.replicas[1].loaded)

    result = replicas.generate(request(width=64, height=64, num_inference_steps=2, use_pe=False), on_progress)
    preload.join(120)
    assert result.images and replicas.served_by == [0]  # replica 0 was free and loaded...
    assert second_loaded_at_run == [True]  # ...and still ran only once the other had loaded


@pytest.mark.slow
def test_the_app_runs_one_job_per_replica(tmp_path, nf4_everywhere):
    from ernie_nf4.serving.replicas import ReplicaService
    from ernie_nf4.serving.service import ServiceConfig
    from ernie_nf4.webapp.ui import build_demo

    config = ServiceConfig(model_dir=str(tmp_path / "tiny"), tiny=True, device="cpu")
    demo = build_demo(ReplicaService(config, ["cpu", "cpu"]), output_dir=OutputStore(tmp_path / "out"))
    generate = next(fn for fn in demo.fns.values() if fn.api_name == "generate")
    assert generate.concurrency_limit == 2


# Stop on ZeroGPU: the run's threading.Event reaches the forked worker through the shared stop flags.


class SlowGPUService:
    """A service for the forked worker: ``num_inference_steps`` steps of ``step_seconds``, reading ``cancel`` at
    every step like ``generation.py``; the result says how many steps ran and where. ``stepping`` and ``steps_done``
    (process-shared, made before the worker is forked) say that and how many steps have run, so a test can press
    Stop mid-run and see how far the run went after."""

    def __init__(self, step_seconds: float = 0.05):
        import multiprocessing

        self.step_seconds = step_seconds
        context = multiprocessing.get_context("fork")
        self.stepping, self.steps_done = context.Event(), context.Value("i", 0)

    def generate(self, request, on_progress=None, cancel=None):
        import os
        import time

        from ernie_nf4.errors import GenerationCancelled

        for step in range(request.num_inference_steps):
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled(f"stopped after {step} steps")
            time.sleep(self.step_seconds)
            self.steps_done.value = step + 1
            self.stepping.set()
        return {"steps": request.num_inference_steps, "pid": os.getpid()}


def _forked_worker(task, args_queue, results):
    """The loop a ``spaces`` worker runs: pickled (args, kwargs) in, the pickled result or exception out."""
    while (item := args_queue.get()) is not None:
        args, kwargs = item
        try:
            results.put((True, task(*args, **kwargs)))
        except Exception as err:  # spaces sends back the exception; only gr.Error keeps its message
            results.put((False, type(err).__name__))


class ForkedGPU:
    """What ``spaces.GPU`` does on ZeroGPU that matters to Stop: the task runs in a process forked (the 'fork'
    context) when it is decorated, so before any run's Event exists, and reused for every call; arguments and
    results cross as pickles through multiprocessing queues; an exception comes back as a generic error."""

    def __init__(self):
        self.durations, self.workers = [], []

    def __call__(self, duration):
        import multiprocessing

        def wrap(task):
            context = multiprocessing.get_context("fork")
            args_queue, results = context.Queue(), context.Queue()
            worker = context.Process(target=_forked_worker, args=(task, args_queue, results), daemon=True)
            worker.start()
            self.workers.append((worker, args_queue))

            def handler(*args, **kwargs):
                self.durations.append(duration(*args, **kwargs))
                args_queue.put((args, kwargs))
                ok, value = results.get(timeout=300)  # a bound for a hung worker, far above any run here
                if not ok:
                    raise RuntimeError(f"ZeroGPU worker error: {value}")
                return value

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
    gpu = ForkedGPU()
    yield gpu
    gpu.close()


def test_zerogpu_run_without_stop_completes_in_the_forked_worker(forked_gpu):
    import os

    from ernie_nf4.webapp.zerogpu import STOP_FLAGS

    generate = gpu_generate(SlowGPUService(), forked_gpu)
    free = STOP_FLAGS.free_count
    result = generate(request(num_inference_steps=10), cancel=threading.Event())
    assert result["steps"] == 10 and result["pid"] != os.getpid()  # it ran in the forked worker
    assert forked_gpu.durations == [gpu_seconds(request(num_inference_steps=10))]
    assert STOP_FLAGS.free_count == free


def test_zerogpu_stop_reaches_the_forked_worker_and_the_next_run_is_not_born_stopped(forked_gpu):
    import re

    from ernie_nf4.errors import GenerationCancelled
    from ernie_nf4.webapp.zerogpu import STOP_FLAGS

    service = SlowGPUService(step_seconds=0.25)
    generate = gpu_generate(service, forked_gpu)  # the worker is forked here, before the Event exists
    free = STOP_FLAGS.free_count
    cancel, pressed_at = threading.Event(), []

    def press_stop_mid_run():  # once the worker has run a step, however long that took to start
        if service.stepping.wait(timeout=120):
            pressed_at.append(service.steps_done.value)
            cancel.set()

    presser = threading.Thread(target=press_stop_mid_run, daemon=True)
    presser.start()
    with pytest.raises(GenerationCancelled, match="stopped after") as stopped:
        generate(request(num_inference_steps=200), cancel=cancel)  # 50 s of steps unless Stop reaches the worker
    presser.join()
    steps = int(re.search(r"after (\d+) steps", str(stopped.value)).group(1))
    # it stopped mid-run, soon after Stop (the bridge looks every 0.1 s; 40 steps are 10 s)
    assert pressed_at and 1 <= pressed_at[0] <= steps < pressed_at[0] + 40, (pressed_at, steps)
    assert STOP_FLAGS.free_count == free
    # The same worker, the slot just freed (the stack gives it again): a new run starts clear and completes.
    slot = STOP_FLAGS.allocate()
    assert not STOP_FLAGS.is_set(slot)
    STOP_FLAGS.free(slot)
    assert generate(request(num_inference_steps=5), cancel=threading.Event())["steps"] == 5
    # A run stopped before it is sent never asks for the GPU.
    cancel = threading.Event()
    cancel.set()
    calls = len(forked_gpu.durations)
    with pytest.raises(GenerationCancelled):
        generate(request(num_inference_steps=5), cancel=cancel)
    assert len(forked_gpu.durations) == calls


class _FlakyService:
    """Completes, stops or fails by the request's seed (for the slot bookkeeping test)."""

    def generate(self, request, on_progress=None, cancel=None):
        from ernie_nf4.errors import GenerationCancelled

        if request.seed % 3 == 1:
            raise GenerationCancelled("stopped")
        if request.seed % 3 == 2:
            raise RuntimeError("boom")
        return cancel.is_set()


def test_zerogpu_stop_slots_are_freed_after_every_run(forked_gpu):
    from ernie_nf4.errors import GenerationCancelled
    from ernie_nf4.webapp.zerogpu import STOP_FLAGS, STOP_SLOTS

    generate = gpu_generate(_FlakyService(), forked_gpu)
    free = STOP_FLAGS.free_count
    assert free == STOP_SLOTS
    outcomes = {"ok": 0, "stopped": 0, "failed": 0}
    for seed in range(300):  # more runs than slots: a leak would run out
        cancel = threading.Event()
        try:
            assert generate(request(num_inference_steps=1, seed=seed), cancel=cancel) is False  # not born stopped
            outcomes["ok"] += 1
        except GenerationCancelled:
            outcomes["stopped"] += 1
        except RuntimeError:
            outcomes["failed"] += 1
        assert STOP_FLAGS.free_count == free
    assert outcomes == {"ok": 100, "stopped": 100, "failed": 100}
    # Slots handed out and not yet freed are distinct; when none is left the run goes on without Stop.
    slots = [STOP_FLAGS.allocate() for _ in range(STOP_SLOTS)]
    assert len(set(slots)) == STOP_SLOTS and STOP_FLAGS.allocate() is None
    try:
        assert generate(request(num_inference_steps=1, seed=0), cancel=threading.Event()) is False
    finally:
        for slot in slots:
            STOP_FLAGS.free(slot)
    assert STOP_FLAGS.free_count == free


def test_zerogpu_config_turns_compile_off_and_auto_into_all_on_gpu():
    from ernie_nf4.runtime.memory_modes import MemoryMode
    from ernie_nf4.serving.service import ServiceConfig
    from ernie_nf4.webapp.zerogpu import adjust_config

    config = adjust_config(ServiceConfig(compile=True))
    assert config.compile is False and config.memory_mode is MemoryMode.ALL_ON_GPU
    assert adjust_config(ServiceConfig(memory_mode="low-vram")).memory_mode is MemoryMode.LOW_VRAM


def test_running_out_of_gpu_memory_while_loading_is_explained(tiny_package, monkeypatch):
    import torch

    from ernie_nf4.errors import OutOfMemory
    from ernie_nf4.runtime.generation import Generator
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    def out_of_memory(*args, **kwargs):  # what bitsandbytes/diffusers raise on a card that is too small
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Generator, "from_pretrained", out_of_memory)
    service = ImageService(ServiceConfig(model_dir=str(tiny_package), device="cpu"))
    with pytest.raises(OutOfMemory, match="while loading the model. Use --memory-mode low-vram"):
        service.load()
    assert not service.loaded
