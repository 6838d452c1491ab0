"""Attention in FP8 (``runtime.fp8_attention``): the operator against float64 attention, the fixed query/key scales
against the worst input the norms let through, and the real NF4 transformer running it eagerly, compiled and under
a LoRA. On a CPU the operator runs its torch ops (switched on by hand: ``fp8_attention_on``); on a GPU with cuDNN's
kernel the same tests run the kernel, and one more compares the kernel with the torch ops."""

import math

import pytest
import torch

from ernie_nf4.request import LoraChoice
from ernie_nf4.runtime import compute, fp8_attention
from ernie_nf4.runtime.compute import Compute, apply_compute, fp8_product

from .support.fixtures import DEVICE, HAS_CUDA
from .test_compute import (  # noqa: F401
    compiled_like_eager,
    forward,
    nf4_transformer,
    relative_error,
    style_lora,
    traced,
)

pytestmark = pytest.mark.nf4
FP8 = torch.float8_e4m3fn


def quantized(t: torch.Tensor, amax: float) -> tuple[torch.Tensor, float]:
    scale = amax / 448
    return (t / scale).to(FP8), scale


def packed_inputs(segments, heads=4, head_dim=64, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    tokens = sum(segments)
    q, k, v = (torch.randn(tokens, heads, head_dim, generator=g).to(device) for _ in range(3))
    (q8, qs), (k8, ks), (v8, vs) = quantized(q, 5.0), quantized(k, 5.0), quantized(v, float(v.abs().max()))
    scales = torch.tensor([qs, ks, vs, 1 / vs], device=device)
    return (q8, k8, v8, scales), vs


def attention_in_float64(q8, k8, v8, scales, segments) -> torch.Tensor:
    q, k, v = (t.double() * s for t, s in zip((q8, k8, v8), scales[:3].double(), strict=True))
    parts, start = [], 0
    for length in segments:
        rows = [t[start : start + length].transpose(0, 1) for t in (q, k, v)]
        weights = torch.softmax(rows[0] @ rows[1].transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        parts.append((weights @ rows[2]).transpose(0, 1))
        start += length
    return torch.cat(parts)


@pytest.mark.parametrize("segments", [[40, 24], [32, 32, 17]], ids=["two", "equal-and-odd"])
def test_the_operator_attends_within_each_sample_as_float64_does(segments):
    inputs, value_scale = packed_inputs(segments)
    out = fp8_attention.attention(*inputs, segments)
    assert out.dtype == FP8 and out.shape == inputs[0].shape
    want = attention_in_float64(*inputs, segments)
    got = out.double() * value_scale  # the output is on value's scale
    assert relative_error(got, want) < 0.06  # FP8's rounding of the output (and, in cuDNN's kernel, of softmax)
    # no sample sees another: changing the last sample's tokens leaves the others' outputs as they were
    changed = [t.clone() for t in inputs]
    changed[2][-segments[-1] :] = (torch.randn_like(changed[2][-segments[-1] :], dtype=torch.float32)).to(FP8)
    again = fp8_attention.attention(*changed, segments)
    kept = sum(segments[:-1])
    assert torch.equal(again[:kept].view(torch.uint8), out[:kept].view(torch.uint8))
    assert not torch.equal(again[kept:].view(torch.uint8), out[kept:].view(torch.uint8))


@pytest.mark.skipif(not HAS_CUDA, reason="cuDNN's kernel needs a GPU")
@pytest.mark.cuda
def test_cudnns_kernel_gives_what_the_torch_ops_give():
    device = str(torch.device("cuda", torch.cuda.current_device()))
    if torch.cuda.get_device_capability() < (9, 0):
        assert not fp8_attention.kernel_runs(device)
        return
    assert fp8_attention.kernel_runs(device), "install nvidia-cudnn-frontend for FP8 attention on this card"
    segments = [300, 300, 173]
    inputs, _ = packed_inputs(segments, heads=8, head_dim=128, seed=3, device="cuda")
    kernel = fp8_attention._on_cudnn(*inputs, segments).float()
    ops = fp8_attention._in_torch(*inputs, segments).float()
    assert relative_error(kernel, ops) < 0.08


def test_the_output_keeps_room_for_probabilities_rounded_up():
    """One query over a key it prefers and many equal ones, value at its largest everywhere: the output is value's
    largest times the probabilities' sum, which FP8's rounding of them (in cuDNN's kernel) takes past one for some
    scores. It must stay finite: past FP8's range the output would be NaN."""
    tokens, head_dim = 53, 64
    q = torch.zeros(tokens, 1, head_dim, device=DEVICE)
    k, v = torch.zeros_like(q), torch.zeros_like(q)
    q[:, :, 0], k[1:, :, 0], v[:, :, 0] = 1.0, -32.0, 448.0
    q8, k8, v8 = (t.to(FP8) for t in (q, k, v))
    value_scale = 1 / 448
    out_scale = value_scale * fp8_attention.OUTPUT_HEADROOM
    largest = 0.0
    for key_scale in torch.linspace(0.5, 9, 120).tolist():
        scales = torch.tensor([1.0, key_scale / 4, value_scale, 1 / out_scale], device=DEVICE)
        out = fp8_attention.attention(q8, k8, v8, scales, [tokens]).float()
        assert not out.isnan().any()
        largest = max(largest, float(out.abs().max()) * out_scale)
    assert 0.9 <= largest <= 1.13  # value's largest (1.0), give or take the sum's and the output's rounding


def test_query_and_key_scales_hold_the_largest_value_the_norm_lets_through(tiny_package, nf4_everywhere):
    from ernie_nf4.runtime.fast_transformer import _projections, _rotate

    model = nf4_transformer(tiny_package, Compute.FP8)
    attn = model.layers[0].self_attention
    assert hasattr(attn, "fp8_query_scale") and hasattr(attn, "fp8_key_scale")
    with torch.no_grad():
        attn.norm_q.weight.uniform_(-2.0, 2.0)
        attn.norm_q.weight[5] = 3.0  # a weight's largest magnitude sets the bound
        attn.norm_k.weight.fill_(0.5)
        fp8_attention.prepare(attn)
        head_dim = attn.norm_q.weight.shape[0]
        assert float(attn.fp8_query_scale) * 448 == pytest.approx(math.sqrt(head_dim) * 3.0, rel=0.03)
        hidden = attn.to_q.in_features
        h = torch.zeros(1, 6, hidden, dtype=torch.bfloat16, device=DEVICE)
        h[0, :, :] = torch.randn(6, hidden).to(h)
        tokens = h.shape[1]
        angle = torch.rand(1, tokens, 1, head_dim, device=DEVICE) * 6.3
        q, k, _ = _projections(h, angle.cos().to(h), angle.sin().to(h), attn)
        # the worst cases: one head's whole energy in the channel of the largest weight, the rotary angle zero; and
        # split between that channel and its rotary partner, turned into the one channel
        top = int(attn.norm_q.weight.abs().argmax())
        partner = (top + head_dim // 2) % head_dim
        attn.norm_q.weight[partner] = 3.0
        fp8_attention.prepare(attn)
        alone = torch.zeros(1, 1, 1, head_dim, dtype=torch.bfloat16, device=DEVICE)
        alone[..., top] = 1.0
        split = torch.zeros_like(alone)
        split[..., top], split[..., partner] = (1.0, -1.0) if top < partner else (-1.0, 1.0)
        quarter = torch.full_like(alone, math.cos(math.pi / 4))
        worst = [attn.norm_q(alone), _rotate(attn.norm_q(split), quarter, quarter)]
    checks = [(q, attn.fp8_query_scale), (k, attn.fp8_key_scale)] + [(w, attn.fp8_query_scale) for w in worst]
    for values, scale in checks:  # before the cast: torch's cast to FP8 saturates, it would hide an overflow
        assert float((values.float() / scale).abs().max()) <= 448
    for w in worst:  # the bound is reached, not loose
        assert float((w.float() / attn.fp8_query_scale).abs().max()) > 420


def test_segments_must_cover_the_tokens():
    inputs, _ = packed_inputs([40, 24])
    with pytest.raises(RuntimeError, match="must sum to 64 tokens"):
        fp8_attention.attention(*inputs, [40, 20])


def fp8_attention_everywhere(model) -> None:
    for block in model.layers:
        block.self_attention.fp8_attention_on = True
        block.self_attention.fp8_attention_min_tokens = 1  # the tiny model's samples are short


def own_product_for_the_output_projection(model):
    """``model`` with its output projections taking their own product for any call (too few rows for FP8)."""
    for block in model.layers:
        block.self_attention.to_out[0].compute_min_rows = 10**6
    return model


def test_the_transformer_attends_in_fp8_close_to_its_fp8_products_alone(tiny_package, nf4_everywhere):
    bf16 = forward(nf4_transformer(tiny_package))
    products_only = nf4_transformer(tiny_package)
    apply_compute(products_only, Compute.FP8, fp8_attention=False)
    reference = forward(products_only)
    model = nf4_transformer(tiny_package, Compute.FP8)
    fp8_attention_everywhere(model)
    calls = []
    model.layers[0].self_attention.to_out[0].register_forward_pre_hook(lambda *a: calls.append("to_out"))
    ours = forward(model)
    assert calls == []  # the output projection took the attention's FP8 output straight into its product
    assert 0 < relative_error(ours, reference) < 0.05
    assert relative_error(ours, bf16) < 0.07
    assert torch.equal(forward(model), ours)
    # where the output projection keeps its own product (too few rows), attention stays as it was
    own = forward(own_product_for_the_output_projection(model))
    assert torch.equal(own, forward(own_product_for_the_output_projection(products_only)))
    assert calls


@pytest.mark.slow
def test_compiled_blocks_run_attention_in_fp8(tiny_package, nf4_everywhere, tmp_path):
    model = nf4_transformer(tiny_package, Compute.FP8)
    fp8_attention_everywhere(model)
    compiled_like_eager(model, tmp_path)


def test_compiled_blocks_call_the_fp8_attention_operator(tiny_package, nf4_everywhere):
    from ernie_nf4.runtime.fast_transformer import dummy_call

    model = nf4_transformer(tiny_package, Compute.FP8)
    fp8_attention_everywhere(model)
    ops: set[str] = set()
    block = model.layers[0]
    call = dummy_call(model, (8, 8), (5, 9), 0)
    eager = forward(model)
    packed = model._pack(call["hidden_states"], call["timestep"], call["text_bth"], call["text_lens"])
    with torch.no_grad():
        traced(block, ops)(packed.x, packed.rotary, packed.temb, packed.segments)
    assert "ernie_nf4.fp8_attention.default" in ops
    assert eager.isfinite().all()


def test_a_lora_on_the_output_projection_adds_its_term_under_fp8_attention(tiny_package, nf4_everywhere, request):
    lora_path = request.getfixturevalue("style_lora")
    from ernie_nf4.runtime.lora import attach_loras
    from ernie_nf4.runtime.lora_files import linear_shapes, read_lora

    model = nf4_transformer(tiny_package, Compute.FP8)
    fp8_attention_everywhere(model)
    plain = forward(model)
    slots = attach_loras(model, [read_lora("style", lora_path, linear_shapes(model))])
    to_out = model.layers[0].self_attention.to_out[0]
    assert hasattr(to_out, "add_lora_term")
    slots.select([LoraChoice("style", 0.0)])
    assert torch.equal(forward(model), plain)
    slots.select([LoraChoice("style", 1.0)])
    assert relative_error(forward(model), plain) > 0.01
    # the term the output projection adds to its FP8 product is the LoRA's term of the attention's values, up to
    # their rounding to FP8 (one scale for the whole input, as the attention's output has)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, to_out.in_features, generator=g).to(DEVICE, torch.bfloat16)
    scale = (x.abs().amax().float() / 448).expand(40, 1).contiguous()
    xq = (x.float() / scale).to(FP8)
    with torch.no_grad():
        term = fp8_product(to_out, xq, scale).float() - compute._product(to_out, xq, scale, Compute.FP8).float()
        want = to_out.add_lora_term(x, torch.zeros(40, to_out.out_features, dtype=torch.bfloat16, device=DEVICE))
    assert float(want.float().norm()) > 0
    assert relative_error(term, want) < 0.06


def test_without_the_kernel_or_fp8_products_attention_stays_bf16(tiny_package, nf4_everywhere):
    model = nf4_transformer(tiny_package, Compute.FP8)
    attn = model.layers[0].self_attention
    # on by itself only where cuDNN's kernel runs; switched on by hand, the torch ops run it anywhere
    least = fp8_attention.MIN_SAMPLE_TOKENS
    assert fp8_attention.uses_fp8(attn, 2 * least, 2) == fp8_attention.kernel_runs(str(attn.fp8_query_scale.device))
    attn.fp8_attention_on = True
    assert fp8_attention.uses_fp8(attn, 2 * least, 2) and fp8_attention.uses_fp8(attn, least)
    # shorter samples stay bf16: the kernel's call would cost more than it saves
    assert not fp8_attention.uses_fp8(attn, 2 * least - 1, 2) and not fp8_attention.uses_fp8(attn, least - 1)
    bf16 = nf4_transformer(tiny_package)
    assert not hasattr(bf16.layers[0].self_attention, "fp8_query_scale")
    no_attention = nf4_transformer(tiny_package)
    apply_compute(no_attention, Compute.FP8, fp8_attention=False)
    assert not hasattr(no_attention.layers[0].self_attention, "fp8_query_scale")
    int8 = nf4_transformer(tiny_package, Compute.INT8)
    assert not hasattr(int8.layers[0].self_attention, "fp8_query_scale")


def test_the_compile_record_tells_fp8_attention_from_bf16_attention(tiny_package, nf4_everywhere):
    from ernie_nf4.runtime.compile_record import describe

    model = nf4_transformer(tiny_package, Compute.FP8)
    for block in model.layers:
        block.self_attention.fp8_attention_on = False
    bf16_attention = describe(model)
    fp8_attention_everywhere(model)
    fp8 = describe(model)
    assert fp8["fp8_attention"] and not bf16_attention["fp8_attention"]
    assert fp8 != bf16_attention  # a record of the one never promises the other's compile
