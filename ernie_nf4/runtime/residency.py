"""One big model on the GPU at a time: what ``memory_mode="low-vram"`` runs on.

Every tensor of the managed models (parameters, buffers and bitsandbytes' NF4 quantization states) gets a
copy in CPU memory once: one page-locked buffer per model, its tensors laid out as they will be on the device.
There, one arena: a single byte buffer as large as the largest model, allocated on the first ``use`` and kept.
``use(name)`` copies that model's buffer into the arena (one fast copy) and points its tensors at views of it;
the model that was there goes back to its CPU copies (no copy back: weights never change). So the prompt
enhancer and the text encoder leave the GPU once used, the transformer leaves while they run, and a rerun that needs
only the transformer moves nothing.

Each tensor has a fixed place in the arena (``plan_offsets``), so a model lands at the same addresses every time
it comes back: the prompt enhancer's CUDA graph (``prompt_enhancer.decoding.PEDecoder``), which holds those
addresses, stays valid across moves instead of being captured again. The arena is the one allocation the models
need on the device: as large as the largest model, each tensor's start rounded up to ``ALIGNMENT``.
"""

from __future__ import annotations

import logging
import mmap
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..compat import quant_state_tensors
from ..errors import InvalidArgument

logger = logging.getLogger(__name__)

# A module's buffers named in this attribute stay where they are (page-locked CPU memory the module copies from as
# it runs: a streamed LoRA's weights); a ``Residency`` moves the rest.
HOST_BUFFERS = "_host_buffers"
ALIGNMENT = 256  # bytes: every tensor of the arena starts at a multiple (CUDA's own allocations are 512-aligned)


def plan_offsets(sizes: Sequence[int], alignment: int = ALIGNMENT) -> tuple[list[int], int]:
    """Byte offsets for tensors of ``sizes`` bytes laid one after another, each starting at a multiple of
    ``alignment``, and the bytes they span (rounded up to ``alignment``): the arena one model needs."""
    if not (isinstance(alignment, int) and alignment > 0 and alignment & (alignment - 1) == 0):
        raise InvalidArgument(f"alignment must be a positive power of two, got {alignment!r}")
    offsets, end = [], 0
    for size in sizes:
        if size < 0:
            raise InvalidArgument(f"sizes must not be negative, got {size!r}")
        offsets.append(end)
        end += -(-size // alignment) * alignment
    return offsets, end


def _memory_key(tensor: torch.Tensor) -> tuple:
    """Equal for two tensor objects that view the same memory the same way (tied weights, shared states)."""
    return (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))


def page_lock(buffer: torch.Tensor, done: torch.cuda.Event | None = None) -> bool:
    """Page-lock ``buffer``'s memory for CUDA (``cudaHostRegister``) until ``buffer`` is collected (then, once
    ``done``, the event recorded after the last copy from it, has passed): copies from it run asynchronously at full
    speed. Unlike ``pin_memory=True``, which PyTorch's pinned-memory cache rounds up to a power of two (a 4.1 GB model
    would lock 8 GB), it locks the buffer's own pages. False, with a log line, when CUDA refuses (copies from it then
    wait for the GPU, and are slower). CUDA locks whole pages: a buffer that shares one with another locked buffer
    is refused (``host_buffer`` makes buffers of whole pages)."""
    nbytes = buffer.numel() * buffer.element_size()
    if nbytes == 0:
        return True  # nothing to lock (and no address to lock it at)
    cudart = torch.cuda.cudart()
    pointer = buffer.data_ptr()
    error = cudart.cudaHostRegister(pointer, nbytes, 0)
    if int(error) != 0:
        _consume_cuda_error()
        logger.warning(
            "could not page-lock %.2f GB of CPU memory for CUDA (%s); moving models onto the GPU will be slower",
            nbytes / 1e9,
            cudart.cudaGetErrorString(error),
        )
        return False
    unlock = weakref.finalize(buffer, _unlock, pointer, done)
    unlock.atexit = False  # at exit the process's memory goes anyway, and CUDA may be gone before this runs
    return True


def host_buffer(nbytes: int) -> torch.Tensor:
    """``nbytes`` of CPU memory (uint8), rounded up to whole pages, in a mapping of its own: no other buffer shares its
    pages (``page_lock`` locks whole pages), and its storage starts where it starts, which is where PyTorch's
    ``is_pinned`` looks."""
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    pages = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
    private = getattr(mmap, "MAP_PRIVATE", None)  # a forked child writes to its own copy; Windows has neither
    memory = mmap.mmap(-1, pages) if private is None else mmap.mmap(-1, pages, flags=private)
    return torch.frombuffer(memory, dtype=torch.uint8)  # the tensor's storage keeps the mapping alive


