"""One request's stage clock: a value made per request and passed along the stages, never kept on the generator."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..stats import StageSeconds


def synchronize(device) -> None:
    """Wait for the work queued on ``device`` (a ``torch.device``; nothing to wait for on the CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StageClock:
    """Seconds per stage of one request. ``lap(stage)`` waits for the device's queued work, adds the seconds since
    the last lap to ``stage`` and tells ``on_stage(stage, seconds)``; ``finish()`` sets the total."""

    device: object  # torch.device
    on_stage: Callable[[str, float], None] | None = None
    seconds: StageSeconds = field(default_factory=StageSeconds)
    start: float = field(default_factory=time.perf_counter)
    since: float = field(init=False)

    def __post_init__(self) -> None:
        self.since = self.start

    def lap(self, stage: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.seconds.add(stage, now - self.since)
        if self.on_stage is not None:
            self.on_stage(stage, now - self.since)
        self.since = now

    def finish(self) -> StageSeconds:
        self.seconds.total = time.perf_counter() - self.start
        return self.seconds
