"""Issue 12: ZeroGPU (duration, validation before the GPU function), several replicas on one host."""

import threading

import pytest

from ernie_nf4.request import GenerationRequest
from ernie_nf4.webapp.zerogpu import MAX_SECONDS, gpu_generate, gpu_seconds

pytest.importorskip("gradio")
from ernie_nf4.webapp.outputs import OutputStore  # noqa: E402
from ernie_nf4.webapp.ui import Handlers  # noqa: E402

from .apphelpers import FakeService  # noqa: E402


def request(**values):
    base = dict(width=1024, height=1024, num_inference_steps=50, guidance_scale=4.0, seed=1, use_pe=True)
    return GenerationRequest("a cat", **{**base, **values})


def test_gpu_seconds_grow_with_steps_size_images_and_pe():
    base = gpu_seconds(request())
    assert 30 <= base <= 60  # measured 25 s on an H100 for this request
    assert gpu_seconds(request(num_inference_steps=100)) > base
    assert gpu_seconds(request(width=2048, height=2048)) > base
    assert gpu_seconds(request(num_images=2)) > base
    assert gpu_seconds(request(use_pe=False)) == base - 12
    assert gpu_seconds(request(num_inference_steps=1, width=64, height=64, use_pe=False)) >= 10
    assert gpu_seconds(request(num_inference_steps=200, num_images=4, width=2048, height=2048)) == MAX_SECONDS


class CountingGPU:
    """The real ``spaces.GPU`` (a pass-through off ZeroGPU) with a count of entries into what it decorates."""

    def __init__(self):
        import spaces

        self.entries, self.durations, self.spaces_gpu = 0, [], spaces.GPU

    def __call__(self, duration):
        def wrap(fn):
            def counted(request):
                self.entries += 1
                self.durations.append(duration(request))
                return fn(request)

            return self.spaces_gpu(duration=duration)(counted)

        return wrap


def test_validation_and_errors_happen_before_the_gpu_function(tmp_path):
    import gradio as gr

    pytest.importorskip("spaces")
    gpu = CountingGPU()
    handlers = Handlers(FakeService(), OutputStore(tmp_path), gpu_decorator=gpu)
    good = ["a cat", "", 64, 64, 2, 4.0, 7, False, False, 1]
    for bad in ({0: ""}, {2: 10**9}, {4: 0}, {9: 9}, {5: float("nan")}):
        form = [bad.get(i, v) for i, v in enumerate(good)]
        with pytest.raises(gr.Error):
            handlers.generate(*form, request=None, progress=lambda *a, **k: None)
    assert gpu.entries == 0
    gallery, seed, _, _ = handlers.generate(*good, request=None, progress=lambda *a, **k: None)
    assert gpu.entries == 1 and seed == 7 and len(gallery) == 1
    assert gpu.durations == [gpu_seconds(handlers.service.requests[-1])]


def test_off_zerogpu_generate_is_the_service_itself():
    service = FakeService()
    assert gpu_generate(service) == service.generate


def test_on_zerogpu_compile_is_turned_off_with_one_line(capsys):
    from ernie_nf4.service import ServiceConfig
    from ernie_nf4.webapp.zerogpu import adjust_config, on_zerogpu

    assert on_zerogpu({"SPACES_ZERO_GPU": "true"}) and not on_zerogpu({})
    config = adjust_config(ServiceConfig(tiny=True, compile=True))
    assert config.compile is False
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def test_parse_gpus():
    from ernie_nf4.errors import InvalidArgument
    from ernie_nf4.replicas import parse_gpus

    assert parse_gpus("all", device_count=2) == ["cuda:0", "cuda:1"]
    assert parse_gpus("1,0", device_count=2) == ["cuda:1", "cuda:0"]
    assert parse_gpus(None, device_count=2) == []
    for bad in ("0,0", "2", "x", "all"):
        with pytest.raises(InvalidArgument, match="--gpus"):
            parse_gpus(bad, device_count=0 if bad == "all" else 2)


@pytest.mark.slow
def test_two_cpu_replicas_serve_concurrent_requests_with_identical_images(tmp_path, nf4_everywhere):
    import numpy as np

    from ernie_nf4.replicas import ReplicaService
    from ernie_nf4.service import ImageService, ServiceConfig

    config = ServiceConfig(model_dir=str(tmp_path / "tiny"), tiny=True, device="cpu", max_pe_tokens=8)
    replicas = ReplicaService(config, ["cpu", "cpu"])
    replicas.load()
    requests = [request(width=64, height=64, num_inference_steps=30, use_pe=False, seed=s) for s in (1, 2, 3, 4)]
    results, barrier = {}, threading.Barrier(4)

    def run(r):
        barrier.wait()
        results[r.seed] = replicas.generate(r)

    threads = [threading.Thread(target=run, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(set(replicas.served_by)) == [0, 1]  # both replicas worked
    single = ImageService(config)
    for r in requests:
        alone = np.asarray(single.generate(r).images[0])
        assert np.array_equal(np.asarray(results[r.seed].images[0]), alone)
    stats = replicas.stats()
    assert len(stats.replicas) == 2 and all(live.loaded for live in stats.replicas)
    assert stats.to_dict()["replicas"][1]["device"] == "cpu"


@pytest.mark.slow
def test_the_app_runs_one_job_per_replica(tmp_path, nf4_everywhere):
    from ernie_nf4.replicas import ReplicaService
    from ernie_nf4.service import ServiceConfig
    from ernie_nf4.webapp.ui import build_demo

    config = ServiceConfig(model_dir=str(tmp_path / "tiny"), tiny=True, device="cpu")
    demo = build_demo(ReplicaService(config, ["cpu", "cpu"]), output_dir=OutputStore(tmp_path / "out"))
    generate = next(fn for fn in demo.fns.values() if fn.api_name == "generate")
    assert generate.concurrency_limit == 2
