"""Enhance first in the library: the PE alone (``Generator.enhance_prompt``, ``ImageService.enhance``) writes what a
run's PE would for the same prompt, size and seed, reports its tokens and hears Stop; a request that gives its
``enhanced_prompt`` sends exactly that text to the text encoder and never runs the PE. Real tiny NF4 pipeline."""

import threading
import time

import pytest

from ernie_nf4.errors import GenerationCancelled, InvalidArgument
from ernie_nf4.request import FormValues, GenerationRequest, request_from_form
from ernie_nf4.runtime.generation import Generator

from .support.fixtures import DEVICE

pytestmark = pytest.mark.nf4
SMALL = {"width": 64, "height": 64, "num_inference_steps": 2, "guidance_scale": 1.0}  # 1.0: no negative prompt pass
EDITED = "a cat on a red sofa, edited by hand: 猫"


class Watched:
    """Hooks on the real modules: the token ids each text encoder pass reads, and the PE's embedding calls (every
    token the PE reads or writes goes through them, on either decoding path)."""

    def __init__(self, pipe):
        self.encoder_ids, self.pe_calls = [], 0

        def read(module, args, kwargs):
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            self.encoder_ids.append(ids[0].tolist())

        def pe(*_):
            self.pe_calls += 1

        self.handles = [
            pipe.text_encoder.register_forward_pre_hook(read, with_kwargs=True),
            pipe.pe.get_input_embeddings().register_forward_hook(pe),
        ]

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for handle in self.handles:
            handle.remove()


def token_ids(pipe, text: str) -> list[int]:
    """The ids the stock pipeline's ``encode_prompt`` gives its text encoder for ``text``."""
    return pipe.tokenizer(text, add_special_tokens=True, truncation=True, padding=False)["input_ids"]


@pytest.fixture
def generator(tiny_generator):
    return Generator(tiny_generator.loaded, max_pe_tokens=12, prompt_cache_size=4)


def test_an_edited_text_is_exactly_what_reaches_the_text_encoder_and_the_pe_does_not_run(generator):
    pipe, written = generator.pipe, []
    with Watched(pipe) as plain:  # without one the PE writes, and its text is what the encoder reads
        result = generator.generate(GenerationRequest("a cat", seed=5, **SMALL))
    assert plain.pe_calls > 0 and plain.encoder_ids == [token_ids(pipe, result.revised_prompt)]
    request = GenerationRequest("a cat", seed=5, enhanced_prompt=EDITED, **SMALL)
    with Watched(pipe) as edited:
        result = generator.generate(request, on_pe_tokens=lambda done, cap: written.append(done))
    assert edited.encoder_ids == [token_ids(pipe, EDITED)]
    assert edited.pe_calls == 0 and written == [] and result.enhancement is None
    assert result.revised_prompt == EDITED and not result.prompt_cached
    assert len(result.images) == 1


def test_the_prompt_cache_never_gives_a_users_text_for_the_pes_or_back(generator):
    pipe = generator.pipe
    pe_text = generator.generate(GenerationRequest("a cat", seed=5, **SMALL)).revised_prompt
    with Watched(pipe) as watched:
        mine = generator.generate(GenerationRequest("a cat", seed=5, enhanced_prompt=EDITED, **SMALL))
    assert mine.revised_prompt == EDITED and watched.encoder_ids == [token_ids(pipe, EDITED)]
    again = generator.generate(GenerationRequest("a cat", seed=5, **SMALL))
    assert again.prompt_cached and again.revised_prompt == pe_text
    other = generator.generate(GenerationRequest("a cat", seed=5, enhanced_prompt=EDITED + "!", **SMALL))
    assert other.revised_prompt == EDITED + "!" and not other.prompt_cached


