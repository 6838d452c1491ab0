"""LoRAs on the transformer, its weights untouched (NF4 stays NF4): picked and scaled per request.

``attach_loras(transformer, files)`` gives every linear layer that a LoRA names a LoRA term beside its own product,
``out + ((x @ down.T) * scale) @ up.T``, where ``down`` and ``up`` hold all the files' updates for that layer side by
side along the rank, and ``scale`` (one number per rank) says which of them count and how much. Those three are
buffers of the layer, so they move with the model in every memory mode; with ``streamed`` (low-vram) ``down`` and
``up`` stay in page-locked CPU memory and each layer copies its own in as it runs, so the GPU never holds them all.
``LoraSlots.select`` writes ``scale`` for a
request: choosing or scaling LoRAs between requests loads nothing and changes no shape, so compiled blocks keep
running the same code; scale 0 adds exact zeros (the image of no LoRA).

Each of the transformer's repeated blocks gets the same slots (a LoRA that skips a block has zeros there), so the
blocks stay alike and one compiled block still serves them all. The layer's class becomes a subclass of its own with
that forward (``compat.swap_class``), as the fast path does for the blocks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..compat import swap_class
from ..errors import InvalidArgument
from ..request import LoraChoice
from .lora_files import LoraFile
from .residency import HOST_BUFFERS, host_buffer, page_lock, plan_offsets

_BLOCK = re.compile(r"^layers\.\d+\.")
_CLASSES: dict[type, type] = {}


def _group(path: str) -> str:
    """Layers that get the same slots: one per place in the repeated block (``layers.*.mlp.gate_proj``)."""
    return _BLOCK.sub("layers.*.", path)


def _lora_class(base: type) -> type:
    """``base`` (``nn.Linear`` or bitsandbytes' ``Linear4bit``) with the LoRA term added to its output."""
    if base not in _CLASSES:

        def forward(self, x):
            return self.add_lora_term(x, base.forward(self, x))

        def add_lora_term(self, x, out):
            """``out`` (the layer's own output for ``x``) with the LoRA term added."""
            down, up = self.lora_down, self.lora_up
            if down.device != x.device:  # kept in page-locked CPU memory (low-vram): copied in for this call
                down, up = down.to(x.device, non_blocking=True), up.to(x.device, non_blocking=True)
            h = F.linear(x.to(down.dtype), down)
            h = (h.float() * self.lora_scale).to(down.dtype)
            if out.dtype != up.dtype or not out.is_contiguous():
                return out + F.linear(h, up).to(out.dtype)
            # added into the layer's own fresh output: no second output-sized tensor
            out.view(-1, out.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), up.t())
            return out

        _CLASSES[base] = type(f"Lora{base.__name__}", (base,), {"forward": forward, "add_lora_term": add_lora_term})
    return _CLASSES[base]


@dataclass(frozen=True)
class _Place:
    """Where one LoRA sits in a group's ranks."""

    group: str
    start: int
    stop: int


class LoraSlots:
    """The LoRAs attached to one transformer and the switch between them (``select``)."""

    def __init__(self, layers: dict[str, list[torch.nn.Module]], places: dict[str, list[_Place]]):
        self._layers = layers  # group -> its layers
        self._places = places  # LoRA name -> its places
        self.selected: tuple[LoraChoice, ...] = ()

    @property
    def names(self) -> list[str]:
        return list(self._places)

    def select(self, choices: Sequence[LoraChoice]) -> None:
        """Make ``choices`` (names and scales) the LoRAs in force; the others count zero. Raises ``InvalidArgument``
        (``field="lora"``) naming a LoRA that is not attached."""
        for choice in choices:
            if choice.name not in self._places:
                raise unknown_lora(choice.name, self.names)
        scales = {group: torch.zeros(layers[0].lora_scale.shape) for group, layers in self._layers.items()}
        for choice in choices:
            for place in self._places[choice.name]:
                scales[place.group][place.start : place.stop] = float(choice.scale)
        with torch.no_grad():
            for group, layers in self._layers.items():
                for layer in layers:  # the buffer in use now (low-vram moves it with the model)
                    layer.lora_scale.copy_(scales[group], non_blocking=True)
        self.selected = tuple(choices)


def unknown_lora(name: str, offered: list[str]) -> InvalidArgument:
    shown = ", ".join(repr(n) for n in offered) if offered else "none (start the app with --lora NAME=FILE)"
    return InvalidArgument(f"lora {name!r} is not one this app offers; offered: {shown}", field="lora")


def _group_rank(files: list[LoraFile], members: list[str]) -> list[int]:
    """Each file's rank in a group: its largest over the group's layers (0 where it has none)."""
    return [max((f.modules[m].rank for m in members if m in f.modules), default=0) for f in files]


