import builtins
import gc
import inspect
import math
import sys
import types
import weakref

import numpy as np
import pytest
import torch

from ernie_nf4.errors import GenerationCancelled, OutOfMemory
from ernie_nf4.request import SEED_LIMIT, GenerationRequest
from ernie_nf4.runtime.generation import Generator

from .support.fixtures import HAS_CUDA

pytestmark = pytest.mark.nf4
SMALL = {"width": 64, "height": 64, "num_inference_steps": 2}


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_generates_an_image_with_timings(tiny_generator):
    result = tiny_generator.generate(
        GenerationRequest("an orange cat", width=96, height=64, num_inference_steps=2, seed=7)
    )
    assert len(result.images) == 1
    assert result.images[0].size == (96, 64)
    assert result.seeds == [7]
    assert isinstance(result.revised_prompt, str)
    for stage in ("pe", "text_encoding", "denoising", "vae_decode"):
        assert getattr(result.seconds, stage) > 0
    assert (
        sum(getattr(result.seconds, s) for s in ("pe", "text_encoding", "denoising", "vae_decode"))
        <= result.seconds.total
    )


def test_same_seed_gives_the_same_image_with_pe_on(tiny_generator):
    request = GenerationRequest("一只橙色的小猫 🐱", seed=1234, use_pe=True, **SMALL)
    first, second = tiny_generator.generate(request), tiny_generator.generate(request)
    assert first.revised_prompt == second.revised_prompt
    assert np.array_equal(pixels(first.images[0]), pixels(second.images[0]))


def test_different_seeds_and_prompts_give_different_images(tiny_generator):
    base = tiny_generator.generate(GenerationRequest("a cat", seed=1, use_pe=False, **SMALL))
    other_seed = tiny_generator.generate(GenerationRequest("a cat", seed=2, use_pe=False, **SMALL))
    other_prompt = tiny_generator.generate(GenerationRequest("a red boat", seed=1, use_pe=False, **SMALL))
    assert not np.array_equal(pixels(base.images[0]), pixels(other_seed.images[0]))
    assert not np.array_equal(pixels(base.images[0]), pixels(other_prompt.images[0]))
    pe_a = tiny_generator.generate(GenerationRequest("a cat", seed=1, **SMALL))
    pe_b = tiny_generator.generate(GenerationRequest("a cat", seed=2, **SMALL))
    assert pe_a.revised_prompt != pe_b.revised_prompt


def test_each_image_of_a_batch_is_reproducible_from_its_own_seed(tiny_generator):
    steps = []
    batch = tiny_generator.generate(
        GenerationRequest("a cat", seed=10, num_images=3, use_pe=False, **SMALL),
        on_step=lambda d, t: steps.append((d, t)),
    )
    assert batch.seeds == [10, 11, 12]
    assert steps == [(i, 6) for i in range(1, 7)]
    alone = tiny_generator.generate(GenerationRequest("a cat", seed=12, use_pe=False, **SMALL))
    assert np.array_equal(pixels(batch.images[2]), pixels(alone.images[0]))


def test_a_step_callback_can_cancel_the_run(tiny_generator):
    def stop(done, total):
        if done == 1:
            raise GenerationCancelled

    with pytest.raises(GenerationCancelled):
        tiny_generator.generate(
            GenerationRequest("a cat", use_pe=False, **{**SMALL, "num_inference_steps": 5}), on_step=stop
        )
    assert tiny_generator.generate(GenerationRequest("a cat", use_pe=False, **SMALL)).images


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("prompt", "   ", "prompt must be a non-blank"),
        ("prompt", "x" * 100_000, "prompt must be at most 8000"),
        ("negative_prompt", "x" * 100_000, "negative_prompt must be at most 8000"),
        ("width", 1000, r"width must be a multiple of 16"),
        ("height", 0, r"height must be in \[64, 2048\]"),
        ("width", 10**9, r"width must be in \[64, 2048\]"),
        ("num_inference_steps", 0, r"num_inference_steps must be in \[1, 200\]"),
        ("num_inference_steps", 10_000, r"num_inference_steps must be in \[1, 200\]"),
        ("guidance_scale", math.nan, "guidance_scale must be a finite number"),
        ("guidance_scale", math.inf, "guidance_scale must be a finite number"),
        ("guidance_scale", -1.0, r"guidance_scale must be in \[0.0, 30.0\]"),
        ("seed", -1, "seed must be in"),
        ("seed", SEED_LIMIT, "seed must be in"),
        ("num_images", 0, r"num_images must be in \[1, 4\]"),
        ("num_images", 100, r"num_images must be in \[1, 4\]"),
        ("use_pe", "yes", "use_pe must be true or false"),
    ],
)
def test_bad_requests_name_the_field_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        GenerationRequest(**{"prompt": "a cat", field: value})


