"""The Triton kernels behind ``nf4_gemv`` (imported on first use: importing this module imports Triton).

See ``nf4_gemv`` for what each computes and the bitsandbytes layout read.
"""

import triton
import triton.language as tl


@triton.jit
def nf4_value(code_ptr, nibble, LUT_ASM: tl.constexpr):
    """``code[nibble]``. With ``LUT_ASM`` the table read is a plain PTX load in the nibbles' own layout: Triton's
    load would re-lay out the pointer tensor through shared memory for every one of these gathers."""
    if LUT_ASM:
        bits = tl.inline_asm_elementwise(
            "ld.global.nc.b32 $0, [$1];", "=r,l", [code_ptr + nibble], dtype=tl.int32, is_pure=True, pack=1
        )
        return bits.to(tl.float32, bitcast=True)
    return tl.load(code_ptr + nibble)


@triton.jit
def rows_dot(
    x_ptr,
    w_ptr,
    absmax_ptr,
    code_ptr,
    absmax2_ptr,
    code2_ptr,
    offset_ptr,
    rows,
    N,
    K,
    NESTED: tl.constexpr,
    QBLOCK: tl.constexpr,
    QBLOCK2: tl.constexpr,
    BN: tl.constexpr,
    NB: tl.constexpr,
    SPLIT_X: tl.constexpr,
    PREFETCH: tl.constexpr,
    LUT_ASM: tl.constexpr,
):
    """``sum_k W[row, k] * x[k]`` in float32 for ``BN`` rows; ``w_ptr`` is the packed weight read as int32
    words (eight 4-bit codes each: byte ``t`` of a word holds elements ``2t`` (high nibble) and ``2t + 1``)."""
    WPB: tl.constexpr = QBLOCK // 8  # int32 words per quantization block
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    blocks_per_row = K // QBLOCK
    words_per_row = K // 8
    b = tl.arange(0, NB)
    w = tl.arange(0, WPB)
    acc = tl.zeros((BN, NB, WPB), dtype=tl.float32)
    row_at = rows64[:, None, None] * words_per_row
    upcoming = tl.zeros((BN, NB, WPB), dtype=tl.int32)
    if PREFETCH:  # the next step's words are loaded before this step's arithmetic: two loads in flight
        first_words = b[:, None] * WPB + w[None, :]
        upcoming = tl.load(w_ptr + (row_at + first_words[None, :, :]), mask=row_ok[:, None, None], other=0)
    for first in range(0, blocks_per_row, NB):
        word = (first + b)[:, None] * WPB + w[None, :]  # (NB, WPB): word index within a row
        if PREFETCH:
            words = upcoming
            ahead = row_ok[:, None, None] & (first + NB < blocks_per_row)
            upcoming = tl.load(w_ptr + (row_at + (word + NB * WPB)[None, :, :]), mask=ahead, other=0)
        else:
            words = tl.load(w_ptr + (row_at + word[None, :, :]), mask=row_ok[:, None, None], other=0)
        if SPLIT_X:  # one contiguous load of the 8 activations of each word, split in registers
            xs = tl.load(x_ptr + (word[:, :, None] * 8 + tl.arange(0, 8)[None, None, :])).to(tl.float32)
            even, odd = tl.split(tl.reshape(xs, (NB, WPB, 2, 2, 2)))
            e0, e1 = tl.split(even)
            o0, o1 = tl.split(odd)
            x0, x4 = tl.split(e0)
            x2, x6 = tl.split(e1)
            x1, x5 = tl.split(o0)
            x3, x7 = tl.split(o1)
        else:
            x0 = tl.load(x_ptr + word * 8).to(tl.float32)
            x1 = tl.load(x_ptr + word * 8 + 1).to(tl.float32)
            x2 = tl.load(x_ptr + word * 8 + 2).to(tl.float32)
            x3 = tl.load(x_ptr + word * 8 + 3).to(tl.float32)
            x4 = tl.load(x_ptr + word * 8 + 4).to(tl.float32)
            x5 = tl.load(x_ptr + word * 8 + 5).to(tl.float32)
            x6 = tl.load(x_ptr + word * 8 + 6).to(tl.float32)
            x7 = tl.load(x_ptr + word * 8 + 7).to(tl.float32)
        part = nf4_value(code_ptr, (words >> 4) & 15, LUT_ASM) * x0[None, :, :]
        part += nf4_value(code_ptr, words & 15, LUT_ASM) * x1[None, :, :]
        part += nf4_value(code_ptr, (words >> 12) & 15, LUT_ASM) * x2[None, :, :]
        part += nf4_value(code_ptr, (words >> 8) & 15, LUT_ASM) * x3[None, :, :]
        part += nf4_value(code_ptr, (words >> 20) & 15, LUT_ASM) * x4[None, :, :]
        part += nf4_value(code_ptr, (words >> 16) & 15, LUT_ASM) * x5[None, :, :]
        part += nf4_value(code_ptr, (words >> 28) & 15, LUT_ASM) * x6[None, :, :]
        part += nf4_value(code_ptr, (words >> 24) & 15, LUT_ASM) * x7[None, :, :]
        block_at = rows64[:, None] * blocks_per_row + (first + b)[None, :]
        if NESTED:
            quantized = tl.load(absmax_ptr + block_at, mask=row_ok[:, None], other=0).to(tl.int32)
            outer = tl.load(absmax2_ptr + block_at // QBLOCK2, mask=row_ok[:, None], other=0.0)
            scale = tl.load(code2_ptr + quantized) * outer + tl.load(offset_ptr)
        else:
            scale = tl.load(absmax_ptr + block_at, mask=row_ok[:, None], other=0.0)
        acc += part * scale[:, :, None]
    return tl.sum(tl.sum(acc, axis=2), axis=1)


@triton.jit
def gemv_kernel(
    x_ptr,
    y_ptr,
    w,
    a,
    c,
    a2,
    c2,
    o,
    N,
    K,
    NESTED: tl.constexpr,
    QBLOCK: tl.constexpr,
    QBLOCK2: tl.constexpr,
    BN: tl.constexpr,
    NB: tl.constexpr,
    SPLIT_X: tl.constexpr,
    PREFETCH: tl.constexpr,
    LUT_ASM: tl.constexpr,
):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    y = rows_dot(x_ptr, w, a, c, a2, c2, o, rows, N, K, NESTED, QBLOCK, QBLOCK2, BN, NB, SPLIT_X, PREFETCH, LUT_ASM)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rows < N)


