"""The prompt stage: the prompt enhancer's rewrite (two samplers), an LRU cache of prompts, text encoding.

``PromptStage.run`` runs the stage for one request: from the cache when the same prompt, negative prompt, PE seed and
size came before (a rerun with other steps or guidance skips the PE and the text encoder), else the PE (when on,
and the request gives no enhanced prompt of its own) and the text encoder. The run's stop signal is checked before
the PE, every few tokens while it writes, and before and after the text encoder; a stopped run raises
``GenerationCancelled`` and leaves the cache as it was.
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..errors import GenerationCancelled, InvalidArgument
from ..prompt_enhancer.watch import TokenWatch
from ..request import GenerationRequest
from ..system import free_device_memory
from .memory_modes import MemoryMode
from .timing import StageClock

PE_TEMPERATURE, PE_TOP_P = 0.6, 0.95  # the stock pipeline's sampling of the prompt enhancer


@dataclass
class PromptEnhancement:
    text: str
    tokens: int  # new tokens the PE wrote
    cut: bool  # the cap stopped it before its end-of-sequence token
    cap: int


@dataclass
class Prompt:
    """What the prompt stage hands the denoising stage: the revised prompt and the text embeddings."""

    revised: str | None = None
    positive: list = field(default_factory=list)
    negative: list | None = None
    enhancement: PromptEnhancement | None = None  # None when the PE did not run (off, or cached)


class PromptCache:
    """The last ``size`` prompts (0: none kept), least recently used dropped first."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def get(self, key) -> Prompt | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key, prompt: Prompt) -> None:
        if not self.size:
            return
        self._entries[key] = Prompt(prompt.revised, prompt.positive, prompt.negative, None)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


def uses_stock_pe_sampling(loaded) -> bool:
    """Stock runs (the benchmark's baselines) sample with transformers' ``generate``; ours with ``PEDecoder``."""
    return not loaded.fast or loaded.memory_mode is MemoryMode.MODEL_OFFLOAD


def pe_inputs(tokenizer, prompt: str, width: int, height: int):
    """The PE's chat message for ``prompt`` at this size, tokenized on the CPU (``PEDecoder`` copies it to the GPU
    without waiting for queued work)."""
    message = json.dumps({"prompt": prompt, "width": width, "height": height}, ensure_ascii=False)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=False
    )
    return tokenizer(text, return_tensors="pt")


def sample_with_generate(pipe, inputs, cap: int, seed: int, device, watch: TokenWatch) -> tuple[list[int], bool]:
    """New token ids (up to and with the end-of-sequence token) and whether it came, from transformers' ``generate``
    sampling as the stock pipeline does, seeded: ``torch.manual_seed(seed)`` inside ``fork_rng``; ``watch`` ticks
    with each token."""
    import torch

    eos = pipe.pe_tokenizer.eos_token_id
    inputs = inputs.to(device)
    watch.check()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        output = pipe.pe.generate(
            **inputs,
            max_new_tokens=cap,
            do_sample=True,
            temperature=PE_TEMPERATURE,
            top_p=PE_TOP_P,
            pad_token_id=pipe.pe_tokenizer.pad_token_id,
            eos_token_id=eos,
            stopping_criteria=watch.stopping_criteria(inputs["input_ids"].shape[1]),
        )
    new = output[0][inputs["input_ids"].shape[1] :].tolist()
    stopped = eos in new
    watch.finish(len(new[: new.index(eos) + 1] if stopped else new))
    return (new[: new.index(eos) + 1] if stopped else new), stopped


def sample_with_decoder(
    decoder, inputs, cap: int, seed: int, eos_token_id: int, watch: TokenWatch
) -> tuple[list[int], bool]:
    """The same sampling with ``prompt_enhancer.decoding.PEDecoder`` (a static KV cache and, on CUDA, graphed steps)."""
    import torch

    with torch.no_grad():
        ids, stopped = decoder.generate(
            inputs["input_ids"],
            cap,
            seed,
            temperature=PE_TEMPERATURE,
            top_p=PE_TOP_P,
            eos_token_id=eos_token_id,
            watch=watch,
        )
    return ids.tolist(), stopped


