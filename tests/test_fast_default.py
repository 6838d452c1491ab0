"""Fast by default: compiling is the default on a CUDA GPU, in the background while requests run eagerly, switched on
between requests; the app loads as it starts. No gradio needed (these tests run where it is not installed): the app's
start-up is driven through ``webapp.cli``'s functions, as ``python app.py`` runs them."""

import numpy as np
import pytest

from ernie_nf4.request import GenerationRequest
from ernie_nf4.runtime.fast_transformer import CompileState
from ernie_nf4.serving.service import ImageService, ServiceConfig, preload
from ernie_nf4.webapp.cli import SettingsError, build_parser, config_from_args, parse_args, start_loading
from ernie_nf4.webapp.zerogpu import adjust_config

from .support.fixtures import DEVICE, HAS_CUDA


def config_of(argv, environ):
    return config_from_args(parse_args(argv, environ))


def test_compile_is_automatic_unless_a_flag_or_variable_says_otherwise():
    assert ServiceConfig().compile is None  # the library's service: the same automatic choice
    assert config_of([], {}).compile is None
    assert config_of(["--compile"], {}).compile is True
    assert config_of(["--no-compile"], {}).compile is False
    assert config_of([], {"ERNIE_NF4_COMPILE": "0"}).compile is False
    assert config_of([], {"ERNIE_NF4_COMPILE": "on"}).compile is True
    assert config_of([], {"ERNIE_NF4_COMPILE": ""}).compile is None
    assert config_of(["--no-compile"], {"ERNIE_NF4_COMPILE": "1"}).compile is False  # the command line wins
    with pytest.raises(SettingsError, match=r"ERNIE_NF4_COMPILE='maybe': use one of"):
        build_parser({"ERNIE_NF4_COMPILE": "maybe"})
    assert parse_args([], {}).preload is None
    assert parse_args(["--no-preload"], {"ERNIE_NF4_PRELOAD": "yes"}).preload is False
    assert parse_args([], {"ERNIE_NF4_PRELOAD": "no"}).preload is False


def test_zerogpu_keeps_compile_off_and_says_so_only_when_asked(capsys):
    assert adjust_config(ServiceConfig(tiny=True)).compile is False
    assert capsys.readouterr().out == ""
    assert adjust_config(ServiceConfig(tiny=True, compile=True)).compile is False
    assert "--compile turned off" in capsys.readouterr().out


def package_config(tiny_package, **kwargs) -> ServiceConfig:
    return ServiceConfig(model_dir=str(tiny_package), repo_id=None, source=None, device=DEVICE, **kwargs)


def test_compile_status_before_and_after_loading(tiny_package, nf4_everywhere):
    off = ImageService(package_config(tiny_package, compile=False))
    assert off.compile_status == "eager: compile off (--no-compile)"
    service = ImageService(package_config(tiny_package))
    assert service.compile_status == "decided when the model loads"
    service.load()
    if HAS_CUDA:  # the default on a GPU: compiling in the background
        assert service.compiler is not None
        assert service.compile_status in ("eager: compiling in the background", "compiled (from the next run)")
        assert service.compiler.wait(timeout=600) is CompileState.READY, service.compiler.error
    else:
        assert service.compiler is None
        assert service.compile_status == "eager: compiling is the default on a CUDA GPU only (--compile turns it on)"
    live = service.stats().live
    assert live.compiled is False and live.compile_status == service.compile_status


def test_preload_loads_in_the_background_and_a_request_meanwhile_shares_that_load(tmp_path):
    # --tiny: the package is built first (seconds), so the request below comes while the preload is under way
    service = ImageService(ServiceConfig(model_dir=str(tmp_path / "pkg"), tiny=True, device=DEVICE, compile=False))
    thread = preload(service)
    events = []
    generator = service.load(on_progress=events.append)  # waits, passing the preload's progress on
    thread.join(timeout=300)
    assert not thread.is_alive() and service.load() is generator
    assert {"build", "load"} & {event.stage for event in events}


def test_the_app_preloads_on_a_gpu_or_when_asked(tiny_package, nf4_everywhere):
    service = ImageService(package_config(tiny_package, compile=False))
    assert start_loading(service, parse_args(["--device", "cpu"], {})) is None  # automatic: on a GPU only
    assert start_loading(service, parse_args(["--no-preload"], {})) is None
    thread = start_loading(service, parse_args(["--preload"], {}))
    assert thread is not None
    thread.join(timeout=300)
    assert service.loaded
    if not HAS_CUDA:  # nothing to load on: the first request says so instead
        without_gpu = ImageService(ServiceConfig(model_dir=str(tiny_package)))
        assert start_loading(without_gpu, parse_args(["--preload"], {})) is None


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(image) for image in result.images]


