"""Figures that cross module borders, as dataclasses: per-stage timings, peak VRAM, package sizes and live stats.

The service builds ``ServiceStats``; the app's Stats tab and ``/stats`` API, and the benchmark, read them.
``to_dict()`` gives the JSON the API returns. Formatting for people lives in ``formatting``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

RUN_STAGES = ("pe", "text_encoding", "denoising", "vae_decode")


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
        return data
