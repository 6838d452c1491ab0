"""Several GPUs on one host: one ``ImageService`` per GPU, a request goes to whichever replica is free.

``ReplicaService`` has ``ImageService``'s methods, so the app serves it unchanged; the app's generate event runs
``replica_count`` jobs at a time (its ``concurrency_limit``), each taking a free replica from a queue. Every
replica loads the same package and runs the same code, so an image is the one a single GPU gives for its seed.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import replace

from ..errors import InvalidArgument
from ..stats import ServiceStats
from .service import ImageService


def parse_gpus(text: str | None, device_count: int | None = None) -> list[str]:
    """``--gpus``: ``all`` or ``0,1,…`` → ``["cuda:0", "cuda:1", …]``."""
    if text is None or not str(text).strip():
        return []
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count()
    text = str(text).strip().lower()
    if text == "all":
        indices = list(range(device_count))
    else:
        try:
            indices = [int(part) for part in text.split(",")]
        except ValueError:
            raise InvalidArgument(f"--gpus must be 'all' or GPU numbers like 0,1, got {text!r}") from None
    if not indices or not device_count:
        raise InvalidArgument(f"--gpus {text}: no CUDA GPU found; leave --gpus out to run on one device")
    if len(set(indices)) != len(indices) or any(not 0 <= i < device_count for i in indices):
        raise InvalidArgument(f"--gpus {text!r}: use distinct GPU numbers in [0, {device_count - 1}]")
    return [f"cuda:{i}" for i in indices]


class ReplicaService:
    """One ``ImageService`` per device; thread-safe; ``served_by`` records which replica ran each request."""

    def __init__(self, config, devices: list[str]):

        if not devices:
            raise InvalidArgument("ReplicaService needs at least one device")
        self.config = config
        self.replicas = [ImageService(replace(config, device=device)) for device in devices]
        for replica in self.replicas:  # their compiles start once all have loaded (see ImageService.compile_later)
            replica.compile_later = True
        self.defaults = self.replicas[0].defaults
        self._free: queue.Queue[int] = queue.Queue()
        for index in range(len(self.replicas)):
            self._free.put(index)
        self._load_lock = threading.Lock()  # one replica gets or builds the package at a time
        self.served_by: list[int] = []

    @property
    def replica_count(self) -> int:
        return len(self.replicas)

    @property
    def label(self) -> str:
        return self.replicas[0].label

    @property
    def lora_names(self) -> list[str]:
        return self.replicas[0].lora_names

    @property
    def provenance(self):
        return self.replicas[0].provenance

    @property
    def loaded(self) -> bool:
        return all(r.loaded for r in self.replicas)

    def unavailable_reason(self):
        return self.replicas[0].unavailable_reason()

    def load(self, on_progress=None):
        """Load every replica, one after the other, then start their compiles together."""
        with self._load_lock:
            for replica in self.replicas:
                replica.load(on_progress)
        for replica in self.replicas:
            replica.start_compiling()
        return self

    def _on_free_replica(self, on_progress, run):
        """``run(replica)`` on the first free replica (waits while all are busy): its index and what ``run`` gave.
        Nothing runs before every replica has loaded (``load``): a load changes torch's process-wide state (the
        default dtype) for a while, which a model running beside it would read, and a compile started before the
        last load would hold that load back (``torch_state``)."""
        index = self._free.get()
        try:
            if not self.loaded:
                self.load(on_progress)
            return index, run(self.replicas[index])
        finally:
            self._free.put(index)

    def generate(self, request, on_progress=None, cancel=None, previews=False):
        """Run ``request`` on the first free replica (waits while all are busy)."""
        index, result = self._on_free_replica(
            on_progress,
            lambda replica: replica.generate(
                request, on_progress=on_progress, cancel=cancel, **({"previews": True} if previews else {})
            ),
        )
        self.served_by.append(index)
        return result

    def enhance(self, request, on_progress=None, cancel=None):
        """The PE's text for ``request`` (``ImageService.enhance``) on the first free replica."""
        return self._on_free_replica(
            on_progress, lambda replica: replica.enhance(request, on_progress=on_progress, cancel=cancel)
        )[1]

    def stats(self) -> ServiceStats:
        first = self.replicas[0].stats()
        return replace(first, replicas=[r.live_stats() for r in self.replicas])
