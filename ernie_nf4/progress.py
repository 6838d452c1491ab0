"""Progress of long work (download, build, load, compile, the stages of a run), as one dataclass the service
reports and the app shows: a stage name, a message, and where known how far it is and how long is left."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

# Stages in the order a first request meets them.
STAGES = ("download", "build", "load", "compile", "pe", "text_encoding", "denoising", "vae_decode")
STAGE_LABELS = {
    "download": "downloading",
    "build": "building the package",
    "load": "loading",
    "compile": "compiling",
    "pe": "prompt enhancer",
    "text_encoding": "text encoding",
    "denoising": "denoising",
    "vae_decode": "decoding",
}


@dataclass(frozen=True)
class Progress:
    stage: str  # one of STAGES
    message: str = ""
    done: float | None = None
    total: float | None = None
    unit: str = ""  # "bytes", "steps" or ""
    eta_seconds: float | None = None

    @property
    def fraction(self) -> float | None:
        if self.done is None or not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    def describe(self) -> str:
        """One line for people: stage, amount done and ETA."""
        parts = [STAGE_LABELS.get(self.stage, self.stage)]
        if self.done is not None and self.total:
            if self.unit == "bytes":
                parts.append(f"{self.done / 1e9:.2f} / {self.total / 1e9:.2f} GB")
            elif self.unit == "steps":
                parts.append(f"step {int(self.done)}/{int(self.total)}")
            else:
                parts.append(f"{self.fraction:.0%}")
        if self.eta_seconds is not None:
            parts.append(f"ETA {format_seconds(self.eta_seconds)}")
        if self.message:
            parts.append(self.message)
        return " · ".join(parts)


ProgressCallback = Callable[[Progress], None]


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class RateMeter:
    """ETA from the rate since the first update: ``eta(done, total)`` (None until there is a rate)."""

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None

    def eta(self, done: float, total: float) -> float | None:
        now = time.monotonic()
        if self._start is None:
            self._start = (now, done)
            return None
        elapsed, progressed = now - self._start[0], done - self._start[1]
        if elapsed <= 0 or progressed <= 0:
            return None
        return (total - done) * elapsed / progressed


def report(callback: ProgressCallback | None, stage: str, message: str = "", **amounts) -> None:
    """Call ``callback`` (if any) with a ``Progress``; also the library's log line."""

    event = Progress(stage, message, **amounts)
    logging.getLogger("ernie_nf4").info("%s", event.describe())
    if callback is not None:
        callback(event)
