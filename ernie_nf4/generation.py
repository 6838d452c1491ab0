"""One generation path for the app, the benchmark and the tests.

``GenerationRequest`` is validated at the boundary (``ValueError`` naming the field and its range);
``Generator.generate`` runs the stages itself — seeded prompt enhancer, text encoding, denoising with
per-image seeded latents, VAE decode — timing each, and returns a ``GenerationResult``.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_PROMPT_CHARS = 8000
SIZE_RANGE = (64, 2048)
SIZE_MULTIPLE = 16
STEPS_RANGE = (1, 200)
GUIDANCE_RANGE = (0.0, 30.0)
SEED_LIMIT = 2**63
IMAGES_RANGE = (1, 4)
DEFAULT_MAX_PE_TOKENS = 256
STAGES = ("pe", "text_encoding", "denoising", "vae_decode")
logger = logging.getLogger(__name__)


class GenerationCancelled(Exception):
    """Raised from a step callback to stop a run after the current denoising step."""


class OutOfMemory(RuntimeError):
    """The GPU ran out of memory; memory was freed and the message says what to change."""


def _check_int(name: str, value, low: int, high: int, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer in [{low}, {high}]{extra}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}]{extra}, got {value}")


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    steps: int = 50
    guidance: float = 4.0
    seed: int = 1234
    use_pe: bool = True
    num_images: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("prompt must be a non-blank text")
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name)
            if not isinstance(text, str):
                raise ValueError(f"{name} must be text, got {type(text).__name__}")
            if len(text) > MAX_PROMPT_CHARS:
                raise ValueError(f"{name} must be at most {MAX_PROMPT_CHARS} characters, got {len(text)}")
        for name in ("width", "height"):
            _check_int(name, getattr(self, name), *SIZE_RANGE, f" and a multiple of {SIZE_MULTIPLE}")
            if getattr(self, name) % SIZE_MULTIPLE:
                raise ValueError(
                    f"{name} must be a multiple of {SIZE_MULTIPLE} in {list(SIZE_RANGE)}, got {getattr(self, name)}"
                )
        _check_int("steps", self.steps, *STEPS_RANGE)
        if (
            isinstance(self.guidance, bool)
            or not isinstance(self.guidance, (int, float))
            or not math.isfinite(self.guidance)
        ):
            raise ValueError(f"guidance must be a finite number in {list(GUIDANCE_RANGE)}, got {self.guidance!r}")
        if not GUIDANCE_RANGE[0] <= self.guidance <= GUIDANCE_RANGE[1]:
            raise ValueError(f"guidance must be in {list(GUIDANCE_RANGE)}, got {self.guidance}")
        _check_int("seed", self.seed, 0, SEED_LIMIT - IMAGES_RANGE[1])
        if not isinstance(self.use_pe, bool):
            raise ValueError(f"use_pe must be true or false, got {self.use_pe!r}")
        _check_int("num_images", self.num_images, *IMAGES_RANGE)

    @property
    def seeds(self) -> list[int]:
        """Image ``i`` uses ``seed + i``: any image can be made again alone from its own seed."""
        return [self.seed + i for i in range(self.num_images)]


@dataclass
class GenerationResult:
    request: GenerationRequest
    images: list  # PIL images
    seeds: list[int]
    revised_prompt: str | None
    seconds: dict[str, float] = field(default_factory=dict)  # per stage in STAGES, plus "total"
    peak_vram: dict | None = None  # {"allocated_bytes", "reserved_bytes"} on CUDA
    prompt_cached: bool = False  # PE and text encoding were taken from the cache


class Generator:
    """Generates images from a loaded ``ErnieImagePipeline`` (see ``loader.load_pipeline``)."""

    def __init__(self, pipe, max_pe_tokens: int = DEFAULT_MAX_PE_TOKENS, prompt_cache_size: int = 16):
        _check_int("max_pe_tokens", max_pe_tokens, 1, 4096)
        _check_int("prompt_cache_size", prompt_cache_size, 0, 1024)
        self.pipe = pipe
        self.residency = getattr(pipe, "residency", None)  # set by load_pipeline for memory_mode "low-vram"
        self.max_pe_tokens = max_pe_tokens
        # (prompt, negative, PE seed, size, PE on) -> (revised prompt, text embeddings, negative embeddings):
        # a rerun with other steps or guidance skips the PE and the text encoder.
        self._prompt_cache: OrderedDict = OrderedDict()
        self.prompt_cache_size = prompt_cache_size

    @classmethod
    def from_pretrained(
        cls,
        model_dir,
        device: str | None = None,
        memory_mode: str = "gpu",
        verify_sha256: bool = False,
        fast: bool = True,
        compile: bool = False,
        **kwargs,
    ):
        """Load with ``loader.load_pipeline`` (the one loader) and wrap; ``kwargs`` go to ``Generator``."""
        from .loader import load_pipeline

        pipe = load_pipeline(
            model_dir, device=device, memory_mode=memory_mode, verify_sha256=verify_sha256, fast=fast, compile=compile
        )
        return cls(pipe, **kwargs)

    @property
    def device(self):
        return self.pipe._execution_device

    @property
    def has_pe(self) -> bool:
        return getattr(self.pipe, "pe", None) is not None and getattr(self.pipe, "pe_tokenizer", None) is not None

    def _on_device(self, name: str) -> None:
        """In low-vram mode, put model ``name`` on the GPU (and the one there before back in CPU memory)."""
        if self.residency is not None and name in self.residency.names:
            self.residency.use(name)

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def enhance_prompt(self, prompt: str, width: int, height: int, seed: int) -> str:
        """The PE's rewrite of ``prompt``, sampled like the pipeline does but seeded and capped."""
        import torch

        from .pe_decoding import is_compiled, uncompile_decoding

        pipe = self.pipe
        message = json.dumps({"prompt": prompt, "width": width, "height": height}, ensure_ascii=False)
        text = pipe.pe_tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=False
        )
        inputs = pipe.pe_tokenizer(text, return_tensors="pt").to(self.device)
        devices = [self.device] if self.device.type == "cuda" else []

        def sample():
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(seed)
                return pipe.pe.generate(
                    **inputs,
                    max_new_tokens=self.max_pe_tokens,
                    do_sample=True,
                    temperature=0.6,
                    top_p=0.95,
                    pad_token_id=pipe.pe_tokenizer.pad_token_id,
                    eos_token_id=pipe.pe_tokenizer.eos_token_id,
                )

        try:
            output = sample()
        except Exception as err:  # compiled decoding is optional: never let it cost the user a run
            if not is_compiled(pipe.pe) or isinstance(err, torch.OutOfMemoryError):
                raise
            logger.warning("compiled PE decoding failed (%s); decoding eagerly from now on", err)
            uncompile_decoding(pipe.pe)
            output = sample()
        new_tokens = output[0][inputs["input_ids"].shape[1] :]
        return pipe.pe_tokenizer.decode(new_tokens, skip_special_tokens=True).strip()

    def warm_up(self, width: int = 1024, height: int = 1024, guidance: float = 4.0) -> float:
        """A 2-step run, so that compilation (``compile=True``) and CUDA start-up happen now rather than in the
        first request; it runs the PE only when its decoding is compiled. Nothing is cached. Returns seconds."""
        from .pe_decoding import is_compiled

        start = time.perf_counter()
        size, self.prompt_cache_size = self.prompt_cache_size, 0
        use_pe = self.has_pe and is_compiled(self.pipe.pe)
        try:
            size_and_steps = dict(width=width, height=height, steps=2)
            self.generate(GenerationRequest("warm-up", guidance=guidance, use_pe=use_pe, **size_and_steps))
        finally:
            self.prompt_cache_size = size
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
        pipe = self.pipe
        vae = pipe.vae
        bn_mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        bn_std = (vae.bn.running_var.view(1, -1, 1, 1) + 1e-5).sqrt().to(latents.device, latents.dtype)
        latents = pipe._unpatchify_latents(latents * bn_std + bn_mean)
        images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(images, output_type="pil")

    def generate(
        self,
        request: GenerationRequest,
        on_step: Callable[[int, int], None] | None = None,
        on_stage: Callable[[str, float], None] | None = None,
    ) -> GenerationResult:
        """Run ``request``. ``on_step(done, total)`` is called after each denoising step and may raise
        :class:`GenerationCancelled` to stop the run; ``on_stage(stage, seconds)`` after each stage.
        Running out of GPU memory frees what the run held and raises :class:`OutOfMemory` saying what to change."""
        import torch

        try:
            return self._generate(request, on_step, on_stage)
        except torch.OutOfMemoryError as err:
            gc.collect()
            torch.cuda.empty_cache()
            raise OutOfMemory(
                f"Out of GPU memory at {request.width}x{request.height} with {request.num_images} image(s). "
                "Try a smaller size, fewer images, memory mode low-vram (`--memory-mode low-vram`: about 6 GiB at "
                "1024x1024), or a machine with more GPU memory; the next request can run."
            ) from err
        except GenerationCancelled:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise

    def _generate(self, request: GenerationRequest, on_step, on_stage) -> GenerationResult:
        import torch

        from .system import peak_vram, reset_peak_vram

        pipe = self.pipe
        seconds: dict[str, float] = {}
        reset_peak_vram()
        start = time.perf_counter()

        def lap(stage: str, since: float) -> float:
            self._sync()
            now = time.perf_counter()
            seconds[stage] = seconds.get(stage, 0.0) + now - since
            if on_stage is not None:
                on_stage(stage, now - since)
            return now

        t = start
        use_pe = request.use_pe and self.has_pe
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
            revised, positive, negative = cached
        else:
            if use_pe:
                self._on_device("pe")
            revised = (
                self.enhance_prompt(request.prompt, request.width, request.height, request.seed) if use_pe else None
            )
            negative = None
        t = lap("pe", t)
        with torch.no_grad():
            if cached is None or (negative is None and request.guidance > 1.0):
                self._on_device("text_encoder")
            if cached is None:
                positive = pipe.encode_prompt([revised or request.prompt], self.device)
            if negative is None and request.guidance > 1.0:
                negative = pipe.encode_prompt([request.negative_prompt], self.device)
        t = lap("text_encoding", t)
        self._on_device("transformer")
        if self.prompt_cache_size:
            self._prompt_cache[key] = (revised, positive, negative)
            while len(self._prompt_cache) > self.prompt_cache_size:
                self._prompt_cache.popitem(last=False)
        if request.guidance <= 1.0:
            negative = None

        # One image at a time: image i is then exactly what seed + i gives alone, and peak VRAM stays that
        # of a single image (what 8-12 GB cards need).
        total_steps = request.steps * request.num_images
        images = []
        seconds["denoising"] = seconds["vae_decode"] = 0.0
        for number, seed in enumerate(request.seeds):

            def callback(_pipe, index, _timestep, tensors, done=number * request.steps):
                if on_step is not None:
                    on_step(done + index + 1, total_steps)
                return tensors

            latents = pipe(
                prompt_embeds=positive,
                negative_prompt_embeds=negative,
                height=request.height,
                width=request.width,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance,
                latents=self.initial_latents(seed, request.width, request.height),
                output_type="latent",
                use_pe=False,
                callback_on_step_end=callback,
            ).images
            t = lap("denoising", t)
            with torch.no_grad():
                images.extend(self.decode(latents))
            t = lap("vae_decode", t)
        seconds["total"] = time.perf_counter() - start
        return GenerationResult(
            request=request,
            images=images,
            seeds=request.seeds,
            revised_prompt=revised,
            seconds=seconds,
            peak_vram=peak_vram(),
            prompt_cached=cached is not None,
        )


