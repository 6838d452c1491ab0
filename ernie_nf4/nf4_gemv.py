"""Triton kernels for the prompt enhancer's one-token decode steps: an NF4 matrix-vector product and a fused
residual-add + RMSNorm.

Why: a decode step multiplies one token's activations by every weight of the PE once, so it is bound by reading
the weights. bitsandbytes' batch-1 path (``gemv_4bit``) first dequantizes the double-quantized absmax with two
extra kernels and then runs a kernel that reaches about a fifth of an H100's memory bandwidth; ``nf4_gemv`` reads
the same packed weights and the same double-quantized absmax as bitsandbytes stores them (no copy, no format
change, so low-vram moves and the package stay as they are) in one kernel. The RMSNorm kernel replaces the eight
small kernels of transformers' RMSNorm (plus the residual add before it) by one, since in a CUDA-graphed step the
count of small kernels, not their work, is what costs.

Layout read (bitsandbytes 0.46-0.50, ``Params4bit`` with ``quant_type="nf4"``): the weight ``(N, K)`` flattened
row-major, two 4-bit codes per byte, the even element in the high nibble; element ``i`` is
``code[nibble] * absmax[i // blocksize]``; with double quantization (``state.nested``)
``absmax[b] = state2.code[absmax_u8[b]] * state2.absmax[b // state2.blocksize] + state.offset``.

Only for the decode steps of ``pe_decoding``; bitsandbytes runs everywhere else. Triton is imported on first use,
so importing this module touches neither Triton nor CUDA.
"""

from __future__ import annotations

import functools
import logging

import torch

