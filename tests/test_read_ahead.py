"""Reading a package's weights ahead: files pushed out of the file cache are back in it once the reader is done,
large models first; nothing is read when they would not fit in free memory. Residency is measured by the kernel's
own ``mincore``, apart from the code under test."""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path

import pytest

from ernie_nf4.package.read_ahead import read_ahead, weight_files

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and fadvise are Linux calls")

MB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_share(path: Path) -> float:
    """The share of ``path``'s pages in the file cache now (``mincore`` on a read-only mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = path.stat().st_size
    pages = (size + PAGE - 1) // PAGE
    with open(path, "rb") as f:
        address = libc.mmap(None, size, 1, 1, f.fileno(), 0)  # PROT_READ, MAP_SHARED
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vector = (ctypes.c_ubyte * pages)()
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(address, size)
    return sum(v & 1 for v in vector) / pages


def evict(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def write(path: Path, megabytes: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(megabytes):
            f.write(os.urandom(MB))
    return path


@pytest.fixture
def package(tmp_path) -> dict[str, Path]:
    """A folder laid out as a package, its weight files out of the file cache."""
    files = {
        "vae": write(tmp_path / "vae" / "diffusion_pytorch_model.safetensors", 4),
        "pe": write(tmp_path / "pe" / "model.safetensors", 8),
        "transformer": write(tmp_path / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors", 24),
        "transformer2": write(tmp_path / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors", 8),
        "text_encoder": write(tmp_path / "text_encoder" / "model.safetensors", 8),
    }
    (tmp_path / "model_index.json").write_text("{}")
    for path in files.values():
        evict(path)
    if max(resident_share(p) for p in files.values()) > 0.5:
        pytest.skip(f"this file system keeps files in memory whatever is advised ({tmp_path})")
    return files


def test_the_weight_files_come_back_into_the_file_cache(package):
    job = read_ahead(package["vae"].parents[1], memory_bytes=2**40)
    job.join(timeout=60)
    assert job.total_bytes == 52 * MB and job.bytes_read == job.total_bytes
    for name, path in package.items():
        assert resident_share(path) > 0.95, name


def test_the_large_models_are_read_first_in_the_order_they_load(package):
    order = [p.relative_to(package["vae"].parents[1]).parts[0] for p in weight_files(package["vae"].parents[1])]
    assert order == ["transformer", "transformer", "text_encoder", "pe", "vae"]


def test_nothing_is_read_when_the_weights_would_not_fit_in_free_memory(package):
    job = read_ahead(package["vae"].parents[1], memory_bytes=52 * MB)  # the files would take all of it
    assert job.files == [] and job.total_bytes == 0
    time.sleep(0.5)
    assert max(resident_share(p) for p in package.values()) < 0.5


def test_a_folder_without_weights_or_no_folder_starts_nothing(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    assert read_ahead(tmp_path).files == []
    assert read_ahead(tmp_path / "missing").files == []


def test_stopping_leaves_the_rest_unread(package):
    # Stopped as soon as it starts, the reader ends after at most the chunk it is on: never the last file.
    job = read_ahead(package["vae"].parents[1], memory_bytes=2**40)
    job.stop()
    job.join(timeout=60)
    assert job.bytes_read < job.total_bytes
    assert resident_share(package["vae"]) < 0.5