def make_pe_decoder(loaded):
    """A ``PEDecoder`` for the loaded PE. In low-vram mode its KV cache lies in the residency's arena behind the PE
    when it fits there (104 KiB a token for the full PE: 245 MB at the stock cap of 2048; about 17,000 tokens fit
    for the full model), where the larger transformer's bytes go while the PE is away, so it costs no memory of its
    own; a cache that does not fit is allocated and kept as in all-on-gpu."""
    from ..prompt_enhancer.decoding import PEDecoder

    residency, storage = loaded.residency, None
    if residency is not None and "pe" in residency.names:
        storage = functools.partial(residency.scratch, "pe")
    return PEDecoder(loaded.pipe.pe, cache_storage=storage)


def enhancement(tokenizer, new: list[int], stopped: bool, cap: int) -> PromptEnhancement:
    revised = tokenizer.decode(new, skip_special_tokens=True).strip()
    return PromptEnhancement(revised, tokens=len(new), cut=not stopped, cap=cap)


def prompt_key(request: GenerationRequest, use_pe: bool) -> tuple:
    """What the prompt stage's output depends on: prompt, negative prompt, PE seed, size, PE on, and the enhanced
    prompt the request gives (never mixed with what the PE wrote)."""
    seed = request.seed if use_pe else None
    return (
        request.prompt,
        request.negative_prompt,
        seed,
        request.width,
        request.height,
        use_pe,
        request.enhanced_prompt,
    )


def encode_text(loaded, request: GenerationRequest, prompt: Prompt, fresh: bool, device, cancel=None) -> None:
    """Fill ``prompt``'s embeddings with the text encoder: the positive one when ``fresh``, the negative one when
    guidance needs it and it is missing. ``cancel`` is checked before each of the encoder's passes and after the
    last: a stop raises ``GenerationCancelled``."""
    import torch

    needs_negative = prompt.negative is None and request.guidance_scale > 1.0
    with torch.no_grad():
        if fresh or needs_negative:
            check_cancel(cancel, "before the text encoder")
            loaded.use("text_encoder")
        if fresh:
            prompt.positive = loaded.pipe.encode_prompt([prompt.revised or request.prompt], device)
        if needs_negative:
            check_cancel(cancel, "during text encoding")
            prompt.negative = loaded.pipe.encode_prompt([request.negative_prompt], device)
    check_cancel(cancel, "after text encoding")


def check_cancel(cancel, where: str) -> None:
    """Raise ``GenerationCancelled`` when the stop signal ``cancel`` (anything with ``is_set()``, or None) is set."""
    if cancel is not None and cancel.is_set():
        raise GenerationCancelled(f"stopped {where}")


def check_max_pe_tokens(value) -> None:
    """The one check of a PE token cap: an integer in [1, 8192], or None (the stock pipeline's limit)."""
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 8192):
        raise InvalidArgument(
            f"max_pe_tokens must be an integer in [1, 8192] or None, got {value!r}", field="max_pe_tokens"
        )


