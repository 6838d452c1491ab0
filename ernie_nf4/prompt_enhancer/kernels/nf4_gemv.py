"""Triton kernels for the prompt enhancer's one-token decode steps (kernels in ``triton_kernels``): NF4
matrix-vector products (``nf4_gemv``; q/k/v in one launch, ``nf4_gemv3``; gate/up with SiLU, ``nf4_gate_up``), a
fused residual-add + RMSNorm, rotary embedding + KV-cache write, SiLU-times-up, and a flash-decoding attention over
the written cache entries (``decode_attention``).

Why: a decode step multiplies one token's activations by every weight of the PE once, so it is bound by reading
the weights. bitsandbytes' batch-1 path (``gemv_4bit``) dequantizes the double-quantized absmax with two extra
kernels per product and reaches 0.3-0.9 TB/s on an H100; ``nf4_gemv`` reads the same packed weights and the same
double-quantized absmax as bitsandbytes stores them (no copy, no format change, so low-vram moves and the package
stay as they are) in one kernel, at 0.36-1.0 TB/s, and fuses the products that share an input. The small kernels
replace several eager ones each, since in a CUDA-graphed step the count of small kernels is part of the cost.

Layout read (bitsandbytes 0.46-0.50, ``Params4bit`` with ``quant_type="nf4"``): the weight ``(N, K)`` flattened
row-major, two 4-bit codes per byte, the even element in the high nibble; element ``i`` is
``code[nibble] * absmax[i // blocksize]``; with double quantization (``state.nested``)
``absmax[b] = state2.code[absmax_u8[b]] * state2.absmax[b // state2.blocksize] + state.offset`` (read through
``compat.nested_absmax``).

For the prompt (many tokens) ``nf4_dequantize`` gives bitsandbytes' dense weight bit for bit in one kernel (its
``dequantize_4bit`` takes three and several Python layers), and the norm and rotary kernels take many tokens.

For ``prompt_enhancer.decoding``'s graphed path (decode steps and their prompt); ``dequantize_packed`` for the
transformer's FP8 weights and ``gelu_mul_fp8`` for its feed-forward's FP8 input (``runtime.compute``); bitsandbytes
runs everywhere else.
Triton is imported on first use, so importing this module touches neither Triton nor CUDA.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ...compat import nested_absmax

logger = logging.getLogger(__name__)


class Kernels(NamedTuple):
    gemv: object
    gemv3: object
    gate_up: object
    decode_attention: object
    add_rmsnorm: object
    rope_cache: object
    silu_mul: object
    dequantize: object
    gelu_mul_fp8: object


@functools.cache
def _kernels() -> Kernels:
    from . import triton_kernels as k

    return Kernels(
        k.gemv_kernel,
        k.gemv3_kernel,
        k.gate_up_kernel,
        k.decode_attention_kernel,
        k.add_rmsnorm_kernel,
        k.rope_cache_kernel,
        k.silu_mul_kernel,
        k.dequantize_kernel,
        k.gelu_mul_fp8_kernel,
    )


def available() -> bool:
    """Triton importable and a CUDA device present."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _nf4_state(module: torch.nn.Module):
    """The quantization state of a bias-free NF4 weight on a GPU with a float32 code (the table load reads 32-bit
    floats), else None: what every kernel here needs of a layer."""
    weight = getattr(module, "weight", None)
    state = getattr(weight, "quant_state", None)
    if state is None or getattr(module, "bias", None) is not None:
        return None
    nf4 = state.quant_type == "nf4" and weight.dtype == torch.uint8 and state.code.dtype == torch.float32
    return state if nf4 and weight.is_cuda else None


def supports(module: torch.nn.Module) -> bool:
    """Whether ``nf4_gemv`` can stand in for ``module`` (a bitsandbytes NF4 ``Linear4bit`` on a GPU, no bias)."""
    state = _nf4_state(module)
    if state is None:
        return False
    k = state.shape[1]
    return (
        module.weight.data_ptr() % 16 == 0
        and state.blocksize in (64, 128, 256)
        and k % (state.blocksize * GEMV_CONFIG.blocks) == 0
        and ((nested := nested_absmax(state)) is None or nested.blocksize == 256)
    )


@dataclass(frozen=True)
class GemvConfig:
    """A launch configuration: ``rows`` per program, quantization ``blocks`` per loop step, ``warps``, whether
    activations are read with one contiguous load per word (``split_x``) or eight strided ones, whether the next
    step's weights are loaded before this step's arithmetic (``prefetch``), Triton's pipeline ``stages``, and
    whether the NF4 table is read with a plain PTX load (``lut_asm``: twice as fast on an H100, see
    ``triton_kernels.nf4_value``)."""

    rows: int = 8
    blocks: int = 16
    warps: int = 8
    split_x: bool = False
    prefetch: bool = True
    stages: int = 1
    lut_asm: bool = True


