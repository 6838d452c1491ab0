"""The image service behind the app: gets the package lazily, loads it once, generates, reports stats."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .generation import DEFAULT_MAX_PE_TOKENS, GenerationRequest, GenerationResult, Generator
from .metadata import METADATA_FILE, read_metadata
from .provider import DEFAULT_REPO_ID, ensure_package

logger = logging.getLogger(__name__)

VARIANTS = {
    "ernie-image": {"source": "baidu/ERNIE-Image", "repo_id": DEFAULT_REPO_ID, "steps": 50, "guidance": 4.0},
    "ernie-image-turbo": {"source": "baidu/ERNIE-Image-Turbo", "repo_id": None, "steps": 8, "guidance": 1.0},
}
APP_MEMORY_MODES = ("gpu", "low-vram")  # low-vram: about 6 GiB at 1024x1024 (see loader.load_pipeline)
NO_GPU_MESSAGE = (
    "No CUDA GPU found: ERNIE-Image NF4 needs an NVIDIA GPU (8 GB or more). "
    "To try the app without one, run `python app.py --tiny` (a tiny random model; images are noise)."
)


@dataclass(frozen=True)
class ServiceConfig:
    model_dir: str = "ERNIE-Image-NF4"
    repo_id: str | None = DEFAULT_REPO_ID
    source: str | None = "baidu/ERNIE-Image"
    variant: str = "ernie-image"
    device: str | None = None
    tiny: bool = False
    max_pe_tokens: int = DEFAULT_MAX_PE_TOKENS
    verify_sha256: bool = False
    memory_mode: str = "gpu"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if self.memory_mode not in APP_MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {list(APP_MEMORY_MODES)}, got {self.memory_mode!r}")
        if not 1 <= self.max_pe_tokens <= 4096:
            raise ValueError(f"max_pe_tokens must be in [1, 4096], got {self.max_pe_tokens}")


def build_tiny_package(source: str | None, output: Path, on_progress: Callable[[str], None] | None = None) -> Path:
    """A tiny random package: transformer in NF4 where diffusers allows it (a GPU), text encoder and PE always."""
    from .quantize import QUANTIZABLE, diffusers_nf4_blocker, quantize_package
    from .synthetic import build_original

    with tempfile.TemporaryDirectory(prefix="ernie-nf4-tiny-") as tmp:
        if on_progress:
            on_progress("building a tiny random ERNIE-Image (seconds)")
        original = build_original(Path(tmp) / "original", size="tiny")
        components = QUANTIZABLE if diffusers_nf4_blocker() is None else ("text_encoder", "pe")
        return quantize_package(str(original), output, components=components, device=None, on_progress=on_progress)


class ImageService:
    """Thread-safe, lazy: nothing is read or loaded until the first ``load`` or ``generate``."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.defaults = VARIANTS[config.variant]
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

    def missing(self) -> str | None:
        """What keeps this machine from running the model, or None."""
        import torch

        if self.config.tiny or torch.cuda.is_available() or self.config.device == "cpu":
            return None
        return NO_GPU_MESSAGE

    def load(self, on_progress: Callable[[str], None] | None = None) -> Generator:
        with self._lock:
            if self._generator is not None:
                return self._generator
            if (problem := self.missing()) is not None:
                raise RuntimeError(problem)
            start = time.perf_counter()
            config = self.config
            self.package_dir = ensure_package(
                config.model_dir,
                repo_id=None if config.tiny else config.repo_id,
                source="tiny" if config.tiny else config.source,
                on_progress=on_progress,
                build=build_tiny_package if config.tiny else None,
            )
            if on_progress:
                on_progress(f"loading {self.package_dir}")
            device = config.device or ("cpu" if config.tiny and not _has_cuda() else None)
            generator = Generator.from_pretrained(
                self.package_dir,
                device=device,
                memory_mode=config.memory_mode,
                verify_sha256=config.verify_sha256,
                compile=config.compile,
                max_pe_tokens=config.max_pe_tokens,
            )
            if config.compile:
                if on_progress:
                    on_progress("compiling the transformer blocks (cached for later starts)")
                generator.warm_up(guidance=self.defaults["guidance"])
            self._generator = generator
            self.load_seconds = time.perf_counter() - start
            return self._generator

    def generate(
        self,
        request: GenerationRequest,
        on_step: Callable[[int, int], None] | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        generator = self.load(on_progress)
        with self._lock:  # one generation at a time per GPU
            result = generator.generate(request, on_step=on_step)
        self.last_result = result
        return result

    def stats(self) -> dict:
        """Package sizes and recorded benchmarks from the metadata, plus live figures of this process."""
        folder = self.package_dir or Path(self.config.model_dir)
        package = None
        if (Path(folder) / METADATA_FILE).is_file():
            meta = read_metadata(folder)
            package = {
                "folder": str(folder),
                "components": {
                    name: {k: c[k] for k in ("action", "bytes_before", "bytes_after", "reduction")}
                    for name, c in meta["components"].items()
                },
                "totals": meta["totals"],
                "quantization": meta["quantization"],
                "gpu": meta.get("gpu"),
                "versions": meta["versions"],
                "benchmarks": meta["benchmarks"],
            }
        last = self.last_result
        return {
            "model": self.label,
            "package": package,
            "live": {
                "loaded": self.loaded,
                "memory_mode": self.config.memory_mode,
                "compile": self.config.compile,
                "load_seconds": self.load_seconds,
                "last_run_seconds": last.seconds if last else None,
                "last_run_peak_vram": last.peak_vram if last else None,
            },
        }


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
