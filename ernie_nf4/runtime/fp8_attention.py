"""Attention in FP8, for blocks whose linear layers multiply in FP8 (``compute.apply_compute``).

cuDNN's fused FP8 attention kernel, reached through the cuDNN frontend (the ``nvidia-cudnn-frontend`` package;
without it, or on a card where the kernel does not run, attention stays in bf16). On an NVIDIA Hopper GPU the kernel
writes FP8 only, which is what the block's next product takes: the attention output goes into the output
projection's FP8 product as it is, with no scaling of its own. In one block:

- query and key are rounded to FP8 (E4M3) with one scale each, fixed at load: after the model's RMS norm (each head
  vector's values squared sum to at most its width) and the rotary embedding (which turns pairs of values), no value
  exceeds ``sqrt(head_dim)`` times the norm's largest weight, so that bound over FP8's largest value (448) is the
  scale; FP8 is a floating-point format, so a loose bound costs range at the bottom, not precision;
- value is scaled by its largest magnitude in the call (one reduction);
- the kernel computes softmax(q k^T / sqrt(head_dim)) v per sample (``segments``), its probabilities in FP8 too, and
  writes the output in FP8 on value's scale times ``OUTPUT_HEADROOM``: each output is a weighted mean of value's
  rows, no larger than they are, but the probabilities' rounding can make their weights sum to a few percent over
  one.

``attention`` is an operator of its own (``ernie_nf4::fp8_attention``), so that compiled blocks call the kernel as it
is; elsewhere (a CPU, or a shape the kernel declines) it runs the same arithmetic in torch ops.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
# bf16 rounding in the norm and the rotary embedding can take a value a few parts in a thousand past the bound.
BOUND_MARGIN = 1.02
# Probabilities are scaled into FP8's range before they are rounded (cuDNN's ``scale_s``), and back after.
PROBABILITY_SCALE = FP8_MAX
# The output's scale over value's: rounded to FP8, a row's probabilities can sum to up to about 1.06.
OUTPUT_HEADROOM = 1.125
# Tokens a sample (on average) below which attention stays bf16: on shorter samples the kernel call costs more than its
# arithmetic saves (`python scripts/gpu_compute_step.py` at 512x512, 1,280 tokens a sample, is slower with it).
MIN_SAMPLE_TOKENS = 4096
_GRAPHS_MAX = 64  # built graphs kept (one per token count a sample has, and batch of equal samples)
_graphs: OrderedDict[tuple, tuple | Exception] = OrderedDict()  # least recently used first
_lock = threading.Lock()
_local = threading.local()


@functools.cache
def kernel_runs(device: str) -> bool:
    """Whether cuDNN's FP8 attention kernel runs on ``device`` and gives what the torch ops give (relative error
    under 0.1 on a small random sample: FP8's rounding of the probabilities); checked once, one log line if not."""
    if not device.startswith("cuda") or torch.version.hip is not None:
        return False
    if torch.cuda.get_device_capability(torch.device(device)) < (9, 0):
        return False
    try:
        import cudnn  # noqa: F401
    except ImportError:
        logger.info("attention stays in bf16: FP8 attention needs `pip install nvidia-cudnn-frontend`")
        return False
    g = torch.Generator(device=device).manual_seed(0)
    segments = [67, 67, 29]  # odd lengths, as an image's tokens and its prompt's make them, and a batch of two
    q, k, v = (torch.randn(sum(segments), 4, 64, device=device, generator=g) for _ in range(3))
    scales = torch.tensor([3 / FP8_MAX, 3 / FP8_MAX, 4 / FP8_MAX, FP8_MAX / 4], device=device)
    q8, k8, v8 = ((t.clamp(-3, 3) / s).to(FP8) for t, s in zip((q, k, v), scales[:3].tolist(), strict=True))
    try:
        got = _on_cudnn(q8, k8, v8, scales, segments).float()
    except Exception as err:  # no engine for the card, an old cuDNN, a driver that cannot launch it
        logger.warning("cuDNN's FP8 attention does not run on %s (%s); attention stays in bf16", device, err)
        return False
    want = _in_torch(q8, k8, v8, scales, segments).float()
    error = float((got - want).norm() / want.norm())
    if not error < 0.1:
        logger.warning("cuDNN's FP8 attention differs from torch's on %s (%.3f); attention stays bf16", device, error)
        return False
    return True


@torch.library.custom_op("ernie_nf4::fp8_attention", mutates_args=())
def attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scales: torch.Tensor, segments: list[int]
) -> torch.Tensor:
    """Attention within each sample of packed FP8 tokens (``[tokens, heads, head_dim]`` each, ``segments``: tokens
    per sample). ``scales`` (float32): query's, key's and value's scale, then the output's inverse scale
    (``self_attention``'s: value's with ``OUTPUT_HEADROOM``). The output (``[tokens, heads, head_dim]``, FP8) is
    on the scale ``scales[3]`` inverts."""
    torch._check(sum(segments) == query.shape[0], lambda: f"segments {segments} must sum to {query.shape[0]} tokens")
    if query.is_cuda and kernel_runs(str(query.device)):
        try:
            return _on_cudnn(query, key, value, scales, segments)
        except _Declined:  # a shape the kernel declines (said once, when its graph was built): torch ops
            pass
    return _in_torch(query, key, value, scales, segments)


