"""Reading a package's weights ahead: the files the loader will read, pushed out of the file cache, are back in it
once the reader is done, large models first, and nothing else is read; nothing is read when they would not fit in
free memory. Residency is measured by the kernel's own ``mincore``, apart from the code under test."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from ernie_nf4.errors import PackageError
from ernie_nf4.host_memory import available_memory
from ernie_nf4.package import read_ahead as reading
from ernie_nf4.package.read_ahead import read_ahead, weight_files
from ernie_nf4.runtime import loader

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore and fadvise are Linux calls")

MB = 2**20
INDEX = {"_class_name": "ErnieImagePipeline", "_diffusers_version": "0.42.1", "scheduler": ["diffusers", "S"]}
INDEX |= {name: ["diffusers", "M"] for name in ("vae", "pe", "transformer", "text_encoder")}


def resident_share(path: Path) -> float:
    """The share of ``path``'s pages in the file cache now (``mincore`` on a read-only mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
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


def lay_out(folder: Path, megabytes: dict[str, int]) -> dict[str, Path]:
    """A pipeline folder: ``model_index.json``, the weight files named by component (MB each), a sharded
    transformer with its index, and files the loader never reads: a variant copy and a folder the index lacks."""
    (folder / "model_index.json").write_text(json.dumps(INDEX))
    files = {
        "vae": write(folder / "vae" / "diffusion_pytorch_model.safetensors", megabytes["vae"]),
        "pe": write(folder / "pe" / "model.safetensors", megabytes["pe"]),
        "transformer": write(folder / "transformer" / "diffusion_pytorch_model-00001-of-00002.safetensors", 24),
        "transformer2": write(folder / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors", 8),
        "text_encoder": write(folder / "text_encoder" / "model.safetensors", megabytes["text_encoder"]),
    }
    shards = {f"w{i}": files[key].name for i, key in enumerate(("transformer", "transformer2"))}
    (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": shards})
    )
    files["variant"] = write(folder / "transformer" / "diffusion_pytorch_model.fp16.safetensors", 4)
    files["stray"] = write(folder / "old" / "model.safetensors", 4)
    return files


@pytest.fixture
def package(tmp_path) -> dict[str, Path]:
    """A pipeline folder (``lay_out``), its weight files out of the file cache."""
    files = lay_out(tmp_path, {"vae": 4, "pe": 8, "text_encoder": 8})
    for path in files.values():
        evict(path)
    if max(resident_share(p) for p in files.values()) > 0.5:
        pytest.skip(f"this file system keeps files in memory whatever is advised ({tmp_path})")
    return files


@linux_only
def test_the_files_the_loader_reads_come_back_into_the_file_cache_and_no_others(package):
    job = read_ahead(package["vae"].parents[1], memory_bytes=2**40)
    job.join(timeout=60)
    assert job.total_bytes == 52 * MB and job.bytes_read == job.total_bytes
    for name, path in package.items():
        if name in ("variant", "stray"):
            assert resident_share(path) < 0.5, name
        else:
            assert resident_share(path) > 0.95, name


def test_the_large_models_are_read_first_in_the_order_they_load(tmp_path):
    lay_out(tmp_path, {"vae": 0, "pe": 0, "text_encoder": 0})
    order = [p.relative_to(tmp_path).parts[0] for p in weight_files(tmp_path)]
    assert order == ["transformer", "transformer", "text_encoder", "pe", "vae"]


@linux_only
def test_the_files_are_read_when_they_fit_in_half_the_free_memory_and_not_when_they_do_not(package):
    folder = package["vae"].parents[1]
    skipped = read_ahead(folder, memory_bytes=104 * MB - 1)  # 52 MB of files: just over half
    assert skipped.files == [] and not skipped.running
    time.sleep(0.5)
    assert max(resident_share(p) for p in package.values()) < 0.5
    taken = read_ahead(folder, memory_bytes=104 * MB)
    taken.join(timeout=60)
    assert taken.bytes_read == 52 * MB and resident_share(package["vae"]) > 0.95


def test_the_free_memory_is_measured_or_nothing_is_read(tmp_path, monkeypatch):
    lay_out(tmp_path, {"vae": 1, "pe": 1, "text_encoder": 1})
    if sys.platform.startswith("linux"):
        assert 0 < available_memory() < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr(reading, "available_memory", lambda: None)  # a system that does not say
    assert read_ahead(tmp_path).files == []


def test_a_folder_without_weights_or_no_folder_starts_nothing(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps(INDEX))
    assert read_ahead(tmp_path).files == []
    assert read_ahead(tmp_path / "missing").files == []
    (tmp_path / "model_index.json").write_text("not json")
    write(tmp_path / "vae" / "diffusion_pytorch_model.safetensors", 1)
    assert read_ahead(tmp_path).files == []  # the package check names what is wrong


@linux_only
def test_stopping_leaves_the_rest_unread_and_waits_for_the_reader(package):
    # Stopped as soon as it starts, the reader ends after at most the chunk it is on: never the last file.
    job = read_ahead(package["vae"].parents[1], memory_bytes=2**40)
    job.stop()
    assert not job.running
    assert job.bytes_read < job.total_bytes
    assert resident_share(package["vae"]) < 0.5


# The loader's own reader, watched


@pytest.fixture
def readers(monkeypatch) -> list:
    """Every reader ``load_pipeline`` starts, in order (the real ``read_ahead``, as if memory were plentiful)."""
    started = []

    def recording(folder):
        started.append(read_ahead(folder, memory_bytes=2**40))
        return started[-1]

    monkeypatch.setattr(loader, "read_ahead", recording)
    return started


@pytest.fixture
def sharded_original(tiny_original, tmp_path):
    """The tiny original re-saved by the libraries' own ``save_pretrained``: the transformer and the text encoder in
    shards with their index, a variant copy of the VAE beside its file, and a leftover folder the index does not
    list."""
    from diffusers import AutoencoderKLFlux2, ErnieImageTransformer2DModel
    from transformers import Mistral3Model

    out = tmp_path / "ERNIE-Image-sharded"
    shutil.copytree(tiny_original, out)
    for name in ("transformer", "text_encoder"):
        shutil.rmtree(out / name)
    transformer = ErnieImageTransformer2DModel.from_pretrained(tiny_original / "transformer", torch_dtype="bfloat16")
    transformer.save_pretrained(out / "transformer", max_shard_size="100KB")
    Mistral3Model.from_pretrained(tiny_original / "text_encoder").save_pretrained(
        out / "text_encoder", max_shard_size="100KB"
    )
    AutoencoderKLFlux2.from_pretrained(tiny_original / "vae").save_pretrained(out / "vae", variant="fp16")
    shutil.copytree(out / "pe", out / "pe-old")
    return out


def files_the_libraries_load(folder: Path) -> set[Path]:
    """By the libraries' naming: a component's shards as its index lists them, else its default weights file."""
    found = set()
    for name in json.loads((folder / "model_index.json").read_text()):
        if name.startswith("_"):
            continue
        for index in (folder / name).glob("*.safetensors.index.json"):
            found |= {folder / name / shard for shard in json.loads(index.read_text())["weight_map"].values()}
        if not any((folder / name).glob("*.safetensors.index.json")):
            found |= {
                p
                for p in (folder / name / "diffusion_pytorch_model.safetensors", folder / name / "model.safetensors")
                if p.is_file()
            }
    return found


def test_a_package_the_libraries_saved_in_shards_reads_ahead_the_files_that_load(sharded_original, readers):
    expected = files_the_libraries_load(sharded_original)
    assert len([p for p in expected if p.parent.name == "transformer"]) > 1  # sharded indeed
    assert (sharded_original / "vae" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = loader.load_pipeline(sharded_original, device="cpu")
    assert loaded.pipe.transformer is not None
    (job,) = readers
    assert set(job.files) == expected
    assert job.total_bytes == sum(p.stat().st_size for p in expected)
    # Those files are all the load needs: without any other weights file (the variant, the leftover) it still loads.
    for path in set(sharded_original.rglob("*.safetensors")) - expected:
        path.unlink()
    again = loader.load_pipeline(sharded_original, device="cpu").pipe
    assert again.transformer is not None and again.vae is not None and again.text_encoder is not None


def test_loading_stops_its_reader_when_it_returns_and_when_it_fails(tiny_original, tmp_path, readers, monkeypatch):
    monkeypatch.setattr(reading, "CHUNK", 1)  # a byte a read: the reader is still going when the load ends
    loader.load_pipeline(tiny_original, device="cpu")
    broken = shutil.copytree(tiny_original, tmp_path / "broken")
    (broken / "transformer" / "config.json").write_text("not json")
    with pytest.raises(PackageError, match="config.json"):
        loader.load_pipeline(broken, device="cpu")
    assert len(readers) == 2
    for job in readers:
        assert job.stopped and not job.running
    assert readers[1].bytes_read < readers[1].total_bytes
