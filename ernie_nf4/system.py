"""Facts about this machine: device choice, GPU name, peak VRAM, library versions."""

from __future__ import annotations

import re
from importlib import metadata

from .errors import EnvironmentUnsupported, InvalidArgument


def resolve_device(device: str | None) -> str:
    """``cuda`` when a GPU is there and no device is given; ``cuda`` becomes ``cuda:0``."""
    import torch

    device = None if device is None else str(device).strip().lower()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = "cuda:0"
    if not (device == "cpu" or re.fullmatch(r"cuda:\d+", device)):
        raise InvalidArgument(f"device must be 'cuda', 'cuda:N' or 'cpu', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EnvironmentUnsupported(f"device {device}: no CUDA GPU is visible; use device cpu or a machine with a GPU")
    if device.startswith("cuda") and int(device[5:]) >= torch.cuda.device_count():
        raise InvalidArgument(f"device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def gpu_name(device: str) -> str | None:
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else None


def reset_peak_vram() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_vram():
    """Peak allocated and reserved CUDA bytes since the last reset (``stats.PeakVram``), or None without CUDA."""
    import torch

    from .stats import PeakVram

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return PeakVram(torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved())


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in ("torch", "diffusers", "transformers", "bitsandbytes", "accelerate", "huggingface_hub"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