def test_out_of_memory_is_caught_explained_and_the_next_request_runs(tiny_package, nf4_everywhere):
    if not HAS_CUDA:
        pytest.skip("needs a CUDA GPU")
    generator = Generator.from_pretrained(tiny_package, device="cuda", max_pe_tokens=8)
    small = GenerationRequest("a cat", width=64, height=64, num_inference_steps=1, use_pe=False)
    generator.generate(small)  # its graphs and caches made
    gc.collect()
    torch.cuda.empty_cache()
    # The cap counts what torch's allocator reserves: from what is reserved now (with what earlier tests' graph pools
    # keep) it leaves twice what the small request reserves, and far less than four 2048x2048 images need.
    base = torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    generator.generate(small)
    limit = base + 2 * (torch.cuda.max_memory_reserved() - base) + 64 * 2**20
    torch.cuda.set_per_process_memory_fraction(limit / torch.cuda.get_device_properties(0).total_memory)
    try:
        with pytest.raises(OutOfMemory, match="Try a smaller size, fewer images"):
            generator.generate(
                GenerationRequest("a cat", width=2048, height=2048, num_inference_steps=1, use_pe=False, num_images=4)
            )
        assert torch.cuda.memory_allocated() < limit
        assert generator.generate(small).images
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def test_a_rerun_with_other_steps_or_guidance_reuses_the_pe_and_text_encoding(tiny_generator):
    from dataclasses import replace

    cached = Generator(tiny_generator.loaded, max_pe_tokens=12, prompt_cache_size=2)
    first = cached.generate(GenerationRequest("a cat", seed=5, **SMALL))
    rerun = replace(first.request, num_inference_steps=3, guidance_scale=2.0)
    second = cached.generate(rerun)
    assert not first.prompt_cached and second.prompt_cached
    assert second.revised_prompt == first.revised_prompt
    assert second.seconds.pe < first.seconds.pe
    fresh = tiny_generator.generate(rerun)  # no cache: the same image
    assert not fresh.prompt_cached
    assert np.array_equal(pixels(second.images[0]), pixels(fresh.images[0]))
    assert not cached.generate(replace(rerun, seed=6)).prompt_cached  # PE output depends on the seed
    cached.generate(replace(rerun, prompt="a dog"))  # a third entry evicts the oldest (size 2)
    assert not cached.generate(rerun).prompt_cached


def test_generator_settings_are_checked(tiny_generator):
    with pytest.raises(ValueError, match=r"prompt_cache_size must be in \[0, 1024\]"):
        Generator(tiny_generator.loaded, prompt_cache_size=-1)
    with pytest.raises(ValueError, match=r"max_pe_tokens must be an integer in \[1, 8192\] or None"):
        Generator(tiny_generator.loaded, max_pe_tokens=0)


def test_warm_up_collects_the_garbage_it_leaves_so_no_full_collection_falls_in_the_first_request(tiny_generator):
    import gc
    import weakref

    class Node:
        pass

    cycle = Node()
    cycle.self = cycle  # freed only by a garbage collection
    freed = weakref.ref(cycle)
    del cycle
    gc.disable()  # no automatic collection meanwhile: only warm_up's own
    try:
        assert freed() is not None
        assert tiny_generator.warm_up(width=256, height=256) > 0
        assert freed() is None
    finally:
        gc.enable()