GEMV_CONFIG = GemvConfig()  # the configuration the PE decoder launches (scripts/gpu_pe_bench.py sweeps others)
SWEEP = (
    (GEMV_CONFIG,)
    + tuple(
        GemvConfig(rows, blocks, warps, split_x, prefetch, 1, lut_asm)
        for rows, blocks, warps in ((8, 8, 8), (16, 16, 8), (8, 32, 8), (4, 16, 4), (8, 16, 4), (16, 8, 8))
        for split_x, prefetch, lut_asm in ((False, True, True), (True, True, True))
    )
    + (GemvConfig(lut_asm=False), GemvConfig(split_x=True), GemvConfig(prefetch=False))
)


def _operands(weight) -> tuple:
    """The six tensors the kernels read for one NF4 weight: packed codes as int32 words, then ``state_tensors``."""
    return (weight.data.reshape(-1).view(torch.int32), *state_tensors(weight.quant_state))


def state_tensors(state) -> tuple:
    """The five tensors of an NF4 weight's ``QuantState`` the kernels read: absmax, code, and the second-level
    absmax, code and offset (stand-ins when the absmax is not double quantized)."""
    if (nested := nested_absmax(state)) is not None:
        return (state.absmax, state.code, nested.absmax, nested.code, nested.offset.reshape(1))
    return (state.absmax, state.code, state.absmax, state.absmax, state.absmax)


def nesting(state) -> dict:
    """The kernels' quantization constants: double quantized or not, and both levels' block sizes."""
    nested = nested_absmax(state)
    return {
        "NESTED": nested is not None,
        "QBLOCK": state.blocksize,
        "QBLOCK2": 256 if nested is None else nested.blocksize,
    }


def _meta(weight, config: GemvConfig) -> dict:
    state = weight.quant_state
    k = state.shape[1]
    if k % (state.blocksize * config.blocks):
        raise ValueError(f"K={k} must be a multiple of {state.blocksize * config.blocks} for {config}")
    return {
        **nesting(state),
        "BN": config.rows,
        "NB": config.blocks,
        "SPLIT_X": config.split_x,
        "PREFETCH": config.prefetch,
        "LUT_ASM": config.lut_asm,
        "num_warps": config.warps,
        "num_stages": config.stages,
    }


def _one_token(x: torch.Tensor, k: int) -> torch.Tensor:
    if x.numel() != k:
        raise ValueError(f"x must hold one token of {k} features, got shape {tuple(x.shape)}")
    return x.contiguous()


def nf4_gemv(x: torch.Tensor, weight: torch.Tensor, config: GemvConfig | None = None) -> torch.Tensor:
    """``x @ W.T`` for one token ``x`` (``K`` elements, any leading shape) and a bitsandbytes NF4 ``weight``
    (``Params4bit`` of shape ``(N, K)``); returns ``x``'s leading shape with ``N`` last, in ``x.dtype``."""
    config = config or GEMV_CONFIG
    n, k = weight.quant_state.shape
    x = _one_token(x, k)
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    meta = _meta(weight, config)
    _kernels().gemv[(triton_cdiv(n, config.rows),)](x, y, *_operands(weight), n, k, **meta)
    return y


def nf4_gemv3(x: torch.Tensor, weights, config: GemvConfig | None = None) -> torch.Tensor:
    """``x`` times three NF4 weights of the same ``K`` (a layer's q, k and v projections) in one launch; returns
    the three outputs one after the other in one tensor (``N1 + N2 + N3`` last)."""
    config = config or GEMV_CONFIG
    first, second, third = weights
    shapes = [w.quant_state.shape for w in weights]
    k = shapes[0][1]
    if any(shape[1] != k for shape in shapes):
        raise ValueError(f"the three weights must share K, got shapes {shapes}")
    meta = _meta(first, config)
    if any(_meta(w, config) != meta for w in (second, third)):
        raise ValueError("the three weights must be quantized alike (block sizes, double quantization)")
    x = _one_token(x, k)
    sizes = [shape[0] for shape in shapes]
    y = torch.empty((*x.shape[:-1], sum(sizes)), dtype=x.dtype, device=x.device)
    programs = sum(triton_cdiv(n, config.rows) for n in sizes)
    operands = (*_operands(first), *_operands(second), *_operands(third))
    _kernels().gemv3[(programs,)](x, y, *operands, *sizes, k, **meta)
    return y