def _consume_cuda_error() -> None:
    """A failed runtime call leaves its error for the next check to read, which PyTorch's next kernel launch does (and
    raises): read it now, with a throwaway launch."""
    try:
        torch.zeros(1, device="cuda").add_(1)
    except RuntimeError:
        pass


def _unlock(pointer: int, done: torch.cuda.Event | None) -> None:
    """Unregister a page-locked buffer that is being freed, once no copy from it can still be running. Not in a
    process forked after CUDA started (it holds no registration), nor on a thread capturing a CUDA graph (no call
    that may wait is allowed there: the pages then stay locked until the process ends)."""
    if not torch.cuda.is_initialized():
        return
    if torch.cuda.is_current_stream_capturing():
        logger.warning("a page-locked buffer was freed during a CUDA graph capture; it stays locked")
        return
    if done is not None:
        done.synchronize()
    if int(torch.cuda.cudart().cudaHostUnregister(pointer)) != 0:
        _consume_cuda_error()


@dataclass
class _Tensor:
    """One tensor of a model: its dtype and shape, its place (``offset``) in the model's layout, which its CPU copy
    and the arena share, and the slots that hold it, each ``(owner, kind, key)``: a parameter's ``.data``, or an
    attribute (a quantization state's tensor, a module's buffer: set through ``setattr``)."""

    dtype: torch.dtype
    shape: torch.Size
    offset: int = 0
    slots: list = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return self.shape.numel() * self.dtype.itemsize

    def view(self, buffer: torch.Tensor) -> torch.Tensor:
        """Its place in ``buffer`` (uint8: the model's CPU copy or the arena), as a contiguous tensor."""
        return buffer[self.offset : self.offset + self.nbytes].view(self.dtype).view(self.shape)


class _Model:
    """Every tensor of one model, each once (tied and shared ones too), laid out in one CPU buffer (``host``,
    page-locked for CUDA) exactly as in the arena: a move is one copy."""

    def __init__(self, model: torch.nn.Module, pin: bool):
        self.tensors: list[_Tensor] = []
        sources: list[torch.Tensor] = []
        by_memory: dict[tuple, _Tensor] = {}
        seen = set()

        def add(owner, kind, key, tensor):
            memory = _memory_key(tensor)
            entry = by_memory.get(memory)
            if entry is None:
                entry = by_memory[memory] = _Tensor(tensor.dtype, tensor.shape)
                self.tensors.append(entry)
                sources.append(tensor)
            entry.slots.append((owner, kind, key))

        for module in model.modules():
            for param in module.parameters(recurse=False):
                if id(param) in seen:
                    continue
                seen.add(id(param))
                add(param, "data", None, param.data)
                state = getattr(param, "quant_state", None)
                if state is not None:  # bitsandbytes Params4bit
                    for owner, attr in quant_state_tensors(state):
                        add(owner, "attr", attr, getattr(owner, attr))
            for key, buffer in module.named_buffers(recurse=False, remove_duplicate=False):
                if key not in getattr(module, HOST_BUFFERS, ()):
                    add(module, "attr", key, buffer)
        sizes = [entry.nbytes for entry in self.tensors]
        self.bytes = sum(sizes)
        offsets, self.span = plan_offsets(sizes)
        self._pages = host_buffer(self.span)  # kept: it is unlocked when collected
        self.host = self._pages[: self.span]
        self.copied = torch.cuda.Event() if pin else None  # recorded after each copy from ``host``
        self.pinned = pin and page_lock(self._pages, self.copied)
        self._host_views = []
        for entry, offset, source in zip(self.tensors, offsets, sources, strict=True):
            entry.offset = offset
            self._host_views.append(entry.view(self.host).copy_(source.detach()))

    def place(self, arena: torch.Tensor | None) -> None:
        """Copy the model into ``arena`` and point its slots there, or with ``arena`` None point them back at the
        CPU copy. The copy is queued on the arena device's current stream, behind the work that still reads the
        model that was there before."""
        views = self._host_views
        if arena is not None:
            arena[: self.span].copy_(self.host, non_blocking=self.pinned)
            if self.copied is not None:
                self.copied.record(torch.cuda.current_stream(arena.device))
            views = [entry.view(arena) for entry in self.tensors]
        for entry, tensor in zip(self.tensors, views, strict=True):
            for owner, kind, key in entry.slots:
                if kind == "data":
                    owner.data = tensor
                else:
                    setattr(owner, key, tensor)


