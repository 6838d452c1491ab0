"""The one seam between serving and building for ``--tiny``: a tiny random package built on the fly (seconds on
a CPU; images are noise), so the app and its tests run without a GPU or a download."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from ..build.quantize import quantize_package
from ..package.format import quantizable_here
from .original import build_original


def build_tiny_package(source: str | None, output: Path, on_progress: Callable[[str], None] | None = None) -> Path:
    """A tiny random package: the transformer in NF4 where diffusers allows it (a GPU), text encoder and PE always."""

    with tempfile.TemporaryDirectory(prefix="ernie-nf4-tiny-") as tmp:
        if on_progress:
            on_progress("building a tiny random ERNIE-Image (seconds)")
        original = build_original(Path(tmp) / "original", size="tiny")
        return quantize_package(
            str(original), output, components=quantizable_here(), device=None, on_progress=on_progress
        )
