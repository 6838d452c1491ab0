"""One generation path for the app, the benchmark and the tests.

``Generator.generate`` runs the stages itself — seeded prompt enhancer, text encoding, denoising with per-image
seeded latents, VAE decode — timing each, and returns a ``GenerationResult``. Images are reproducible: the same
request (seed included) gives the same pixels; image ``i`` of a request is exactly what seed ``seed + i`` gives.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..compat import unpatchify_latents
from ..errors import GenerationCancelled, InvalidArgument, OutOfMemory
from ..request import GenerationRequest
from ..stats import PeakVram, StageSeconds
from ..system import free_device_memory, peak_vram, reset_peak_vram
from .loader import load_pipeline
from .memory_modes import MemoryMode

logger = logging.getLogger(__name__)
PE_TEMPERATURE, PE_TOP_P = 0.6, 0.95  # the stock pipeline's sampling of the prompt enhancer


@dataclass
class PromptEnhancement:
    text: str
    tokens: int  # new tokens the PE wrote
    cut: bool  # the cap stopped it before its end-of-sequence token
    cap: int


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


@dataclass
class _Prompt:
    revised: str | None
    positive: list
    negative: list | None
    enhancement: PromptEnhancement | None


class Generator:
    """Generates images from a ``loader.LoadedPipeline``.

    ``max_pe_tokens``: cap on the prompt enhancer's new tokens; None (default) is the stock pipeline's limit,
    ``pe_tokenizer.model_max_length`` (2048): the real PE stops at its end-of-sequence token long before.
    """

    def __init__(self, loaded, max_pe_tokens: int | None = None, prompt_cache_size: int = 16):
        if max_pe_tokens is not None and not (
            isinstance(max_pe_tokens, int) and not isinstance(max_pe_tokens, bool) and 1 <= max_pe_tokens <= 8192
        ):
            raise InvalidArgument(f"max_pe_tokens must be an integer in [1, 8192] or None, got {max_pe_tokens!r}")
        if not 0 <= prompt_cache_size <= 1024:
            raise InvalidArgument(f"prompt_cache_size must be in [0, 1024], got {prompt_cache_size!r}")
        self.loaded = loaded
        self.pipe = loaded.pipe
        self.max_pe_tokens = max_pe_tokens
        # (prompt, negative, PE seed, size, PE on) -> _Prompt: a rerun with other steps or guidance skips the
        # PE and the text encoder.
        self._prompt_cache: OrderedDict = OrderedDict()
        self.prompt_cache_size = prompt_cache_size
        self._pe_decoder = None  # pe_decoding.PEDecoder, made on first use

    @classmethod
    def from_pretrained(
        cls,
        model_dir,
        device: str | None = None,
        memory_mode="all-on-gpu",
        verify_sha256=False,
        fast: bool = True,
        compile: bool = False,
        **kwargs,
    ):
        """Load with ``loader.load_pipeline`` (the one loader) and wrap; ``kwargs`` go to ``Generator``."""

        loaded = load_pipeline(
            model_dir, device=device, memory_mode=memory_mode, verify_sha256=verify_sha256, fast=fast, compile=compile
        )
        return cls(loaded, **kwargs)

    @property
    def device(self):
        return self.pipe._execution_device

    @property
    def pe_decoder(self):
        """The ``pe_decoding.PEDecoder`` kept for the PE (its KV cache and graph), or None before the PE first ran
        with it (and after a failed run in low-vram mode)."""
        return self._pe_decoder

    @property
    def pe_cap(self) -> int:
        """The PE's token cap in force: ``max_pe_tokens``, else the PE tokenizer's ``model_max_length``."""
        if self.max_pe_tokens is not None:
            return self.max_pe_tokens
        return int(min(getattr(self.pipe.pe_tokenizer, "model_max_length", 2048), 8192))

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _stock_pe_decoding(self) -> bool:
        """Stock runs (the benchmark's baselines) sample with transformers' ``generate``; ours with ``PEDecoder``."""

        return not self.loaded.fast or self.loaded.memory_mode is MemoryMode.MODEL_OFFLOAD

    def enhance_prompt(self, prompt: str, width: int, height: int, seed: int) -> PromptEnhancement:
        """The PE's rewrite of ``prompt``, sampled as the stock pipeline does (temperature 0.6, top-p 0.95), but
        seeded, and capped at ``pe_cap`` new tokens. Decoded by ``pe_decoding.PEDecoder`` (a static KV cache and,
        on CUDA, graphed steps; built on first use, once the PE is on its device, and kept: ``pe_decoder``)."""
        import torch

        from ..pe.decoding import PEDecoder

        pipe = self.pipe
        message = json.dumps({"prompt": prompt, "width": width, "height": height}, ensure_ascii=False)
        text = pipe.pe_tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=False
        )
        inputs = pipe.pe_tokenizer(text, return_tensors="pt")  # CPU; PEDecoder copies it without waiting for a move
        cap, eos = self.pe_cap, pipe.pe_tokenizer.eos_token_id
        if self._stock_pe_decoding():
            inputs = inputs.to(self.device)
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(seed)
                output = pipe.pe.generate(
                    **inputs,
                    max_new_tokens=cap,
                    do_sample=True,
                    temperature=PE_TEMPERATURE,
                    top_p=PE_TOP_P,
                    pad_token_id=pipe.pe_tokenizer.pad_token_id,
                    eos_token_id=eos,
                )
            new = output[0][inputs["input_ids"].shape[1] :].tolist()
            stopped = eos in new
            new = new[: new.index(eos) + 1] if stopped else new
        else:
            # Kept between requests in every memory mode. In low-vram the PE leaves the GPU after this, but the
            # residency's arena brings it back at the same addresses, so the decoder's graph stays valid and the
            # next request replays it without capturing again; the KV cache (104 KiB a token for the full PE: 245
            # MB at the stock cap of 2048) lives in the arena behind the PE when it fits there (about 17,000 tokens
            # for the full model), where the larger transformer's bytes go while the PE is away, so it costs no
            # memory of its own; a cache that does not fit is allocated and kept as in all-on-gpu. What else stays on
            # the GPU meanwhile: the graph's noise buffers (17 MB) and its memory pool.
            if self._pe_decoder is None:
                residency = self.loaded.residency
                storage = None
                if residency is not None and "pe" in residency.names:
                    storage = functools.partial(residency.scratch, "pe")
                self._pe_decoder = PEDecoder(pipe.pe, cache_storage=storage)
            try:
                with torch.no_grad():
                    ids, stopped = self._pe_decoder.generate(
                        inputs["input_ids"], cap, seed, temperature=PE_TEMPERATURE, top_p=PE_TOP_P, eos_token_id=eos
                    )
            except BaseException:
                if self.loaded.residency is not None:  # low-vram: a failed run gives its cache and graph back
                    self._pe_decoder = None
                    free_device_memory()
                raise
            new = ids.tolist()
        revised = pipe.pe_tokenizer.decode(new, skip_special_tokens=True).strip()
        return PromptEnhancement(revised, tokens=len(new), cut=not stopped, cap=cap)

    def warm_up(self, width: int = 1024, height: int = 1024, guidance_scale: float = 4.0) -> float:
        """A 2-step run, so that compilation (``compile=True``) and CUDA start-up happen now rather than in the
        first request; on a GPU it runs the PE too, so its decoding graph is captured now. Nothing is cached.
        Returns seconds."""
        start = time.perf_counter()
        size, self.prompt_cache_size = self.prompt_cache_size, 0
        cap, self.max_pe_tokens = self.max_pe_tokens, 16  # enough to capture the graph
        use_pe = self.loaded.has_pe and self.device.type == "cuda"
        try:
            request = GenerationRequest(
                "warm-up",
                width=width,
                height=height,
                num_inference_steps=2,
                guidance_scale=guidance_scale,
                use_pe=use_pe,
            )
            self.generate(request)
        finally:
            self.prompt_cache_size, self.max_pe_tokens = size, cap
        # loading and compiling leave many new objects: collect now, or a full collection (0.1-0.5 s on the lent
        # H100 machine's host) comes due in the middle of the first request
        gc.collect()
        return time.perf_counter() - start

    def initial_latents(self, seed: int, width: int, height: int):
        """Noise for one image from its seed (drawn on the CPU, so the same on every device)."""
        import torch

        pipe = self.pipe
        shape = (
            1,
            pipe.transformer.config.in_channels,
            height // pipe.vae_scale_factor,
            width // pipe.vae_scale_factor,
        )
        noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
        return noise.to(self.device, pipe.transformer.dtype)

    def decode(self, latents):
        """Packed latents → PIL images, as ``ErnieImagePipeline`` decodes them."""

        vae = self.pipe.vae
        bn_mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        bn_std = (vae.bn.running_var.view(1, -1, 1, 1) + 1e-5).sqrt().to(latents.device, latents.dtype)
        latents = unpatchify_latents(self.pipe, latents * bn_std + bn_mean)
        images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(images, output_type="pil")

    def generate(
        self,
        request: GenerationRequest,
        on_step: Callable[[int, int], None] | None = None,
        on_stage: Callable[[str, float], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Run ``request``. ``on_step(done, total)`` is called after each denoising step; ``on_stage(stage, seconds)``
        after each stage. When ``cancel`` is set (or ``on_step`` raises ``GenerationCancelled``) the run stops after
        its current step and raises ``GenerationCancelled``. Running out of GPU memory frees what the run held and
        raises ``OutOfMemory`` saying what to change."""
        import torch

        device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        try:
            with device:  # graphs, streams and Triton kernels go to this GPU, also when it is not cuda:0
                return self._generate(request, on_step, on_stage, cancel)
        except torch.cuda.OutOfMemoryError as err:
            free_device_memory()
            raise OutOfMemory(
                f"Out of GPU memory at {request.width}x{request.height} with {request.num_images} image(s). "
                "Try a smaller size, fewer images, memory mode low-vram (`--memory-mode low-vram`: about 6 GiB at "
                "1024x1024), or a machine with more GPU memory; the next request can run."
            ) from err
        except GenerationCancelled:
            free_device_memory()
            raise

    def _prompt(self, request: GenerationRequest) -> tuple[_Prompt, bool]:
        """Revised prompt and text embeddings, from the cache or computed (PE on the GPU, then the text encoder)."""
        import torch

        use_pe = request.use_pe and self.loaded.has_pe
        key = (
            request.prompt,
            request.negative_prompt,
            request.seed if use_pe else None,
            request.width,
            request.height,
            use_pe,
        )
        cached = self._prompt_cache.get(key)
        if cached is not None:
            self._prompt_cache.move_to_end(key)
        prompt = cached or _Prompt(None, [], None, None)
        if cached is None and use_pe:
            self.loaded.use("pe")
            prompt.enhancement = self.enhance_prompt(request.prompt, request.width, request.height, request.seed)
            prompt.revised = prompt.enhancement.text
        self._lap("pe")
        needs_negative = prompt.negative is None and request.guidance_scale > 1.0
        with torch.no_grad():
            if cached is None or needs_negative:
                self.loaded.use("text_encoder")
            if cached is None:
                prompt.positive = self.pipe.encode_prompt([prompt.revised or request.prompt], self.device)
            if needs_negative:
                prompt.negative = self.pipe.encode_prompt([request.negative_prompt], self.device)
        self._lap("text_encoding")
        if self.prompt_cache_size:
            self._prompt_cache[key] = _Prompt(prompt.revised, prompt.positive, prompt.negative, None)
            while len(self._prompt_cache) > self.prompt_cache_size:
                self._prompt_cache.popitem(last=False)
        return prompt, cached is not None

    def _lap(self, stage: str) -> None:
        self._sync()
        now = time.perf_counter()
        self._seconds.add(stage, now - self._since)
        if self._on_stage is not None:
            self._on_stage(stage, now - self._since)
        self._since = now

    def _denoise(self, request: GenerationRequest, prompt: _Prompt, number: int, on_step, cancel):
        """Latents of image ``number`` (seed ``request.seed + number``)."""
        total = request.num_inference_steps * request.num_images

        def callback(_pipe, index, _timestep, tensors):
            if on_step is not None:
                on_step(number * request.num_inference_steps + index + 1, total)
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("stopped")
            return tensors

        return self.pipe(
            prompt_embeds=prompt.positive,
            negative_prompt_embeds=prompt.negative if request.guidance_scale > 1.0 else None,
            height=request.height,
            width=request.width,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            latents=self.initial_latents(request.seed + number, request.width, request.height),
            output_type="latent",
            use_pe=False,
            callback_on_step_end=callback,
        ).images

    def _generate(self, request: GenerationRequest, on_step, on_stage, cancel) -> GenerationResult:
        import torch

        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("stopped before it started")
        reset_peak_vram(self.device)
        start = self._since = time.perf_counter()
        self._seconds, self._on_stage = StageSeconds(), on_stage
        prompt, cached = self._prompt(request)
        self.loaded.use("transformer")
        # One image at a time: image i is then exactly what seed + i gives alone, and peak VRAM stays that
        # of a single image (what 8-12 GB cards need).
        images = []
        for number in range(request.num_images):
            latents = self._denoise(request, prompt, number, on_step, cancel)
            self._lap("denoising")
            with torch.no_grad():
                images.extend(self.decode(latents))
            self._lap("vae_decode")
        self._seconds.total = time.perf_counter() - start
        return GenerationResult(
            request=request,
            images=images,
            seeds=request.seeds,
            revised_prompt=prompt.revised,
            seconds=self._seconds,
            peak_vram=peak_vram(self.device),
            prompt_cached=cached,
            enhancement=prompt.enhancement,
        )