class Residency:
    """Keeps at most one of its models on ``device``; the others wait in CPU memory (page-locked for CUDA).

    ``add`` takes a model from anywhere (on the GPU is fine: its CPU copy is taken then, and its GPU memory
    freed), so a pipeline can be loaded one model at a time without ever holding two on the GPU. The arena that
    ``use`` copies models into is allocated once and kept until ``close``.
    """

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self._pin = self.device.type == "cuda"
        self._models: dict[str, _Model] = {}
        self._arena: torch.Tensor | None = None
        self.resident: str | None = None
        self._seconds = 0.0
        self._moves: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # CUDA moves not yet read into _seconds

    def add(self, name: str, model: torch.nn.Module) -> None:
        if name in self._models:
            raise InvalidArgument(f"name {name!r} is already managed")
        self._models[name] = entry = _Model(model, self._pin)
        entry.place(None)
        if self._pin:
            torch.cuda.empty_cache()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._models)

    def bytes(self, name: str) -> int:
        """Bytes of model ``name``'s tensors (each shared tensor once)."""
        return self._models[name].bytes

    @property
    def arena_bytes(self) -> int:
        """Size of the arena: the largest model's bytes, each tensor's start aligned to ``ALIGNMENT``."""
        return max((model.span for model in self._models.values()), default=0)

    def _ensure_arena(self) -> torch.Tensor:
        """The arena, allocated now if there is none or it is smaller than a model added since."""
        if self._arena is None or self._arena.numel() < self.arena_bytes:
            # no model points into an old one (see use); a PE decoder's KV cache in ``scratch`` may, and keeps that
            # one alive until the decoder makes a new cache (its storage then moved: ``PEDecoder._ensure_cache``)
            self._arena = None
            self._arena = torch.empty(self.arena_bytes, dtype=torch.uint8, device=self.device)
            logger.debug("arena of %.2f GB on %s", self.arena_bytes / 1e9, self.device)
        return self._arena

    def use(self, name: str) -> None:
        """Make ``name`` the model on the device (the one there before goes back to its CPU copy). A model is put
        at the same addresses every time.

        On CUDA this returns once the copy is queued, without waiting for it (when the CPU copy is page-locked, as
        it is unless CUDA refused: ``page_lock``): the host goes on to what comes next (tokenizing the prompt,
        launching the model's first kernels) while it runs, and the GPU runs that work after it, in stream order.
        The CPU copies never change, so nothing can overwrite them meanwhile."""
        if name not in self._models:
            raise InvalidArgument(f"name must be one of {self.names}, got {name!r}")
        if name == self.resident:
            return
        if self._pin:
            stream = torch.cuda.current_stream(self.device)
            began, ended = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            began.record(stream)
        start = time.perf_counter()
        self.release()
        model = self._models[name]
        try:
            model.place(self._ensure_arena())
        except BaseException:
            model.place(None)  # all of it back on its CPU copies, none half in the arena
            raise
        self.resident = name
        if self._pin:
            ended.record(stream)
            self._moves = [move for move in self._moves if not self._count(move, wait=False)]
            self._moves.append((began, ended))
        else:
            self._seconds += time.perf_counter() - start
        logger.debug("%s on %s (%.2f GB)", name, self.device, model.bytes / 1e9)

    @property
    def seconds_moving(self) -> float:
        """Seconds spent moving models onto the device so far. On CUDA: each move's time on the GPU, from its start
        (the model there before released) to the end of its copy; reading it waits for the moves still queued."""
        while self._moves:
            self._count(self._moves[0], wait=True)
            del self._moves[0]
        return self._seconds

    def _count(self, move: tuple, wait: bool) -> bool:
        """Add a CUDA move's time to the total once it is done (``wait``: wait for that); True when added."""
        began, ended = move
        if not wait and not ended.query():
            return False
        ended.synchronize()
        self._seconds += began.elapsed_time(ended) / 1000
        return True

    def scratch(self, name: str, nbytes: int) -> torch.Tensor | None:
        """``nbytes`` of the arena behind model ``name`` (uint8, 256-byte aligned), or None when they do not fit
        there. The space is free only while ``name`` is the model on the device (a larger model overwrites it),
        and it stays at the same address: the PE decoder keeps its KV cache there in low-vram mode, so the cache
        costs no GPU memory of its own."""
        start = self._models[name].span  # a multiple of ALIGNMENT
        if self.resident != name or self._arena is None or start + nbytes > self._arena.numel():
            return None
        return self._arena[start : start + nbytes]

    def release(self) -> None:
        """No model on the device (the arena stays, for the next ``use``)."""
        if self.resident is not None:
            self._models[self.resident].place(None)
            self.resident = None

    def close(self) -> None:
        """No model on the device and the arena given up; a later ``use`` allocates a new one (other addresses). The
        memory is freed once nothing else holds a view of it (a PE decoder's KV cache in ``scratch`` does)."""
        self.release()
        self._arena = None
        if self._pin:
            torch.cuda.empty_cache()
