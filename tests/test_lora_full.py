"""LoRA on the full-size NF4 model on a CUDA GPU, at 1024x1024: a rank-64 LoRA on every attention and MLP linear,
written here by plain safetensors calls in PEFT's layout. low-vram with it holds its 6 GiB cap; all-on-gpu gives
the no-LoRA pixels at scale 0, changes them at scale 1 and repeats them; low-vram, which keeps the LoRA's weights in
CPU memory, gives all-on-gpu's image.

The package comes from ``ERNIE_NF4_FULL_PACKAGE`` (a folder ``scripts/gpu_full_package.sh`` builds: the full-size
random-weight model in NF4); without it these tests are skipped, with that reason."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ernie_nf4.request import GenerationRequest, LoraChoice

from .test_lora import BLOCK_LINEARS, PREFIXES

pytestmark = [pytest.mark.cuda, pytest.mark.nf4, pytest.mark.slow]

CAP_GIB = 6.0  # low-vram's cap


@pytest.fixture(scope="module")
def full_package() -> Path:
    path = os.environ.get("ERNIE_NF4_FULL_PACKAGE")
    if not path:
        pytest.skip("set ERNIE_NF4_FULL_PACKAGE to a full-size NF4 package (scripts/gpu_full_package.sh builds one)")
    return Path(path)


@pytest.fixture(scope="module")
def rank64(full_package, tmp_path_factory) -> Path:
    """Rank 64 on every attention and MLP linear (252 pairs on the full model), small values as a trained LoRA has."""
    from safetensors.torch import save_file

    config = json.loads((full_package / "transformer" / "config.json").read_text())
    g, tensors = torch.Generator().manual_seed(3), {}
    for layer in range(config["num_layers"]):
        for module, (fan_in, fan_out) in BLOCK_LINEARS.items():
            key = f"{PREFIXES['PEFT']}layers.{layer}.{module}"
            a = torch.randn(64, config[fan_in], generator=g) / config[fan_in] ** 0.5
            tensors[f"{key}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"{key}.lora_B.weight"] = (torch.randn(config[fan_out], 64, generator=g) * 0.02).to(torch.bfloat16)
    path = tmp_path_factory.mktemp("lora") / "rank64.safetensors"
    save_file(tensors, str(path))
    return path


def _run(generator, loras=()):
    request = GenerationRequest(
        "a lighthouse", width=1024, height=1024, num_inference_steps=3, seed=11, use_pe=False, loras=tuple(loras)
    )
    result = generator.generate(request)
    return np.asarray(result.images[0]).astype(int), result.peak_vram


def _free():
    """Hand back what a generator just dropped held on the GPU."""
    gc.collect()
    torch.cuda.empty_cache()


def test_rank64_on_the_full_model_in_each_memory_mode(full_package, rank64):
    from ernie_nf4.runtime.generation import Generator

    kwargs = dict(device="cuda", max_pe_tokens=8, prompt_cache_size=0)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(CAP_GIB * 2**30 / total)
    try:
        low = Generator.from_pretrained(full_package, memory_mode="auto", loras=[("r", rank64)], **kwargs)
        assert low.loaded.memory_mode.value == "low-vram"
        low_one, peak = _run(low, [LoraChoice("r", 1.0)])
        assert peak.reserved_gib <= CAP_GIB
        assert np.array_equal(_run(low, [LoraChoice("r", 1.0)])[0], low_one)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    del low
    _free()
    plain = Generator.from_pretrained(full_package, memory_mode="all-on-gpu", **kwargs)
    base = _run(plain)[0]
    del plain
    _free()
    lora = Generator.from_pretrained(full_package, memory_mode="all-on-gpu", loras=[("r", rank64)], **kwargs)
    one = _run(lora, [LoraChoice("r", 1.0)])[0]
    assert np.abs(one - base).mean() > 2  # the LoRA changes the image
    assert np.array_equal(_run(lora, [LoraChoice("r", 0.0)])[0], base)
    assert np.array_equal(_run(lora, [LoraChoice("r", 1.0)])[0], one)
    assert np.abs(low_one - one).mean() < 1.0  # streamed weights: the same image, within rounding
