"""One generation path for the app, the benchmark and the tests.

``Generator.generate`` runs the stages — the prompt stage (seeded prompt enhancer, prompt cache, text encoding:
``prompt``), denoising with per-image seeded latents (``denoising``), VAE decode (``vae_decode``) — timing each on a
``timing.StageClock`` made for the request, and returns a ``GenerationResult``. Images are reproducible: the same
request (seed included) gives the same pixels; image ``i`` of a request is exactly what seed ``seed + i`` gives.

One stop signal per run (``cancel``: anything with ``is_set()``) reaches every stage: the prompt enhancer checks it
every few tokens, the text encoder before and after, denoising after each step, VAE decode after each image. A
stopped run raises ``GenerationCancelled`` and keeps nothing (no prompt cache entry, no images).
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import InvalidArgument, OutOfMemory
from ..request import GenerationRequest
from ..stats import PeakVram, StageSeconds
from ..system import free_device_memory, peak_vram, reset_peak_vram
from .denoising import denoise, initial_latents, step_callback
from .image_to_image import denoise_from, encode, fitted
from .loader import load_pipeline
from .prompt import PromptCache, PromptEnhancement, PromptStage, check_cancel, check_max_pe_tokens
from .timing import StageClock
from .upscale import budget_pixels, request_tiles, tiled_image
from .vae_decode import decode

WARM_UP_PE_TOKENS = 16  # enough to capture the PE decoder's graph


@dataclass
class GenerationResult:
    request: GenerationRequest
    images: list  # PIL images
    seeds: list[int]
    revised_prompt: str | None
    seconds: StageSeconds = field(default_factory=StageSeconds)
    peak_vram: PeakVram | None = None  # on CUDA
    prompt_cached: bool = False  # PE and text encoding were taken from the cache
    enhancement: PromptEnhancement | None = None  # None when the PE did not run (off, or cached)


@dataclass(frozen=True)
class RunHooks:
    """What one run tells its caller and listens to: ``on_step(done, total)`` after each denoising step (counted
    over all images), ``on_stage(stage, seconds)`` after each stage, ``on_pe_tokens(written, cap)`` every few
    tokens the PE writes, and ``cancel``, the run's stop signal (anything with ``is_set()``); ``on_preview(image,
    done, total)``, when given, every few denoising steps: a live preview of the image forming (a small PIL image,
    ``width/8 x height/8``; ``denoising.previewed_steps``)."""

    on_step: Callable[[int, int], None] | None = None
    on_stage: Callable[[str, float], None] | None = None
    on_pe_tokens: Callable[[int, int], None] | None = None
    cancel: object = None
    on_preview: Callable[[object, int, int], None] | None = None


def _check_limits(max_pe_tokens: int | None, prompt_cache_size: int) -> None:
    check_max_pe_tokens(max_pe_tokens)
    if not 0 <= prompt_cache_size <= 1024:
        raise InvalidArgument(f"prompt_cache_size must be in [0, 1024], got {prompt_cache_size!r}")


class Generator:
    """Generates images from a ``loader.LoadedPipeline``. Holds what outlives a request (the pipeline and the prompt
    stage, with its cache and the PE's decoder); each request's state travels as values through the stages.

    ``max_pe_tokens``: cap on the prompt enhancer's new tokens; None (default) is the stock pipeline's limit,
    ``pe_tokenizer.model_max_length`` (2048): the real PE stops at its end-of-sequence token long before.
    """

    def __init__(self, loaded, max_pe_tokens: int | None = None, prompt_cache_size: int = 16):
        _check_limits(max_pe_tokens, prompt_cache_size)
        self.loaded = loaded
        self.pipe = loaded.pipe
        self.prompt_stage = PromptStage(loaded, max_pe_tokens, prompt_cache_size)

    @classmethod
    def from_pretrained(
        cls,
        model_dir,
        device: str | None = None,
        memory_mode="all-on-gpu",
        verify_sha256=False,
        fast: bool = True,
        compile: bool = False,
        loras=(),
        compute="bf16",
        compile_after_load: bool | None = False,
        **kwargs,
    ):
        """Load with ``loader.load_pipeline`` (the one loader) and wrap; ``kwargs`` go to ``Generator``."""

        loaded = load_pipeline(
            model_dir,
            device=device,
            memory_mode=memory_mode,
            verify_sha256=verify_sha256,
            fast=fast,
            compile=compile,
            loras=loras,
            compute=compute,
            compile_after_load=compile_after_load,
        )
        return cls(loaded, **kwargs)

    @property
    def device(self):
        """The ``torch.device`` the pipeline runs on."""
        import torch

        return torch.device(self.loaded.device)

    @property
    def pe_decoder(self):
        """The ``PEDecoder`` kept for the PE (its KV cache and graph), or None before the PE first ran with it (and
        after a failed run in low-vram mode)."""
        return self.prompt_stage.decoder

    @property
    def pe_cap(self) -> int:
        """The PE's token cap in force: ``max_pe_tokens``, else the PE tokenizer's ``model_max_length``."""
        return self.prompt_stage.cap

    @property
    def prompt_cache(self) -> PromptCache:
        return self.prompt_stage.cache

    def enhance_prompt(
        self,
        prompt: str,
        width: int,
        height: int,
        seed: int,
        cap: int | None = None,
        cancel=None,
        on_tokens: Callable[[int, int], None] | None = None,
    ) -> PromptEnhancement:
        """The PE's rewrite of ``prompt`` alone (a ``PromptEnhancement``): ``PromptStage.enhance``, with the PE
        brought onto the GPU first in low-vram mode. The seed decides it: it is the text ``generate`` has the PE
        write for a request of this prompt, size and seed. ``cancel`` and ``on_tokens``: as in ``generate`` (a stop
        raises ``GenerationCancelled``)."""
        import torch

        if not self.loaded.has_pe:
            raise InvalidArgument("this model package has no prompt enhancer: write the enhanced prompt yourself")
        check_cancel(cancel, "before the prompt enhancer")
        device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        try:
            with device:
                self.loaded.use("pe")
                return self.prompt_stage.enhance(prompt, width, height, seed, cap, cancel, on_tokens)
        except torch.cuda.OutOfMemoryError as err:
            free_device_memory(err)
            raise OutOfMemory(
                "Out of GPU memory while the prompt enhancer wrote. Try memory mode low-vram (`--memory-mode "
                "low-vram`), or close what else uses the GPU; the next request can run."
            ) from err

    def warm_up(self, width: int = 1024, height: int = 1024, guidance_scale: float = 4.0) -> float:
        """A 2-step run, so that compilation (``compile=True``) and CUDA start-up happen now rather than in the
        first request; on a GPU it runs the PE too, so its decoding graph is captured now. Nothing is cached.
        Returns seconds."""
        start = time.perf_counter()
        use_pe = self.loaded.has_pe and self.device.type == "cuda"
        request = GenerationRequest(
            "warm-up", width=width, height=height, num_inference_steps=2, guidance_scale=guidance_scale, use_pe=use_pe
        )
        self._on_device(request, RunHooks(), PromptCache(0), WARM_UP_PE_TOKENS)
        # loading and compiling leave many new objects: collect now, or a full collection (0.1-0.5 s on an H100
        # host) comes due in the middle of the first request
        gc.collect()
        return time.perf_counter() - start

    def generate(
        self,
        request: GenerationRequest,
        on_step: Callable[[int, int], None] | None = None,
        on_stage: Callable[[str, float], None] | None = None,
        cancel: threading.Event | None = None,
        on_pe_tokens: Callable[[int, int], None] | None = None,
        on_preview: Callable[[object, int, int], None] | None = None,
    ) -> GenerationResult:
        """Run ``request``. ``on_step(done, total)`` is called after each denoising step (``done`` counts the steps
        of all images: image ``k`` runs steps ``(k - 1) * request.steps_run + 1`` onwards); ``on_stage(stage,
        seconds)`` after each stage (``denoising`` and ``vae_decode`` once per image); ``on_pe_tokens(written, cap)``
        every few tokens the prompt enhancer writes. When ``cancel`` is set (or a callback raises
        ``GenerationCancelled``) the run stops within a few PE tokens, at the text encoder, or after the current
        denoising step or image decode, and raises ``GenerationCancelled``. Image-to-image above the memory mode's
        budget runs each image in ``tile_count`` tiles: the steps are counted over them, stages lapped per tile.
        Running out of GPU memory frees what the run held and raises ``OutOfMemory`` saying what to change.
        ``on_preview(image, done, total)``: live previews (``RunHooks``; not of tiled runs), none after a stop;
        without it no preview is made."""
        hooks = RunHooks(on_step, on_stage, on_pe_tokens, cancel, on_preview)
        return self._on_device(request, hooks, None, None)

    def _on_device(self, request, hooks: RunHooks, cache, pe_cap) -> GenerationResult:
        """``_run`` on this generator's GPU, with out-of-memory freeing what the run held. A stop is passed on as it
        came: what the run held goes back to torch's cache as the caller drops the exception, as after an ended run
        (a full garbage collection here, a second in a large process, would only delay the stop)."""
        import torch

        device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        try:
            with device:  # graphs, streams and Triton kernels go to this GPU, also when it is not cuda:0
                return self._run(request, hooks, cache, pe_cap)
        except torch.cuda.OutOfMemoryError as err:
            free_device_memory(err)
            raise OutOfMemory(
                f"Out of GPU memory at {request.width}x{request.height} with {request.num_images} image(s). "
                "Try a smaller size, fewer images, memory mode low-vram (`--memory-mode low-vram`: about 6 GiB at "
                "1024x1024), or a machine with more GPU memory; the next request can run."
            ) from err

    def tile_count(self, request: GenerationRequest) -> int:
        """The tiles each image of ``request`` runs in (``upscale``): 1 unless it is image-to-image above the
        memory mode's budget."""
        return request_tiles(request, budget_pixels(self.loaded.memory_mode)).count

    def _init_latents(self, request: GenerationRequest):
        """The init image's latents, fitted to the request's size, for image-to-image; None for text-to-image
        (strength 1 included: the same bytes as without an image)."""
        if not request.uses_init_image:
            return None
        image = fitted(request.init_image.image, request.width, request.height)
        return encode(self.pipe, image, self.device, self.pipe.transformer.dtype)

    def _run(self, request, hooks: RunHooks, cache, pe_cap) -> GenerationResult:
        """The stages of one request: prompt, then per image denoising and VAE decode (``cache``, ``pe_cap``: None
        for the prompt stage's own)."""
        import torch

        cancel = hooks.cancel
        check_cancel(cancel, "before it started")
        self.loaded.check_loras(request.loras)
        device, pipe = self.device, self.pipe
        reset_peak_vram(device)
        clock = StageClock(device, hooks.on_stage)
        prompt, cached = self.prompt_stage.run(request, clock, cache, pe_cap, cancel, hooks.on_pe_tokens)
        self.loaded.use("transformer")
        self.loaded.select_loras(request.loras)
        # One image at a time: image i is then exactly what seed + i gives alone, and peak VRAM stays that
        # of a single image (what 8-12 GB cards need); image-to-image above the mode's budget runs in tiles.
        plan = request_tiles(request, budget_pixels(self.loaded.memory_mode))
        start = self._init_latents(request) if plan.count == 1 else None
        preview_map = self.loaded.preview_map() if hooks.on_preview is not None and plan.count == 1 else None
        images = []
        for number in range(request.num_images):
            if plan.count > 1:  # image-to-image above the memory mode's budget
                images.append(tiled_image(pipe, request, prompt, plan, number, hooks, clock, device))
                continue
            noise = initial_latents(pipe, request.seed + number, request.width, request.height, device)
            callback = step_callback(request, number, hooks.on_step, cancel, hooks.on_preview, preview_map)
            if start is None:
                latents = denoise(pipe, request, prompt.positive, prompt.negative, noise, callback)
            else:
                latents = denoise_from(pipe, request, prompt.positive, prompt.negative, start, noise, callback)
            clock.lap("denoising")
            with torch.no_grad():
                images.extend(decode(pipe, latents))
            clock.lap("vae_decode")
            check_cancel(cancel, "after decoding an image")
        return GenerationResult(
            request=request,
            images=images,
            seeds=request.seeds,
            revised_prompt=prompt.revised,
            seconds=clock.finish(),
            peak_vram=peak_vram(device),
            prompt_cached=cached,
            enhancement=prompt.enhancement,
        )