@triton.jit
def gemv3_kernel(
    x_ptr,
    y_ptr,
    w1,
    a1,
    c1,
    a21,
    c21,
    o1,
    w2,
    a2,
    c2,
    a22,
    c22,
    o2,
    w3,
    a3,
    c3,
    a23,
    c23,
    o3,
    N1,
    N2,
    N3,
    K,
    NESTED: tl.constexpr,
    QBLOCK: tl.constexpr,
    QBLOCK2: tl.constexpr,
    BN: tl.constexpr,
    NB: tl.constexpr,
    SPLIT_X: tl.constexpr,
    PREFETCH: tl.constexpr,
    LUT_ASM: tl.constexpr,
):
    """Three products of one ``x`` (q, k and v), written one after the other into ``y``."""
    pid = tl.program_id(0)
    p1 = tl.cdiv(N1, BN)
    p2 = tl.cdiv(N2, BN)
    lane = tl.arange(0, BN)
    if pid < p1:
        rows = pid * BN + lane
        y = rows_dot(
            x_ptr, w1, a1, c1, a21, c21, o1, rows, N1, K, NESTED, QBLOCK, QBLOCK2, BN, NB, SPLIT_X, PREFETCH, LUT_ASM
        )
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rows < N1)
    elif pid < p1 + p2:
        rows = (pid - p1) * BN + lane
        y = rows_dot(
            x_ptr, w2, a2, c2, a22, c22, o2, rows, N2, K, NESTED, QBLOCK, QBLOCK2, BN, NB, SPLIT_X, PREFETCH, LUT_ASM
        )
        tl.store(y_ptr + N1 + rows, y.to(y_ptr.dtype.element_ty), mask=rows < N2)
    else:
        rows = (pid - p1 - p2) * BN + lane
        y = rows_dot(
            x_ptr, w3, a3, c3, a23, c23, o3, rows, N3, K, NESTED, QBLOCK, QBLOCK2, BN, NB, SPLIT_X, PREFETCH, LUT_ASM
        )
        tl.store(y_ptr + N1 + N2 + rows, y.to(y_ptr.dtype.element_ty), mask=rows < N3)


