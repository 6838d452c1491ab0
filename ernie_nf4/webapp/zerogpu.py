"""ZeroGPU (Hugging Face Spaces): the platform's rules, from the ``spaces`` package (0.51) and its docs.

- The weights are downloaded at startup and loaded at module level, outside any GPU function
  (``preload_from_hub`` in the README front matter keeps them in the Space's HF cache across restarts).
- ``@spaces.GPU(duration=...)`` wraps only the GPU work; ``duration`` is called with the same arguments and
  returns the seconds to reserve (``gpu_seconds``). Validation happens before it, so a bad request never
  takes a GPU slot.
- The decorated function runs in a worker process forked with the 'fork' context (reused across calls) and its
  arguments are pickled, so the run's ``threading.Event`` cannot cross. Stop reaches it through ``STOP_FLAGS``: a
  table of one-byte flags in anonymous shared memory, made when this module is imported (before any worker is
  forked, so every worker shares it). The app's process gives each GPU call a slot, a bridge thread copies the
  run's Event into the slot's flag, and the worker's ``service.generate`` (or ``service.enhance``) reads it at every
  step (``SharedCancel``). A stop inside the worker comes back as a plain value (``spaces`` turns any exception but
  ``gr.Error`` into a generic "ZeroGPU worker error") and is raised here again as ``GenerationCancelled``.
- Live previews: a run that asks for them runs through a generator function, which ``spaces`` runs in the worker and
  whose every yield it pickles back to this process (``spaces.zero.wrappers.generator_function_wrapper``): the worker
  yields the run's ``Progress`` events (its previews among them) as they come, then its result.
- ``torch.compile`` is not allowed there, so the service never uses it. By default the blocks run eagerly. With
  ``--compile`` (``ERNIE_NF4_COMPILE=1``, experimental: not yet seen working on a GPU) the transformer's repeated
  block is compiled ahead of time at start instead (``compile_ahead_of_time``: ``torch.export`` and AOTInductor
  through ``spaces``' AoTI path, ``runtime.aoti``) inside one GPU call; the compiled packages come back to this
  process as bytes and are applied to every block here, so every worker forked after it runs them. A failure (the
  GPU worker's crash included) is one log line and the blocks stay eager; Stats say which.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import threading
from dataclasses import replace
from pathlib import Path

from ..errors import EnvironmentUnsupported, GenerationCancelled
from ..progress import Progress
from ..runtime.memory_modes import MemoryMode
from ..runtime.upscale import budget_pixels, request_tiles
from ..serving.provider import repo_layout
from .live import Finished, streamed

logger = logging.getLogger(__name__)

BASE_SECONDS = 10  # moving the models in, the text encoder, the VAE decode
PE_SECONDS = 12  # the prompt enhancer (up to 256 new tokens on a ZeroGPU H200 slice)
STEP_SECONDS_1MP = 0.45  # one denoising step at 1024x1024 (measured 0.37 s on an H100; margin for H200 slices)
TILE_SECONDS = 1  # each further tile's VAE encode and decode, at 1024x1024
MAX_SECONDS = 300
AOTI_SECONDS = 240  # the GPU call at start that exports and compiles the transformer block (minutes at most)
STOP_SLOTS = 256  # runs on the GPU at once, at most, that Stop can reach (far above any concurrency limit)
STOP_POLL_SECONDS = 0.1  # how often the bridge thread looks at the run's Event


class StopFlags:
    """One-byte stop flags in anonymous shared memory (``MAP_SHARED``), inherited by every process forked after
    it was made. Slots are handed out and taken back in this (the app's) process only; a worker only reads."""

    def __init__(self, size: int = STOP_SLOTS):
        self._flags = mmap.mmap(-1, size)
        self._free = list(range(size - 1, -1, -1))  # a stack: the slot freed last is given next
        self._lock = threading.Lock()

    def allocate(self):
        """A free slot with its flag clear, or None when all are in use (the run then cannot be stopped)."""
        with self._lock:
            if not self._free:
                return None
            slot = self._free.pop()
        self._flags[slot] = 0
        return slot

    def free(self, slot) -> None:
        if slot is None:
            return
        self._flags[slot] = 0
        with self._lock:
            self._free.append(slot)

    def set(self, slot) -> None:
        if slot is not None:
            self._flags[slot] = 1

    def is_set(self, slot) -> bool:
        return slot is not None and self._flags[slot] != 0

    @property
    def free_count(self) -> int:
        with self._lock:
            return len(self._free)


STOP_FLAGS = StopFlags()  # made at import, in the app's process, before spaces forks any worker


class SharedCancel:
    """The stop signal as the worker sees it: ``is_set()`` reads the slot's shared flag."""

    def __init__(self, slot, flags: StopFlags = STOP_FLAGS):
        self.slot, self._flags = slot, flags

    def is_set(self) -> bool:
        return self._flags.is_set(self.slot)


class Cancelled:
    """What the worker returns when the run was stopped (plain and picklable; an exception would come back as a
    generic worker error)."""

    def __init__(self, message: str = ""):
        self.message = message


def _bridge(cancel, slot, done: threading.Event, flags: StopFlags) -> None:
    """Copy the run's stop signal into the shared flag while the GPU call is in flight."""
    while True:
        if cancel.is_set():
            flags.set(slot)
            return
        if done.wait(STOP_POLL_SECONDS):
            return


def on_zerogpu(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "true", "yes", "on")


def gpu_seconds(request) -> int:
    """Seconds of GPU to ask ZeroGPU for ``request``: steps × images × pixels (× tiles, for image-to-image above the
    budget, each tile also encoded and decoded), plus the PE (unless the request gives its enhanced prompt) and
    fixed costs."""
    plan = request_tiles(request, budget_pixels(MemoryMode.ALL_ON_GPU))  # ZeroGPU runs all-on-gpu
    megapixels = plan.width * plan.height / (1024 * 1024)
    denoise = plan.count * request.steps_run * request.num_images * STEP_SECONDS_1MP * max(megapixels, 0.25)
    tiles = (plan.count - 1) * request.num_images * TILE_SECONDS
    seconds = BASE_SECONDS + (PE_SECONDS if request.runs_pe else 0) + denoise + tiles
    return int(min(MAX_SECONDS, math.ceil(seconds)))


def import_spaces():
    """The platform's ``spaces`` package; refused in one line when ``SPACES_ZERO_GPU`` is set where the platform's
    other variables are not (``spaces`` asserts they are there when imported)."""
    try:
        import spaces
    except (AssertionError, ImportError) as err:
        raise EnvironmentUnsupported(
            f"SPACES_ZERO_GPU is set, but this is not a working ZeroGPU Space ({err}); "
            "unset SPACES_ZERO_GPU to run anywhere else"
        ) from None
    return spaces


def decorator(environ=None):
    """``spaces.GPU`` on ZeroGPU, else None (the GPU work runs in-process)."""
    if not on_zerogpu(environ):
        return None
    return import_spaces().GPU


def gpu_generate(service, gpu_decorator=None):
    """``service.generate`` as the app calls it: ``(request, on_progress, cancel)``. With ``gpu_decorator``
    (``spaces.GPU``), ``service.generate(request, cancel=SharedCancel(slot))`` runs inside it, called with
    ``(request, slot)`` and ``duration=gpu_seconds(request)``; progress stays in this process, and ``cancel``
    reaches the worker through the slot's shared flag."""
    return _on_gpu(service, "generate", gpu_seconds, gpu_decorator)


def enhance_seconds(request) -> int:
    """Seconds of GPU to ask ZeroGPU for the prompt enhancer alone (``/enhance``): the PE and the fixed costs."""
    return BASE_SECONDS + PE_SECONDS


def gpu_enhance(service, gpu_decorator=None):
    """``service.enhance`` as the app calls it, inside ``gpu_decorator`` as ``gpu_generate`` does, with
    ``duration=enhance_seconds(request)``."""
    return _on_gpu(service, "enhance", enhance_seconds, gpu_decorator)


def _on_gpu(service, method: str, seconds, gpu_decorator):
    """``getattr(service, method)`` run as described in ``gpu_generate``, asking for ``seconds(request)``."""
    if gpu_decorator is None:
        return getattr(service, method)

    def run_on_gpu(request, slot):
        try:
            return getattr(service, method)(request, cancel=SharedCancel(slot))
        except GenerationCancelled as err:
            return Cancelled(str(err))

    decorated = gpu_decorator(duration=lambda request, slot: seconds(request))(run_on_gpu)
    live = (
        gpu_decorator(duration=lambda request, slot: seconds(request))(_live_on_gpu(service))
        if method == "generate"
        else None
    )

    def run(request, on_progress=None, cancel=None, previews=False):
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("stopped before the GPU was asked for")
        slot = STOP_FLAGS.allocate()
        if slot is None:
            logger.warning("ZeroGPU: all %d stop slots in use; this run cannot be stopped once on the GPU", STOP_SLOTS)
        done, bridge = threading.Event(), None
        try:
            if cancel is not None and slot is not None:
                bridge = threading.Thread(
                    target=_bridge, args=(cancel, slot, done, STOP_FLAGS), name="zerogpu-stop", daemon=True
                )
                bridge.start()
            if previews and live is not None:
                result = _from_live(live(request, slot), on_progress)
            else:
                result = decorated(request, slot)
        finally:
            done.set()
            if bridge is not None:
                bridge.join()  # no late write into a slot that is about to be given to another run
            STOP_FLAGS.free(slot)
        if isinstance(result, Cancelled):
            raise GenerationCancelled(result.message or "stopped")
        return result

    return run


def _live_on_gpu(service):
    """The generator function that runs ``service.generate`` with previews in the worker: it yields the run's
    ``Progress`` events as they come, then the result (or ``Cancelled``)."""

    def run_on_gpu_live(request, slot):
        def run(emit):
            return service.generate(request, on_progress=emit, cancel=SharedCancel(slot), previews=True)

        try:
            for item in streamed(run):
                yield item.result() if isinstance(item, Finished) else item
        except GenerationCancelled as err:
            yield Cancelled(str(err))

    return run_on_gpu_live


def _from_live(values, on_progress):
    """The result of a live run's yields (``_live_on_gpu``), each ``Progress`` before it passed to ``on_progress``."""
    result = None
    for value in values:
        if isinstance(value, Progress):
            if on_progress is not None:
                on_progress(value)
        else:
            result = value
    return result


def adjust_config(config):
    """The ZeroGPU form of a ``ServiceConfig``: ``torch.compile`` off (one log line when --compile asked for it:
    ``preload`` then compiles the blocks ahead of time instead)."""
    if config.compile:
        print(
            "ZeroGPU: --compile turned off for torch.compile; the transformer blocks are compiled ahead of time "
            "instead (experimental)",
            flush=True,
        )
    if config.compile is not False:  # also the default (None), which would compile on a GPU
        config = replace(config, compile=False)
    if config.memory_mode is MemoryMode.AUTO:  # the main process sees no real GPU to measure; a slice has 70 GB
        config = replace(config, memory_mode=MemoryMode.ALL_ON_GPU)
    return config


def use_hf_cache(config):
    """The package from the HF cache (``preload_from_hub`` put it there at build time, so a restart downloads
    nothing): ``snapshot_download`` returns its cached folder, which becomes ``model_dir``."""
    if config.tiny or not config.repo_id or (Path(config.model_dir).expanduser() / "model_index.json").exists():
        return config
    from huggingface_hub import snapshot_download

    root = repo_layout(config.repo_id).root  # the package may sit in one subfolder of the repo
    snapshot = snapshot_download(config.repo_id, allow_patterns=[f"{root}/*"] if root else None)
    return replace(config, model_dir=str(Path(snapshot) / root) if root else snapshot)


def preload(service, ahead_of_time: bool = False) -> None:
    """Load the weights now, in the main process and outside the GPU function, as ZeroGPU expects (``spaces``
    emulates CUDA there, so the models go to "cuda" before any GPU is attached); then, with ``ahead_of_time`` (the
    app's ``--compile``), compile the transformer blocks ahead of time (``compile_ahead_of_time``)."""
    spaces = import_spaces()  # before torch touches CUDA, as the platform requires
    service.load()
    if ahead_of_time:
        compile_ahead_of_time(service, spaces.GPU)


def compile_ahead_of_time(service, gpu_decorator, compile_fn=None):
    """Compile the loaded service's transformer blocks ahead of time: exported and compiled inside one GPU call
    (``gpu_decorator(duration=...)``, ``spaces.GPU`` on ZeroGPU: a forked worker with the GPU), the packages back
    here as bytes, applied to every block in this process (which every later worker inherits). The result, an
    ``aoti.AotiBlocks``, becomes ``service.compiler``, so Stats say ``compiled ahead of time (AOTInductor)`` or why
    the blocks run eagerly; any failure is one log line and the model stays eager. ``compile_fn``: see
    ``aoti.compile_archives``."""
    from ..runtime.aoti import AotiArchives, AotiBlocks, check_blocks, compile_archives

    transformer = service.load().loaded.pipe.transformer
    blocks = AotiBlocks(transformer)
    service.compiler = blocks
    try:
        check_blocks(transformer)  # refused here, before any GPU time is asked for
    except ValueError as err:
        return blocks.fail(err)

    def compile_on_gpu():
        try:
            return compile_archives(transformer, compile_fn)
        except Exception as err:  # comes back as a reason: an exception would be a generic worker error
            return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"

    try:
        result = gpu_decorator(duration=lambda: AOTI_SECONDS)(compile_on_gpu)()
    except Exception as err:
        return blocks.fail(err)
    if not isinstance(result, AotiArchives):
        return blocks.fail(str(result))
    return blocks.apply(result)