def nf4_gate_up(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, config: GemvConfig | None = None):
    """``silu(x @ G.T) * (x @ U.T)`` for one token and two NF4 weights of one shape (an MLP's gate and up
    projections), in one launch, rounded like the eager ops."""
    config = config or GEMV_CONFIG
    if gate.quant_state.shape != up.quant_state.shape:
        raise ValueError(f"gate and up must have one shape, got {gate.quant_state.shape} and {up.quant_state.shape}")
    n, k = gate.quant_state.shape
    meta = _meta(gate, config)
    if _meta(up, config) != meta:
        raise ValueError("gate and up must be quantized alike (block sizes, double quantization)")
    x = _one_token(x, k)
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    _kernels().gate_up[(triton_cdiv(n, config.rows),)](x, y, *_operands(gate), *_operands(up), n, k, **meta)
    return y


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor, scale: float):
    """One token's attention: ``q`` ``(1, kv_heads, groups, D)`` (as ``rope_and_cache`` returns it) against the
    caches ``(1, kv_heads, length, D)``, reading only entries ``0..position`` (``position``: a device tensor, so a
    captured graph serves every step). Returns ``(1, kv_heads * groups * D)``, heads in transformers' order."""
    _, kv_heads, groups, d = q.shape
    if keys.shape[1] != kv_heads or keys.shape[3] != d or keys.shape != values.shape:
        raise ValueError(f"q {tuple(q.shape)} and caches {tuple(keys.shape)}/{tuple(values.shape)} do not match")
    out = torch.empty((1, kv_heads * groups * d), dtype=q.dtype, device=q.device)
    padded = max(16, 1 << (groups - 1).bit_length())  # tl.dot needs 16 rows
    _kernels().decode_attention[(kv_heads,)](
        q.contiguous(),
        keys,
        values,
        position,
        out,
        keys.shape[2],
        scale,
        G=groups,
        GP=padded,
        D=d,
        BL=64,
        num_warps=4,
    )
    return out