def test_the_seed_decides_the_enhance_paths_text_which_is_what_a_run_writes(generator):
    told = []
    first = generator.enhance_prompt("a cat", 64, 64, seed=5, on_tokens=lambda done, cap: told.append((done, cap)))
    assert generator.enhance_prompt("a cat", 64, 64, seed=5, cancel=threading.Event()).text == first.text
    assert first.tokens > 0 and first.text and told[-1] == (first.tokens, 12)  # its progress: tokens of the cap
    run = Generator(generator.loaded, max_pe_tokens=12, prompt_cache_size=0)
    assert run.generate(GenerationRequest("a cat", seed=5, **SMALL)).revised_prompt == first.text
    others = {generator.enhance_prompt("a cat", 64, 64, seed=seed).text for seed in (6, 7, 8)}
    assert others != {first.text}


@pytest.fixture
def tiny_service(tiny_package, nf4_everywhere):
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    service = ImageService(ServiceConfig(model_dir=str(tiny_package), tiny=True, device=DEVICE, max_pe_tokens=24))
    service.load()
    return service


def test_the_service_enhances_alone_with_token_progress_and_a_run_with_the_text_skips_the_pe(tiny_service):
    events = []
    for seed in range(9, 19):  # the random tiny PE ends on its first token for some seeds (CPU: 1 in 40), per device
        events.clear()
        request = GenerationRequest("a cat", seed=seed, **SMALL)
        enhancement = tiny_service.enhance(request, on_progress=events.append)
        if enhancement.text:
            break
    assert enhancement.text and 0 < enhancement.tokens <= 24
    assert {e.stage for e in events} == {"pe"} and events[-1].unit == "tokens" and events[-1].total == 24
    assert tiny_service.enhance(request).text == enhancement.text
    events.clear()
    edited = GenerationRequest("a cat", seed=seed, enhanced_prompt=enhancement.text)
    result = tiny_service.generate(edited, events.append)
    assert result.revised_prompt == enhancement.text and result.enhancement is None
    assert "pe" not in {e.stage for e in events} and events[0].stage == "text_encoding"


def test_stop_while_the_pe_writes_alone_raises_cancelled_within_a_second(tiny_package, nf4_everywhere):
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    service = ImageService(ServiceConfig(model_dir=str(tiny_package), tiny=True, device=DEVICE))  # cap 2048: long
    service.load()
    cancel, writing, outcome = threading.Event(), threading.Event(), {}

    def on_progress(event):
        if event.stage == "pe" and event.done:
            writing.set()

    def run():
        try:
            outcome["text"] = service.enhance(GenerationRequest("a cat", seed=3, **SMALL), on_progress, cancel)
        except GenerationCancelled as err:
            outcome["stopped"] = (err, time.monotonic())

    worker = threading.Thread(target=run)
    worker.start()
    assert writing.wait(120)
    pressed = time.monotonic()
    cancel.set()
    worker.join(60)
    assert "text" not in outcome and "stopped" in outcome, outcome
    assert outcome["stopped"][1] - pressed < 1.0
    cancel.set()  # set before it starts: it stops before the PE
    with pytest.raises(GenerationCancelled, match="before"):
        service.enhance(GenerationRequest("a cat", seed=3, **SMALL), cancel=cancel)


def test_the_form_takes_an_enhanced_prompt_and_refuses_a_bad_one_by_name():
    request, notes = request_from_form(FormValues("a cat", enhanced_prompt="mine\x07"))
    assert request.enhanced_prompt == "mine" and notes == ["enhanced_prompt: removed 1 control character(s)"]
    assert request_from_form(FormValues("a cat", enhanced_prompt=" \n"))[0].enhanced_prompt is None
    assert not request.runs_pe and GenerationRequest("a cat").runs_pe
    for bad, message in ((" ", "non-blank"), ("x" * 32001, "at most 32000"), (5, "non-blank")):
        with pytest.raises(InvalidArgument, match=message) as refused:
            GenerationRequest("a cat", enhanced_prompt=bad)
        assert refused.value.field == "enhanced_prompt"