@attention.register_fake
def _(query, key, value, scales, segments):
    torch._check(sum(segments) == query.shape[0], lambda: f"segments {segments} must sum to {query.shape[0]} tokens")
    return torch.empty_like(query)


class _Declined(RuntimeError):
    """cuDNN built no plan for a shape (kept in the graph cache, so that it is asked once)."""


def _in_torch(query, key, value, scales, segments) -> torch.Tensor:
    """The operator's arithmetic in torch ops: dequantized, float32 attention per sample, rounded to FP8."""
    q, k, v = (t.float() * s for t, s in zip((query, key, value), scales[:3], strict=True))
    parts, start = [], 0
    for length in segments:
        end = start + length
        rows = [t[start:end].transpose(0, 1) for t in (q, k, v)]  # [heads, tokens, head_dim]
        parts.append(F.scaled_dot_product_attention(*rows).transpose(0, 1))
        start = end
    return (torch.cat(parts) * scales[3]).to(FP8)


def _on_cudnn(query, key, value, scales, segments) -> torch.Tensor:
    """The operator on cuDNN's kernel: one call for each run of samples of the same length (a batch of them)."""
    with torch.cuda.device(query.device):  # the kernel runs on the device current at the call
        query, key, value = (t.contiguous() for t in (query, key, value))
        return _execute(query, key, value, scales, segments)


def _execute(query, key, value, scales, segments) -> torch.Tensor:
    out = torch.empty_like(query)
    handle = _handle(query.device)
    scalars = [scales[i : i + 1].view(1, 1, 1, 1) for i in range(4)]
    probability = _probability_scales(query.device)
    start = 0
    for length, count in _runs_of(segments):
        end = start + length * count
        built = _graph(query.device, count, length, query.shape[1], query.shape[2])
        if isinstance(built, _Declined):
            raise built
        graph, tensors, workspace_size = built
        workspace = torch.empty(max(workspace_size, 1), dtype=torch.uint8, device=query.device)
        q, k, v, o = (t[start:end].view(torch.uint8) for t in (query, key, value, out))
        amax = torch.empty(2, 1, 1, 1, device=query.device, dtype=torch.float32)
        data = (q, k, v, *scalars[:3], *probability, scalars[3], o, amax[0:1], amax[1:2])
        pack = dict(zip(tensors, data, strict=True))
        graph.execute(pack, workspace, handle=handle)
        start = end
    return out


def _runs_of(segments) -> list[tuple[int, int]]:
    """``segments`` as runs of equal lengths: ``(length, count)`` each, in order."""
    runs: list[list[int]] = []
    for length in segments:
        if runs and runs[-1][0] == length:
            runs[-1][1] += 1
        else:
            runs.append([int(length), 1])
    return [(length, count) for length, count in runs]


def _handle(device: torch.device):
    """This thread's cuDNN handle for ``device``, on torch's current stream."""
    import cudnn

    handles = getattr(_local, "handles", None)
    if handles is None:
        handles = _local.handles = {}
    if device not in handles:
        with torch.cuda.device(device):
            handles[device] = cudnn.create_handle()
    cudnn.set_stream(handle=handles[device], stream=torch.cuda.current_stream(device).cuda_stream)
    return handles[device]