def add_rmsnorm(
    x: torch.Tensor, add: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + add`` (when given) and ``weight * rmsnorm(h)`` for each token (last dimension), as transformers'
    RMSNorm computes it (float32 statistics, normalized value rounded to ``x.dtype`` before the weight); returns
    ``(h, normed)``."""
    kernel = _kernels().add_rmsnorm
    hidden = x.shape[-1]
    x = x.contiguous()
    if add is not None:
        add = add.contiguous()
    h = torch.empty_like(x) if add is not None else x
    y = torch.empty_like(x)
    block = 1 << (hidden - 1).bit_length()
    tokens = x.numel() // hidden
    kernel[(tokens,)](x, add if add is not None else x, weight, h, y, hidden, eps, HAS_ADD=add is not None, BLOCK=block)
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
    """The rotary embedding of ``q`` (``(1, T, heads * D)``) and ``k``, the query scale, and the key/value write into
    the caches ``(1, kv_heads, length, D)`` at ``position`` (``(T,)`` device positions, so a captured graph serves
    every step): twelve eager kernels in one. ``cos``/``sin``: ``(1, T, D)``; ``query_scale``: one per token.
    Returns the query as ``(1, heads, T, D)``; for one token that is ``(1, kv_heads, heads // kv_heads, D)``, ready
    for ``decode_attention``."""
    kv_heads, length, d = keys.shape[1], keys.shape[2], keys.shape[3]
    tokens = position.numel()
    heads = q.numel() // (d * tokens)
    if tokens == 1:
        q_out = torch.empty((1, kv_heads, heads // kv_heads, d), dtype=q.dtype, device=q.device)
    else:
        q_out = torch.empty((1, heads, tokens, d), dtype=q.dtype, device=q.device)
    scale = query_scale.contiguous() if query_scale is not None else q
    _kernels().rope_cache[(heads + kv_heads, tokens)](
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        cos.contiguous(),
        sin.contiguous(),
        scale,
        position,
        q_out,
        keys,
        values,
        length,
        tokens,
        HEADS=heads,
        KV_HEADS=kv_heads,
        D=d,
        HAS_SCALE=query_scale is not None,
    )
    return q_out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` in one kernel (each rounded to the input dtype as the eager ops are)."""
    out = torch.empty_like(gate)
    n = gate.numel()
    _kernels().silu_mul[(triton_cdiv(n, 1024),)](gate, up, out, n, BLOCK=1024)
    return out


# The widest row ``gelu_mul_fp8`` takes: a program holds its row in registers.
ROW_KERNEL_MAX = 32768


def gelu_mul_fp8(gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``up * gelu(gate)`` (``[rows, n]``, bf16 or fp16, each op rounded to that dtype as the eager ops round it)
    scaled per row into FP8 (E4M3) and the scales (``[rows, 1]``, float32: the row's largest magnitude over 448), in
    one kernel that reads each row once; ``n`` at most ``ROW_KERNEL_MAX``."""
    rows, n = gate.shape
    if n > ROW_KERNEL_MAX or up.shape != gate.shape:
        raise ValueError(f"gate and up must have the same shape, rows of at most {ROW_KERNEL_MAX}: {gate.shape}")
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty((rows, n), dtype=torch.float8_e4m3fn, device=gate.device)
    scales = torch.empty((rows, 1), dtype=torch.float32, device=gate.device)
    block = max(128, 1 << (n - 1).bit_length())
    # 8 warps for the transformer's 12,288-wide rows: the fastest there (scripts/gpu_activation_kernel_warps.py)
    warps = min(8, max(4, block // 2048))
    _kernels().gelu_mul_fp8[(rows,)](gate, up, out, scales, n, _over_fp8_max(), BLOCK=block, num_warps=warps)
    return out, scales


@functools.cache
def _over_fp8_max() -> float:
    """1 / 448 (FP8 E4M3's largest value) in float32, as torch's division by a number takes it."""
    return float(torch.tensor(1.0) / torch.tensor(torch.finfo(torch.float8_e4m3fn).max))


def dequantizes(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a plain bitsandbytes NF4 ``Linear4bit`` on a GPU, without bias, whose weight
    ``nf4_dequantize`` reads (an adapter wrapping one, such as a LoRA layer, is not)."""
    import bitsandbytes as bnb

    state = _nf4_state(module) if type(module) is bnb.nn.Linear4bit else None
    if state is None:
        return False
    n, k = state.shape
    return module.weight.data_ptr() % 4 == 0 and state.blocksize % 8 == 0 and (n * k) % 8 == 0


def nf4_dequantize(
    weight: torch.Tensor,
    dtype: torch.dtype = torch.bfloat16,
    lut_asm: bool = True,
    row_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """bitsandbytes' ``dequantize_4bit(weight, weight.quant_state)`` (the same values, one kernel instead of three):
    the dense ``(N, K)`` weight in ``dtype``, for the prompt's many-token products. ``row_scale``: see
    ``dequantize_packed``."""
    state = weight.quant_state
    return dequantize_packed(weight.data, *state_tensors(state), state.shape, nesting(state), dtype, lut_asm, row_scale)


def dequantize_packed(
    packed, absmax, code, absmax2, code2, offset, shape, nesting: dict, dtype, lut_asm=True, row_scale=None
) -> torch.Tensor:
    """``nf4_dequantize`` from the tensors of a weight's state (``state_tensors``, ``nesting``): ``packed`` holds its
    4-bit codes as bytes. With ``row_scale`` (``N`` float32 factors), each row is multiplied by its factor in float32
    before the one rounding to ``dtype`` (a per-channel scale into FP8: ``runtime.compute``); K must then be a
    multiple of 8."""
    n, k = shape
    if row_scale is not None and (k % 8 or tuple(row_scale.shape) != (n,) or row_scale.dtype != torch.float32):
        raise ValueError(f"row_scale must be {n} float32 factors of rows whose width (here {k}) is a multiple of 8")
    flat = packed.reshape(-1)
    words = (flat if flat.data_ptr() % 4 == 0 else flat.clone()).view(torch.int32)
    out = torch.empty((n, k), dtype=dtype, device=packed.device)
    block = 1024
    _kernels().dequantize[(triton_cdiv(words.numel(), block),)](
        words,
        out,
        absmax,
        code,
        absmax2,
        code2,
        offset,
        words if row_scale is None else row_scale,
        words.numel(),
        k // 8,
        **nesting,
        BLOCK=block,
        LUT_ASM=lut_asm,
        ROW_SCALED=row_scale is not None,
        num_warps=4,
        enable_fp_fusion=False,  # the nested absmax rounds its product before the offset, as bitsandbytes does
    )
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def reference_gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """What bitsandbytes computes: dequantize to ``x.dtype``, then ``F.linear`` (for tests and the benchmark)."""
    import bitsandbytes.functional as bnbf

    dense = bnbf.dequantize_4bit(weight.data, weight.quant_state).to(x.dtype)
    return torch.nn.functional.linear(x, dense)