@pytest.mark.slow
def test_the_service_compiles_in_the_background_while_requests_run_eagerly_then_switches(tiny_package, nf4_everywhere):
    # On a CUDA GPU this is the default; on the CPU --compile asks for it.
    service = ImageService(package_config(tiny_package, compile=None if HAS_CUDA else True))
    events = []
    generator = service.load(on_progress=events.append)
    compiler = service.compiler
    assert compiler is not None and any(event.stage == "compile" for event in events)
    request = GenerationRequest("a red fox", width=64, height=64, num_inference_steps=3, seed=7, use_pe=HAS_CUDA)
    runs = []  # (compiled?, pixels) per request

    def run(req=request):
        result = service.generate(req)
        runs.append((service.last_run_compiled, pixels(result)))
        return result

    run()  # right after loading: compiling takes seconds, so this request runs eagerly
    assert runs[0][0] is False
    while compiler.state is CompileState.COMPILING:  # requests keep being served, eagerly
        run()
    assert compiler.wait(timeout=600) in (CompileState.READY, CompileState.ACTIVE), compiler.error
    run()
    run()
    assert runs[-1][0] and runs[-2][0]  # compiled from the first request after it was ready
    live = service.stats().live
    assert live.compiled and live.compile_status == "compiled"
    eager = [p for compiled, p in runs if not compiled]
    compiled = [p for compiled, p in runs if compiled]
    assert all(np.array_equal(p[0], eager[0][0]) for p in eager)  # the same seed gives the same image on a path
    assert all(np.array_equal(p[0], compiled[0][0]) for p in compiled)
    difference = np.abs(eager[0][0].astype(int) - compiled[0][0].astype(int))
    assert difference.mean() < 4  # the paths round bf16 differently: pixels differ slightly, if at all
    for other in (  # another size and two images; guidance 1 (one sample per call): compiled, no block eager
        GenerationRequest("a red fox", width=96, height=64, num_inference_steps=2, seed=8, num_images=2, use_pe=False),
        GenerationRequest("a red fox", width=64, height=80, num_inference_steps=2, guidance_scale=1.0, use_pe=False),
    ):
        run(other)
        assert runs[-1][0]
    assert compiler.fallback_calls == 0
    if HAS_CUDA:  # the PE's graph was captured at load, before the compile thread used the GPU
        assert generator.pe_decoder is not None and generator.pe_decoder.broken is None


@pytest.mark.slow
def test_replicas_start_compiling_only_once_every_replica_has_loaded(tiny_package, nf4_everywhere):
    # A load sets process-wide torch state (the default dtype) that a compile running in another thread trips on.
    from ernie_nf4.serving.replicas import ReplicaService

    replicas = ReplicaService(package_config(tiny_package, compile=True), [DEVICE, DEVICE])
    first, second = replicas.replicas
    first.load()
    assert first.compiler is not None and first.compiler.state is CompileState.PENDING  # waits for the others
    replicas.load()
    for replica in (first, second):
        assert replica.compiler.state is not CompileState.PENDING
        assert replica.compiler.wait(timeout=600) is CompileState.READY, replica.compiler.error
    result = replicas.generate(GenerationRequest("a red fox", width=64, height=64, num_inference_steps=2, seed=3))
    assert result.images and replicas.replicas[replicas.served_by[-1]].last_run_compiled


def test_the_compile_decision_is_a_value_made_from_the_setting_and_the_loaded_pipeline():
    from types import SimpleNamespace

    from ernie_nf4.runtime.memory_modes import MemoryMode
    from ernie_nf4.serving.compiling import CompileWhen, decide_compile

    def loaded(device="cuda:0", mode=MemoryMode.ALL_ON_GPU, fast=True, residency=None, has_pe=True):
        return SimpleNamespace(device=device, memory_mode=mode, fast=fast, residency=residency, has_pe=has_pe)

    background = decide_compile(None, loaded())
    assert background.when is CompileWhen.BACKGROUND and background.capture_pe_graph
    assert not decide_compile(None, loaded(has_pe=False)).capture_pe_graph
    now = decide_compile(True, loaded(mode=MemoryMode.LOW_VRAM, residency=object()))
    assert now.when is CompileWhen.NOW and not now.capture_pe_graph
    assert decide_compile(True, loaded(device="cpu")).when is CompileWhen.BACKGROUND
    assert decide_compile(False, loaded()).reason == "eager: compile off (--no-compile)"
    assert decide_compile(None, loaded(fast=False)).reason == "eager: this diffusers has no fast path to compile"
    assert decide_compile(None, loaded(device="cpu")).reason == (
        "eager: compiling is the default on a CUDA GPU only (--compile turns it on)"
    )
    # low-vram compiles by default too, at load: its transformer is on the GPU only in its turn
    low_vram = decide_compile(None, loaded(mode=MemoryMode.LOW_VRAM, residency=object()))
    assert low_vram.when is CompileWhen.NOW and not low_vram.capture_pe_graph
    assert decide_compile(False, loaded(mode=MemoryMode.LOW_VRAM, residency=object())).when is CompileWhen.EAGER