def test_the_vae_decodes_in_float32_on_the_cpu_and_bf16_on_a_gpu(tiny_generator):
    """bf16 convolutions are tens of times slower than float32 on CPUs without bf16 instructions."""
    pipe = tiny_generator.pipe
    assert pipe.vae.dtype == (torch.bfloat16 if tiny_generator.device.type == "cuda" else torch.float32)
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16


@pytest.mark.parametrize("value", [0, 8193, 2.5, True, "64"])
def test_the_service_and_the_generator_check_max_pe_tokens_the_same_way(value):
    from ernie_nf4.errors import InvalidArgument
    from ernie_nf4.serving.service import ServiceConfig

    with pytest.raises(InvalidArgument, match=r"max_pe_tokens must be an integer in \[1, 8192\]") as refused:
        ServiceConfig(max_pe_tokens=value)
    assert refused.value.field == "max_pe_tokens"


def test_a_run_that_runs_out_of_memory_holds_none_of_its_tensors_while_its_error_is_kept(tiny_generator):
    """What a failed run computed is freed when it fails, not when the caller drops the error (the service shows it
    first; on a GPU the tensors would hold memory the next request needs)."""
    latents = []

    def out_of_memory_at_a_step(done, total):
        frame = sys._getframe(1)
        while frame is not None:  # the run's frames, as the error's traceback keeps them
            if frame.f_code.co_flags & inspect.CO_OPTIMIZED:  # a function's frame
                variables = frame.f_locals
                value = variables.get("latents")
                if isinstance(variables, dict):  # a copy the frame keeps: it would hold them too
                    variables.clear()
                if isinstance(value, torch.Tensor):
                    latents.append(weakref.ref(value))
                del value, variables
            frame = frame.f_back
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    request = GenerationRequest("a cat", seed=3, **SMALL)
    with pytest.raises(OutOfMemory, match="Try a smaller size") as caught:
        tiny_generator.generate(request, on_step=out_of_memory_at_a_step)
    gc.collect()
    assert caught.value.__cause__.__traceback__ is not None  # the error is whole, as the caller got it
    assert latents and all(ref() is None for ref in latents)
    assert tiny_generator.generate(request).images  # and the next request runs


class _Held:  # an object a failed frame keeps, which weak references can watch
    pass


def _fail(kept: list):
    held = _Held()
    kept.append(weakref.ref(held))
    raise ValueError("failed")


def _paused():
    yield "first"
    yield "second"


def test_freeing_after_a_failure_clears_the_ended_frames_of_every_error_it_came_from_and_no_generator():
    from ernie_nf4.system import free_device_memory

    kept = []
    try:
        try:
            _fail(kept)
        except ValueError:  # the error handled when the next came: its context, beside its cause
            raise RuntimeError("next") from KeyError("the cause")
    except RuntimeError as err:
        free_device_memory(err)
        gc.collect()
        assert len(kept) == 1 and kept[0]() is None
        assert str(err.__context__) == "failed"  # the errors themselves are kept whole
    if sys.version_info >= (3, 11):  # the members of a group of errors
        try:
            _fail(kept)
        except ValueError as member:
            group = builtins.ExceptionGroup("group", [member])
        free_device_memory(group)
        gc.collect()
        assert len(kept) == 2 and kept[1]() is None

    paused = _paused()
    assert next(paused) == "first"

    def failing_while_paused():
        try:
            raise ValueError("failed")
        except ValueError as err:
            frame = paused.gi_frame  # a chain with the paused generator's frame in it
            err.__context__ = StopIteration().with_traceback(
                types.TracebackType(None, frame, frame.f_lasti, frame.f_lineno)
            )
            free_device_memory(err)

    failing_while_paused()
    assert next(paused) == "second"  # not closed
