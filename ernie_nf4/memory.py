"""Memory modes and freeing device memory: how the models share the GPU.

``MemoryMode`` is the one definition of the modes the loader, the service, the app and the benchmark accept.
"""

from __future__ import annotations

import enum
import gc
import os

from .errors import InvalidArgument


class MemoryMode(str, enum.Enum):
    """Where the models live while a request runs.

    - ``all-on-gpu``: every model stays on the GPU (fastest; about 9.3 GiB at 1024x1024 on the full model).
    - ``low-vram``: only the VAE stays; the prompt enhancer, the text encoder and the transformer take turns on
      the GPU, copied from pinned CPU memory as each is needed (``residency.Residency``; about 5.7 GiB).
    - ``model-offload``: diffusers' ``enable_model_cpu_offload`` (the seed README's way; the benchmark's baseline).
    """

    ALL_ON_GPU = "all-on-gpu"
    LOW_VRAM = "low-vram"
    MODEL_OFFLOAD = "model-offload"

    @classmethod
    def parse(cls, value: str | MemoryMode, argument: str = "memory_mode") -> MemoryMode:
        """A mode from its value; ``gpu`` (the old name of ``all-on-gpu``) is still accepted."""
        if isinstance(value, cls):
            return value
        text = str(value).strip().lower()
        if text == "gpu":
            return cls.ALL_ON_GPU
        try:
            return cls(text)
        except ValueError:
            raise InvalidArgument(f"{argument} must be one of {[m.value for m in cls]}, got {value!r}") from None

    @property
    def needs_cuda(self) -> bool:
        return self is not MemoryMode.ALL_ON_GPU


# What the app offers (model-offload is slower than low-vram at more memory: kept for the benchmark only).
APP_MEMORY_MODES = (MemoryMode.ALL_ON_GPU, MemoryMode.LOW_VRAM)


def free_device_memory() -> None:
    """Drop unreferenced tensors and hand cached CUDA blocks back (after a run, a failure or a model swap)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def use_expandable_segments() -> bool:
    """Let PyTorch's CUDA allocator grow segments in place instead of caching many fixed blocks, so peak
    reserved memory stays close to peak allocated (several GiB less at 1024x1024). Not done when the user
    configured the allocator (``PYTORCH_CUDA_ALLOC_CONF``); True when set here."""
    import torch

    from .compat import set_allocator_settings

    if not torch.cuda.is_available() or {"PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"} & set(os.environ):
        return False
    return set_allocator_settings("expandable_segments:True")
