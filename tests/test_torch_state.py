"""A model load and a compile never overlap: TorchDynamo puts back, as a conversion ends, the process-wide state it
found as it began, so a load's moment of bfloat16 as the default dtype would otherwise stay for good."""

from __future__ import annotations

import threading
import time

import torch

from ernie_nf4.runtime.fast_transformer import BlockCompiler
from ernie_nf4.runtime.loader import load_pipeline

GATE_SECONDS = 5.0  # longer than the tiny model's load takes alone


def test_a_load_waits_for_a_compile_under_way_and_the_default_dtype_stays_float32(tiny_original):
    transformer = load_pipeline(tiny_original, device="cpu").pipe.transformer
    inside, release = threading.Event(), threading.Event()
    seen_inside: set[torch.dtype] = set()

    def gated(graph_module, example_inputs):
        """A backend that holds the compile open while the load is tried, watching the default dtype meanwhile."""
        inside.set()
        deadline = time.monotonic() + GATE_SECONDS
        while time.monotonic() < deadline and not release.is_set():
            seen_inside.add(torch.get_default_dtype())
            time.sleep(0.001)
        return graph_module.forward

    compiler = BlockCompiler(transformer, cache_dir=None, backend=gated).start()
    assert inside.wait(120)
    loaded_at = []
    load = threading.Thread(
        target=lambda: loaded_at.append((load_pipeline(tiny_original, device="cpu"), time.monotonic()))
    )
    load.start()
    load.join(GATE_SECONDS)  # alone it would be done by now
    assert loaded_at == [], "the load ran while a compile was converting code"
    release.set()
    compiler.wait(120)
    load.join(120)
    assert loaded_at and compiler.state.name in ("READY", "ACTIVE")
    assert seen_inside == {torch.float32}
    assert torch.get_default_dtype() is torch.float32
