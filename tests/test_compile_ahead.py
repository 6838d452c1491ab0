"""A first compile in a helper process (``runtime.compile_ahead``): the stand-in it loads is the package's own first
block, the app's compile afterwards finds every graph in Inductor's cache, a helper that fails leaves the app
compiling as before, and on a CUDA GPU the app starts one for a first compile only."""

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from diffusers import ErnieImageTransformer2DModel
from safetensors import safe_open
from torch._dynamo.utils import counters

from ernie_nf4.request import GenerationRequest
from ernie_nf4.runtime import compile_ahead
from ernie_nf4.runtime.fast_transformer import BlockCompiler, CompileState, enable_fast_path
from ernie_nf4.serving.compiling import REQUEST_HEADROOM_GIB, helper_refused
from ernie_nf4.serving.service import ImageService, ServiceConfig

from .support.fixtures import DEVICE, HAS_CUDA, model_tensors

# The helper as the app runs it on a GPU; on the CPU the same helper with diffusers' GPU-only check lifted
HELPER = compile_ahead.COMMAND if HAS_CUDA else (sys.executable, "-m", "tests.support.compile_ahead_cpu")

# The app's compile in a process of its own (clean counters, nothing in memory): how many graphs Inductor found
# in its cache and how many it compiled.
APP_COMPILE = """
import json, sys
from unittest import mock
import torch
from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer
from torch._dynamo.utils import counters
patch = mock.patch.object(BnB4BitDiffusersQuantizer, "validate_environment", lambda self, *a, **k: None)
if not torch.cuda.is_available():
    patch.start()
from ernie_nf4.runtime.fast_transformer import BlockCompiler
from ernie_nf4.runtime.loader import load_pipeline
loaded = load_pipeline(sys.argv[1], device=sys.argv[2])
compiler = BlockCompiler(loaded.pipe.transformer, sys.argv[3])
print(json.dumps({"ready": compiler.compile(), "inductor": dict(counters["inductor"])}))
"""