@functools.cache
def _probability_scales(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The probabilities' inverse scale and scale (cuDNN's ``descale_s``, ``scale_s``), on ``device``."""
    return (
        torch.full((1, 1, 1, 1), 1 / PROBABILITY_SCALE, device=device),
        torch.full((1, 1, 1, 1), PROBABILITY_SCALE, device=device),
    )


def _graph(device: torch.device, batch: int, length: int, heads: int, head_dim: int) -> tuple:
    """The built cuDNN graph for ``batch`` samples of ``length`` tokens, packed token by token
    (``[batch * length, heads, head_dim]``), its tensors in the order ``_on_cudnn`` binds them, and its workspace."""
    key = (device, batch, length, heads, head_dim)
    with _lock:
        hit = _graphs.get(key)
        if hit is not None:
            _graphs.move_to_end(key)
            return hit
        try:
            hit = _build(device, batch, length, heads, head_dim)
        except Exception as err:  # noqa: BLE001 - any refusal of cuDNN's: kept, so that the shape is asked once
            logger.warning("cuDNN's FP8 attention declined %d x %d tokens (%s); torch ops run it", batch, length, err)
            hit = _Declined(str(err))
        _graphs[key] = hit
        while len(_graphs) > _GRAPHS_MAX:
            _graphs.popitem(last=False)
    return hit


def _build(device, batch, length, heads, head_dim) -> tuple:
    import cudnn

    graph = cudnn.pygraph(
        io_data_type=cudnn.data_type.FP8_E4M3,
        intermediate_data_type=cudnn.data_type.FLOAT,
        compute_data_type=cudnn.data_type.FLOAT,
        handle=_handle(device),
    )
    dim = [batch, heads, length, head_dim]
    stride = [length * heads * head_dim, head_dim, heads * head_dim, 1]  # [tokens, heads, head_dim] in memory
    q, k, v = (graph.tensor(dim=dim, stride=stride, data_type=cudnn.data_type.FP8_E4M3) for _ in range(3))
    scalar = dict(dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=cudnn.data_type.FLOAT)
    descale_q, descale_k, descale_v, descale_s, scale_s, scale_o = (graph.tensor(**scalar) for _ in range(6))
    out, _, amax_s, amax_o = graph.sdpa_fp8(
        q=q,
        k=k,
        v=v,
        descale_q=descale_q,
        descale_k=descale_k,
        descale_v=descale_v,
        descale_s=descale_s,
        scale_s=scale_s,
        scale_o=scale_o,
        generate_stats=False,
        attn_scale=1 / math.sqrt(head_dim),
        use_causal_mask=False,
    )
    out.set_output(True).set_dim(dim).set_stride(stride).set_data_type(cudnn.data_type.FP8_E4M3)
    plan(graph, (amax_s, amax_o))
    tensors = (q, k, v, descale_q, descale_k, descale_v, descale_s, scale_s, scale_o, out, amax_s, amax_o)
    return graph, tensors, graph.get_workspace_size()


def plan(graph, amaxes) -> None:
    """Make ``graph`` (an FP8 attention graph of the cuDNN frontend) runnable: its ``amaxes`` (the probabilities'
    and the output's largest magnitudes, float32 scalars) as outputs, validated and planned (raises where no engine
    of cuDNN takes it)."""
    import cudnn

    for amax in amaxes:
        amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(cudnn.data_type.FLOAT)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()


# ---------------------------------------------------------------- in a block


def prepare(attn) -> bool:
    """Give ``attn`` (a block's ``self_attention``, on the device it computes on) the fixed scales of its query and
    key, where its ``norm_q`` and ``norm_k`` are RMS norms over the head (the bound above holds only there), and
    ``fp8_attention_on``: whether the kernel runs there (decided here, once, not in compiled code). Returns that."""
    norms = (attn.norm_q, attn.norm_k)
    attn.fp8_attention_on = False
    if not all(isinstance(n, torch.nn.RMSNorm) and n.weight is not None for n in norms):
        return False
    head_dim = norms[0].weight.shape[-1]
    for name, norm in zip(("query", "key"), norms, strict=True):
        bound = math.sqrt(head_dim) * float(norm.weight.detach().float().abs().max()) * BOUND_MARGIN
        scale = torch.tensor(max(bound, 1e-12) / FP8_MAX, device=norm.weight.device, dtype=torch.float32)
        attn.register_buffer(f"fp8_{name}_scale", scale, persistent=False)
    attn.fp8_attention_on = kernel_runs(str(norms[0].weight.device))
    return attn.fp8_attention_on


def uses_fp8(attn, rows: int, samples: int = 1) -> bool:
    """Whether a call of ``rows`` tokens in ``samples`` samples runs ``attn`` in FP8: it is on (``prepare``; set by
    hand, the torch ops run it anywhere), its output projection multiplies in FP8 for that many rows, and the samples
    have ``attn.fp8_attention_min_tokens`` tokens or more on average (``MIN_SAMPLE_TOKENS`` unless set)."""
    if not getattr(attn, "fp8_attention_on", False):
        return False
    to_out = attn.to_out[0]
    if getattr(type(to_out), "_compute", None) != "fp8" or rows < to_out.compute_min_rows:
        return False
    # the mean, not each sample's length: under torch.compile a test of each would guard on each, and a batch whose
    # samples fell on both sides would take a path the warm-up never compiled
    return rows >= samples * getattr(attn, "fp8_attention_min_tokens", MIN_SAMPLE_TOKENS)


def self_attention(attn, query, key, value, segments) -> tuple[torch.Tensor, torch.Tensor]:
    """``attn``'s attention of ``query``, ``key``, ``value`` (``[1, tokens, heads, head_dim]``, after norms and
    rotary) in FP8: the output as the output projection takes it (``[tokens, heads * head_dim]``, FP8) and its
    scale per row (``[tokens, 1]``, float32)."""
    tokens = query.shape[1]
    value_scale = value.abs().amax().float().clamp(min=1e-12) / FP8_MAX
    q = (query[0].float() / attn.fp8_query_scale).to(FP8)
    k = (key[0].float() / attn.fp8_key_scale).to(FP8)
    v = (value[0].float() / value_scale).to(FP8)
    out_scale = value_scale * OUTPUT_HEADROOM
    scales = torch.stack((attn.fp8_query_scale, attn.fp8_key_scale, value_scale, 1 / out_scale))
    out = attention(q, k, v, scales, list(segments))
    return out.view(tokens, -1), out_scale.expand(tokens, 1).contiguous()
