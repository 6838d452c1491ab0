"""The image service behind the app: gets the package lazily, loads it once, generates, reports stats.

Compiling is the default on a CUDA GPU (``ServiceConfig.compile=None``): after loading, ``compiling.decide_compile``
says what to do; by default the transformer blocks compile in a background thread (``BlockCompiler``) while requests
run eagerly, and the next request after it is ready runs compiled; a compile this machine made before is quick, and
the first request waits for it (``compiling.await_quick_compile``). A first compile runs in a helper process
(``runtime.compile_ahead``), so that the requests meanwhile run eagerly at full speed; the compile in this process
then finds its kernels cached. In low-vram mode the blocks compile at load.
The switch happens only between requests, so each
image is wholly eager or wholly compiled: the same seed gives the same image on one path, and the two paths differ in
the last bits of bf16 rounding.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import EnvironmentUnsupported, GenerationCancelled, OutOfMemory
from ..package.sizes import package_stats
from ..progress import ProgressCallback, RateMeter, detail, report
from ..request import GenerationRequest
from ..runtime.compute import Compute
from ..runtime.generation import GenerationResult, Generator
from ..runtime.memory_modes import APP_MEMORY_MODES, MemoryMode
from ..runtime.prompt import PromptEnhancement, check_max_pe_tokens
from ..stats import LiveStats, ServiceStats
from ..synthetic.tiny import build_tiny_package
from ..system import free_device_memory
from ..variants import DEFAULT_VARIANT, VARIANTS, get_variant
from .compiling import (
    COMPILE_OFF,
    CompileDecision,
    CompileWhen,
    await_quick_compile,
    capture_pe_graph,
    compile_in_background,
    compile_now,
    decide_compile,
    make_compiler,
)
from .loras import LoraSource, fetch_lora, offered_loras
from .provider import ensure_package

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
    # None: compile on a CUDA GPU (all-on-gpu: in the background; low-vram: at load, where the transformer is on the
    # GPU only in its turn), else eager; True: compile anywhere (on the CPU too); False: eager.
    compile: bool | None = None
    loras: tuple[LoraSource, ...] = ()  # the LoRAs requests may pick by name (``loras.offered_loras``)
    compute: Compute = Compute.BF16  # the transformer's linear layers: bf16, fp8, int8 or auto (``runtime.compute``)

    def __post_init__(self) -> None:
        object.__setattr__(self, "loras", offered_loras(list(self.loras)))
        get_variant(self.variant)
        object.__setattr__(self, "memory_mode", MemoryMode.parse(self.memory_mode, allowed=APP_MEMORY_MODES))
        object.__setattr__(self, "compute", Compute.parse(self.compute))
        check_max_pe_tokens(self.max_pe_tokens)

    @property
    def defaults(self):
        return get_variant(self.variant)


class _StageReporter:
    """Turns the generator's token, step and stage callbacks into ``Progress`` events naming the stage under way:
    the PE's tokens written and its cap; in denoising and decoding which image of how many, with the steps counted
    over the whole run (the bar never goes back) and an ETA for denoising."""

    def __init__(self, request: GenerationRequest, on_progress: ProgressCallback | None, tiles: int = 1):
        self.request, self.on_progress = request, on_progress
        self.steps, self.images = request.steps_run * tiles, request.num_images  # the steps each image runs
        self.tiles, self.tile_steps = tiles, request.steps_run  # an image in tiles: each tile runs steps_run
        self.decoded = 0  # tiles (or whole images) decoded so far
        self.meter = RateMeter()

    def start(self, use_pe: bool, pe_cap: int) -> None:
        if use_pe:
            self.tokens(0, pe_cap)
        else:
            report(self.on_progress, "text_encoding")

    def tokens(self, written: int, cap: int) -> None:
        report(self.on_progress, "pe", done=written, total=cap, unit="tokens")

    def _images(self, stage: str, done: int, image: int, eta: float | None = None) -> None:
        amounts = {"done": done, "total": self.steps * self.images, "unit": "steps", "eta_seconds": eta}
        report(self.on_progress, stage, image=image, images=self.images, **amounts)

    def step(self, done: int, total: int) -> None:
        self._images("denoising", done, (done - 1) // self.steps + 1, self.meter.eta(done, total))

    def preview(self, image, done: int, total: int) -> None:
        """A live preview after step ``done``: a denoising event (no ETA: the step's own event gave it) carrying
        the image."""
        amounts = {"done": done, "total": total, "unit": "steps", "preview": image}
        report(self.on_progress, "denoising", image=(done - 1) // self.steps + 1, images=self.images, **amounts)

    def stage_done(self, stage: str, _seconds: float) -> None:
        if stage == "pe":
            report(self.on_progress, "text_encoding")
        elif stage == "text_encoding":
            self._images("denoising", 0, 1)
        elif stage == "denoising":
            self._images("vae_decode", (self.decoded + 1) * self.tile_steps, self.decoded // self.tiles + 1)
        elif stage == "vae_decode":
            self.decoded += 1
            if self.decoded < self.images * self.tiles:
                self._images("denoising", self.decoded * self.tile_steps, self.decoded // self.tiles + 1)


class ImageService:
    """Thread-safe, lazy: nothing is read or loaded until the first ``load`` or ``generate``."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.defaults = config.defaults
        self._lock = threading.Lock()  # held while loading and while generating
        self._generator: Generator | None = None
        self._load_progress = None  # the last Progress of a load under way, for requests waiting for it
        self.compiler = None  # fast_transformer.BlockCompiler once loaded, when the blocks compile
        self._eager_reason: str | None = None  # why there is no compiler, once loaded
        self.package_dir: Path | None = None
        self.load_seconds: float | None = None
        self.last_result: GenerationResult | None = None
        self.last_run_compiled: bool | None = None  # whether the last request ran the compiled blocks
        # True: the background compile waits for ``start_compiling()`` (ReplicaService: until every replica has
        # loaded; a load and a compile take turns, ``torch_state``, so a compile started early would delay the loads)
        self.compile_later = False

    @property
    def loaded(self) -> bool:
        return self._generator is not None

    @property
    def lora_names(self) -> list[str]:
        """The names of the LoRAs requests may pick, in the order given (known before loading)."""
        return [source.name for source in self.config.loras]

    @property
    def label(self) -> str:
        """The model's name for people and PNG parameters; with the compute mode once loaded, when not bf16."""
        name = "TINY RANDOM MODEL (images are noise)" if self.config.tiny else "ERNIE-Image NF4"
        compute = self._generator.loaded.compute if self._generator is not None else "bf16"
        return name if compute == "bf16" else f"{name} ({compute} compute)"

    def unavailable_reason(self) -> str | None:
        """What keeps this machine from running the model, or None."""
        import torch

        if self.config.tiny or torch.cuda.is_available() or self.config.device == "cpu":
            return None
        return NO_GPU_MESSAGE

    def _get_package(self, on_progress: ProgressCallback | None) -> Path:
        config = self.config
        build = build_tiny_package if config.tiny else None
        return ensure_package(
            config.model_dir,
            repo_id=None if config.tiny else config.repo_id,
            source="tiny" if config.tiny else config.source,
            on_progress=on_progress,
            build=build,
        )

    def load(self, on_progress: ProgressCallback | None = None, cancel=None) -> Generator:
        """Get and load the package once (a call while another thread loads waits, seeing that load's progress;
        ``cancel`` set meanwhile ends its wait with ``GenerationCancelled``, the load going on for the next)."""
        if self._generator is not None:
            return self._generator
        self._acquire(on_progress, cancel)
        try:
            if self._generator is not None:
                return self._generator
            return self._load(self._recorded(on_progress))
        finally:
            self._load_progress = None
            self._lock.release()

    def _acquire(self, on_progress: ProgressCallback | None, cancel=None) -> None:
        """Take the lock; meanwhile pass on the progress of a load running in another thread (``preload``)."""
        shown = None
        while not self._lock.acquire(timeout=0.25):
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled()
            event = self._load_progress
            if on_progress is not None and event is not None and event is not shown:
                on_progress(event)
                shown = event

    def _recorded(self, on_progress: ProgressCallback | None) -> ProgressCallback:
        def record(event) -> None:
            self._load_progress = event
            if on_progress is not None:
                on_progress(event)

        return record

    def _load(self, on_progress: ProgressCallback) -> Generator:
        import torch

        if (problem := self.unavailable_reason()) is not None:
            raise EnvironmentUnsupported(problem)
        start = time.perf_counter()
        config = self.config
        self.package_dir = self._get_package(on_progress)
        report(on_progress, "load", detail("load_package", name=self.package_dir.name))
        device = config.device or ("cpu" if config.tiny and not _has_cuda() else None)
        # auto's thresholds are the full model's; a tiny one fits anywhere
        mode = MemoryMode.ALL_ON_GPU if config.tiny and config.memory_mode is MemoryMode.AUTO else config.memory_mode
        loras = [(source.name, fetch_lora(source, on_progress=on_progress)) for source in config.loras]
        try:
            generator = Generator.from_pretrained(
                self.package_dir,
                device=device,
                memory_mode=mode,
                verify_sha256=config.verify_sha256,
                max_pe_tokens=config.max_pe_tokens,
                loras=loras,
                compute=config.compute,
                compile_after_load=config.compile,  # auto counts on compiled blocks only where they will be
            )
            self._act_on(decide_compile(config.compile, generator.loaded), generator, on_progress)
        except torch.cuda.OutOfMemoryError as err:
            free_device_memory(err)
            raise OutOfMemory(
                "Out of GPU memory while loading the model. Use --memory-mode low-vram (about 6 GiB at "
                "1024x1024), close what else uses the GPU, or use a GPU with more memory."
            ) from err
        self._generator = generator
        self.load_seconds = time.perf_counter() - start
        return generator

    def _act_on(self, decision: CompileDecision, generator: Generator, on_progress: ProgressCallback) -> None:
        """Do what ``decide_compile`` decided: nothing (eager), compile now, or capture the PE's graph and start the
        background compile (unless ``compile_later``)."""
        if decision.when is CompileWhen.EAGER:
            self._eager_reason = decision.reason
            return
        loaded = generator.loaded
        self.compiler, self._eager_reason = make_compiler(loaded.pipe.transformer)
        if self.compiler is None:
            return
        if decision.when is CompileWhen.NOW:
            report(on_progress, "compile", decision.reason)
            compile_now(self.compiler, loaded)
            return
        if decision.capture_pe_graph:
            capture_pe_graph(generator, on_progress)
        if self.compile_later:
            return
        compile_in_background(self.compiler, loaded, self.package_dir)
        report(on_progress, "compile", decision.reason)

    def start_compiling(self) -> None:
        """Start the background compile that a load with ``compile_later`` prepared (nothing otherwise)."""
        from ..runtime.fast_transformer import CompileState

        with self._lock:  # priming runs the model: not beside a request
            if self.compiler is not None and self.compiler.state is CompileState.PENDING:
                compile_in_background(self.compiler, self._generator.loaded, self.package_dir)

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        previews: bool = False,
    ) -> GenerationResult:
        """Run ``request`` (loading first if needed), telling ``on_progress`` each ``Progress``. ``cancel``, the
        run's stop signal (anything with ``is_set()``), stops it within a few PE tokens, at the text encoder or after
        the current denoising step, raising ``GenerationCancelled``; set while the run waits for the GPU, it stops
        it before it starts. ``previews``: every few denoising steps a ``Progress`` carries a live preview of the
        image forming (``Progress.preview``); none after a stop."""
        generator = self.load(on_progress, cancel)
        stages = _StageReporter(request, on_progress, generator.tile_count(request))
        with self._lock:  # one generation at a time per GPU
            await_quick_compile(self.compiler, on_progress, cancel)  # seconds, when this machine's cache is warm
            # Compiled blocks, once ready, from this request on: never halfway through one.
            compiled = self.compiler is not None and self.compiler.activate()
            stages.start(request.runs_pe and generator.loaded.has_pe, generator.pe_cap)
            result = generator.generate(
                request,
                on_step=stages.step,
                on_stage=stages.stage_done,
                cancel=cancel,
                on_pe_tokens=stages.tokens,
                on_preview=stages.preview if previews and on_progress is not None else None,
            )
        self.last_result, self.last_run_compiled = result, compiled
        return result

    def enhance(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> PromptEnhancement:
        """The PE's text for ``request``'s prompt, size and seed alone (loading first if needed): what ``generate``
        would have the PE write for it, to read and edit before a run gives it as ``enhanced_prompt``. Progress
        tells the tokens written; ``cancel`` stops it within a few tokens (``GenerationCancelled``), as in
        ``generate``."""
        generator = self.load(on_progress, cancel)
        stages = _StageReporter(request, on_progress)
        with self._lock:  # the GPU's one queue, shared with generate
            stages.start(True, generator.pe_cap)
            size_seed = (request.width, request.height, request.seed)
            return generator.enhance_prompt(request.prompt, *size_seed, cancel=cancel, on_tokens=stages.tokens)

    @property
    def compile_status(self) -> str:
        """For people: ``compiled``, ``eager: compiling in the background``, ``eager: compile off (--no-compile)``..."""
        if self.compiler is not None:
            return self.compiler.describe()
        if self._eager_reason is not None:
            return self._eager_reason
        return COMPILE_OFF if self.config.compile is False else "decided when the model loads"

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
            compiled=self.compiler is not None and self.compiler.active,
            compile_status=self.compile_status,
            compute=loaded.compute if loaded else self.config.compute.value,
            device=loaded.device if loaded else None,
            load_seconds=self.load_seconds,
            last_run_seconds=last.seconds if last else None,
            last_run_peak_vram=last.peak_vram if last else None,
            last_run_pe_tokens=last.enhancement.tokens if last and last.enhancement else None,
            memory_usable_gib=loaded.usable_gib if loaded else None,
            memory_needs_gib=loaded.all_on_gpu_needs_gib if loaded else None,
        )

    def stats(self) -> ServiceStats:
        """Package sizes (measured on disk; the original's where this project's metadata recorded them), recorded
        benchmarks, and live figures of this process."""
        folder = self.package_dir or Path(self.config.model_dir).expanduser()
        return ServiceStats(model=self.label, package=package_stats(folder), live=self.live_stats())


def preload(service) -> threading.Thread:
    """``service.load()`` in a background thread (daemon): what the app starts with on a GPU. A request that comes
    meanwhile waits for it (an ``ImageService`` shows it that load's progress); a failure is logged, and the next
    request loads again and reports it."""

    def run() -> None:
        try:
            service.load()
        except Exception as err:  # the next request tries again and shows the error to its user
            logger.warning("loading at start failed (the next request tries again): %s", err)

    thread = threading.Thread(target=run, name="ernie-nf4-preload", daemon=True)
    thread.start()
    return thread


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