def planned_bytes(
    files: Sequence[LoraFile], linears: dict[str, tuple[int, int]], element_bytes: int = 2, streamed: bool = False
) -> int:
    """GPU bytes ``attach_loras`` adds for ``files`` to a transformer whose linear layers are ``linears`` (path ->
    (in, out)): every layer of a group the files touch gets the sum of their ranks there, padded. ``streamed``
    (low-vram): the scales stay, and of the weights only the largest layer's are on the GPU at a time."""
    scales = largest = weights = 0
    for group in {_group(m) for f in files for m in f.modules}:
        members = [m for m in linears if _group(m) == group]
        rank = sum(_group_rank(list(files), members))
        sizes = [rank * (linears[m][0] + linears[m][1]) * element_bytes for m in members]
        scales, weights, largest = scales + 4 * rank * len(members), weights + sum(sizes), max([largest, *sizes])
    return scales + (largest if streamed else weights)


def _places(files: list[LoraFile], members: list[str], group: str) -> list[tuple[LoraFile, _Place]]:
    """Where each file sits in the group's ranks, side by side (a file that skips the group has no place)."""
    places, start = [], 0
    for f, rank in zip(files, _group_rank(files, members), strict=True):
        if rank:
            places.append((f, _Place(group, start, start + rank)))
            start += rank
    return places


def _filled(layer: torch.nn.Module, member: str, places: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's (down, up): zeros, with each file's update for ``member`` at its place (a lower rank than the
    place's leaves zeros after it)."""
    rank = places[-1][1].stop
    down, up = torch.zeros(rank, layer.in_features), torch.zeros(layer.out_features, rank)
    for f, place in places:
        if (module := f.modules.get(member)) is not None:
            down[place.start : place.start + module.rank] = module.down.float()
            up[:, place.start : place.start + module.rank] = module.up.float()
    return down, up


def _attach(layer: torch.nn.Module, down: torch.Tensor, up: torch.Tensor, host: _HostCopies | None) -> None:
    weight = layer.weight
    dtype = getattr(layer, "compute_dtype", None) or (weight.dtype if weight.is_floating_point() else torch.bfloat16)
    device = weight.device
    if host is None:
        layer.register_buffer("lora_down", down.to(device, dtype), persistent=False)
        layer.register_buffer("lora_up", up.to(device, dtype), persistent=False)
    else:  # buffers a ``Residency`` leaves in CPU memory (compiled blocks see buffers alike in every block)
        layer.register_buffer("lora_down", host.add(down.to(dtype)), persistent=False)
        layer.register_buffer("lora_up", host.add(up.to(dtype)), persistent=False)
        setattr(layer, HOST_BUFFERS, ("lora_down", "lora_up"))
    layer.register_buffer("lora_scale", torch.zeros(down.shape[0], device=device), persistent=False)
    swap_class(layer, _lora_class(type(layer)))


class _HostCopies:
    """The LoRA weights of a streamed attach, in one page-locked CPU buffer (``residency.host_buffer``), each
    tensor at an aligned place of it: the layers copy theirs to the GPU as they run."""

    def __init__(self):
        self._tensors: list[torch.Tensor] = []
        self.pages: torch.Tensor | None = None  # kept while the slots live: its pages stay locked until collected

    def add(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        self._tensors.append(tensor)
        return tensor

    def lock(self, layers: list[torch.nn.Module]) -> None:
        """Lay the tensors out in one buffer, page-lock it for CUDA and point ``layers`` at their views."""
        sizes = [t.numel() * t.element_size() for t in self._tensors]
        offsets, span = plan_offsets(sizes)
        pages = host_buffer(span)
        views = {}
        for tensor, offset, size in zip(self._tensors, offsets, sizes, strict=True):
            view = pages[offset : offset + size].view(tensor.dtype).view(tensor.shape)
            views[id(tensor)] = view.copy_(tensor)
        if torch.cuda.is_available():
            page_lock(pages)
        self.pages = pages
        for layer in layers:
            layer.register_buffer("lora_down", views[id(layer.lora_down)], persistent=False)
            layer.register_buffer("lora_up", views[id(layer.lora_up)], persistent=False)
        self._tensors = []


def attach_loras(transformer, files: Sequence[LoraFile], streamed: bool = False) -> LoraSlots:
    """Give ``transformer``'s layers the slots of ``files`` (read by ``lora_files.read_lora`` for this model), all
    at scale 0. Call it before the model is handed to a ``Residency`` or compiled. ``streamed`` (low-vram): the
    LoRA weights stay in page-locked CPU memory and each layer copies its own to the GPU as it runs, so the
    transformer's arena holds only their scales."""
    files = list(files)
    modules = dict(transformer.named_modules())
    touched = {_group(m) for f in files for m in f.modules}
    layers, places = {}, {f.name: [] for f in files}
    host = _HostCopies() if streamed else None
    for group in sorted(touched):
        members = [path for path in modules if _group(path) == group and isinstance(modules[path], torch.nn.Linear)]
        group_places = _places(files, members, group)
        for f, place in group_places:
            places[f.name].append(place)
        for member in members:
            _attach(modules[member], *_filled(modules[member], member, group_places), host)
        layers[group] = [modules[m] for m in members]
    if host is not None:
        host.lock([layer for group in layers.values() for layer in group])
        transformer._lora_host_copies = host  # as long as the model lives, its LoRA weights stay page-locked
    return LoraSlots(layers, places)
