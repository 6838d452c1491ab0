"""Ahead-of-time compiled blocks (``runtime.aoti``) on a tiny NF4 transformer, on AOTInductor for real: the NF4
weights dequantized in the graph are bitsandbytes' own bits, one compiled block serves every block with that block's
own tensors and every prompt length, a failure or a block with a LoRA leaves the model eager and says why, and on
ZeroGPU the blocks compile in a forked GPU worker and run in the app's process and in every worker forked after."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from ernie_nf4.compat import NestedAbsmax
from ernie_nf4.runtime import aoti
from ernie_nf4.runtime.fast_transformer import CompileState, dummy_call, enable_fast_path
from ernie_nf4.runtime.nf4_torch import dequantize_nf4

from .support.fixtures import DEVICE
from .test_lora import lora_weights, write_lora
from .test_serving import ForkedGPU

pytestmark = pytest.mark.nf4
PROBE = Path(__file__).resolve().parents[1] / "scripts" / "gpu_aoti_probe.py"
TOLERANCE = 2e-2  # compiled and eager blocks round bf16 differently, no more
CASES = [  # (latent, prompt lengths): a CFG batch, one sample, another CFG batch
    ((8, 6), (5, 11)),
    ((4, 10), (7,)),
    ((6, 6), (3, 2)),
]


def relative_error(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def load_transformer(package):
    from diffusers import ErnieImageTransformer2DModel

    model = ErnieImageTransformer2DModel.from_pretrained(
        package / "transformer", dtype=torch.bfloat16, device_map={"": DEVICE}
    )
    enable_fast_path(model)
    return model


@torch.no_grad()
def outputs(model) -> list[torch.Tensor]:
    return [
        model(**dummy_call(model, latent, lengths, seed=i), return_dict=False)[0]
        for i, (latent, lengths) in enumerate(CASES)
    ]


@pytest.fixture(scope="module")
def spaces_aoti():
    """``spaces``' AoTI helpers (``spaces.zero.torch.aoti``) without the package around them, whose CUDA emulation
    needs a CUDA build of torch: their own package is replaced by an empty one for this module."""
    folder = importlib.util.find_spec("spaces.zero").submodule_search_locations[0]
    stub = types.ModuleType("spaces.zero.torch")
    stub.__path__ = [f"{folder}/torch"]
    with pytest.MonkeyPatch.context() as patch:
        if "spaces.zero.torch" not in sys.modules:
            patch.setitem(sys.modules, "spaces.zero.torch", stub)
        from spaces.zero.torch.aoti import aoti_compile

        yield aoti_compile
        patch.delitem(sys.modules, "spaces.zero.torch.aoti", raising=False)


@pytest.fixture(scope="module")
def model(tiny_package, nf4_everywhere):
    return load_transformer(tiny_package)


@pytest.fixture(scope="module")
def probe():
    """``scripts/gpu_aoti_probe.py`` on this device, in child processes: whether AOTInductor's own loader works in
    this torch install at all (on some it crashes the process, whatever model it loads), and a case that fails."""
    command = [sys.executable, str(PROBE), "--devices", DEVICE, "--first", "no_such_module_here"]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def archives(model, spaces_aoti, probe):
    """The block compiled once for this module: its first graph by torch's AOTInductor packaging, its second by
    ``spaces.aoti_compile`` (both paths for the price of one compile); checked against eager as it always is. Not
    where AOTInductor's loader crashes a process whatever it loads: then loading here would end the test run."""
    plain = probe.stdout.strip().splitlines()[:1]
    if plain and re.search(r" exit -\d+: compiled$", plain[0]):  # killed by a signal once compiled: the load
        pytest.skip(f"AOTInductor's loader crashes in this torch install, on a two-layer model: {plain[0]}")
    compilers = iter([aoti.torch_compile, aoti.spaces_compile])
    return aoti.compile_archives(model, compile_fn=lambda program: next(compilers)(program))