_CONTROL = {c: None for c in range(32) if chr(c) not in "\n\t"} | {127: None}


def _whole(name: str, value) -> int:
    """An integer from a form value: ints, and floats/strings holding a whole number; else ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, str):
        value = value.strip()
    try:
        number = float(value) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if isinstance(number, float) and (not math.isfinite(number) or not number.is_integer()):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def request_from_form(
    prompt,
    negative_prompt,
    width,
    height,
    steps,
    guidance,
    seed,
    use_pe,
    num_images,
) -> tuple[GenerationRequest, list[str]]:
    """A request from UI/API values, forgiving where a user would expect it, with notes of each change:
    control characters are removed from the prompts and a width/height inside the range is snapped to the
    nearest multiple of 16 (1000 -> 1008). Everything else out of range raises ``ValueError`` naming the field."""
    notes = []
    texts = {}
    for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt or "")):
        if not isinstance(text, str):
            raise ValueError(f"{name} must be text, got {type(text).__name__}")
        cleaned = text.translate(_CONTROL)
        if cleaned != text:
            notes.append(f"{name}: removed {len(text) - len(cleaned)} control character(s)")
        texts[name] = cleaned
    sizes = {}
    for name, value in (("width", width), ("height", height)):
        size = _whole(name, value)
        if SIZE_RANGE[0] <= size <= SIZE_RANGE[1] and size % SIZE_MULTIPLE:
            snapped = min(SIZE_RANGE[1], (size + SIZE_MULTIPLE // 2) // SIZE_MULTIPLE * SIZE_MULTIPLE)
            notes.append(f"{name} {size} → {snapped} (a multiple of {SIZE_MULTIPLE})")
            size = snapped
        sizes[name] = size
    try:
        guidance = float(guidance)
    except (TypeError, ValueError):
        raise ValueError(f"guidance must be a finite number in {list(GUIDANCE_RANGE)}, got {guidance!r}") from None
    if not isinstance(use_pe, bool):
        raise ValueError(f"use_pe must be true or false, got {use_pe!r}")
    request = GenerationRequest(
        prompt=texts["prompt"],
        negative_prompt=texts["negative_prompt"],
        steps=_whole("steps", steps),
        guidance=guidance,
        seed=_whole("seed", seed),
        use_pe=use_pe,
        num_images=_whole("num_images", num_images),
        **sizes,
    )
    return request, notes
