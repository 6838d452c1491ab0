"""Facts about this machine: device choice, GPU name, peak VRAM, library versions."""

from __future__ import annotations

import builtins
import gc
import inspect
import re
import sys
import traceback
from importlib import metadata

from .errors import EnvironmentUnsupported, InvalidArgument
from .stats import PeakVram


def parse_device(device: str | None) -> str | None:
    """A device's name as the loader takes it (``cuda``, ``cuda:N``, ``cpu``; None: pick), checked without torch."""
    if device is None:
        return None
    text = str(device).strip().lower()
    if not (text in ("cuda", "cpu") or re.fullmatch(r"cuda:\d+", text)):
        raise InvalidArgument(f"device must be 'cuda', 'cuda:N' or 'cpu', got {device!r}", field="device")
    return text


def resolve_device(device: str | None) -> str:
    """``cuda`` when a GPU is there and no device is given; ``cuda`` becomes ``cuda:0``."""
    import torch

    device = parse_device(device)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = "cuda:0"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EnvironmentUnsupported(f"device {device}: no CUDA GPU is visible; use device cpu or a machine with a GPU")
    if device.startswith("cuda") and int(device[5:]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise InvalidArgument(f"device {device}: this machine has {count} CUDA GPU(s); use cuda:0 to cuda:{count - 1}")
    return device


def gpu_name(device: str) -> str | None:
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else None


def _cuda(device):
    import torch

    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda" if device is None else device)
    return device if device.type == "cuda" else None


def reset_peak_vram(device=None) -> None:
    """Start measuring ``device``'s peak (default: the current CUDA device); nothing without CUDA."""
    import torch

    if (cuda := _cuda(device)) is not None:
        torch.cuda.synchronize(cuda)
        torch.cuda.reset_peak_memory_stats(cuda)


def peak_vram(device=None):
    """``device``'s peak allocated and reserved bytes since the last reset (``stats.PeakVram``), or None without
    CUDA (or for a CPU device)."""
    import torch

    if (cuda := _cuda(device)) is None:
        return None
    torch.cuda.synchronize(cuda)
    return PeakVram(torch.cuda.max_memory_allocated(cuda), torch.cuda.max_memory_reserved(cuda))


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in ("torch", "diffusers", "transformers", "bitsandbytes", "accelerate", "huggingface_hub"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# Code whose frame may be suspended rather than finished: clearing it would close the generator (before Python 3.13).
_RESUMABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
_GROUPS = getattr(builtins, "BaseExceptionGroup", ())  # Python 3.11 on


def _clear_finished_frames(failure: BaseException | None) -> None:
    """Clear the local variables of the frames ``failure`` and the exceptions it came from (cause and context, the
    members of a group) went through: frames that have ended, as an exception left them. The frame that handles it
    still runs and is left as it is, as are generators' frames."""
    pending, seen = [failure], set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        pending += [error.__cause__, error.__context__]
        if isinstance(error, _GROUPS):
            pending += error.exceptions
        for frame, _ in traceback.walk_tb(error.__traceback__):
            if frame.f_code.co_flags & _RESUMABLE:
                continue
            try:
                frame.clear()
            except RuntimeError:  # still running
                continue
            if sys.version_info < (3, 13):
                frame.f_locals  # noqa: B018  (its copy of the variables, if one was made, is refreshed: emptied)


def free_device_memory(failure: BaseException | None = None) -> None:
    """Drop unreferenced tensors and hand cached CUDA blocks back (after a run, a failure or a model swap).
    ``failure``: the exception being handled; the frames its traceback went through, and those of the exceptions it
    came from, lose their local variables first (a failed run's tensors would otherwise live as long as the error)."""
    import torch

    _clear_finished_frames(failure)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
