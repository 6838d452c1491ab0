"""ZeroGPU (Hugging Face Spaces): the platform's rules, from the ``spaces`` package (0.51) and its docs.

- The weights are downloaded at startup and loaded at module level, outside any GPU function
  (``preload_from_hub`` in the README front matter keeps them in the Space's HF cache across restarts).
- ``@spaces.GPU(duration=...)`` wraps only the GPU work; ``duration`` is called with the same arguments and
  returns the seconds to reserve (``gpu_seconds``). Validation happens before it, so a bad request never
  takes a GPU slot.
- The decorated function runs in a forked worker and its arguments are pickled: a ``threading.Event`` cannot
  cross, so Stop cannot reach a running ZeroGPU job. Stop still removes queued jobs, and a run stopped while on
  the GPU keeps nothing (the handler checks its signal when the worker returns).
- ``--compile`` is turned off (the compile cache would not outlive the worker).
"""

from __future__ import annotations

import logging
import math
import os

logger = logging.getLogger(__name__)

BASE_SECONDS = 10  # moving the models in, the text encoder, the VAE decode
PE_SECONDS = 12  # the prompt enhancer (up to 256 new tokens on a ZeroGPU H200 slice)
STEP_SECONDS_1MP = 0.45  # one denoising step at 1024x1024 (measured 0.37 s on an H100; margin for H200 slices)
MAX_SECONDS = 300


def on_zerogpu(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "true", "yes", "on")


def gpu_seconds(request) -> int:
    """Seconds of GPU to ask ZeroGPU for ``request``: steps × images × pixels, plus the PE and fixed costs."""
    megapixels = request.width * request.height / (1024 * 1024)
    denoise = request.num_inference_steps * request.num_images * STEP_SECONDS_1MP * max(megapixels, 0.25)
    seconds = BASE_SECONDS + (PE_SECONDS if request.use_pe else 0) + denoise
    return int(min(MAX_SECONDS, math.ceil(seconds)))


def decorator(environ=None):
    """``spaces.GPU`` on ZeroGPU, else None (the GPU work runs in-process)."""
    if not on_zerogpu(environ):
        return None
    import spaces

    return spaces.GPU


def gpu_generate(service, gpu_decorator=None):
    """``service.generate`` as the app calls it: ``(request, on_progress, cancel)``. With ``gpu_decorator``
    (``spaces.GPU``), only ``service.generate(request)`` runs inside it, with ``duration=gpu_seconds``; progress
    and the stop signal stay in this process."""
    if gpu_decorator is None:
        return service.generate

    def generate_on_gpu(request):
        return service.generate(request)

    decorated = gpu_decorator(duration=lambda request: gpu_seconds(request))(generate_on_gpu)

    def generate(request, on_progress=None, cancel=None):
        return decorated(request)

    return generate


def adjust_config(config):
    """The ZeroGPU form of a ``ServiceConfig``: compile off (one log line)."""
    from dataclasses import replace

    if config.compile:
        print("ZeroGPU: --compile turned off (each GPU call runs in a fresh worker)", flush=True)
        return replace(config, compile=False)
    return config


def use_hf_cache(config):
    """The package from the HF cache (``preload_from_hub`` put it there at build time, so a restart downloads
    nothing): ``snapshot_download`` returns its cached folder, which becomes ``model_dir``."""
    from dataclasses import replace
    from pathlib import Path

    if config.tiny or not config.repo_id or (Path(config.model_dir).expanduser() / "model_index.json").exists():
        return config
    from huggingface_hub import snapshot_download

    return replace(config, model_dir=snapshot_download(config.repo_id))


def preload(service) -> None:
    """Load the weights now, in the main process and outside the GPU function, as ZeroGPU expects (``spaces``
    emulates CUDA there, so the models go to "cuda" before any GPU is attached)."""
    import spaces  # noqa: F401  (imported before torch touches CUDA, as the platform requires)

    service.load()