@triton.jit
def gate_up_kernel(
    x_ptr,
    y_ptr,
    w1,
    a1,
    c1,
    a21,
    c21,
    o1,
    w2,
    a2,
    c2,
    a22,
    c22,
    o2,
    N,
    K,
    NESTED: tl.constexpr,
    QBLOCK: tl.constexpr,
    QBLOCK2: tl.constexpr,
    BN: tl.constexpr,
    NB: tl.constexpr,
    SPLIT_X: tl.constexpr,
    PREFETCH: tl.constexpr,
    LUT_ASM: tl.constexpr,
):
    """``silu(x @ G.T) * (x @ U.T)``, each rounded to the activations' dtype as the eager ops are."""
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    gate = rows_dot(
        x_ptr, w1, a1, c1, a21, c21, o1, rows, N, K, NESTED, QBLOCK, QBLOCK2, BN, NB, SPLIT_X, PREFETCH, LUT_ASM
    )
    up = rows_dot(
        x_ptr, w2, a2, c2, a22, c22, o2, rows, N, K, NESTED, QBLOCK, QBLOCK2, BN, NB, SPLIT_X, PREFETCH, LUT_ASM
    )
    dtype = y_ptr.dtype.element_ty
    g = gate.to(dtype).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
    tl.store(y_ptr + rows, (act * up.to(dtype).to(tl.float32)).to(dtype), mask=rows < N)


