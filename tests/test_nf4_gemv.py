import sys

import pytest
import torch

from .support.fixtures import HAS_CUDA


def test_importing_touches_neither_triton_nor_cuda():
    import subprocess

    code = "import sys, ernie_nf4.prompt_enhancer.kernels.nf4_gemv; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cpu_modules_are_not_supported():
    from ernie_nf4.prompt_enhancer.kernels.nf4_gemv import dequantizes, supports

    assert not supports(torch.nn.Linear(64, 64, bias=False))
    assert not dequantizes(torch.nn.Linear(64, 64, bias=False))


def nf4_linear(n, k, nested=True):
    import bitsandbytes as bnb

    linear = bnb.nn.Linear4bit(
        k, n, bias=False, compute_dtype=torch.bfloat16, compress_statistics=nested, quant_type="nf4", device="meta"
    )
    dense = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * k**-0.5
    linear.weight = bnb.nn.Params4bit(dense, requires_grad=False, compress_statistics=nested, quant_type="nf4")
    return linear.to("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="Triton kernels need a GPU")
@pytest.mark.parametrize(
    "n,k,nested",
    [
        (4096, 3072, True),
        (1024, 3072, True),
        (3072, 9216, True),
        (9216, 3072, True),
        (640, 1024, False),
        (1004, 3072, True),
    ],
)
def test_nf4_gemv_equals_bitsandbytes_dequantize_then_matmul(n, k, nested):
    from ernie_nf4.prompt_enhancer.kernels.nf4_gemv import nf4_gemv, reference_gemv, supports

    torch.manual_seed(n + k)
    linear = nf4_linear(n, k, nested)
    assert supports(linear)
    for _ in range(3):  # fresh inputs each time
        x = torch.randn(1, 1, k, dtype=torch.bfloat16, device="cuda")
        out = nf4_gemv(x, linear.weight)
        ref = reference_gemv(x, linear.weight)
        assert out.shape == ref.shape == (1, 1, n) and out.dtype == torch.bfloat16
        assert torch.isfinite(out).all()
        error = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        assert error < 1e-2  # bf16 output rounding and another summation order
        assert ((out.float() - linear(x).float()).norm() / ref.float().norm()).item() < 1e-2


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="Triton kernels need a GPU")
def test_every_launch_configuration_computes_the_same_product():
    from ernie_nf4.prompt_enhancer.kernels.nf4_gemv import SWEEP, nf4_gemv, reference_gemv

    torch.manual_seed(3)
    linear = nf4_linear(1024, 4096)  # K a multiple of every configuration's step (2048 at most)
    x = torch.randn(1, 1, 4096, dtype=torch.bfloat16, device="cuda")
    ref = reference_gemv(x, linear.weight).float()
    for config in SWEEP:
        out = nf4_gemv(x, linear.weight, config).float()
        assert ((out - ref).norm() / ref.norm()).item() < 1e-2, config


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="Triton kernels need a GPU")
def test_fused_qkv_and_gate_up_products_equal_the_separate_ones():
    from ernie_nf4.prompt_enhancer.kernels.nf4_gemv import nf4_gate_up, nf4_gemv3, reference_gemv

    torch.manual_seed(4)
    q, k, v = nf4_linear(4096, 3072), nf4_linear(1024, 3072), nf4_linear(1024, 3072)
    x = torch.randn(1, 1, 3072, dtype=torch.bfloat16, device="cuda")
    out = nf4_gemv3(x, [q.weight, k.weight, v.weight])
    assert out.shape == (1, 1, 6144)
    for part, linear in zip(out.split([4096, 1024, 1024], -1), (q, k, v), strict=True):
        ref = reference_gemv(x, linear.weight).float()
        assert ((part.float() - ref).norm() / ref.norm()).item() < 1e-2
    gate, up = nf4_linear(9216, 3072), nf4_linear(9216, 3072)
    fused = nf4_gate_up(x, gate.weight, up.weight).float()
    ref = (torch.nn.functional.silu(reference_gemv(x, gate.weight)) * reference_gemv(x, up.weight)).float()
    assert ((fused - ref).norm() / ref.norm()).item() < 2e-2
    with pytest.raises(ValueError, match="gate and up"):
        nf4_gate_up(x, gate.weight, q.weight)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="Triton kernels need a GPU")
