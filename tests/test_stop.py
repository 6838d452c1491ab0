"""One stop signal per run, heard by every stage: the prompt enhancer (every few tokens, on each decoding path), the
text encoder, denoising. A stopped run raises ``GenerationCancelled`` and keeps nothing. Real tiny NF4 pipeline."""

import threading
import time

import pytest
import torch

from ernie_nf4.errors import GenerationCancelled
from ernie_nf4.request import GenerationRequest
from ernie_nf4.runtime.generation import Generator
from ernie_nf4.runtime.prompt import pe_inputs, prompt_key, sample_with_generate

from .support.fixtures import DEVICE

pytestmark = pytest.mark.nf4
SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}
CAP = 2048  # the tiny app's cap (the PE tokenizer's model_max_length): its random PE writes to the cap, seconds


@pytest.fixture
def tiny_service(tiny_package, nf4_everywhere):
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    service = ImageService(ServiceConfig(model_dir=str(tiny_package), tiny=True, device=DEVICE))
    service.load()
    assert service._generator.pe_cap == CAP
    return service


def test_stop_while_the_pe_writes_ends_the_run_within_a_second(tiny_service):
    cancel, writing, outcome, events = threading.Event(), threading.Event(), {}, []

    def on_progress(event):
        events.append(event)
        if event.stage == "pe" and event.done:
            writing.set()

    def run():
        try:
            outcome["result"] = tiny_service.generate(GenerationRequest("a cat", seed=3, **SMALL), on_progress, cancel)
        except BaseException as err:  # noqa: BLE001 - the test looks at what came out
            outcome["error"] = err
        outcome["ended"] = time.monotonic()

    worker = threading.Thread(target=run)
    worker.start()
    assert writing.wait(60), "the prompt enhancer never reported tokens written"
    stopped = time.monotonic()
    cancel.set()
    worker.join(60)
    assert not worker.is_alive()
    assert isinstance(outcome.get("error"), GenerationCancelled), outcome
    assert outcome["ended"] - stopped < 1.0
    written = [event.done for event in events if event.stage == "pe" and event.done]
    assert written[-1] < CAP / 4  # stopped early in the PE's run, not at its cap
    assert not any(event.stage == "denoising" for event in events)
    assert tiny_service.last_result is None  # nothing kept


def test_stop_while_the_run_waits_for_the_model_to_load_ends_the_wait_and_the_load_goes_on(
    tiny_package, nf4_everywhere
):
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    service = ImageService(ServiceConfig(model_dir=str(tiny_package), tiny=True, device=DEVICE))
    request, cancel, outcome = GenerationRequest("a fox", **SMALL, use_pe=False), threading.Event(), []

    def run():
        try:
            outcome.append(service.generate(request, cancel=cancel))
        except GenerationCancelled as stopped:
            outcome.append(stopped)

    with service._lock:  # a load under way in another thread (the app's preload) holds it for its whole length
        waiting = threading.Thread(target=run)
        waiting.start()
        time.sleep(0.5)
        assert not outcome  # the run waits for the load
        cancel.set()
        waiting.join(timeout=5)
        assert len(outcome) == 1 and isinstance(outcome[0], GenerationCancelled)  # its wait ended at the stop
    assert service.generate(request).images  # the next run loads and runs


def test_a_stopped_run_leaves_the_prompt_cache_as_it_was(tiny_generator):
    generator = Generator(tiny_generator.loaded, max_pe_tokens=CAP, prompt_cache_size=4)
    request = GenerationRequest("a dog", seed=11, **SMALL)
    cancel, written = threading.Event(), []

    def on_pe_tokens(count, cap):
        written.append((count, cap))
        if count >= 16:
            cancel.set()

    with pytest.raises(GenerationCancelled):
        generator.generate(request, cancel=cancel, on_pe_tokens=on_pe_tokens)
    assert written[-1][0] < 32  # stopped within a chunk of the signal and {cap for _, cap in written} == {CAP}
    assert generator.prompt_cache.get(prompt_key(request, True)) is None
    generator.prompt_stage.max_pe_tokens = 8  # the rerun need not write 2048 tokens
    rerun = generator.generate(request)
    assert not rerun.prompt_cached and rerun.enhancement.tokens == 8
    assert generator.generate(request).prompt_cached  # an ended run is cached, as before