logger = logging.getLogger(__name__)


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def nf4_gemv_kernel(
        x_ptr,
        w_ptr,
        absmax_ptr,
        code_ptr,
        absmax2_ptr,
        code2_ptr,
        offset_ptr,
        y_ptr,
        N,
        K,
        BLOCKS_PER_ROW: tl.constexpr,
        NESTED: tl.constexpr,
        QBLOCK: tl.constexpr,
        QBLOCK2: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCKS: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        rows64 = rows.to(tl.int64)
        blocks = tl.arange(0, BLOCKS)
        half = tl.arange(0, QBLOCK // 2)
        # element-wise partial sums, reduced once at the end: no cross-thread reduction inside the loop
        acc = tl.zeros((BLOCK_N, BLOCKS, QBLOCK // 2), dtype=tl.float32)
        for first in range(0, BLOCKS_PER_ROW, BLOCKS):
            b = first + blocks
            x_at = b[:, None] * QBLOCK + 2 * half[None, :]
            x_even = tl.load(x_ptr + x_at).to(tl.float32)
            x_odd = tl.load(x_ptr + x_at + 1).to(tl.float32)
            byte_at = rows64[:, None, None] * (K // 2) + (b[None, :, None] * (QBLOCK // 2) + half[None, None, :])
            packed = tl.load(w_ptr + byte_at, mask=row_ok[:, None, None], other=0).to(tl.int32)
            w_even = tl.load(code_ptr + (packed >> 4))
            w_odd = tl.load(code_ptr + (packed & 15))
            block_at = rows64[:, None] * BLOCKS_PER_ROW + b[None, :]
            if NESTED:
                quantized = tl.load(absmax_ptr + block_at, mask=row_ok[:, None], other=0).to(tl.int32)
                outer = tl.load(absmax2_ptr + block_at // QBLOCK2, mask=row_ok[:, None], other=0.0)
                scale = tl.load(code2_ptr + quantized) * outer + tl.load(offset_ptr)
            else:
                scale = tl.load(absmax_ptr + block_at, mask=row_ok[:, None], other=0.0)
            acc += (w_even * x_even[None, :, :] + w_odd * x_odd[None, :, :]) * scale[:, :, None]
        y = tl.sum(tl.sum(acc, axis=2), axis=1)
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)

    @triton.jit
    def add_rmsnorm_kernel(x_ptr, add_ptr, w_ptr, h_ptr, y_ptr, H, eps, HAS_ADD: tl.constexpr, BLOCK: tl.constexpr):
        at = tl.arange(0, BLOCK)
        ok = at < H
        x = tl.load(x_ptr + at, mask=ok, other=0.0)
        if HAS_ADD:  # the residual add, rounded to the activations' dtype as the eager add is
            x = (x.to(tl.float32) + tl.load(add_ptr + at, mask=ok, other=0.0).to(tl.float32)).to(x.dtype)
            tl.store(h_ptr + at, x, mask=ok)
        xf = x.to(tl.float32)
        variance = tl.sum(xf * xf, axis=0) / H
        normed = (xf * (1.0 / tl.sqrt(variance + eps))).to(x.dtype)
        weight = tl.load(w_ptr + at, mask=ok, other=0.0)
        tl.store(y_ptr + at, (weight.to(tl.float32) * normed.to(tl.float32)).to(y_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def rope_cache_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        cos_ptr,
        sin_ptr,
        scale_ptr,
        pos_ptr,
        q_out_ptr,
        k_cache_ptr,
        v_cache_ptr,
        cache_len,
        HEADS: tl.constexpr,
        D: tl.constexpr,
        HAS_SCALE: tl.constexpr,
    ):
        # each product and sum rounded to bf16 like the eager ops: (x * cos) + (rotate_half(x) * sin), then * scale
        head = tl.program_id(0)
        d = tl.arange(0, D)
        partner = (d + D // 2) % D
        sign = tl.where(d < D // 2, -1.0, 1.0)
        cos = tl.load(cos_ptr + d).to(tl.float32)
        sin = tl.load(sin_ptr + d).to(tl.float32)
        if head < HEADS:
            x = tl.load(q_ptr + head * D + d)
            rotated = tl.load(q_ptr + head * D + partner).to(tl.float32) * sign
        else:
            x = tl.load(k_ptr + (head - HEADS) * D + d)
            rotated = tl.load(k_ptr + (head - HEADS) * D + partner).to(tl.float32) * sign
        a = (x.to(tl.float32) * cos).to(x.dtype).to(tl.float32)
        b = (rotated * sin).to(x.dtype).to(tl.float32)
        out = (a + b).to(x.dtype)
        if head < HEADS:
            if HAS_SCALE:
                out = (out.to(tl.float32) * tl.load(scale_ptr).to(tl.float32)).to(x.dtype)
            tl.store(q_out_ptr + head * D + d, out)
        else:
            at = ((head - HEADS) * cache_len + tl.load(pos_ptr)) * D + d
            tl.store(k_cache_ptr + at, out)
            tl.store(v_cache_ptr + at, tl.load(v_ptr + (head - HEADS) * D + d))

    @triton.jit
    def silu_mul_kernel(g_ptr, u_ptr, y_ptr, N, BLOCK: tl.constexpr):
        at = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = at < N
        g = tl.load(g_ptr + at, mask=ok, other=0.0)
        gf = g.to(tl.float32)
        act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype).to(tl.float32)
        u = tl.load(u_ptr + at, mask=ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + at, (act * u).to(g.dtype), mask=ok)

    return nf4_gemv_kernel, add_rmsnorm_kernel, rope_cache_kernel, silu_mul_kernel


def available() -> bool:
    """Triton importable and a CUDA device present."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def supports(module: torch.nn.Module) -> bool:
    """Whether ``nf4_gemv`` can stand in for ``module`` (a bitsandbytes NF4 ``Linear4bit`` on a GPU, no bias)."""
    weight = getattr(module, "weight", None)
    state = getattr(weight, "quant_state", None)
    if state is None or getattr(module, "bias", None) is not None:
        return False
    n, k = state.shape
    return (
        state.quant_type == "nf4"
        and weight.dtype == torch.uint8
        and weight.is_cuda
        and state.blocksize in (32, 64, 128, 256)
        and k % (state.blocksize * 8) == 0
        and (not state.nested or state.state2.blocksize == 256)
    )


# (rows per program, quantization blocks per loop step, warps, pipeline stages)
GEMV_CONFIGS = ((4, 4, 4, 3), (8, 4, 4, 3), (16, 4, 4, 3), (8, 8, 4, 3), (16, 8, 8, 3), (32, 4, 8, 3), (8, 4, 4, 5))


def _default_config(n: int, k: int) -> tuple[int, int, int, int]:
    """The fastest of ``GEMV_CONFIGS`` for the PE's shapes on an H100 (scripts/gpu_pe_bench.py's sweep)."""
    if n > 4096:
        return (8, 4, 4, 3)
    if n == 4096 and k % 512 == 0:
        return (16, 8, 8, 3)
    if k % 512 == 0:
        return (8, 8, 4, 3)
    return (8, 4, 4, 3)


def nf4_gemv(x: torch.Tensor, weight: torch.Tensor, config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """``x @ W.T`` for one token ``x`` (``K`` elements, any leading shape) and a bitsandbytes NF4 ``weight``
    (``Params4bit`` of shape ``(N, K)``); returns ``x``'s leading shape with ``N`` last, in ``x.dtype``."""
    state = weight.quant_state
    n, k = state.shape
    if x.numel() != k:
        raise ValueError(f"x must hold one token of {k} features, got shape {tuple(x.shape)}")
    gemv = _kernels()[0]
    x = x.contiguous()
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    rows, blocks, warps, stages = config or _default_config(n, k)
    if k % (state.blocksize * blocks):
        raise ValueError(f"K={k} must be a multiple of {state.blocksize * blocks} for this configuration")
    if state.nested:
        extra = (state.state2.absmax, state.state2.code, state.offset.reshape(1))
    else:
        extra = (state.absmax, state.absmax, state.absmax)  # unused when not nested
    gemv[(triton_cdiv(n, rows),)](
        x,
        weight,
        state.absmax,
        state.code,
        *extra,
        y,
        n,
        k,
        BLOCKS_PER_ROW=k // state.blocksize,
        NESTED=bool(state.nested),
        QBLOCK=state.blocksize,
        QBLOCK2=state.state2.blocksize if state.nested else 256,
        BLOCK_N=rows,
        BLOCKS=blocks,
        num_warps=warps,
        num_stages=stages,
    )
    return y


def add_rmsnorm(
    x: torch.Tensor, add: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + add`` (when given) and ``weight * rmsnorm(h)`` for one token, as transformers' RMSNorm computes it
    (float32 statistics, normalized value rounded to ``x.dtype`` before the weight); returns ``(h, normed)``."""
    kernel = _kernels()[1]
    hidden = x.shape[-1]
    if x.numel() != hidden:
        raise ValueError(f"x must hold one token, got shape {tuple(x.shape)}")
    x = x.contiguous()
    h = torch.empty_like(x) if add is not None else x
    y = torch.empty_like(x)
    block = 1 << (hidden - 1).bit_length()
    kernel[(1,)](x, add if add is not None else x, weight, h, y, hidden, eps, HAS_ADD=add is not None, BLOCK=block)
    return h, y


def rope_and_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    query_scale: torch.Tensor | None,
    position: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
) -> torch.Tensor:
    """One token's rotary embedding of ``q`` (``heads * D``) and ``k``, the query scale, and the key/value write into
    the caches ``(1, kv_heads, length, D)`` at ``position`` (a device tensor): twelve eager kernels in one. Returns
    the query as ``(1, kv_heads, heads // kv_heads, D)``, ready for attention on the key/value heads."""
    kv_heads, length, d = keys.shape[1], keys.shape[2], keys.shape[3]
    heads = q.numel() // d
    q_out = torch.empty((1, kv_heads, heads // kv_heads, d), dtype=q.dtype, device=q.device)
    scale = query_scale if query_scale is not None else q
    _kernels()[2][(heads + kv_heads,)](
        q,
        k,
        v,
        cos,
        sin,
        scale,
        position,
        q_out,
        keys,
        values,
        length,
        HEADS=heads,
        D=d,
        HAS_SCALE=query_scale is not None,
    )
    return q_out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` in one kernel (each rounded to the input dtype as the eager ops are)."""
    out = torch.empty_like(gate)
    n = gate.numel()
    _kernels()[3][(triton_cdiv(n, 1024),)](gate, up, out, n, BLOCK=1024)
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def reference_gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """What bitsandbytes computes: dequantize to ``x.dtype``, then ``F.linear`` (for tests and the benchmark)."""
    import bitsandbytes.functional as bnbf

    dense = bnbf.dequantize_4bit(weight.data, weight.quant_state).to(x.dtype)
    return torch.nn.functional.linear(x, dense)
