"""One big model on the GPU at a time: what ``memory_mode="low-vram"`` runs on.

Every tensor of the managed models (parameters, buffers and bitsandbytes' NF4 quantization states) gets a
copy in page-locked CPU memory once. ``use(name)`` puts that model on the GPU (a fast copy from pinned memory)
and drops the GPU tensors of the one that was there (no copy back: weights never change). So the prompt
enhancer and the text encoder leave the GPU once used, the transformer leaves while they run, and a rerun
that needs only the transformer moves nothing.
"""

from __future__ import annotations

import logging
import time

import torch

from .compat import quant_state_tensors
from .errors import InvalidArgument

logger = logging.getLogger(__name__)


def _host_copy(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    copy = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pin)
    return copy.copy_(tensor.detach())


class _Slots:
    """Where each tensor of one model lives, with its CPU copy: (owner, kind, key, cpu tensor)."""

    def __init__(self, model: torch.nn.Module, pin: bool):
        self.slots = []
        self.bytes = 0
        seen = set()
        for module in model.modules():
            for param in module._parameters.values():
                if param is None or id(param) in seen:
                    continue
                seen.add(id(param))
                self._add(param, "data", None, param.data, pin)
                state = getattr(param, "quant_state", None)
                if state is not None:  # bitsandbytes Params4bit
                    for owner, attr in quant_state_tensors(state):
                        self._add(owner, "attr", attr, getattr(owner, attr), pin)
            for key, buffer in module._buffers.items():
                if buffer is not None:
                    self._add(module._buffers, "item", key, buffer, pin)

    def _add(self, owner, kind, key, tensor, pin):
        self.slots.append((owner, kind, key, _host_copy(tensor, pin)))
        self.bytes += tensor.numel() * tensor.element_size()

    def place(self, device: torch.device | None) -> None:
        """Point every slot at a new copy on ``device``, or back at the CPU copy when ``device`` is None."""
        for owner, kind, key, host in self.slots:
            tensor = host if device is None else host.to(device, non_blocking=True)
            if kind == "data":
                owner.data = tensor
            elif kind == "attr":
                setattr(owner, key, tensor)
            else:
                owner[key] = tensor


class Residency:
    """Keeps at most one of its models on ``device``; the others wait in pinned CPU memory.

    ``add`` takes a model from anywhere (on the GPU is fine: its CPU copy is taken then, and its GPU memory
    freed), so a pipeline can be loaded one model at a time without ever holding two on the GPU.
    """

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self._pin = self.device.type == "cuda"
        self._slots: dict[str, _Slots] = {}
        self.resident: str | None = None
        self.seconds_moving = 0.0

    def add(self, name: str, model: torch.nn.Module) -> None:
        if name in self._slots:
            raise InvalidArgument(f"name {name!r} is already managed")
        self._slots[name] = slots = _Slots(model, self._pin)
        slots.place(None)
        if self._pin:
            torch.cuda.empty_cache()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._slots)

    def bytes(self, name: str) -> int:
        return self._slots[name].bytes

    def use(self, name: str) -> None:
        """Make ``name`` the model on the device (the one there before goes back to its CPU copy)."""
        if name not in self._slots:
            raise InvalidArgument(f"name must be one of {self.names}, got {name!r}")
        if name == self.resident:
            return
        start = time.perf_counter()
        if self.resident is not None:
            self._slots[self.resident].place(None)
        self._slots[name].place(self.device)
        self.resident = name
        if self._pin:
            torch.cuda.synchronize(self.device)  # so seconds_moving is the copy's real time
        self.seconds_moving += time.perf_counter() - start
        logger.debug("%s on %s (%.2f GB)", name, self.device, self._slots[name].bytes / 1e9)

    def release(self) -> None:
        """Nothing on the device."""
        if self.resident is not None:
            self._slots[self.resident].place(None)
            self.resident = None
