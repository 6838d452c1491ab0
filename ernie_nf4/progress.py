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


# What long work says as it goes (``Progress.message``), in English; a UI may word the same keys in its own language
# from ``Progress.detail``'s values.
DETAILS = {
    "tiny_original": "building a tiny random ERNIE-Image (seconds)",
    "tiny_component": "random {name}",
    "build_from": "building the package from {source} with quantize.py (one model at a time)",
    "build_source": "getting the original from {source}",
    "build_quantize": "[{step}/{steps}] quantizing {name} to NF4 on {device}",
    "build_left_out": "[{step}/{steps}] {name}: left out {modules} ({parameters:,} parameters)",
    "build_copy": "[{step}/{steps}] copying {name}",
    "build_preview_map": "fitting the live previews' map from the VAE on {device}",
    "build_done": "done: {output} ({size}, {reduction:.1%} smaller than the original) in {seconds:.1f} s",
    "download_files": "{repo}: {files} files, {size}",
    "download_complete": "complete",
    "download_failed": "download of {repo} failed ({error})",
    "download_lora": "LoRA {name} from {source}",
    "load_found": "using the package in {name}",
    "load_package": "loading {name}",
    "compile_now": "compiling the transformer blocks (cached for later starts)",
    "compile_background": "the transformer blocks compile in the background; runs are eager until then",
    "compile_finish": "finishing the compiled transformer blocks (about {seconds:.0f} s, cached)",
    "pe_graph": "capturing the prompt enhancer's decoding graph",
}


@dataclass(frozen=True)
class Detail:
    """A progress message as its ``DETAILS`` key and values (``detail(key, **values)``); ``text`` is its English."""

    key: str
    values: tuple[tuple[str, object], ...] = ()

    @property
    def text(self) -> str:
        return DETAILS[self.key].format(**dict(self.values))

    def adding(self, **values) -> Detail:
        return Detail(self.key, self.values + tuple(values.items()))


def detail(key: str, **values) -> Detail:
    if key not in DETAILS:
        raise KeyError(f"no progress message named {key!r}")
    return Detail(key, tuple(values.items()))


@dataclass(frozen=True)
class Progress:
    """One progress event. ``done`` / ``total`` in ``unit``: "bytes" (download), "tokens" (the prompt enhancer:
    tokens written and its cap; it usually ends well before the cap), "steps" (denoising and decoding: counted
    over all images of the run, so ``fraction`` never goes back from one image to the next) or "".
    ``image`` / ``images``: which image of how many (1-based), in the denoising and decoding stages.
    ``preview``: a live preview of the image forming (a small PIL image), on the denoising events that carry one
    (only for a run that asked for previews). ``detail``: the message as a key and values (``Detail``), where the
    library has one."""

    stage: str  # one of STAGES
    message: str = ""
    done: float | None = None
    total: float | None = None
    unit: str = ""  # "bytes", "tokens", "steps" or ""
    eta_seconds: float | None = None
    image: int | None = None
    images: int | None = None
    preview: object = None
    detail: Detail | None = None

    @property
    def fraction(self) -> float | None:
        if self.done is None or not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    @property
    def image_step(self) -> tuple[int, int] | None:
        """The denoising step within the current image and that image's steps (``done`` and ``total`` count the
        whole run), or None when the event does not say."""
        if self.unit != "steps" or self.done is None or not self.total or not self.image or not self.images:
            return None
        per_image = int(self.total) // self.images
        return int(self.done) - (self.image - 1) * per_image, per_image

    def describe(self) -> str:
        """One line for people: stage, which image of how many, amount done and ETA, e.g. ``denoising · image 2 of
        4 · step 3/8 · ETA 5 s`` or ``prompt enhancer · 48 / 2048 tokens``."""
        parts = [STAGE_LABELS.get(self.stage, self.stage)]
        if self.image and self.images:
            parts.append(f"image {self.image} of {self.images}")
        if self.done is not None and self.total:
            parts.extend(self._amount())
        if self.eta_seconds is not None:
            parts.append(f"ETA {format_seconds(self.eta_seconds)}")
        if self.message:
            parts.append(self.message)
        return " · ".join(parts)

    def _amount(self) -> list[str]:
        if self.unit == "bytes":
            return [f"{self.done / 1e9:.2f} / {self.total / 1e9:.2f} GB"]
        if self.unit == "tokens":
            return [f"{int(self.done)} / {int(self.total)} tokens"]
        if self.unit == "steps":
            if self.stage == "vae_decode":  # the image's steps are all done: its number says it
                return []
            step, steps = self.image_step or (int(self.done), int(self.total))
            return [f"step {step}/{steps}"]
        return [f"{self.fraction:.0%}"]


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


def report(callback: ProgressCallback | None, stage: str, message: str | Detail = "", **amounts) -> None:
    """Call ``callback`` (if any) with a ``Progress`` (a ``Detail`` message becomes its English text and its
    ``detail``); also the library's log line (at debug level for the prompt enhancer's token counts, which come
    every few tokens, and for live previews)."""

    if isinstance(message, Detail):
        amounts["detail"], message = message, message.text
    event = Progress(stage, message, **amounts)
    level = logging.DEBUG if event.unit == "tokens" or event.preview is not None else logging.INFO
    logging.getLogger("ernie_nf4").log(level, "%s", event.describe())
    if callback is not None:
        callback(event)
