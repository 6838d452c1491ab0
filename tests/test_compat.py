"""The private upstream attributes this project uses exist in the pinned versions, and each fallback computes what
the upstream attribute computes (so a release that drops one changes speed, never results)."""

import logging

import pytest
import torch
from diffusers import ErnieImagePipeline

from ernie_nf4 import compat


def test_every_private_attribute_used_is_there():
    assert compat.upstream_problems() == []


class _Without:
    """Stands for a pipeline class of a diffusers release without the private helpers."""

    class transformer:  # noqa: N801 - mirrors pipe.transformer.config
        class config:  # noqa: N801
            text_in_dim = 8


def test_the_fallbacks_compute_what_diffusers_computes(caplog):
    latents = torch.randn(2, 128, 4, 6)
    with caplog.at_level(logging.WARNING, logger="ernie_nf4.compat"):
        ours = compat.unpatchify_latents(_Without(), latents)
    assert torch.equal(ours, ErnieImagePipeline._unpatchify_latents(latents))
    texts = [torch.randn(5, 8), torch.randn(3, 8)]
    padded, lengths = compat.pad_text(_Without(), texts, "cpu", torch.float32)
    expected, expected_lengths = ErnieImagePipeline._pad_text(texts, "cpu", torch.float32, 8)
    assert torch.equal(padded, expected) and torch.equal(lengths, expected_lengths)
    assert "upstream changed" in caplog.text


def test_the_fast_path_check_names_what_is_missing(monkeypatch):
    from diffusers.models.transformers import transformer_ernie_image as module

    assert compat.fast_path_problem() is None
    monkeypatch.delattr(module, "ErnieImageSharedAdaLNBlock")
    assert compat.fast_path_problem() == "diffusers lacks ErnieImageSharedAdaLNBlock"


def test_swap_class_turns_an_object_into_its_subclass_and_back_and_refuses_strangers():
    class Model(torch.nn.Module):
        def forward(self, x):
            return x

    class Faster(Model):
        def forward(self, x):
            return 2 * x

    model = Model()
    compat.swap_class(model, Faster)
    assert type(model) is Faster and model(torch.ones(1)).item() == 2
    compat.swap_class(model, Model)
    assert type(model) is Model and model(torch.ones(1)).item() == 1
    with pytest.raises(TypeError, match="neither subclasses the other"):
        compat.swap_class(model, torch.nn.Linear)


def test_nested_absmax_gives_the_second_level_of_a_double_quantized_state():
    import bitsandbytes.functional as bnbf

    weight = torch.randn(16, 256)
    _, nested_state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    nested = compat.nested_absmax(nested_state)
    assert nested.blocksize == nested_state.state2.blocksize
    assert nested.absmax is nested_state.state2.absmax and nested.offset is nested_state.offset
    _, plain_state = bnbf.quantize_4bit(weight, blocksize=64, compress_statistics=False, quant_type="nf4")
    assert compat.nested_absmax(plain_state) is None


@pytest.mark.parametrize("double_quant", [True, False], ids=["double-quant", "plain-scales"])
def test_nf4_weights_packed_for_the_cpu_kernels_come_back_to_bitsandbytes_own_layout(double_quant):
    """bitsandbytes' first CPU forward packs an NF4 weight for its AVX512-BF16 kernels; ``keep_nf4_layout`` unpacks
    one packed already (the same bytes; the values within bf16's rounding of the scales, which the packing keeps in
    bf16), with or without double quantization, and stops a later forward from packing it. The loader calls it
    before any forward: nothing is rounded there."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import _convert_weight_packed_for_cpu, dequantize_4bit

    layer = bnb.nn.Linear4bit(256, 96, compute_dtype=torch.bfloat16, compress_statistics=double_quant)
    weight = torch.randn(96, 256, generator=torch.Generator().manual_seed(0))
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=double_quant)
    model = torch.nn.Sequential(layer.to("cpu")).eval()
    layer.support_avx512bf16_for_cpu = False  # the reference output from bitsandbytes' own layout
    data, values = layer.weight.data.clone(), dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    x = torch.randn(3, 256, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(x)
    # as bitsandbytes' own first forward does on such a CPU
    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(data, layer.weight.quant_state)
    layer.support_avx512bf16_for_cpu = True  # as a fresh layer on such a CPU has it
    assert layer.weight.data.shape != data.shape
    compat.keep_nf4_layout(model)
    assert torch.equal(layer.weight.data, data) and not layer.weight.quant_state.packing_format_for_cpu
    assert layer.weight.quant_state.nested is double_quant
    torch.testing.assert_close(dequantize_4bit(layer.weight.data, layer.weight.quant_state), values, rtol=2**-6, atol=0)
    with torch.no_grad():
        again = model(x)
    assert layer.support_avx512bf16_for_cpu is False and torch.equal(layer.weight.data, data)  # left as it is
    assert ((again.float() - plain.float()).norm() / plain.float().norm()) < 2**-7  # the scales' rounding alone
