"""The one seam between serving and building for ``--tiny``: a tiny random package built on the fly (seconds on
a CPU; images are noise), so the app and its tests run without a GPU or a download."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from ..build.quantize import quantize_package
from ..package.format import quantizable_here
from ..progress import Progress, ProgressCallback, detail, report
from .original import build_original


def build_tiny_package(source: str | None, output: Path, on_progress: ProgressCallback | None = None) -> Path:
    """A tiny random package: the transformer in NF4 where diffusers allows it (a GPU), text encoder and PE always.
    ``on_progress`` gets ``Progress("build", ...)`` events, the random original the first half of the amount and
    its quantization the second."""

    def second_half(event: Progress) -> None:
        if on_progress is not None:
            fraction = event.fraction
            on_progress(dataclasses.replace(event, done=None if fraction is None else 1 + fraction, total=2))

    with tempfile.TemporaryDirectory(prefix="ernie-nf4-tiny-") as tmp:
        report(on_progress, "build", detail("tiny_original"), done=0, total=2)
        original = build_original(
            Path(tmp) / "original",
            size="tiny",
            on_component=lambda done, count, name: report(
                on_progress, "build", detail("tiny_component", name=name), done=done / count, total=2
            ),
        )
        return quantize_package(
            str(original), output, components=quantizable_here(), device=None, on_progress=second_half
        )
