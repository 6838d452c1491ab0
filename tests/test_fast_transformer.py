import pytest
import torch
from diffusers import ErnieImageTransformer2DModel

from ernie_nf4.fast_transformer import (
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
