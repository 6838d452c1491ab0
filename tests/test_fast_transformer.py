import logging

import pytest
import torch
from diffusers import ErnieImageTransformer2DModel

from ernie_nf4.runtime.fast_transformer import (
    BlockCompiler,
    CompileState,
    FastErnieImageTransformer2DModel,
    compile_blocks,
    disable_fast_path,
    enable_fast_path,
)

from .support.fixtures import DEVICE

pytestmark = pytest.mark.nf4


def relative_error(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def cfg_inputs(model, height=8, width=6, lengths=(1, 7), seed=0, timestep=500.0):
    """A CFG batch as ErnieImagePipeline builds it: texts padded with zeros to the longest."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(len(lengths), model.config.in_channels, height, width, generator=g)
    text = torch.zeros(len(lengths), max(lengths), model.config.text_in_dim)
    for i, n in enumerate(lengths):
        text[i, :n] = torch.randn(n, model.config.text_in_dim, generator=g)
    return dict(
        hidden_states=hidden.to(DEVICE, torch.bfloat16),
        timestep=torch.full((len(lengths),), timestep).to(DEVICE, torch.bfloat16),
        text_bth=text.to(DEVICE, torch.bfloat16),
        text_lens=torch.tensor(lengths, device=DEVICE),
        return_dict=False,
    )


@pytest.fixture
def bf16_transformer(tiny_original):
    return ErnieImageTransformer2DModel.from_pretrained(tiny_original / "transformer", dtype=torch.bfloat16).to(DEVICE)


@torch.no_grad()
def test_fast_path_gives_the_stock_outputs_and_ignores_padding(bf16_transformer):
    model = bf16_transformer
    inputs = cfg_inputs(model)
    stock = model(**inputs)[0]
    enable_fast_path(model)
    assert isinstance(model, FastErnieImageTransformer2DModel)
    fast = model(**inputs)[0]
    assert relative_error(fast, stock) <= 1e-2
    # The conditional sample alone, without any padding, gives what it gives inside the padded batch.
    alone = model(**{k: v[1:] if torch.is_tensor(v) else v for k, v in inputs.items()})[0]
    assert relative_error(alone, fast[1:]) <= 1e-2
    # Padding is never read: other values in the padded text positions change nothing.
    noisy = dict(inputs, text_bth=inputs["text_bth"].clone())
    noisy["text_bth"][0, 1:] = 5.0
    assert torch.equal(model(**noisy)[0], fast)
    disable_fast_path(model)
    assert type(model) is ErnieImageTransformer2DModel
    assert torch.equal(model(**inputs)[0], stock)


@torch.no_grad()
def test_a_batch_with_different_timesteps_runs_the_stock_forward(bf16_transformer):
    model = bf16_transformer
    inputs = cfg_inputs(model)
    inputs["timestep"] = torch.tensor([500.0, 20.0], device=DEVICE, dtype=torch.bfloat16)
    stock = model(**inputs)[0]
    enable_fast_path(model)
    assert torch.equal(model(**inputs)[0], stock)


@torch.no_grad()
def test_compiled_nf4_blocks_match_stock_and_one_graph_serves_every_size(tiny_package, nf4_everywhere):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = ErnieImageTransformer2DModel.from_pretrained(
        tiny_package / "transformer", dtype=torch.bfloat16, device_map={"": DEVICE}
    )
    sizes = [dict(height=8, width=6, lengths=(1, 7)), dict(height=10, width=4, lengths=(3, 9))]
    stock = [model(**cfg_inputs(model, **size))[0] for size in sizes]
    compile_blocks(model)
    first = model(**cfg_inputs(model, **sizes[0]))[0]  # eager; sets compilation up
    assert relative_error(first, stock[0]) <= 1e-2
    compiled = model(**cfg_inputs(model, **sizes[0]))[0]
    assert relative_error(compiled, stock[0]) <= 1e-2
    graphs = counters["stats"]["unique_graphs"]
    other = model(**cfg_inputs(model, **sizes[1]))[0]
    assert relative_error(other, stock[1]) <= 1e-2
    assert counters["stats"]["unique_graphs"] == graphs  # dynamic shapes: no recompiling for a new size
    third = model(**cfg_inputs(model, height=12, width=4, lengths=(2, 5)))[0]
    assert third.shape == (2, model.config.out_channels, 12, 4)
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.fixture
def nf4_transformer(tiny_package, nf4_everywhere):
    model = ErnieImageTransformer2DModel.from_pretrained(
        tiny_package / "transformer", dtype=torch.bfloat16, device_map={"": DEVICE}
    )
    enable_fast_path(model)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["nf4", "bf16"])
@torch.no_grad()
def test_background_compile_serves_eager_calls_meanwhile_and_switches_only_when_activated(weights, request):
    from torch._dynamo.utils import counters

    model = request.getfixturevalue(f"{weights}_transformer")
    enable_fast_path(model)
    cases = [  # a CFG batch, a new size and prompt lengths, one sample (guidance <= 1)
        cfg_inputs(model),
        cfg_inputs(model, height=10, width=4, lengths=(3, 9), seed=1),
        cfg_inputs(model, height=12, width=8, lengths=(6,), seed=2),
    ]
    eager = [model(**inputs)[0] for inputs in cases]
    compiler = compile_blocks(model, background=True)
    assert compiler.state is CompileState.COMPILING and not compiler.active
    calls = 0
    while compiler.state is CompileState.COMPILING:  # the model keeps serving, eagerly and exactly as before
        assert torch.equal(model(**cases[calls % 3])[0], eager[calls % 3])
        calls += 1
    assert calls >= 1
    assert compiler.wait(timeout=600) is CompileState.READY, compiler.error
    assert compiler.describe() == "compiled (from the next run)"
    assert torch.equal(model(**cases[0])[0], eager[0])  # ready, but nothing switches until activate()
    assert compiler.activate() and compiler.describe() == "compiled"
    graphs = counters["stats"]["unique_graphs"]
    for inputs, reference in zip(cases, eager, strict=True):
        compiled = model(**inputs)[0]
        assert relative_error(compiled, reference) <= 1e-2  # compiled rounds bf16 a little differently
        assert torch.equal(model(**inputs)[0], compiled)  # and the same inputs give the same outputs
    assert compiler.fallback_calls == 0  # every block of every call ran the compiled code
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled on a caller's time


@pytest.mark.slow
def test_a_call_the_compiled_block_does_not_cover_runs_eagerly_without_compiling(nf4_transformer, caplog):
    from torch._dynamo.utils import counters

    model = nf4_transformer
    inputs = cfg_inputs(model, lengths=(1, 7, 4))  # three samples: the warm-up compiled for one and for two
    with torch.no_grad():
        eager = model(**inputs)[0]
    compiler = BlockCompiler(model)
    assert compiler.compile() and compiler.activate()
    graphs = counters["stats"]["unique_graphs"]
    with caplog.at_level(logging.WARNING, logger="ernie_nf4.runtime.fast_transformer"), torch.no_grad():
        for _ in range(2):
            assert torch.equal(model(**inputs)[0], eager)
    assert compiler.fallback_calls == 2 * len(model.layers)
    assert counters["stats"]["unique_graphs"] == graphs
    assert caplog.text.count("does not cover a call") == 1


def broken_backend(graph, example_inputs):
    """A torch.compile backend that cannot compile anything."""
    raise RuntimeError("no compiler here")


def test_a_failed_compile_logs_one_line_and_leaves_the_model_eager(nf4_transformer, caplog):
    model = nf4_transformer
    inputs = cfg_inputs(model)
    with torch.no_grad():
        expected = model(**inputs)[0]
    compiler = BlockCompiler(model, backend=broken_backend)
    with caplog.at_level(logging.WARNING, logger="ernie_nf4.runtime.fast_transformer"):
        assert compiler.start().wait(timeout=300) is CompileState.FAILED
    assert "no compiler here" in compiler.error and compiler.describe().startswith("eager: compile failed (")
    assert caplog.text.count("compiling the transformer blocks failed") == 1
    assert compiler.activate() is False
    with torch.no_grad():
        assert torch.equal(model(**inputs)[0], expected)


@pytest.mark.slow
def test_a_compiled_model_is_freed_once_nothing_else_holds_it(tiny_package, nf4_everywhere):
    import gc
    import weakref

    model = ErnieImageTransformer2DModel.from_pretrained(
        tiny_package / "transformer", dtype=torch.bfloat16, device_map={"": DEVICE}
    )
    compiler = compile_blocks(model)
    with torch.no_grad():
        model(**cfg_inputs(model))  # compiles at the end of this call
    assert compiler.active
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None  # its compiler, still held here, does not keep it (nor its memory) alive
    assert compiler.transformer is None


def test_a_model_let_go_while_its_compile_waits_ends_that_compile_without_an_error(tiny_package, nf4_everywhere):
    import gc
    import threading
    import weakref
    from types import SimpleNamespace

    model = ErnieImageTransformer2DModel.from_pretrained(
        tiny_package / "transformer", dtype=torch.bfloat16, device_map={"": DEVICE}
    )
    enable_fast_path(model)
    compiler = BlockCompiler(model, backend=broken_backend)
    release = threading.Event()
    compiler.ahead = SimpleNamespace(wait=release.wait, succeeded=False)  # a compile helper still at work
    raised, previous = [], threading.excepthook
    threading.excepthook = lambda args: raised.append(args.exc_value)
    try:
        compiler.start()
        gone = weakref.ref(model)
        del model
        gc.collect()
        assert gone() is None
        release.set()
        assert compiler.wait(timeout=60) is CompileState.FAILED
    finally:
        threading.excepthook = previous
    assert raised == [] and "released" in compiler.error