@pytest.mark.parametrize("position", [0, 63, 64, 200, 511])
def test_decode_attention_reads_the_written_entries_only(position):
    from ernie_nf4.prompt_enhancer.kernels.nf4_gemv import decode_attention

    torch.manual_seed(position)
    kv_heads, groups, d, length = 8, 4, 128, 512
    q = torch.randn(1, kv_heads, groups, d, dtype=torch.bfloat16, device="cuda")
    keys = torch.randn(1, kv_heads, length, d, dtype=torch.bfloat16, device="cuda")
    values = torch.randn_like(keys)
    keys[:, :, position + 1 :] = float("nan")  # unwritten entries must never be read
    values[:, :, position + 1 :] = float("nan")
    out = decode_attention(q, keys, values, torch.tensor([position], device="cuda"), d**-0.5)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.float(), keys[:, :, : position + 1].float(), values[:, :, : position + 1].float(), scale=d**-0.5
    )
    assert out.shape == (1, kv_heads * groups * d) and torch.isfinite(out).all()
    error = ((out.float() - ref.reshape(1, -1)).norm() / ref.norm()).item()
    assert error < 1e-2  # bf16 probabilities in the second product, as flash attention rounds them


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="Triton kernels need a GPU")
@pytest.mark.parametrize("with_add", [False, True])
@pytest.mark.parametrize("tokens", [1, 7])
def test_add_rmsnorm_matches_transformers_rmsnorm(with_add, tokens):
    from ernie_nf4.prompt_enhancer.kernels.nf4_gemv import add_rmsnorm

    torch.manual_seed(0)
    x = torch.randn(1, tokens, 3072, dtype=torch.bfloat16, device="cuda")
    add = torch.randn_like(x) if with_add else None
    weight = torch.rand(3072, dtype=torch.bfloat16, device="cuda") + 0.5
    h, y = add_rmsnorm(x, add, weight, 1e-5)
    expected_h = x + add if with_add else x
    hf = expected_h.float()
    expected = weight * (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    assert torch.equal(h, expected_h)
    # another summation order for the variance: at most one bf16 step apart
    torch.testing.assert_close(y, expected, atol=0, rtol=2**-7)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="Triton kernels need a GPU")
@pytest.mark.parametrize("scaled", [False, True])
def test_rope_and_cache_equals_the_eager_rotary_scale_and_cache_write(scaled):
    from ernie_nf4.prompt_enhancer.decoding import _apply_rotary
    from ernie_nf4.prompt_enhancer.kernels.nf4_gemv import rope_and_cache

    torch.manual_seed(1)
    heads, kv_heads, d, length, position = 32, 8, 128, 64, 37
    q = torch.randn(1, 1, heads * d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, 1, kv_heads * d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    angles = torch.rand(1, 1, d // 2, device="cuda") * 6
    cos = torch.cat((angles, angles), -1).cos().to(torch.bfloat16)
    sin = torch.cat((angles, angles), -1).sin().to(torch.bfloat16)
    scale = torch.full((1, 1, 1, 1), 1.0693, dtype=torch.bfloat16, device="cuda") if scaled else None
    keys = torch.randn(1, kv_heads, length, d, dtype=torch.bfloat16, device="cuda")
    values = torch.randn_like(keys)
    expected_keys, expected_values = keys.clone(), values.clone()
    q_out = rope_and_cache(q, k, v, cos, sin, scale, torch.tensor([position], device="cuda"), keys, values)
    eq, ek = _apply_rotary(q.view(1, 1, heads, d).transpose(1, 2), k.view(1, 1, kv_heads, d).transpose(1, 2), cos, sin)
    if scaled:
        eq = eq * scale
    expected_keys[:, :, position] = ek[:, :, 0]
    expected_values[:, :, position] = v.view(1, kv_heads, d)
    # the eager ops' bf16 roundings, up to one bf16 step of the products (|x| < 8) where the compiler fuses a
    # multiply-add (seen on an H100: a few elements one step apart); a wrong index or sign is off by O(1)
    torch.testing.assert_close(q_out.reshape(1, heads, d), eq.reshape(1, heads, d), atol=2**-4, rtol=0)
    torch.testing.assert_close(keys, expected_keys, atol=2**-4, rtol=0)
    assert torch.equal(values, expected_values)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="Triton kernels need a GPU")
def test_silu_mul_matches_eager_silu_times_up():
    from ernie_nf4.prompt_enhancer.kernels.nf4_gemv import silu_mul

    torch.manual_seed(2)
    gate = torch.randn(1, 1, 9216, dtype=torch.bfloat16, device="cuda") * 3
    up = torch.randn_like(gate)
    torch.testing.assert_close(silu_mul(gate, up), torch.nn.functional.silu(gate) * up, atol=1e-2, rtol=2**-7)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="Triton kernels need a GPU")