class PromptStage:
    """The prompt stage of a ``Generator``: it owns what outlives a request (the prompt cache and the PE's decoder,
    with its KV cache and graph) and runs the stage for one request at a time (``run``).

    ``max_pe_tokens``: cap on the PE's new tokens; None is the stock pipeline's limit,
    ``pe_tokenizer.model_max_length`` (2048): the real PE stops at its end-of-sequence token long before.
    """

    def __init__(self, loaded, max_pe_tokens: int | None = None, cache_size: int = 16):
        self.loaded = loaded
        self.max_pe_tokens = max_pe_tokens
        self.cache = PromptCache(cache_size)
        self.decoder = None  # prompt_enhancer.decoding.PEDecoder, made on first use

    @property
    def cap(self) -> int:
        """The PE's token cap in force: ``max_pe_tokens``, else the PE tokenizer's ``model_max_length``."""
        if self.max_pe_tokens is not None:
            return self.max_pe_tokens
        return int(min(getattr(self.loaded.pipe.pe_tokenizer, "model_max_length", 2048), 8192))

    def enhance(
        self,
        prompt: str,
        width: int,
        height: int,
        seed: int,
        cap: int | None = None,
        cancel=None,
        on_tokens: Callable[[int, int], None] | None = None,
    ) -> PromptEnhancement:
        """The PE's rewrite of ``prompt``, sampled as the stock pipeline does (temperature 0.6, top-p 0.95), but
        seeded, and capped at ``cap`` new tokens (default ``self.cap``): by ``PEDecoder`` (built on first use, once
        the PE is on its device, and kept), or by transformers' ``generate`` on the stock path. Every few tokens
        ``cancel`` (the run's stop signal) is checked, raising ``GenerationCancelled``, and ``on_tokens(written,
        cap)`` is told (see ``prompt_enhancer.watch``)."""
        pipe, cap = self.loaded.pipe, cap or self.cap
        watch = TokenWatch(cap, cancel, on_tokens)
        inputs = pe_inputs(pipe.pe_tokenizer, prompt, width, height)
        if uses_stock_pe_sampling(self.loaded):
            new, stopped = sample_with_generate(pipe, inputs, cap, seed, _device(self.loaded), watch)
        else:
            new, stopped = self._sample_with_decoder(inputs, cap, seed, watch)
        return enhancement(pipe.pe_tokenizer, new, stopped, cap)

    def _sample_with_decoder(self, inputs, cap: int, seed: int, watch: TokenWatch) -> tuple[list[int], bool]:
        # The decoder is kept between requests in every memory mode. In low-vram the PE leaves the GPU after this,
        # but the residency's arena brings it back at the same addresses, so the decoder's graph stays valid and the
        # next request replays it without capturing again. What else stays on the GPU meanwhile: the graph's noise
        # buffers (17 MB) and its memory pool.
        if self.decoder is None:
            self.decoder = make_pe_decoder(self.loaded)
        try:
            eos = self.loaded.pipe.pe_tokenizer.eos_token_id
            return sample_with_decoder(self.decoder, inputs, cap, seed, eos, watch)
        except GenerationCancelled:  # a stop leaves the cache and graph as good as an ended run does
            raise
        except BaseException as err:
            if self.loaded.residency is not None:  # low-vram: a failed run gives its cache and graph back
                self.decoder = None
                free_device_memory(err)
            raise

    def run(
        self,
        request: GenerationRequest,
        clock: StageClock,
        cache: PromptCache | None = None,
        cap: int | None = None,
        cancel=None,
        on_tokens: Callable[[int, int], None] | None = None,
    ) -> tuple[Prompt, bool]:
        """Revised prompt and text embeddings for ``request``, and whether they came from the cache (``cache``:
        another one than the stage's own, e.g. an empty one for a warm-up; ``cap``: another PE cap). The ``pe``
        and ``text_encoding`` laps go to ``clock``. ``cancel``, ``on_tokens``: see ``enhance``; a stopped run
        raises ``GenerationCancelled`` and puts nothing in the cache. A request that gives its enhanced prompt
        skips the PE: that text goes to the text encoder as it is."""
        loaded, cache = self.loaded, self.cache if cache is None else cache
        use_pe = request.runs_pe and loaded.has_pe
        key = prompt_key(request, use_pe)
        cached = cache.get(key)
        prompt = replace(cached) if cached is not None else Prompt()  # the cache's entry itself stays as it is
        if cached is None and use_pe:
            check_cancel(cancel, "before the prompt enhancer")
            loaded.use("pe")
            size_seed = (request.width, request.height, request.seed)
            prompt.enhancement = self.enhance(request.prompt, *size_seed, cap, cancel, on_tokens)
            prompt.revised = prompt.enhancement.text
        elif cached is None:
            prompt.revised = request.enhanced_prompt  # None when there is none: the prompt itself is encoded
        clock.lap("pe")
        encode_text(loaded, request, prompt, fresh=cached is None, device=clock.device, cancel=cancel)
        clock.lap("text_encoding")
        check_cancel(cancel, "after text encoding")  # a signal set while the clock waited for the GPU
        cache.put(key, prompt)
        return prompt, cached is not None


def _device(loaded):
    import torch

    return torch.device(loaded.device)
