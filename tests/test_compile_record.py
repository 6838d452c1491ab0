"""A start whose compile this machine made before runs its first image compiled: the record beside Inductor's cache
(``runtime.compile_record``), the service waiting for such a quick compile, and the cases that must not wait."""

import copy
import json
import os
import threading
import time

import pytest

from ernie_nf4.request import GenerationRequest
from ernie_nf4.runtime import compile_record
from ernie_nf4.runtime.fast_transformer import CompileState
from ernie_nf4.serving.compiling import await_quick_compile
from ernie_nf4.serving.service import ImageService, ServiceConfig

from .support.fixtures import DEVICE, HAS_CUDA


def service_of(tiny_package) -> ImageService:
    # The app's default on a CUDA GPU; on the CPU --compile asks for the same background compile.
    config = ServiceConfig(
        model_dir=str(tiny_package), repo_id=None, source=None, device=DEVICE, compile=None if HAS_CUDA else True
    )
    return ImageService(config)


@pytest.mark.slow
@pytest.mark.nf4
def test_a_start_whose_compile_is_cached_waits_for_it_and_runs_its_first_image_compiled(tiny_package, nf4_everywhere):
    request = GenerationRequest("a red fox", width=64, height=64, num_inference_steps=2, seed=5, use_pe=False)
    first = service_of(tiny_package)
    first.load()
    assert first.compiler.cached_seconds is None  # never compiled on this machine: not waited for
    assert first.compiler.wait(timeout=600) is CompileState.READY, first.compiler.error
    cache_dir = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    record = json.loads(compile_record.record_path(first.compiler.transformer, cache_dir).read_text())
    assert record["seconds"] == pytest.approx(first.compiler.seconds, abs=0.01)
    assert record["device"] == ("cuda" if HAS_CUDA else "cpu") and record["torch"]

    second = service_of(tiny_package)  # the next start of the app: the same model, a fresh copy of it
    events = []
    second.generate(request, on_progress=events.append)
    assert second.compiler.cached_seconds == record["seconds"]
    assert second.last_run_compiled is True  # its first image ran compiled from the first step
    assert second.compiler.fallback_calls == 0
    waited = [e for e in events if e.stage == "compile" and "cached" in e.message]
    assert waited and events.index(waited[0]) < next(i for i, e in enumerate(events) if e.stage == "denoising")


@pytest.mark.nf4
def test_the_record_is_per_card_software_shape_and_layer_kind(tiny_generator, tmp_path, monkeypatch):
    from ernie_nf4.runtime.compute import Compute, apply_compute

    monkeypatch.setattr(compile_record, "FOLDER", "records")  # in the cache folder given, as in the app

    transformer = tiny_generator.loaded.pipe.transformer
    path = compile_record.record_path(transformer, tmp_path)
    assert compile_record.last_seconds(transformer, tmp_path) is None
    compile_record.remember(transformer, 12.345, tmp_path)
    assert compile_record.last_seconds(transformer, tmp_path) == 12.35
    with monkeypatch.context() as patched:  # other software: another record
        patched.setattr(compile_record, "_version", lambda package: "0.0-other")
        assert compile_record.record_path(transformer, tmp_path) != path
    with monkeypatch.context() as patched:  # other compiled code: another record
        patched.setattr(compile_record, "_SOURCES", compile_record._SOURCES[:-1])
        assert compile_record.record_path(transformer, tmp_path) != path
    path.write_text("{not json")
    assert compile_record.last_seconds(transformer, tmp_path) is None  # unreadable: a first compile
    (tmp_path / "file").write_text("")
    compile_record.remember(transformer, 1.0, tmp_path / "file")  # cannot be written: a log line, no error
    other = copy.deepcopy(transformer)
    assert compile_record.record_path(other, tmp_path) == path  # the same model again: the same record
    apply_compute(other, Compute.INT8)  # another kind of layer compiles to other kernels
    assert compile_record.record_path(other, tmp_path) != path


@pytest.mark.nf4
def test_reading_the_record_leaves_the_layout_bitsandbytes_packs_into_on_the_cpu(tiny_generator, tmp_path):
    """On CPUs with AVX512-BF16, bitsandbytes packs each NF4 weight into a layout of its own on first use, and a
    ``state_dict`` of the layer packs it back: the record's key, read after a compile, must leave that layout (the
    compiled block is guarded on the weights' shapes) and be the key it was before the packing."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    model = copy.deepcopy(tiny_generator.loaded.pipe.transformer)
    before = compile_record.record_path(model, tmp_path)
    linears = [m for m in model.layers[0].modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears
    for layer in linears:  # as bitsandbytes' own first CPU forward does
        layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(
            layer.weight.data, layer.weight.quant_state
        )
    packed = [(layer.weight.data.shape, layer.weight.data.data_ptr()) for layer in linears]
    assert compile_record.record_path(model, tmp_path) == before
    assert [(layer.weight.data.shape, layer.weight.data.data_ptr()) for layer in linears] == packed


class SlowCompile:
    """A compile in flight, as ``await_quick_compile`` sees one: its state, its last time here, and ``wait``."""

    def __init__(self, expected_seconds, finish_after: float):
        self.state, self.expected_seconds = CompileState.COMPILING, expected_seconds
        self._done = threading.Timer(finish_after, lambda: setattr(self, "state", CompileState.READY))
        self._done.start()

    @property
    def compiling(self):
        return self.state is CompileState.COMPILING

    def wait(self, timeout=None):
        time.sleep(timeout)
        return self.state


class DeadCompile(SlowCompile):
    """A compile whose thread died without changing its state."""

    compiling = False


def test_only_a_compile_made_here_before_is_waited_for_and_stop_ends_the_wait():
    events = []
    quick = SlowCompile(expected_seconds=0.2, finish_after=0.3)
    assert await_quick_compile(quick, events.append) and quick.state is CompileState.READY
    assert [e.stage for e in events] == ["compile"] and "about 0 s" in events[0].message
    first = SlowCompile(expected_seconds=None, finish_after=0.3)
    assert not await_quick_compile(first) and first.state is CompileState.COMPILING  # a first compile: no wait
    stuck = SlowCompile(expected_seconds=30.0, finish_after=60.0)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    start = time.monotonic()
    assert await_quick_compile(stuck, cancel=stop)
    assert time.monotonic() - start < 5 and stuck.state is CompileState.COMPILING
    stuck._done.cancel()
    assert not await_quick_compile(None)
    dead = DeadCompile(expected_seconds=30.0, finish_after=60.0)
    dead._done.cancel()
    start = time.monotonic()
    assert await_quick_compile(dead) and time.monotonic() - start < 1  # no waiting on it


@pytest.mark.nf4
def test_replicas_writing_the_same_record_at_once_leave_one_whole_record(tiny_generator, tmp_path, caplog):
    transformer = tiny_generator.loaded.pipe.transformer
    start = threading.Barrier(8)

    def write(seconds: float) -> None:
        start.wait()
        for _ in range(25):
            compile_record.remember(transformer, seconds, tmp_path)

    threads = [threading.Thread(target=write, args=(float(n),)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert "could not write the compile record" not in caplog.text  # no writer lost its record
    assert compile_record.last_seconds(transformer, tmp_path) in {float(n) for n in range(8)}
    record_folder = compile_record.record_path(transformer, tmp_path).parent
    assert [p.name for p in record_folder.iterdir()] == [compile_record.record_path(transformer, tmp_path).name]
