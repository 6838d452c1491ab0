"""A model load and a compile never overlap: TorchDynamo puts back, as a conversion ends, the process-wide state it
found as it began, so a load's moment of bfloat16 as the default dtype would otherwise stay for good."""

from __future__ import annotations

import sys
import threading
import time

import torch

from ernie_nf4.runtime.fast_transformer import BlockCompiler
from ernie_nf4.runtime.loader import load_pipeline


def innermost_function(thread: threading.Thread) -> str | None:
    frame = sys._current_frames().get(thread.ident)
    return frame.f_code.co_name if frame is not None else None


def test_a_load_waits_for_a_compile_under_way_and_the_default_dtype_stays_float32(tiny_original):
    transformer = load_pipeline(tiny_original, device="cpu").pipe.transformer
    inside, release = threading.Event(), threading.Event()
    seen_inside: set[torch.dtype] = set()

    def gated(graph_module, example_inputs):
        """A backend that holds the compile open until released, watching the default dtype meanwhile."""
        inside.set()
        deadline = time.monotonic() + 300
        while not release.is_set() and time.monotonic() < deadline:
            seen_inside.add(torch.get_default_dtype())
            time.sleep(0.001)
        return graph_module.forward

    compiler = BlockCompiler(transformer, cache_dir=None, backend=gated).start()
    loaded = []
    load = threading.Thread(target=lambda: loaded.append(load_pipeline(tiny_original, device="cpu")))
    try:
        assert inside.wait(120)
        load.start()
        # The load checks the package, then stops where it would build its first model, and stays there.
        deadline, since = time.monotonic() + 120, None
        while time.monotonic() < deadline and load.is_alive():
            if innermost_function(load) == "load_component":
                since = since or time.monotonic()
                if time.monotonic() - since > 1.0:
                    break
            else:
                since = None
            time.sleep(0.01)
        assert load.is_alive() and not loaded, "the load went on while a compile was converting code"
    finally:
        release.set()
    assert compiler.wait(120).name == "READY"
    load.join(120)
    assert loaded
    assert seen_inside == {torch.float32}
    assert torch.get_default_dtype() is torch.float32
