"""Read a package's weight files into the operating system's file cache in the background, while the libraries
import and the package is checked, so that the models then load from memory instead of from the disk.

On a machine that has just started, or after other work pushed the files out of the cache, loading reads the
9.3 GB package as the libraries ask for it, in small pieces; one sequential reader started first gets the disk's
full speed and overlaps the seconds torch, diffusers and transformers take to import. Files are read in the order
they load (transformer, text encoder, prompt enhancer, then the rest). Nothing is read when the files would not
fit in the memory that is free (they would push each other out before use), and the reader stops at ``stop()``.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .format import MODEL_COMPONENTS

logger = logging.getLogger(__name__)

CHUNK = 8 * 2**20
# The share of the memory free now that the files may take; the rest stays for what the load itself allocates.
MEMORY_SHARE = 0.8


def weight_files(folder: Path) -> list[Path]:
    """The ``.safetensors`` files in the package's component folders, the large models' first, in the order the
    loader loads them."""
    order = {name: i for i, name in enumerate(MODEL_COMPONENTS)}
    files = [p for p in Path(folder).glob("*/*.safetensors") if p.is_file()]
    return sorted(files, key=lambda p: (order.get(p.parent.name, len(order)), str(p)))


def available_memory() -> int | None:
    """Bytes of memory free for new use (Linux ``MemAvailable``, else free physical pages), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


@dataclass
class ReadAhead:
    """A read-ahead: ``files`` (none when it was not started) and their ``total_bytes``; ``bytes_read`` grows as it
    goes; ``stop()``, or leaving it as a context (``with read_ahead(folder):``), ends it early."""

    files: list[Path]
    total_bytes: int
    bytes_read: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

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
    """Start reading ``folder``'s weight files in a background thread. Nothing is started (``files`` empty) when
    ``folder`` holds none, or when they take more than ``MEMORY_SHARE`` of ``memory_bytes`` (default: the memory
    free now; when that is unknown, nothing is read)."""
    folder = Path(folder)
    files = weight_files(folder) if folder.is_dir() else []
    total = sum(p.stat().st_size for p in files)
    if memory_bytes is None and files:
        memory_bytes = available_memory()
    if not files or memory_bytes is None or total > MEMORY_SHARE * memory_bytes:
        if files:
            logger.info("not reading the weights ahead: %d bytes against %s bytes of free memory", total, memory_bytes)
        return ReadAhead([], 0)
    job = ReadAhead(files, total)
    job._thread = threading.Thread(target=job._run, name="ernie-nf4-read-ahead", daemon=True)
    job._thread.start()
    return job
