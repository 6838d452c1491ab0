"""Memory modes: how the models share the GPU, and which mode ``auto`` picks.

``MemoryMode`` is the one definition of the modes the loader, the service, the app and the benchmark accept.
"""

from __future__ import annotations

import enum
import os

from ..compat import set_allocator_settings
from ..errors import EnvironmentUnsupported, InvalidArgument

OLD_ALL_ON_GPU_NAME = "gpu"  # what all-on-gpu was called before; still accepted by ``MemoryMode.parse``


class MemoryMode(str, enum.Enum):
    """Where the models live while a request runs.

    - ``all-on-gpu``: every model stays on the GPU (fastest; about 9.7 GiB at 1024x1024 on the full model, 10.0
      with the compiled blocks).
    - ``low-vram``: only the VAE stays; the prompt enhancer, the text encoder and the transformer take turns on
      the GPU, copied from page-locked CPU memory as each is needed (``residency.Residency``; about 5.9 GiB).
    - ``model-offload``: diffusers' ``enable_model_cpu_offload`` (the way the published ERNIE-Image-NF4 model card
      runs it; the benchmark's baseline).
    - ``auto``: ``all-on-gpu`` when the GPU memory this process may use holds its peak at the largest size the app
      offers, else ``low-vram``, and below that a refusal naming the GiB there and needed (``choose_memory_mode``).
    """

    AUTO = "auto"
    ALL_ON_GPU = "all-on-gpu"
    LOW_VRAM = "low-vram"
    MODEL_OFFLOAD = "model-offload"

    @classmethod
    def parse(cls, value: str | MemoryMode, argument: str = "memory_mode", allowed=None) -> MemoryMode:
        """A mode from its value: the one place a memory mode is validated. ``gpu`` (the old name of ``all-on-gpu``)
        is still accepted; ``allowed`` narrows the modes (the app offers ``APP_MEMORY_MODES``). Raises
        ``InvalidArgument`` naming ``argument`` and the modes it takes."""
        choices = tuple(cls) if allowed is None else tuple(allowed)
        if isinstance(value, cls):
            mode = value
        else:
            text = str(value).strip().lower()
            mode = cls.ALL_ON_GPU if text == OLD_ALL_ON_GPU_NAME else next((m for m in cls if m.value == text), None)
        if mode not in choices:
            shown = value.value if isinstance(value, cls) else value
            raise InvalidArgument(
                f"{argument} must be one of {[m.value for m in choices]}, got {shown!r}", field=argument
            )
        return mode

    @property
    def needs_cuda(self) -> bool:
        return self in (MemoryMode.LOW_VRAM, MemoryMode.MODEL_OFFLOAD)


# What the app offers (model-offload is slower than low-vram at more memory: kept for the benchmark only).
APP_MEMORY_MODES = (MemoryMode.AUTO, MemoryMode.ALL_ON_GPU, MemoryMode.LOW_VRAM)
# Peak reserved GiB of the full-size NF4 model at 1024x1024 (the largest presets are about one megapixel), measured
# on an NVIDIA H100 80GB HBM3 (docs/benchmarks.md: all-on-gpu 9.67 eager, 10.04 with the compiled blocks,
# which is the app's default; low-vram 5.85, and 5.94 for 4 images under a 6 GiB cap), with a margin for the CUDA
# context's neighbours.
NEEDS_GIB = {MemoryMode.ALL_ON_GPU: 10.5, MemoryMode.LOW_VRAM: 6.0}


def usable_gib(device: str) -> float:
    """GiB this process may still take on ``device``: free memory (plus what its allocator already holds), capped
    by ``torch.cuda.set_per_process_memory_fraction`` when one is set."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    usable = free + torch.cuda.memory_reserved(device)
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    fraction = get_fraction(device) if get_fraction is not None else 1.0
    return min(usable, fraction * total) / 2**30


def choose_memory_mode(
    device: str, usable: float | None = None, extra_gib: float | dict[MemoryMode, float] = 0.0
) -> tuple[MemoryMode, str]:
    """The mode ``auto`` picks for ``device`` and why (for the UI and Stats); raises ``EnvironmentUnsupported``
    naming the GiB there and needed when even ``low-vram`` does not fit. ``extra_gib``: what comes on top of each
    mode's need (LoRAs attached to the transformer), one figure for every mode or one per mode."""

    if not device.startswith("cuda"):
        return MemoryMode.ALL_ON_GPU, f"auto: {device} has no GPU memory to save"
    usable = usable_gib(device) if usable is None else usable
    extras = extra_gib if isinstance(extra_gib, dict) else dict.fromkeys(NEEDS_GIB, extra_gib)
    extras = {mode: extra if _shown(extra) else 0.0 for mode, extra in extras.items()}
    for mode in (MemoryMode.ALL_ON_GPU, MemoryMode.LOW_VRAM):
        extra = extras.get(mode, 0.0)
        if usable >= NEEDS_GIB[mode] + extra:
            return mode, f"auto: {usable:.1f} GiB usable on {device}, {mode.value} needs {_need(mode, extra)}"
    extra = extras.get(MemoryMode.LOW_VRAM, 0.0)
    raise EnvironmentUnsupported(
        f"memory_mode auto: {usable:.1f} GiB of GPU memory usable on {device}, the model needs at least "
        f"{_need(MemoryMode.LOW_VRAM, extra, named=True)} at 1024x1024; free GPU memory, use a larger GPU"
        + (", or offer fewer or smaller LoRAs" if _shown(extra) else "")
    )


def _shown(extra_gib: float) -> bool:
    """Whether an extra need counts: streamed LoRAs add a few MiB in low-vram, inside the margin ``NEEDS_GIB``
    keeps above the measured peaks."""
    return extra_gib >= 0.05


def _need(mode: MemoryMode, extra_gib: float, named: bool = False) -> str:
    """``6 GiB``, or with LoRAs ``6.4 GiB with 0.4 GiB of LoRAs`` (``named``: ``(low-vram with ...)``)."""
    if not _shown(extra_gib):
        return f"{NEEDS_GIB[mode]:.0f} GiB" + (f" ({mode.value})" if named else "")
    loras = f"with {extra_gib:.1f} GiB of LoRAs"
    total = f"{NEEDS_GIB[mode] + extra_gib:.1f} GiB"
    return f"{total} ({mode.value} {loras})" if named else f"{total} {loras}"


def use_expandable_segments() -> bool:
    """Let PyTorch's CUDA allocator grow segments in place instead of caching many fixed blocks, so peak
    reserved memory stays close to peak allocated (several GiB less at 1024x1024). Not done when the user
    configured the allocator (``PYTORCH_CUDA_ALLOC_CONF``); True when set here."""
    import torch

    if not torch.cuda.is_available() or {"PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"} & set(os.environ):
        return False
    return set_allocator_settings("expandable_segments:True")