def test_a_stop_between_the_pe_and_the_text_encoder_stops_there(tiny_generator):
    generator = Generator(tiny_generator.loaded, max_pe_tokens=8, prompt_cache_size=4)
    request = GenerationRequest("a boat", seed=5, **SMALL)
    cancel, stages, steps = threading.Event(), [], []

    def on_stage(stage, _seconds):
        stages.append(stage)
        if stage == "pe":
            cancel.set()

    with pytest.raises(GenerationCancelled, match="text encoder"):
        generator.generate(request, on_step=lambda d, t: steps.append(d), on_stage=on_stage, cancel=cancel)
    assert stages == ["pe"] and steps == []
    assert generator.prompt_cache.get(prompt_key(request, True)) is None


def test_a_signal_set_before_the_run_starts_stops_it_before_the_pe(tiny_generator):
    cancel, written = threading.Event(), []
    cancel.set()
    with pytest.raises(GenerationCancelled, match="before it started"):
        tiny_generator.generate(GenerationRequest("a cat", **SMALL), cancel=cancel, on_pe_tokens=written.append)
    assert written == []


def _stop_after(count: int):
    cancel, written = threading.Event(), []

    def on_tokens(done, cap):
        written.append(done)
        if done >= count:
            cancel.set()

    return cancel, written, on_tokens


def test_transformers_generate_paths_stop_too(tiny_generator):
    """The stock path (transformers' ``generate``, the benchmark's baselines) and ``PEDecoder``'s fallback to it."""
    from ernie_nf4.prompt_enhancer.decoding import PEDecoder
    from ernie_nf4.prompt_enhancer.watch import TokenWatch

    pipe = tiny_generator.pipe
    inputs = pe_inputs(pipe.pe_tokenizer, "a cat", 64, 64)
    cancel, written, on_tokens = _stop_after(16)
    with pytest.raises(GenerationCancelled):
        sample_with_generate(pipe, inputs, CAP, 1, torch.device(DEVICE), TokenWatch(CAP, cancel, on_tokens))
    assert written == [8, 16]

    decoder = PEDecoder(pipe.pe)
    decoder.broken = "forced for this test"  # as after a failed graph capture: transformers' generate
    cancel, written, on_tokens = _stop_after(8)
    with pytest.raises(GenerationCancelled):
        decoder.generate(inputs["input_ids"], CAP, 1, watch=TokenWatch(CAP, cancel, on_tokens))
    assert written == [8]
    ids, _ = decoder.generate(inputs["input_ids"], 12, 1, watch=TokenWatch(12, None, lambda d, c: written.append(d)))
    assert len(ids) == 12 and written == [8, 8, 12]  # no signal: the end is reported once


def test_the_eager_decoder_checks_every_token_and_reports_every_eight(tiny_generator):
    from ernie_nf4.prompt_enhancer.decoding import PEDecoder
    from ernie_nf4.prompt_enhancer.watch import TokenWatch

    pipe = tiny_generator.pipe
    inputs = pe_inputs(pipe.pe_tokenizer, "a cat", 64, 64)
    decoder = PEDecoder(pipe.pe, graphs=False)
    checks = []

    class Counting:
        def is_set(self):
            checks.append(1)
            return len(checks) > 5

    with pytest.raises(GenerationCancelled):
        decoder.generate(inputs["input_ids"], CAP, 1, watch=TokenWatch(CAP, Counting()))
    assert len(checks) == 6  # once before the prompt, then once per token
    reported = []
    ids, stopped = decoder.generate(
        inputs["input_ids"], 20, 1, watch=TokenWatch(20, None, lambda d, c: reported.append(d))
    )
    assert reported == [8, 16, len(ids)] and not stopped