@triton.jit
def decode_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    pos_ptr,
    out_ptr,
    cache_len,
    scale,
    G: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    BL: tl.constexpr,
):
    """One token's attention for the ``G`` query heads of one key/value head over the cache's first
    ``position + 1`` entries (flash-decoding's online softmax; unwritten entries are never read)."""
    kvh = tl.program_id(0)
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    g_ok = g < G
    heads = kvh * G + g
    q = tl.load(q_ptr + heads[:, None] * D + d[None, :], mask=g_ok[:, None], other=0.0)
    length = tl.load(pos_ptr).to(tl.int32) + 1
    m = tl.full((GP,), float("-inf"), tl.float32)
    total = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, D), tl.float32)
    base = kvh.to(tl.int64) * cache_len * D
    for start in range(0, length, BL):
        t = start + tl.arange(0, BL)
        t_ok = t < length
        at = base + t[:, None] * D + d[None, :]
        k = tl.load(k_ptr + at, mask=t_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        s = tl.where(t_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        total = total * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + at, mask=t_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    out = acc / total[:, None]
    tl.store(out_ptr + heads[:, None] * D + d[None, :], out.to(out_ptr.dtype.element_ty), mask=g_ok[:, None])


@triton.jit
def add_rmsnorm_kernel(x_ptr, add_ptr, w_ptr, h_ptr, y_ptr, H, eps, HAS_ADD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * H  # one token per program
    at = tl.arange(0, BLOCK)
    x_ptr += row
    add_ptr += row
    h_ptr += row
    y_ptr += row
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


@triton.jit(do_not_specialize=["tokens"])  # one compiled kernel for every prompt length (and the decode steps)
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
    tokens,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    D: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    # each product and sum rounded to bf16 like the eager ops: (x * cos) + (rotate_half(x) * sin), then * scale;
    # program (head, token); the query goes out as (heads, tokens, D), key and value into the caches at the token's
    # position
    head = tl.program_id(0)
    token = tl.program_id(1)
    d = tl.arange(0, D)
    partner = (d + D // 2) % D
    sign = tl.where(d < D // 2, -1.0, 1.0)
    cos = tl.load(cos_ptr + token * D + d).to(tl.float32)
    sin = tl.load(sin_ptr + token * D + d).to(tl.float32)
    if head < HEADS:
        at = (token * HEADS + head) * D
        x = tl.load(q_ptr + at + d)
        rotated = tl.load(q_ptr + at + partner).to(tl.float32) * sign
    else:
        at = (token * KV_HEADS + head - HEADS) * D
        x = tl.load(k_ptr + at + d)
        rotated = tl.load(k_ptr + at + partner).to(tl.float32) * sign
    a = (x.to(tl.float32) * cos).to(x.dtype).to(tl.float32)
    b = (rotated * sin).to(x.dtype).to(tl.float32)
    out = (a + b).to(x.dtype)
    if head < HEADS:
        if HAS_SCALE:
            out = (out.to(tl.float32) * tl.load(scale_ptr + token).to(tl.float32)).to(x.dtype)
        tl.store(q_out_ptr + (head * tokens + token) * D + d, out)
    else:
        cached = ((head - HEADS) * cache_len + tl.load(pos_ptr + token)) * D + d
        tl.store(k_cache_ptr + cached, out)
        tl.store(v_cache_ptr + cached, tl.load(v_ptr + at + d))


@triton.jit
def silu_mul_kernel(g_ptr, u_ptr, y_ptr, N, BLOCK: tl.constexpr):
    at = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = at < N
    g = tl.load(g_ptr + at, mask=ok, other=0.0)
    gf = g.to(tl.float32)
    act = (gf / (1.0 + tl.exp(-gf))).to(g.dtype).to(tl.float32)
    u = tl.load(u_ptr + at, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + at, (act * u).to(g.dtype), mask=ok)


@triton.jit
def gelu_mul_fp8_kernel(g_ptr, u_ptr, y_ptr, scale_ptr, N, over_max, BLOCK: tl.constexpr):
    # one row per program, read once: act = gelu(gate) (exact, erf), rounded to the input dtype, times up, rounded
    # again (as the eager ops round); the row's largest magnitude times ``over_max`` (1/448 in float32) is its scale,
    # and the row times that scale's inverse is rounded to FP8, as ``runtime.compute._per_token`` does in torch ops
    # on a GPU (which divide by a number as a product with its reciprocal, and take a tensor's inverse exactly)
    program = tl.program_id(0)
    row = program.to(tl.int64) * N
    at = tl.arange(0, BLOCK)
    ok = at < N
    g = tl.load(g_ptr + row + at, mask=ok, other=0.0)
    gf = g.to(tl.float32)
    act = (gf * 0.5 * (1.0 + tl.erf(gf * 0.7071067811865476))).to(g.dtype).to(tl.float32)
    u = tl.load(u_ptr + row + at, mask=ok, other=0.0).to(tl.float32)
    y = (u * act).to(g.dtype).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(y), axis=0), 1e-12)
    scale = amax * over_max
    tl.store(scale_ptr + program, scale)
    inverse = tl.div_rn(tl.zeros_like(scale) + 1.0, scale)  # correctly rounded (Triton's ``/`` is approximate)
    tl.store(y_ptr + row + at, (y * inverse).to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def dequantize_kernel(
    w_ptr,
    y_ptr,
    absmax_ptr,
    code_ptr,
    absmax2_ptr,
    code2_ptr,
    offset_ptr,
    row_scale_ptr,
    WORDS,
    ROW_WORDS,
    NESTED: tl.constexpr,
    QBLOCK: tl.constexpr,
    QBLOCK2: tl.constexpr,
    BLOCK: tl.constexpr,
    LUT_ASM: tl.constexpr,
    ROW_SCALED: tl.constexpr,
):
    """The dense weight, as bitsandbytes' ``dequantize_4bit`` computes it: ``code[nibble] * absmax`` in float32
    (the nested absmax as ``code2[q] * absmax2`` plus the offset, two roundings: launch without fp fusion), rounded
    once to ``y``'s dtype. With ``ROW_SCALED``, each row (``ROW_WORDS`` words) is first multiplied by its factor in
    ``row_scale`` (float32), in float32. ``BLOCK`` int32 words (8 elements each) per program."""
    word = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = word < WORDS
    words = tl.load(w_ptr + word, mask=ok, other=0)
    block = word // (QBLOCK // 8)  # the 8 elements of a word share one quantization block
    if NESTED:
        quantized = tl.load(absmax_ptr + block, mask=ok, other=0).to(tl.int32)
        outer = tl.load(absmax2_ptr + block // QBLOCK2, mask=ok, other=0.0)
        scale = tl.load(code2_ptr + quantized) * outer + tl.load(offset_ptr)
    else:
        scale = tl.load(absmax_ptr + block, mask=ok, other=0.0)
    element = tl.arange(0, 8)
    nibbles = (words[:, None] >> ((element ^ 1) * 4)[None, :]) & 15  # element 2t: byte t's high nibble
    values = nf4_value(code_ptr, nibbles, LUT_ASM) * scale[:, None]
    if ROW_SCALED:  # a row's words never straddle rows: its width is a multiple of 8
        values = values * tl.load(row_scale_ptr + word // ROW_WORDS, mask=ok, other=0.0)[:, None]
    tl.store(y_ptr + (word[:, None] * 8 + element[None, :]), values.to(y_ptr.dtype.element_ty), mask=ok[:, None])