@pytest.mark.parametrize("scaled", [False, True])
def test_rope_and_cache_of_a_prompt_equals_the_eager_rotary_scale_and_cache_write(scaled):
    from ernie_nf4.prompt_enhancer.decoding import _apply_rotary
    from ernie_nf4.prompt_enhancer.kernels.nf4_gemv import rope_and_cache

    torch.manual_seed(5)
    heads, kv_heads, d, length, tokens = 32, 8, 128, 64, 19
    q = torch.randn(1, tokens, heads * d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, tokens, kv_heads * d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    angles = torch.rand(1, tokens, d // 2, device="cuda") * 6
    cos = torch.cat((angles, angles), -1).cos().to(torch.bfloat16)
    sin = torch.cat((angles, angles), -1).sin().to(torch.bfloat16)
    scale = None
    if scaled:  # one scale per token, as _query_scale gives them
        scale = (1 + torch.arange(tokens, device="cuda") / 8).to(torch.bfloat16)[None, None, :, None]
    keys = torch.randn(1, kv_heads, length, d, dtype=torch.bfloat16, device="cuda")
    values = torch.randn_like(keys)
    expected_keys, expected_values = keys.clone(), values.clone()
    positions = torch.arange(tokens, device="cuda")
    q_out = rope_and_cache(q, k, v, cos, sin, scale, positions, keys, values)
    shaped = (q.view(1, tokens, heads, d).transpose(1, 2), k.view(1, tokens, kv_heads, d).transpose(1, 2))
    eq, ek = _apply_rotary(*shaped, cos, sin)
    if scaled:
        eq = eq * scale
    expected_keys[:, :, :tokens] = ek
    expected_values[:, :, :tokens] = v.view(1, tokens, kv_heads, d).transpose(1, 2)
    assert q_out.shape == (1, heads, tokens, d)
    torch.testing.assert_close(q_out, eq, atol=2**-4, rtol=0)  # as in the one-token test
    torch.testing.assert_close(keys, expected_keys, atol=2**-4, rtol=0)  # entries past the prompt untouched
    assert torch.equal(values, expected_values)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="Triton kernels need a GPU")
@pytest.mark.parametrize("n,k,nested", [(9216, 3072, True), (1024, 3072, False), (1000, 72, True)])
def test_nf4_dequantize_gives_bitsandbytes_dense_weight_bit_for_bit(n, k, nested):
    import bitsandbytes.functional as bnbf

    from ernie_nf4.prompt_enhancer.kernels.nf4_gemv import dequantizes, nf4_dequantize

    torch.manual_seed(6)
    linear = nf4_linear(n, k, nested)
    assert dequantizes(linear)
    expected = bnbf.dequantize_4bit(linear.weight.data, linear.weight.quant_state)
    dense = nf4_dequantize(linear.weight)
    assert dense.shape == (n, k) and dense.dtype == torch.bfloat16
    assert torch.equal(dense, expected)
    linear.bias = torch.nn.Parameter(torch.zeros(n, dtype=torch.bfloat16, device="cuda"))
    assert not dequantizes(linear)  # the dense path would drop it: such layers stay bitsandbytes'
