"""LoRA on a CUDA GPU with stock diffusers' NF4: every memory mode, eager and compiled, gives the no-LoRA pixels at
scale 0, changes them at scale 1, repeats them exactly, and switching needs no new compile."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ernie_nf4.request import GenerationRequest, LoraChoice

from .test_lora import lora_weights, write_lora

pytestmark = [pytest.mark.cuda, pytest.mark.nf4]


def _pixels(generator, loras=(), seed: int = 5) -> np.ndarray:
    request = GenerationRequest(
        "a lighthouse", width=256, height=192, num_inference_steps=3, seed=seed, use_pe=False, loras=tuple(loras)
    )
    return np.asarray(generator.generate(request).images[0])


@pytest.mark.parametrize("memory_mode", ["all-on-gpu", "low-vram"])
@pytest.mark.parametrize("compile", [False, True])
def test_every_memory_mode_eager_and_compiled(memory_mode, compile, tiny_package, tmp_path):
    from ernie_nf4.runtime.generation import Generator

    torch._dynamo.reset()
    config = json.loads((tiny_package / "transformer" / "config.json").read_text())
    path = write_lora(tmp_path / "l.safetensors", lora_weights(config))
    kwargs = dict(device="cuda", memory_mode=memory_mode, compile=compile, max_pe_tokens=8, prompt_cache_size=0)
    plain = Generator.from_pretrained(tiny_package, **kwargs)
    with_lora = Generator.from_pretrained(tiny_package, loras=[("l", path)], **kwargs)
    for generator in (plain, with_lora):
        generator.warm_up(256, 192)  # compiles (compile=True) before the measured runs
    if memory_mode == "low-vram":  # the LoRA's weights stay in CPU memory, page-locked for fast copies
        layers = [m for m in with_lora.loaded.pipe.transformer.modules() if hasattr(m, "lora_down")]
        assert layers and all(m.lora_down.is_pinned() and m.lora_up.is_pinned() for m in layers)
    base = _pixels(plain)
    one = _pixels(with_lora, [LoraChoice("l", 1.0)])
    assert np.abs(one.astype(int) - base).mean() > 2
    assert np.array_equal(_pixels(with_lora, [LoraChoice("l", 1.0)]), one)
    zero = _pixels(with_lora, [LoraChoice("l", 0.0)])
    if compile:  # another compiled graph (with the LoRA term) may round bf16 differently in the last bits
        assert np.abs(zero.astype(int) - base).mean() < 1.0
        compiler = with_lora.loaded.pipe.transformer
        from ernie_nf4.runtime.fast_transformer import _state

        assert _state(compiler).compiler.active and _state(compiler).compiler.fallback_calls == 0
    else:
        assert np.array_equal(zero, base)
    assert np.array_equal(_pixels(with_lora, [LoraChoice("l", 1.0)]), one)  # after switching back and forth