def run_helper(package, cache_dir, *extra, device=DEVICE) -> subprocess.CompletedProcess:
    command = [*HELPER, str(package), "--device", device, "--cache-dir", str(cache_dir), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


@pytest.mark.nf4
def test_the_stand_in_is_the_package_s_first_block_and_what_is_outside_the_blocks(
    tiny_package, tmp_path, nf4_everywhere
):
    folder = compile_ahead.write_stand_in(tiny_package, tmp_path / "transformer")
    with safe_open(folder / "diffusion_pytorch_model.safetensors", "pt") as stand_in:
        kept = set(stand_in.keys())
    with safe_open(tiny_package / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as package:
        every = set(package.keys())
    assert kept == {k for k in every if not k.startswith("layers.") or k.startswith("layers.0.")}
    assert any(k.startswith("layers.0.") and k.endswith("quant_state.bitsandbytes__nf4") for k in kept)
    assert json.loads((folder / "config.json").read_text())["num_layers"] == 1

    load = dict(dtype=torch.bfloat16, device_map={"": DEVICE})
    one = ErnieImageTransformer2DModel.from_pretrained(folder, **load)
    full = ErnieImageTransformer2DModel.from_pretrained(tiny_package / "transformer", **load)
    assert len(one.layers) == 1 and len(full.layers) > 1
    assert type(one.layers[0].mlp.gate_proj).__name__ == "Linear4bit"
    ours, theirs = list(model_tensors(one.layers[0])), list(model_tensors(full.layers[0]))
    assert len(ours) == len(theirs) > 10
    for index, (tensor, original) in enumerate(zip(ours, theirs, strict=True)):
        assert tensor.dtype == original.dtype and torch.equal(tensor, original), index


@pytest.mark.slow
@pytest.mark.nf4
@pytest.mark.parametrize("written_by", ["quantize.py", "plain library calls"])
def test_after_the_helper_the_app_s_compile_finds_every_graph_in_the_cache(
    written_by, tiny_package, tiny_original, tmp_path, nf4_everywhere
):
    if written_by == "plain library calls":  # another tool's package: its own metadata, its own save_pretrained
        from .test_foreign_package import write_foreign_package

        tiny_package = write_foreign_package(tiny_original, tmp_path / "foreign", transformer_nf4=True)
    cache = tmp_path / "inductor"
    done = run_helper(tiny_package, cache, "--result", str(tmp_path / "result.json"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "compiled"

    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    app = subprocess.run(
        [sys.executable, "-c", APP_COMPILE, str(tiny_package), DEVICE, str(cache)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert app.returncode == 0, app.stderr[-2000:]
    compiled = json.loads(app.stdout.strip().splitlines()[-1])
    assert compiled["ready"]
    assert compiled["inductor"].get("fxgraph_cache_hit", 0) >= 1
    assert compiled["inductor"].get("fxgraph_cache_miss", 0) == 0  # nothing compiled afresh

    again = run_helper(tiny_package, cache, "--result", str(tmp_path / "again.json"))  # a later start
    assert again.returncode == 0 and json.loads((tmp_path / "again.json").read_text())["status"] == "cached"


@pytest.mark.slow
@pytest.mark.nf4
def test_a_helper_that_fails_or_hangs_leaves_the_compile_to_this_process(
    tiny_package, tmp_path, monkeypatch, nf4_everywhere
):
    monkeypatch.setattr(compile_ahead, "COMMAND", HELPER)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    failed = compile_ahead.start(broken, DEVICE, "bf16", tmp_path / "inductor")
    assert failed.wait() is False and not failed.succeeded
    # its last lines say what went wrong, as the command says it to a person
    assert failed.error.startswith("exit status 2") and f"error: package {broken.resolve()}" in failed.error
    assert "pass an ERNIE-Image pipeline folder" in failed.error

    model = ErnieImageTransformer2DModel.from_pretrained(
        tiny_package / "transformer", dtype=torch.bfloat16, device_map={"": DEVICE}
    )
    enable_fast_path(model)
    compiler = BlockCompiler(model)
    compiler.ahead = failed
    assert compiler.expected_seconds is None  # not waited for as a quick compile

    monkeypatch.setattr(compile_ahead, "COMMAND", (sys.executable, "-c", "import time; time.sleep(600)"))
    hanging = compile_ahead.start(tmp_path / "other", DEVICE, "bf16", tmp_path / "inductor")
    hanging.timeout = 2.0
    compiler.ahead = hanging
    started = time.monotonic()
    assert compiler.compile() and compiler.state is CompileState.READY
    assert not hanging.running and hanging.error.startswith("exit status -9")  # stopped after its time
    assert time.monotonic() - started < 300


def test_a_helper_ends_when_the_app_that_started_it_is_gone(tiny_package):
    app = subprocess.run(
        [sys.executable, "-c", STARTS_A_HELPER_AND_EXITS, str(tiny_package), DEVICE, json.dumps(HELPER)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    helper = int(app.stdout.strip())
    deadline = time.monotonic() + 10  # importing, loading and compiling its stand-in takes longer
    while time.monotonic() < deadline and _alive(helper):
        time.sleep(0.2)
    assert not _alive(helper)


# An app that starts the helper and exits at once, printing the helper's process id.
STARTS_A_HELPER_AND_EXITS = """
import json, os, subprocess, sys
command = [*json.loads(sys.argv[3]), sys.argv[1], "--device", sys.argv[2], "--parent", str(os.getpid())]
print(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid, flush=True)
os._exit(0)
"""


def _alive(pid: int) -> bool:
    try:
        state = [line for line in open(f"/proc/{pid}/status") if line.startswith("State:")][0]
    except (OSError, IndexError):
        return False
    return "zombie" not in state


def test_inductor_s_own_default_cache_folder_is_replaced_by_the_app_s_a_chosen_one_is_kept(tmp_path, monkeypatch):
    from ernie_nf4.compat import inductor_default_cache_dir
    from ernie_nf4.runtime.fast_transformer import use_compile_cache

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", inductor_default_cache_dir())  # as importing bitsandbytes sets it
    assert use_compile_cache(tmp_path / "app") == str(tmp_path / "app") and (tmp_path / "app").is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice
    assert use_compile_cache(tmp_path / "app") == str(tmp_path / "mine")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert use_compile_cache(tmp_path / "app") == str(tmp_path / "app")


def test_a_helper_only_for_a_first_compile_on_a_gpu_without_loras_with_memory_to_spare():
    gpu, cpu = SimpleNamespace(device="cuda:0", loras=None), SimpleNamespace(device="cpu", loras=None)
    room = compile_ahead.AHEAD_GIB + REQUEST_HEADROOM_GIB
    assert helper_refused(gpu, False, free_gib=room, spare_gib=0.0) is None
    assert helper_refused(gpu, False, free_gib=compile_ahead.AHEAD_GIB, spare_gib=REQUEST_HEADROOM_GIB) is None
    assert "not on a CUDA GPU" in helper_refused(cpu, False, free_gib=100.0, spare_gib=0.0)
    assert "before" in helper_refused(gpu, True, free_gib=100.0, spare_gib=0.0)
    assert "LoRAs" in helper_refused(SimpleNamespace(device="cuda:0", loras=object()), False, 100.0, 0.0)
    # the helper takes free memory; what this process holds unused serves only its own requests
    assert "too little" in helper_refused(gpu, False, free_gib=compile_ahead.AHEAD_GIB - 0.1, spare_gib=50.0)
    assert "too little" in helper_refused(gpu, False, free_gib=room - 0.1, spare_gib=0.0)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.nf4
def test_on_a_fresh_machine_the_helper_compiles_while_requests_run_and_the_app_compiles_from_its_cache(
    tiny_package, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing compiled here before
    service = ImageService(ServiceConfig(model_dir=str(tiny_package), repo_id=None, source=None, device=DEVICE))
    request = GenerationRequest("a red fox", width=64, height=64, num_inference_steps=2, seed=5, use_pe=False)
    before = dict(counters["inductor"])
    service.load()
    helper = service.compiler.ahead
    try:
        assert helper is not None and helper.running  # started by the load, for a first compile
        first = service.generate(request)  # meanwhile: eagerly, the compile thread waiting for the helper
        assert service.last_run_compiled is False and helper.running  # the request did not wait for the helper
        assert service.compiler.wait(timeout=600) is CompileState.READY, service.compiler.error
    finally:
        if helper is not None:
            helper.stop()
    assert helper.succeeded and helper.result["status"] == "compiled"
    made = {k: counters["inductor"].get(k, 0) - before.get(k, 0) for k in ("fxgraph_cache_hit", "fxgraph_cache_miss")}
    assert made["fxgraph_cache_hit"] >= 1 and made["fxgraph_cache_miss"] == 0  # every graph from the helper's cache
    assert service.compiler.cached_seconds is None and service.compiler.expected_seconds is not None

    second = service.generate(request)
    assert service.last_run_compiled is True and service.compiler.fallback_calls == 0
    assert second.images[0].size == first.images[0].size

    later = ImageService(ServiceConfig(model_dir=str(tiny_package), repo_id=None, source=None, device=DEVICE))
    later.load()  # the next start: its compile is on record, no helper
    assert later.compiler.ahead is None and later.compiler.cached_seconds is not None
    assert later.compiler.wait(timeout=600) is CompileState.READY
