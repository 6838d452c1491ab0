"""Figures that cross module borders, as dataclasses: per-stage timings, peak VRAM, package sizes and live stats.

The service builds ``ServiceStats``; the app's Stats tab and ``/stats`` API, and the benchmark, read them.
``to_dict()`` gives the JSON the API returns. ``card_fits`` reads the cards a package fits from the peaks its
metadata recorded. Words for people live in ``formatting`` and the app's ``webapp.stats_view``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

RUN_STAGES = ("pe", "text_encoding", "denoising", "vae_decode")
# Graphics cards' memory as sold, smallest first (an "8 GB" card holds 8 GiB).
CARD_SIZES_GB = (4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 80)
# What a card needs beside the peak PyTorch reserves: the CUDA context and its kernels.
CUDA_CONTEXT_GIB = 0.5
# The benchmark's modes that run the package as the app does (NF4, fast forward), by the app's memory mode.
APP_MEMORY_MODE_OF_BENCHMARK = {
    "nf4-low-vram": "low-vram",
    "nf4-low-vram-compile": "low-vram",
    "nf4": "all-on-gpu",
    "nf4-compile": "all-on-gpu",
}


@dataclass
class StageSeconds:
    """Seconds per stage of one run (``total`` includes what lies between the stages)."""

    pe: float = 0.0
    text_encoding: float = 0.0
    denoising: float = 0.0
    vae_decode: float = 0.0
    total: float = 0.0

    def add(self, stage: str, seconds: float) -> None:
        if stage not in RUN_STAGES:
            raise ValueError(f"stage must be one of {RUN_STAGES}, got {stage!r}")
        setattr(self, stage, getattr(self, stage) + seconds)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PeakVram:
    allocated_bytes: int
    reserved_bytes: int

    @property
    def reserved_gib(self) -> float:
        return self.reserved_bytes / 2**30


@dataclass
class ComponentStats:
    name: str
    quantized: bool  # NF4 (from its config's quantization_config), or kept as it was
    bytes_on_disk: int  # measured now
    bytes_before: int | None = None  # the original's, when this project's metadata recorded it
    quantization: dict | None = None  # the component's quantization_config, as saved

    @property
    def reduction(self) -> float | None:
        if not self.bytes_before:
            return None
        return 1 - self.bytes_on_disk / self.bytes_before


@dataclass
class PackageStats:
    """A package as found on disk. ``verified``: this project's metadata vouched for it; else ``foreign_metadata``
    holds what another tool wrote (any JSON), shown as it is."""

    name: str  # the folder's name (its path stays in the operator's log)
    verified: bool
    provenance: str
    components: list[ComponentStats]
    bytes_before: int | None
    bytes_on_disk: int
    quantization: dict | None = None
    versions: dict | None = None
    gpu: str | None = None
    benchmarks: dict = field(default_factory=dict)
    foreign_metadata: object = None
    notes: list[str] = field(default_factory=list)


@dataclass
class LiveStats:
    loaded: bool
    memory_mode: str
    memory_mode_reason: str
    compiled: bool  # the compiled transformer blocks are in use
    device: str | None = None
    compile_status: str = ""  # for people: "compiled", "eager: compiling in the background", "eager: compile off"...
    load_seconds: float | None = None
    last_run_seconds: StageSeconds | None = None
    last_run_peak_vram: PeakVram | None = None
    last_run_pe_tokens: int | None = None  # tokens the PE wrote in the last run; None: it did not write (off, cached)
    # what auto measured and compared, when it chose: GiB usable on the GPU, and what all-on-gpu needed there
    memory_usable_gib: float | None = None
    memory_needs_gib: float | None = None
    compute: str = "bf16"  # how the transformer's linear layers multiply (runtime.compute)


@dataclass
class ServiceStats:
    model: str
    package: PackageStats | None
    live: LiveStats
    replicas: list[LiveStats] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        for component in data["package"]["components"] if data["package"] else []:
            before = component["bytes_before"]
            component["reduction"] = round(1 - component["bytes_on_disk"] / before, 6) if before else None
        if data["package"]:
            data["package"]["card_fits"] = [asdict(fit) for fit in card_fits(self.package.benchmarks)]
        return data


@dataclass(frozen=True)
class CardFit:
    """The smallest card a memory mode fits, from the largest peak it reached in a recorded benchmark."""

    memory_mode: str  # the app's: "low-vram" or "all-on-gpu"
    card_gb: int | None  # None: more than the largest of ``CARD_SIZES_GB``
    peak_gib: float  # peak reserved GPU memory
    width: int
    height: int
    gpu: str | None  # the card it was measured on


def card_fits(benchmarks: dict) -> list[CardFit]:
    """Per app memory mode (low-vram first), the smallest card that holds the largest peak the package's recorded
    benchmarks (``quantization_metadata.json``'s ``benchmarks``) measured for it, plus ``CUDA_CONTEXT_GIB``."""
    worst: dict[str, CardFit] = {}
    for report in benchmarks.values() if isinstance(benchmarks, dict) else []:
        settings = report.get("settings") or {}
        for mode in report.get("modes") or []:
            memory_mode = APP_MEMORY_MODE_OF_BENCHMARK.get(mode.get("mode"))
            peak = mode.get("peak_reserved_gib")
            if memory_mode is None or mode.get("status") != "ok" or not isinstance(peak, (int, float)):
                continue
            if memory_mode not in worst or peak > worst[memory_mode].peak_gib:
                card = next((size for size in CARD_SIZES_GB if size >= peak + CUDA_CONTEXT_GIB), None)
                fit = CardFit(memory_mode, card, peak, settings.get("width"), settings.get("height"), report.get("gpu"))
                worst[memory_mode] = fit
    return [worst[mode] for mode in ("low-vram", "all-on-gpu") if mode in worst]