def test_nf4_dequantized_in_torch_ops_is_bitsandbytes_own(model):
    import bitsandbytes.functional as bnbf

    layers = [m for block in model.layers for m in block.modules() if type(m).__name__ == "Linear4bit"]
    assert len(layers) == 7 * len(model.layers)
    for layer in layers:  # the package's weights: double quantized
        view = aoti._LinearView(layer, "layer")
        assert view.nested_blocksize is not None
        expected = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        nested = NestedAbsmax(view.nested_absmax, view.nested_code, view.offset, view.nested_blocksize)
        assert torch.equal(dequantize_nf4(view.packed, view.absmax, view.code, view.shape, 64, nested), expected)
    weight = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)  # a partial block
    packed, state = bnbf.quantize_4bit(weight, quant_type="nf4", compress_statistics=False)
    mine = dequantize_nf4(packed, state.absmax, state.code, state.shape, state.blocksize)
    assert torch.equal(mine, bnbf.dequantize_4bit(packed, state))


def test_compiled_blocks_give_eager_outputs_for_every_prompt_pattern(model, archives):
    eager = outputs(model)
    blocks = aoti.apply_archives(model, archives)
    try:
        assert blocks.active and blocks.describe() == "compiled ahead of time (AOTInductor)"
        assert all(isinstance(layer.forward, aoti._BlockForward) for layer in model.layers)
        compiled = outputs(model)
        for got, expected in zip(compiled, eager, strict=True):
            assert got.shape == expected.shape
            assert relative_error(got, expected) <= TOLERANCE
        assert any(not torch.equal(got, expected) for got, expected in zip(compiled, eager, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(outputs(model), compiled, strict=True))  # deterministic
    finally:
        blocks.remove()
    assert not blocks.active and "forward" not in vars(model.layers[0])
    assert all(torch.equal(a, b) for a, b in zip(outputs(model), eager, strict=True))  # eager again, exactly


@torch.no_grad()
def test_each_block_runs_with_its_own_weights_and_the_graphs_hold_none(model, archives):
    compiled = aoti._Compiled(archives)
    forwards = [aoti._BlockForward(block, i, compiled) for i, block in enumerate(model.layers)]
    assert compiled.before.constant_names() == set(forwards[0].before)  # every tensor swapped in, none baked
    assert compiled.after.constant_names() == set(forwards[0].after)
    x, rotary, temb, segments = aoti.block_inputs(model)
    eager = [block(x, rotary, list(temb), segments) for block in model.layers]
    for index, forward in enumerate(forwards):  # in turn, twice: the constants swap back and forth
        for _ in range(2):
            got = forward(x, rotary, temb, segments)
            assert relative_error(got, eager[index]) <= TOLERANCE
            assert relative_error(got, eager[1 - index]) > 10 * TOLERANCE  # another block's weights would show


@pytest.mark.parametrize("broken", ["raises", "garbage"])
def test_a_failed_compile_logs_one_line_and_leaves_the_model_eager(model, broken, caplog):
    def compile_fn(program):
        if broken == "raises":
            raise RuntimeError("no compiler here")
        return b"not a package"

    eager = outputs(model)
    with caplog.at_level(logging.WARNING, logger="ernie_nf4.runtime.aoti"):
        blocks = aoti.compile_blocks_ahead_of_time(model, compile_fn=compile_fn)
    assert blocks.state is CompileState.FAILED and not blocks.activate()
    assert blocks.describe().startswith("eager: ahead-of-time compile failed (")
    if broken == "raises":
        assert "RuntimeError: no compiler here" in blocks.describe()
    assert caplog.text.count("ahead of time failed") == 1
    assert all("forward" not in vars(layer) for layer in model.layers)
    assert all(torch.equal(a, b) for a, b in zip(outputs(model), eager, strict=True))


def test_blocks_with_a_lora_or_without_the_fast_path_are_refused_by_name(tiny_package, nf4_everywhere, tmp_path):
    from diffusers import ErnieImageTransformer2DModel

    from ernie_nf4.runtime.lora import attach_loras
    from ernie_nf4.runtime.lora_files import linear_shapes, read_lora

    def never(program):
        raise AssertionError("nothing is compiled for a model that is refused")

    model = load_transformer(tiny_package)
    config = json.loads((tiny_package / "transformer" / "config.json").read_text())
    path = write_lora(tmp_path / "l.safetensors", lora_weights(config, rank=4, layers=[1]))
    attach_loras(model, [read_lora("l", path, linear_shapes(model))])
    blocks = aoti.compile_blocks_ahead_of_time(model, compile_fn=never)
    assert blocks.state is CompileState.FAILED
    assert "layers.0.self_attention.to_q is a LoraLinear4bit: blocks with LoRAs" in blocks.describe()
    plain = ErnieImageTransformer2DModel.from_pretrained(
        tiny_package / "transformer", dtype=torch.bfloat16, device_map={"": DEVICE}
    )
    with pytest.raises(ValueError, match="transformer must run the fast path"):
        aoti.check_blocks(plain)


@pytest.fixture
def service(tiny_package, nf4_everywhere):
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    service = ImageService(ServiceConfig(model_dir=str(tiny_package), device="cpu", compile=False, max_pe_tokens=8))
    service.load()
    return service


@pytest.fixture
def forked_gpu():
    """``ForkedGPU`` with one CPU thread for torch: a process forked from one whose OpenMP threads ran can hang in
    its first parallel region (a GPU worker's work runs on the GPU, not in OpenMP)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gpu = ForkedGPU()
    yield gpu
    gpu.close()
    torch.set_num_threads(threads)


def test_zerogpu_start_compiles_in_a_gpu_worker_and_every_later_worker_runs_it(service, archives, forked_gpu):
    from ernie_nf4.webapp.zerogpu import compile_ahead_of_time

    model = service.load().loaded.pipe.transformer
    eager = outputs(model)
    compiled = iter([archives.before, archives.after])  # this module's compile, exported again in the worker
    blocks = compile_ahead_of_time(service, forked_gpu, compile_fn=lambda program: next(compiled))
    assert blocks.active, blocks.describe()
    assert forked_gpu.durations == [240]
    assert service.compile_status == "compiled ahead of time (AOTInductor)" and service.live_stats().compiled
    here = outputs(model)
    assert all(relative_error(a, b) <= TOLERANCE for a, b in zip(here, eager, strict=True))
    worker = forked_gpu(duration=lambda: 1)(lambda: outputs(model))  # a later GPU call, forked after applying
    assert all(torch.equal(a, b) for a, b in zip(worker(), here, strict=True))
    blocks.remove()


def test_zerogpu_start_that_fails_in_the_gpu_worker_keeps_the_model_eager_and_says_why(service, forked_gpu, caplog):
    from ernie_nf4.webapp.zerogpu import compile_ahead_of_time

    def compile_fn(program):
        raise RuntimeError("no compiler in this worker")

    model = service.load().loaded.pipe.transformer
    eager = outputs(model)
    with caplog.at_level(logging.WARNING, logger="ernie_nf4.runtime.aoti"):
        blocks = compile_ahead_of_time(service, forked_gpu, compile_fn=compile_fn)
    assert service.compile_status == "eager: ahead-of-time compile failed (RuntimeError: no compiler in this worker)"
    assert not service.live_stats().compiled and not blocks.active
    assert caplog.text.count("ahead of time failed") == 1
    assert all(torch.equal(a, b) for a, b in zip(outputs(model), eager, strict=True))


def test_on_zerogpu_the_app_compiles_ahead_of_time_only_when_asked(monkeypatch, capsys):
    from ernie_nf4.webapp import cli, zerogpu

    asked = []
    monkeypatch.setattr(zerogpu, "preload", lambda service, ahead_of_time=False: asked.append(ahead_of_time))
    monkeypatch.setattr(zerogpu, "use_hf_cache", lambda config: config)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    for argv, expected in (([], False), (["--compile"], True), (["--no-compile"], False)):
        args = cli.parse_args(["--tiny", *argv], {})
        service = cli.build_service(args, cli.config_from_args(args))
        assert asked.pop() is expected and service.config.compile is False  # torch.compile never runs there
    assert capsys.readouterr().out.count("compiled ahead of time instead") == 1


def test_the_probe_says_whether_aotinductor_loads_here_one_process_a_case(probe):
    lines = probe.stdout.strip().splitlines()
    assert len(lines) == 2, probe.stdout + probe.stderr
    assert "after import no_such_module_here" in lines[1] and "exit 1:" in lines[1]  # its failure, one line
    if probe.returncode == 0:  # plain torch loads and runs here
        assert "exit 0: ran: relative error" in lines[0]
    else:  # only the loader's crash, told as the signal's exit status, is this install's and not the probe's fault
        assert probe.returncode == 1 and re.search(r" exit -\d+: compiled$", lines[0]), probe.stdout + probe.stderr
