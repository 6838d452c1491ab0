"""The image service behind the app: gets the package lazily, loads it once, generates, reports stats."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import EnvironmentUnsupported, InvalidArgument, OutOfMemory
from .generation import GenerationResult, Generator
from .memory import APP_MEMORY_MODES, MemoryMode, free_device_memory
from .progress import ProgressCallback, RateMeter, report
from .request import GenerationRequest
from .stats import LiveStats, ServiceStats
from .variants import DEFAULT_VARIANT, VARIANTS, get_variant

logger = logging.getLogger(__name__)

NO_GPU_MESSAGE = (
    "No CUDA GPU found: ERNIE-Image NF4 needs an NVIDIA GPU (8 GB or more). "
    "To try the app without one, run `python app.py --tiny` (a tiny random model; images are noise)."
)


@dataclass(frozen=True)
class ServiceConfig:
    model_dir: str = VARIANTS[DEFAULT_VARIANT].default_package_dir
    repo_id: str | None = VARIANTS[DEFAULT_VARIANT].repo_id
    source: str | None = VARIANTS[DEFAULT_VARIANT].source
    variant: str = DEFAULT_VARIANT
    device: str | None = None
    tiny: bool = False
    max_pe_tokens: int | None = None  # None: the stock pipeline's limit (pe_tokenizer.model_max_length)
    verify_sha256: bool = False
    memory_mode: MemoryMode = MemoryMode.AUTO
    compile: bool = False

    def __post_init__(self) -> None:
        get_variant(self.variant)
        mode = MemoryMode.parse(self.memory_mode)
        if mode not in APP_MEMORY_MODES:
            raise InvalidArgument(
                f"memory_mode must be one of {[m.value for m in APP_MEMORY_MODES]}, got {mode.value!r}"
            )
        object.__setattr__(self, "memory_mode", mode)
        if self.max_pe_tokens is not None and not 1 <= self.max_pe_tokens <= 8192:
            raise InvalidArgument(f"max_pe_tokens must be in [1, 8192], got {self.max_pe_tokens}")

    @property
    def defaults(self):
        return get_variant(self.variant)


class _StageReporter:
    """Turns the generator's step and stage callbacks into ``Progress`` events naming the next stage, with an ETA
    for denoising."""

    def __init__(self, request: GenerationRequest, on_progress: ProgressCallback | None):
        self.request, self.on_progress = request, on_progress
        self.images_left = request.num_images
        self.meter = RateMeter()

    def start(self, use_pe: bool) -> None:
        report(self.on_progress, "pe" if use_pe else "text_encoding")

    def step(self, done: int, total: int) -> None:
        report(
            self.on_progress, "denoising", done=done, total=total, unit="steps", eta_seconds=self.meter.eta(done, total)
        )

    def stage_done(self, stage: str, _seconds: float) -> None:
        if stage == "pe":
            report(self.on_progress, "text_encoding")
        elif stage == "text_encoding":
            report(
                self.on_progress,
                "denoising",
                done=0,
                total=self.request.num_inference_steps * self.request.num_images,
                unit="steps",
            )
        elif stage == "denoising":
            report(self.on_progress, "vae_decode")


class ImageService:
    """Thread-safe, lazy: nothing is read or loaded until the first ``load`` or ``generate``."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.defaults = config.defaults
        self._lock = threading.Lock()
        self._generator: Generator | None = None
        self.package_dir: Path | None = None
        self.load_seconds: float | None = None
        self.last_result: GenerationResult | None = None

    @property
    def loaded(self) -> bool:
        return self._generator is not None

    @property
    def label(self) -> str:
        return "TINY RANDOM MODEL (images are noise)" if self.config.tiny else "ERNIE-Image NF4"

    def unavailable_reason(self) -> str | None:
        """What keeps this machine from running the model, or None."""
        import torch

        if self.config.tiny or torch.cuda.is_available() or self.config.device == "cpu":
            return None
        return NO_GPU_MESSAGE

    def _get_package(self, on_progress: ProgressCallback | None) -> Path:
        from .provider import ensure_package

        config = self.config
        build = None
        if config.tiny:
            from .tiny import build_tiny_package as build
        return ensure_package(
            config.model_dir,
            repo_id=None if config.tiny else config.repo_id,
            source="tiny" if config.tiny else config.source,
            on_progress=on_progress,
            build=build,
        )

    def load(self, on_progress: ProgressCallback | None = None) -> Generator:
        import torch

        with self._lock:
            if self._generator is not None:
                return self._generator
            if (problem := self.unavailable_reason()) is not None:
                raise EnvironmentUnsupported(problem)
            start = time.perf_counter()
            config = self.config
            self.package_dir = self._get_package(on_progress)
            report(on_progress, "load", f"loading {self.package_dir.name}")
            device = config.device or ("cpu" if config.tiny and not _has_cuda() else None)
            # auto's thresholds are the full model's; a tiny one fits anywhere
            mode = (
                MemoryMode.ALL_ON_GPU if config.tiny and config.memory_mode is MemoryMode.AUTO else config.memory_mode
            )
            try:
                generator = Generator.from_pretrained(
                    self.package_dir,
                    device=device,
                    memory_mode=mode,
                    verify_sha256=config.verify_sha256,
                    compile=config.compile,
                    max_pe_tokens=config.max_pe_tokens,
                )
            except torch.cuda.OutOfMemoryError as err:
                free_device_memory()
                raise OutOfMemory(
                    "Out of GPU memory while loading the model. Use --memory-mode low-vram (about 6 GiB at "
                    "1024x1024), close what else uses the GPU, or use a GPU with more memory."
                ) from err
            if generator.loaded.compiled:
                report(on_progress, "compile", "compiling the transformer blocks (cached for later starts)")
                generator.warm_up(guidance_scale=self.defaults.guidance_scale)
            self._generator = generator
            self.load_seconds = time.perf_counter() - start
            return generator

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Run ``request`` (loading first if needed); ``cancel`` stops it after the current step."""
        generator = self.load(on_progress)
        stages = _StageReporter(request, on_progress)
        with self._lock:  # one generation at a time per GPU
            stages.start(request.use_pe and generator.loaded.has_pe)
            result = generator.generate(request, on_step=stages.step, on_stage=stages.stage_done, cancel=cancel)
        self.last_result = result
        return result

    @property
    def provenance(self) -> str | None:
        return self._generator.loaded.package.provenance if self._generator is not None else None

    def live_stats(self) -> LiveStats:
        last = self.last_result
        loaded = self._generator.loaded if self._generator is not None else None
        return LiveStats(
            loaded=loaded is not None,
            memory_mode=loaded.memory_mode.value if loaded else self.config.memory_mode.value,
            memory_mode_reason=loaded.memory_mode_reason if loaded else "decided when the model loads",
            compiled=loaded.compiled if loaded else self.config.compile,
            device=loaded.device if loaded else None,
            load_seconds=self.load_seconds,
            last_run_seconds=last.seconds if last else None,
            last_run_peak_vram=last.peak_vram if last else None,
        )

    def stats(self) -> ServiceStats:
        """Package sizes (measured on disk; the original's where this project's metadata recorded them), recorded
        benchmarks, and live figures of this process."""
        from .package_stats import package_stats

        folder = self.package_dir or Path(self.config.model_dir).expanduser()
        return ServiceStats(model=self.label, package=package_stats(folder), live=self.live_stats())


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
