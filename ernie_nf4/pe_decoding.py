"""Faster prompt-enhancer decoding: CUDA-graphed token steps (``compile=True``).

The PE writes up to ``max_pe_tokens`` tokens one at a time; each step runs 26 small layers, so it is bound by
Python and kernel-launch overhead, not by the GPU. transformers removes that overhead itself ("auto-compile":
a static KV cache and ``torch.compile(mode="reduce-overhead")`` of the decoding step, the prompt's prefill
staying eager) for models it marks compileable, but its bitsandbytes 4-bit quantizer is not marked so although
bitsandbytes >= 0.46 supports ``torch.compile``; ``compile_decoding`` answers that check for one model.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# Static-cache length reserved from the start (prompt + new tokens), so prompts of other lengths reuse the
# compiled step instead of recompiling; longer ones grow it once.
CACHE_TOKENS = 1024


def _always(model_kwargs, generation_config) -> bool:
    return True


def compile_decoding(model) -> None:
    """Decode ``model.generate`` steps with a static cache and a compiled, CUDA-graphed forward."""
    model.generation_config.cache_implementation = "static"
    model._valid_auto_compile_criteria = _always
    model._previous_max_cache_length = max(getattr(model, "_previous_max_cache_length", -1), CACHE_TOKENS)


def is_compiled(model) -> bool:
    return model.__dict__.get("_valid_auto_compile_criteria") is _always


def uncompile_decoding(model) -> None:
    """Back to transformers' default (dynamic cache, eager steps)."""
    model.generation_config.cache_implementation = None
    model.__dict__.pop("_valid_auto_compile_criteria", None)
