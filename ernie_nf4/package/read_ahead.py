"""Read a package's weight files into the operating system's file cache in the background, while the libraries
import and the package is checked, so that the models then load from memory instead of from the disk.

On a machine that has just started, or after other work pushed the files out of the cache, loading reads the
9.3 GB package as the libraries ask for it, in small pieces; one sequential reader started first gets the disk's
full speed and overlaps the seconds torch, diffusers and transformers take to import. Files are read in the order
they load (transformer, text encoder, prompt enhancer, then the rest). Nothing is read when the files would not
fit in half the memory that is free (they would push each other out before use), and the reader stops at ``stop()``.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PackageError
from ..host_memory import available_memory
from .format import MODEL_COMPONENTS, REPAIR, components_of
from .json_file import read_json

logger = logging.getLogger(__name__)

CHUNK = 8 * 2**20
# The share of the memory free now that the files may take: the load may keep a copy of the models beside them
# (low-vram's page-locked buffers), and what it allocates needs room too.
MEMORY_SHARE = 0.5
STOP_WAIT_SECONDS = 5.0


def weight_files(folder: Path) -> list[Path]:
    """The weight files the loader reads from ``folder``: in each component folder ``model_index.json`` lists, the
    shards its ``*.safetensors.index.json`` names, else its ``*.safetensors`` without a variant tag (``.fp16``);
    the large models' first, in the order the loader loads them. Empty when the index cannot be read."""
    folder = Path(folder)
    try:
        names = components_of(read_json(folder / "model_index.json", REPAIR))
    except (PackageError, OSError, AttributeError):
        return []
    order = {name: i for i, name in enumerate(MODEL_COMPONENTS)}
    files = []
    for name in sorted(names, key=lambda n: (order.get(n, len(order)), n)):
        component = folder / name
        shards = set()
        for index in sorted(component.glob("*.safetensors.index.json")):
            try:
                shards |= {str(shard) for shard in read_json(index, REPAIR).get("weight_map", {}).values()}
            except (PackageError, OSError, AttributeError):
                continue
        if shards:
            files += [component / shard for shard in sorted(shards) if "/" not in shard]
        else:
            files += sorted(f for f in component.glob("*.safetensors") if "." not in f.name[: -len(".safetensors")])
    return [f for f in files if f.is_file()]


@dataclass
class ReadAhead:
    """A read-ahead of ``files`` (none when it was not started), ``total_bytes`` in all; ``bytes_read`` grows as it
    goes. ``stop()``, or leaving it as a context (``with read_ahead(folder):``), ends it and waits for its thread."""

    files: list[Path]
    total_bytes: int
    bytes_read: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> ReadAhead:
        self._thread = threading.Thread(target=self._run, name="ernie-nf4-read-ahead", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the reading after the chunk it is on and wait for that (its files closed)."""
        self._stop.set()
        self.join(STOP_WAIT_SECONDS)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` was called (the reader may also have ended on its own, having read every file)."""
        return self._stop.is_set()

    def _run(self) -> None:
        buffer = bytearray(CHUNK)
        try:
            for path in self.files:
                with open(path, "rb", buffering=0) as f:
                    if hasattr(os, "posix_fadvise"):
                        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                    while not self._stop.is_set() and (n := f.readinto(buffer)):
                        self.bytes_read += n
                if self._stop.is_set():
                    return
        except OSError as err:  # the loader reads the same files and reports what is wrong with them
            logger.debug("reading ahead stopped: %s", err)


def read_ahead(folder: str | Path, memory_bytes: int | None = None) -> ReadAhead:
    """Start reading ``folder``'s weight files (``weight_files``) in a background thread. Nothing is started
    (``files`` empty) when there are none, when they take more than ``MEMORY_SHARE`` of ``memory_bytes`` (default:
    the memory free now; when that is unknown, nothing is read), or when they cannot be listed: the package check
    that follows names what is wrong."""
    try:
        files = weight_files(Path(folder)) if Path(folder).is_dir() else []
        total = sum(p.stat().st_size for p in files)
    except OSError:
        return ReadAhead([], 0)
    if files and memory_bytes is None:
        memory_bytes = available_memory()  # never raises: None when unknown
    if not files or memory_bytes is None or total > MEMORY_SHARE * memory_bytes:
        if files and memory_bytes is not None:
            logger.info(
                "not reading the weights ahead: %.1f GB of them, %.1f GB of memory free",
                total / 1e9,
                memory_bytes / 1e9,
            )
        return ReadAhead([], 0)
    return ReadAhead(files, total).start()
