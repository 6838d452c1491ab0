"""The prompt enhancer's decoding loop, gpt-fast style: ``prefill``, ``decode_one_token``, ``decode_n_tokens``.

Why our own loop: the PE writes up to 256 tokens one at a time, and each step runs 26 small layers, so eager
``model.generate`` is bound by Python and kernel launches (39 ms/token on an H100), and transformers' auto-compiled
generate still spends about 4 ms of host work per token (7.3 ms/token). Here a static KV cache is sized once and
``chunk_tokens`` decode steps, sampling included, are one CUDA graph: the host launches it, then reads the chunk's
tokens back once to look for EOS.

Sampling reproduces transformers' ``generate(do_sample=True, temperature, top_p)`` exactly: the same logits
processors in the same order (temperature, the default top-k of 50 unless the model's generation config says
otherwise, top-p) and the same random numbers. ``torch.multinomial(probs, 1)`` is computed by PyTorch as
``argmax(probs / q)`` with ``q = empty_like(probs).exponential_()``: we draw each step's ``q`` with the same call,
outside the graph, from a generator of the call's own seeded as ``torch.manual_seed(seed)`` seeds the default one
(so the draws are the same, and no other thread can reset them midway), and the graph reads it. So with the same
logits the same tokens come out. In the graph, top-k runs first and the rest on its 50 candidates only
(``sample_token_topk_first``): the same distribution, a token apart only where rounding flips a near tie.

Which logits: ``PEDecoder(graphs=False)`` (the CPU, and the GPU when asked) runs the model's own modules and
transformers' attention function on exactly the tokens written so far, which is what eager ``generate`` computes:
its tokens equal eager ``generate``'s. The graphed path must keep tensor shapes fixed, so its attention is another
kernel (other rounding) and, with ``triton_kernels``, its linear layers and norms run ``nf4_gemv``'s kernels, the
prompt's too (``prefill(fused=True)``: a fifth of the launches and of the host work); its logits then differ from
eager ones in the last bits, and a token can differ where two candidates are that close. It is reproducible: the
same seed gives the same tokens. Without Triton the graphed attention reads the whole cache under a mask; with it
(``triton_kernels``, the default) ``decode_attention`` reads the written entries only.

A graph holds addresses. Low-vram mode moves the PE's tensors between CPU and GPU, always into the same place of
the residency's arena, so the graph stays valid (and the KV cache can live in the arena too: ``cache_storage``); it
is captured again (a fraction of a second) only when a fingerprint of the PE's tensor addresses changed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass

import torch

from ..compat import quant_state_tensors
from ..errors import GenerationCancelled
from .watch import TokenWatch

logger = logging.getLogger(__name__)

# PEDecoder's KV cache: at least this long (prompt + new tokens + a chunk), grown in steps of CACHE_ROUNDING (each
# growth captures the graph again). Without Triton, graphed attention reads the whole cache under a mask, so shorter
# is faster there: on an H100, 3.55 ms/token with 512 against 3.79 with 1024 (200-token prompt, 256 new tokens).
DECODER_CACHE_TOKENS = 512
CACHE_ROUNDING = 256
CHUNK_TOKENS = 16  # decode steps per CUDA graph replay: the host looks for EOS once per chunk
# nf4_gemv's own NF4 kernels for the decode steps' linears (q/k/v and gate/up fused): on an H100 a layer's products
# take 70 us against bitsandbytes 0.50's 76 (scripts/gpu_pe_bench.py)
TRITON_GEMV_DEFAULT = True
HF_DEFAULT_TOP_K = 50  # transformers' GenerationConfig default, applied when the model's config leaves top_k unset
_SUPPORTED_CONFIG_DEFAULTS = {  # generation-config fields whose other values would add logits processors
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "min_length": 0,
    "min_new_tokens": None,
    "typical_p": 1.0,
    "min_p": None,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "guidance_scale": None,
    "top_h": None,
}


# --- sampling ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_k: int
    top_p: float


def resolve_sampling(model, temperature: float, top_p: float) -> Sampling | None:
    """The processors ``model.generate(do_sample=True, temperature=..., top_p=...)`` would apply, or ``None`` when
    the model's generation config asks for one this module does not reproduce (then we decode with ``generate``)."""
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    config = getattr(model, "generation_config", None)
    for name, default in _SUPPORTED_CONFIG_DEFAULTS.items():
        value = getattr(config, name, None)
        if value is not None and value != default:
            logger.info("PE generation config sets %s=%r: decoding with transformers' generate", name, value)
            return None
    top_k = getattr(config, "top_k", None)
    return Sampling(float(temperature), HF_DEFAULT_TOP_K if top_k is None else int(top_k), float(top_p))


# Adapted from transformers 5.24 generation/logits_process.py (TemperatureLogitsWarper, TopKLogitsWarper,
# TopPLogitsWarper) and generation/utils.py (GenerationMixin._sample: softmax, then torch.multinomial, which for one
# sample PyTorch computes as argmax(probs / q) with q ~ Exp(1): aten/src/ATen/native/Distributions.cpp).
def sample_token(logits: torch.Tensor, noise: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The next token (shape ``(1,)``) from float32 ``logits`` ``(1, V)`` and this step's ``noise`` (``(1, V)``,
    ``exponential_()`` draws). Graph-safe: no host synchronisation."""
    scores = logits
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    if sampling.top_k:
        top_k = min(sampling.top_k, scores.size(-1))
        scores = scores.masked_fill(scores < torch.topk(scores, top_k)[0][..., -1, None], -math.inf)
    if sampling.top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        sorted_indices_to_remove = cumulative_probs <= (1 - sampling.top_p)
        sorted_indices_to_remove[..., -1:] = 0
        indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
        scores = scores.masked_fill(indices_to_remove, -math.inf)
    probs = torch.nn.functional.softmax(scores, dim=-1)
    return torch.argmax(probs / noise, dim=-1)


def sample_token_topk_first(logits: torch.Tensor, noise: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """``sample_token``'s distribution, computed on the ``top_k`` best candidates only (top-k runs first, so every
    other logit is -inf before top-p and the softmax see it): a few kernels on 50 values instead of a sort, two
    softmaxes and a cumulative sum over the whole vocabulary. The same logits and noise give the same token except
    where rounding of the shorter sums flips a near tie, or where logits tie at the k-th place (top-k keeps ties,
    ``torch.topk`` exactly k). Graph-safe. Needs ``sampling.top_k``."""
    scores = logits
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    values, indices = torch.topk(scores, min(sampling.top_k, scores.size(-1)))  # descending
    if sampling.top_p < 1.0:
        ascending = values.flip(-1)
        remove = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - sampling.top_p)
        remove[..., -1:] = False
        values = ascending.masked_fill(remove, -math.inf).flip(-1)
    probs = torch.nn.functional.softmax(values, dim=-1)
    best = torch.argmax(probs / noise.gather(-1, indices), dim=-1, keepdim=True)
    return indices.gather(-1, best).view(-1)


# --- the model, read through its modules --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parts:
    """The PE's modules that one decode step uses (a Mistral/Ministral3-style ``*ForCausalLM``)."""

    embed: torch.nn.Module
    layers: tuple
    norm: torch.nn.Module
    rotary: torch.nn.Module
    lm_head: torch.nn.Module
    config: object
    num_heads: int
    num_kv_heads: int
    head_dim: int
    attn_scale_beta: float | None  # Ministral3's position-dependent query scaling (llama 4 style), else None
    attn_scale_length: int


def model_parts(model) -> _Parts | None:
    """The modules our loop drives, or ``None`` (with the reason logged) for a model of another shape: the one place
    that relies on transformers' module layout (``model.model.layers[i].self_attn.q_proj``...)."""
    try:
        inner, config = model.model, model.config
        layers = tuple(inner.layers)
        attn = layers[0].self_attn
        for layer in layers:
            for name in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling", "head_dim", "num_key_value_groups"):
                getattr(layer.self_attn, name)
            for name in ("gate_proj", "up_proj", "down_proj", "act_fn"):
                getattr(layer.mlp, name)
            for norm in (layer.input_layernorm, layer.post_attention_layernorm, inner.norm):
                if not isinstance(norm.variance_epsilon, float):
                    raise TypeError(f"{type(norm).__name__}.variance_epsilon is not a float")
        parts = (inner.embed_tokens, inner.norm, inner.rotary_emb, model.lm_head)
    except (AttributeError, IndexError, TypeError) as err:
        logger.warning("PE %s: unexpected module layout (%s); decoding with transformers' generate", type(model), err)
        return None
    if getattr(config, "sliding_window", None) is not None:
        logger.warning("PE uses sliding-window attention; decoding with transformers' generate")
        return None
    rope = getattr(config, "rope_parameters", None) or {}
    beta = rope.get("llama_4_scaling_beta") if "ministral3" in str(getattr(config, "model_type", "")) else None
    return _Parts(
        embed=parts[0],
        layers=layers,
        norm=parts[1],
        rotary=parts[2],
        lm_head=parts[3],
        config=config,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads,
        head_dim=attn.head_dim,
        attn_scale_beta=beta,
        attn_scale_length=int(rope.get("original_max_position_embeddings") or 1),
    )


def tensor_fingerprint(model) -> tuple[int, ...]:
    """Addresses of every tensor of ``model`` (parameters, buffers, bitsandbytes quantization states): a captured
    graph is valid only while these stay the same (low-vram mode moves them)."""
    pointers = []
    for tensor in model.parameters():
        pointers.append(tensor.data_ptr())
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            pointers.extend(getattr(owner, attr).data_ptr() for owner, attr in quant_state_tensors(state))
    pointers.extend(buffer.data_ptr() for buffer in model.buffers())
    return tuple(pointers)


class StaticKV:
    """Per-layer key/value buffers ``(1, kv_heads, length, head_dim)``, allocated once and written in place, or
    laid in ``storage`` (uint8, at least ``nbytes(...)``) when given."""

    def __init__(
        self,
        parts: _Parts,
        length: int,
        dtype: torch.dtype,
        device: torch.device,
        storage: torch.Tensor | None = None,
    ):
        shape = (1, parts.num_kv_heads, length, parts.head_dim)
        self.length = length
        self.storage = storage
        if storage is None:
            self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in parts.layers]
            self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in parts.layers]
        else:
            count = 2 * len(parts.layers)
            flat = storage[: StaticKV.nbytes(parts, length, dtype)].view(dtype).view(count, *shape)
            self.keys, self.values = list(flat[: count // 2]), list(flat[count // 2 :])
            self.clear()
        self.positions = torch.arange(length, device=device)

    @staticmethod
    def nbytes(parts: _Parts, length: int, dtype: torch.dtype) -> int:
        return 2 * len(parts.layers) * parts.num_kv_heads * length * parts.head_dim * dtype.itemsize

    def clear(self) -> None:
        """Zeros in every entry (storage that another model used in between holds its bytes)."""
        if self.storage is not None:
            self.storage.zero_()


# Adapted from transformers 5.24 models/ministral3/modeling_ministral3.py (rotate_half, apply_rotary_pos_emb,
# get_llama_4_attn_scale).
def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary(q, k, cos, sin):
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


def _query_scale(parts: _Parts, position_ids: torch.Tensor) -> torch.Tensor | None:
    if parts.attn_scale_beta is None:
        return None
    scaling = 1 + parts.attn_scale_beta * torch.log(1 + torch.floor(position_ids / parts.attn_scale_length))
    return scaling[:, None, :, None]


@dataclass(frozen=True)
class _Step:
    """What one forward needs besides the tokens: positions, and how to attend and multiply."""

    position_ids: torch.Tensor  # (1, L) int64
    length: int | None  # tokens in the cache after this step (exact attention), or None: masked whole-cache attention
    mask: torch.Tensor | None  # (1, 1, 1, cache length) additive (0 / -inf), for masked attention
    fused: bool = False  # nf4_gemv's fused norm, rotary + cache write and SiLU kernels (on a GPU)
    gemv: bool = False  # nf4_gemv's NF4 matrix-vector kernel for the decoder's linears (one-token steps)
    dense: bool = False  # the linears as nf4_dequantize + a dense product (the prompt: many tokens)


def _linear(module, x: torch.Tensor, step: _Step) -> torch.Tensor:
    if step.gemv:
        from .kernels.nf4_gemv import nf4_gemv, supports

        if supports(module):
            return nf4_gemv(x, module.weight)
    if step.dense:
        from .kernels.nf4_gemv import dequantizes, nf4_dequantize

        # the weight as bitsandbytes' dequantize_4bit gives it, in one kernel and without bitsandbytes' Python layers
        if dequantizes(module) and module.compute_dtype in (None, x.dtype):
            return torch.nn.functional.linear(x, nf4_dequantize(module.weight, x.dtype))
    return module(x)


def _add_norm(norm, h: torch.Tensor, pending: torch.Tensor | None, step: _Step):
    """``h + pending`` (the residual add transformers does after each sublayer) and ``norm`` of it."""
    if step.fused:
        from .kernels.nf4_gemv import add_rmsnorm

        return add_rmsnorm(h, pending, norm.weight, norm.variance_epsilon)
    if pending is not None:
        h = h + pending
    return h, norm(h)


def _attention(parts: _Parts, index: int, x, cos, sin, query_scale, cache: StaticKV, step: _Step):
    # Adapted from transformers 5.24 models/ministral3/modeling_ministral3.py (Ministral3Attention.forward)
    attn = parts.layers[index].self_attn
    shape = (*x.shape[:-1], -1, attn.head_dim)
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    if step.fused:
        from .kernels.nf4_gemv import decode_attention, nf4_gemv3, rope_and_cache, supports

        if step.gemv and all(supports(proj) for proj in projections):
            qkv = nf4_gemv3(x, [proj.weight for proj in projections])
            sizes = [proj.weight.quant_state.shape[0] for proj in projections]
            q, k, v = qkv.split(sizes, dim=-1)
        else:
            q, k, v = (_linear(proj, x, step) for proj in projections)
        keys, values = cache.keys[index], cache.values[index]
        q = rope_and_cache(q, k, v, cos, sin, query_scale, step.position_ids.view(-1), keys, values)
        tokens = x.shape[-2]
        if tokens == 1:
            out = decode_attention(q, keys, values, step.position_ids, attn.scaling)
        else:  # the prompt (positions 0..tokens-1): its own keys, just written
            out = _transformers_attention(attn, q, keys[:, :, :tokens], values[:, :, :tokens])
        return _linear(attn.o_proj, out.reshape(*x.shape[:-1], -1), step)
    q, k, v = (_linear(proj, x, step) for proj in projections)
    q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
    q, k = _apply_rotary(q, k, cos, sin)
    if query_scale is not None:
        q = q * query_scale
    positions = step.position_ids[0]
    cache.keys[index].index_copy_(2, positions, k)
    cache.values[index].index_copy_(2, positions, v)
    if step.length is not None:
        out = _exact_attention(attn, q, k, v, cache, index, step)
    else:
        out = _masked_attention(parts, q, cache.keys[index], cache.values[index], step.mask, attn.scaling)
    out = out.reshape(*x.shape[:-1], -1).contiguous()
    return _linear(attn.o_proj, out, step)


def _exact_attention(attn, q, k, v, cache: StaticKV, index: int, step: _Step):
    """transformers' own attention function on the keys written so far: what eager ``generate`` computes."""
    if q.shape[2] > 1:  # the prompt: its own keys, as transformers' (empty) dynamic cache hands them back
        return _transformers_attention(attn, q, k, v)
    keys, values = cache.keys[index][:, :, : step.length], cache.values[index][:, :, : step.length]
    return _transformers_attention(attn, q, keys, values)


def _transformers_attention(attn, q, keys, values):
    """transformers' attention function (causal when ``q`` has several tokens); returns ``(1, tokens, heads, D)``."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    # the PE loads with "sdpa" (transformers' default); other implementations are computed with it too
    interface = ALL_ATTENTION_FUNCTIONS["sdpa"]
    out, _ = interface(attn, q, keys, values, None, dropout=0.0, scaling=attn.scaling, sliding_window=None)
    return out


def _masked_attention(parts: _Parts, q, keys, values, mask, scaling):
    """One query token against the whole cache, the unwritten part masked; the query heads of one key/value head
    ride as that head's query rows, so keys and values are read once, not repeated per query head."""
    groups = parts.num_heads // parts.num_kv_heads
    q = q.reshape(1, parts.num_kv_heads, groups, parts.head_dim)
    out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scaling)
    return out.reshape(1, parts.num_heads, 1, parts.head_dim).transpose(1, 2)


def _mlp(mlp, x: torch.Tensor, step: _Step) -> torch.Tensor:
    if not (step.fused or step.gemv):
        return mlp(x)
    if step.fused and step.gemv:
        from .kernels.nf4_gemv import nf4_gate_up, supports

        if supports(mlp.gate_proj) and supports(mlp.up_proj):
            return _linear(mlp.down_proj, nf4_gate_up(x, mlp.gate_proj.weight, mlp.up_proj.weight), step)
    gate, up = _linear(mlp.gate_proj, x, step), _linear(mlp.up_proj, x, step)
    if step.fused:
        from .kernels.nf4_gemv import silu_mul

        return _linear(mlp.down_proj, silu_mul(gate, up), step)
    return _linear(mlp.down_proj, mlp.act_fn(gate) * up, step)


def _forward(parts: _Parts, input_ids: torch.Tensor, cache: StaticKV, step: _Step) -> torch.Tensor:
    """Logits (float32, ``(1, V)``) for the last of ``input_ids`` after writing their keys/values into ``cache``."""
    # Adapted from transformers 5.24 models/ministral3/modeling_ministral3.py (Ministral3Model.forward,
    # Ministral3DecoderLayer.forward, Ministral3ForCausalLM.forward with logits_to_keep=1)
    h = parts.embed(input_ids)
    cos, sin = parts.rotary(h, step.position_ids)
    query_scale = _query_scale(parts, step.position_ids)
    if query_scale is not None:
        query_scale = query_scale.to(h.dtype)
    pending = None
    for index, layer in enumerate(parts.layers):
        h, x = _add_norm(layer.input_layernorm, h, pending, step)
        pending = _attention(parts, index, x, cos, sin, query_scale, cache, step)
        h, x = _add_norm(layer.post_attention_layernorm, h, pending, step)
        pending = _mlp(layer.mlp, x, step)
    _, h = _add_norm(parts.norm, h, pending, step)
    return parts.lm_head(h[:, -1:, :])[:, -1].to(dtype=torch.float32)


def prefill(parts: _Parts, input_ids: torch.Tensor, cache: StaticKV, fused: bool = False) -> torch.Tensor:
    """Run the prompt eagerly; returns the logits of its last token. Exactly as ``generate`` does, or with ``fused``
    (a GPU with Triton) through ``nf4_gemv``'s kernels: its NF4 dequantization (the weights as bitsandbytes'
    ``dequantize_4bit`` gives them) before each dense product, norms, rotary + cache write and SiLU: a fifth of the
    launches, and of the Python work that bounds a prompt of a few hundred tokens (on an H100, a 200-token prompt
    took 88 ms unfused, 50 ms fused)."""
    length = input_ids.shape[1]
    positions = cache.positions[:length].unsqueeze(0)
    return _forward(parts, input_ids, cache, _Step(positions, length, None, fused=fused, dense=fused))


def decode_one_token(
    parts: _Parts,
    token: torch.Tensor,
    position: torch.Tensor,
    cache: StaticKV,
    exact: bool,
    fused: bool = False,
    gemv: bool = False,
) -> torch.Tensor:
    """Logits after ``token`` (``(1, 1)``) at ``position`` (``(1,)`` int64 on the device). ``exact``: attend to the
    written keys only (needs the position on the host: eager); else the whole cache under a mask (graph-safe),
    optionally with ``nf4_gemv``'s fused kernels (``fused``) and NF4 matrix-vector kernel (``gemv``)."""
    position_ids = position.view(1, 1)
    if exact:
        return _forward(parts, token, cache, _Step(position_ids, int(position) + 1, None))
    if fused:  # decode_attention reads the written entries only: no mask
        return _forward(parts, token, cache, _Step(position_ids, None, None, fused, gemv))
    dtype = parts.embed.weight.dtype
    mask = torch.zeros(cache.positions.shape, dtype=dtype, device=position.device)
    mask = mask.masked_fill(cache.positions > position, -math.inf).view(1, 1, 1, -1)
    return _forward(parts, token, cache, _Step(position_ids, None, mask, fused, gemv))


class _Graph:
    """``chunk`` decode steps with sampling, captured as one CUDA graph, and the static tensors it reads/writes."""

    def __init__(self, parts, cache, sampling, chunk, vocab, fused, gemv, device):
        self.chunk = chunk
        self.token = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.position = torch.zeros((1,), dtype=torch.long, device=device)
        self.tokens = torch.zeros((chunk,), dtype=torch.long, device=device)
        self.staging = torch.ones((chunk, 1, vocab), dtype=torch.float32, device=device)  # next chunk's noise
        self.noise = torch.ones_like(self.staging)
        self.host_tokens = torch.zeros((chunk,), dtype=torch.long, pin_memory=True)
        self.done = torch.cuda.Event()

        sample = sample_token_topk_first if sampling.top_k else sample_token

        def steps():
            self.noise.copy_(self.staging)  # so the host can draw the next chunk's noise while this one runs
            for i in range(chunk):
                logits = decode_one_token(parts, self.token, self.position, cache, False, fused, gemv)
                next_token = sample(logits, self.noise[i], sampling)
                self.tokens[i : i + 1].copy_(next_token)
                self.token.view(-1).copy_(next_token)
                self.position.add_(1)

        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # warm-up (lazy initialisations) outside the capture
            steps()
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: GPU work of other threads (the transformer compiling in the background) is no error here
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            steps()

    def draw_noise(self, rng: torch.Generator) -> None:
        """This chunk's ``q ~ Exp(1)`` draws, one ``(1, V)`` call per step as ``torch.multinomial`` makes them."""
        for i in range(self.chunk):
            self.staging[i].exponential_(generator=rng)

    def run(self) -> None:
        self.graph.replay()
        self.host_tokens.copy_(self.tokens, non_blocking=True)
        self.done.record()


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; from the CPU to a GPU through pinned memory, without waiting: a copy from pageable
    memory would wait for everything queued first (in low-vram, the PE's own move onto the GPU)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _eos_set(eos_token_id) -> frozenset[int]:
    if eos_token_id is None:
        return frozenset()
    if isinstance(eos_token_id, int):
        return frozenset((eos_token_id,))
    return frozenset(int(t) for t in eos_token_id)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class PEDecoder:
    """Seeded sampling from the PE with a static KV cache and (on CUDA) CUDA-graphed decode steps.

    Keep one per PE model: the cache and graph are reused across calls and re-made only when the cache must grow,
    the sampling settings change, or the PE's tensors moved (low-vram mode). ``graphs`` defaults to CUDA;
    ``triton_kernels`` (``nf4_gemv``'s fused norm, rotary + cache write, SiLU and flash-decoding attention kernels
    inside the graph) defaults to on where Triton is importable; ``triton_gemv`` (its NF4 matrix-vector kernels,
    q/k/v and gate/up fused, instead of bitsandbytes') to ``TRITON_GEMV_DEFAULT`` when the fused kernels are on
    (scripts/gpu_pe_bench.py compares both). Any failure while capturing falls back to transformers' ``generate``
    with a logged warning, for this call and the later ones.
    """

    def __init__(
        self,
        model,
        graphs: bool | None = None,
        triton_kernels: bool | None = None,
        triton_gemv: bool | None = None,
        chunk_tokens: int = CHUNK_TOKENS,
        cache_tokens: int = DECODER_CACHE_TOKENS,
        cache_storage=None,
    ):
        if not (isinstance(chunk_tokens, int) and 1 <= chunk_tokens <= 256):
            raise ValueError(f"chunk_tokens must be an integer in [1, 256], got {chunk_tokens!r}")
        self.model = model
        self.device = next(model.parameters()).device
        self.parts = model_parts(model)
        on_cuda = self.device.type == "cuda"
        self.graphs = on_cuda if graphs is None else bool(graphs)
        if self.graphs and not on_cuda:
            raise ValueError(f"graphs=True needs the PE on a CUDA device, it is on {self.device}")
        if triton_kernels is None:
            from .kernels.nf4_gemv import available

            triton_kernels = self.graphs and available()
        self.triton_kernels = bool(triton_kernels)
        self.triton_gemv = self.triton_kernels and TRITON_GEMV_DEFAULT if triton_gemv is None else bool(triton_gemv)
        if (self.triton_kernels or self.triton_gemv) and not self.graphs:
            raise ValueError("triton_kernels and triton_gemv run inside the CUDA graph: they need graphs=True")
        self.chunk_tokens = chunk_tokens
        self.cache_tokens = cache_tokens
        self.cache_storage = cache_storage  # nbytes -> uint8 GPU tensor at a fixed address, or None
        self.cache: StaticKV | None = None
        self._graph: _Graph | None = None
        self._graph_key = None
        self.broken: str | None = None  # why the fast path was given up, if it was
        self.fused_prefill = True  # the prompt through nf4_gemv's kernels (with triton_kernels), until that fails
        self.captures = 0
        self.capture_seconds = 0.0  # of the last capture

    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        seed: int,
        temperature: float = 0.6,
        top_p: float = 0.95,
        eos_token_id: int | list[int] | None = None,
        attention_mask: torch.Tensor | None = None,
        watch: TokenWatch | None = None,
    ) -> tuple[torch.Tensor, bool]:
        """New token ids (1-D, on the CPU, EOS included when reached) and whether EOS stopped it (else the
        ``max_new_tokens`` cap did). Sampled as ``torch.manual_seed(seed)`` then ``model.generate(...,
        do_sample=True, temperature, top_p)`` would, with the caller's random state left untouched. ``watch``
        (a ``TokenWatch``) is ticked every token of the eager loops and every chunk of the graphed one: it raises
        ``GenerationCancelled`` once its stop signal is set, and reports the tokens written."""
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"input_ids must be one prompt of shape (1, length), got {tuple(input_ids.shape)}")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("attention_mask must be all ones (one unpadded prompt)")
        sampling = resolve_sampling(self.model, temperature, top_p)
        eos = _eos_set(eos_token_id)
        input_ids = _to_device(input_ids, self.device)
        watch = watch or TokenWatch(max_new_tokens)
        hf_args = (input_ids, max_new_tokens, seed, temperature, top_p, eos_token_id, watch)
        if sampling is None or self.parts is None:
            return self._hf_generate(*hf_args)
        if self.graphs and self.broken is None:
            try:
                with torch.no_grad():
                    return self._generate(input_ids, max_new_tokens, sampling, eos, self._rng(seed), True, watch)
            except (torch.cuda.OutOfMemoryError, GenerationCancelled):
                raise
            except Exception as err:  # the graph is an optimisation: never let it cost the user a run
                self.broken = f"{type(err).__name__}: {err}"
                self.cache = self._graph = self._graph_key = None  # transformers' generate keeps its own cache
                logger.warning("CUDA-graphed PE decoding failed (%s); using transformers' generate", self.broken)
                return self._hf_generate(*hf_args)
        if self.broken is not None:
            return self._hf_generate(*hf_args)
        with torch.no_grad():
            return self._generate(input_ids, max_new_tokens, sampling, eos, self._rng(seed), False, watch)

    def _rng(self, seed: int) -> torch.Generator:
        """The random numbers of one call: a generator of its own, seeded with ``seed``, which draws what the
        default generator would after ``torch.manual_seed(seed)`` (so the tokens are ``generate``'s), without
        touching the process's random state. Another thread may reset that meanwhile: Dynamo restores it at the end
        of every compile (the transformer compiles in the background), which would change the draws mid-call."""
        return torch.Generator(device=self.device).manual_seed(seed)

    @contextlib.contextmanager
    def _seeded(self, seed: int):
        """``torch.manual_seed(seed)`` inside ``fork_rng``, as ``Generator.enhance_prompt`` seeds ``generate``."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            yield

    def _ensure_cache(self, needed: int) -> StaticKV:
        """A cache of at least ``needed`` entries: the one kept when it is large enough and still where
        ``cache_storage`` puts it (zeroed when it lives there), else a new one (the graph is then captured again)."""
        dtype, cache = self.parts.embed.weight.dtype, self.cache
        length = _round_up(max(needed, self.cache_tokens), CACHE_ROUNDING)
        if cache is not None and cache.length >= needed:
            length = cache.length
        storage = None
        if self.cache_storage is not None:
            storage = self.cache_storage(StaticKV.nbytes(self.parts, length, dtype))
        if cache is not None and cache.length == length:
            if storage is None and cache.storage is None:
                return cache
            if storage is not None and cache.storage is not None and storage.data_ptr() == cache.storage.data_ptr():
                cache.clear()
                return cache
        cache = self.cache = self._graph = self._graph_key = None  # free the old one first
        self.cache = StaticKV(self.parts, length, dtype, self.device, storage)
        return self.cache

    def _generate(self, input_ids, max_new_tokens, sampling, eos, rng, graphed, watch: TokenWatch):
        length = input_ids.shape[1]
        watch.check()
        cache = self._ensure_cache(length + max_new_tokens + (self.chunk_tokens if graphed else 0))
        graph = self._ensure_graph(cache, sampling) if graphed else None
        logits = self._prefill(input_ids, cache, fused=graphed and self.triton_kernels and self.fused_prefill)
        noise = torch.empty_like(logits).exponential_(generator=rng)
        first = sample_token(logits, noise, sampling)
        if graphed:
            tokens = decode_n_tokens(graph, first, length, max_new_tokens - 1, eos, rng, watch)
        else:
            tokens = self._decode_eagerly(first, length, max_new_tokens - 1, sampling, eos, rng, watch)
        watch.finish(len(tokens))
        ids = torch.tensor(tokens, dtype=torch.long)
        return ids, bool(tokens) and tokens[-1] in eos

    def _prefill(self, input_ids, cache: StaticKV, fused: bool) -> torch.Tensor:
        """``prefill``; a fused one that fails is logged and given up for the model's own modules (which write the
        same cache entries again), this call and later ones, leaving the decode graph as it is."""
        try:
            return prefill(self.parts, input_ids, cache, fused=fused)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as err:
            if not fused:
                raise
            self.fused_prefill = False
            logger.warning("the PE's fused prefill failed (%s: %s); the prompt runs unfused", type(err).__name__, err)
            return prefill(self.parts, input_ids, cache)

    def _decode_eagerly(self, first, length, budget, sampling, eos, rng, watch: TokenWatch) -> list[int]:
        """One token at a time; each is read back (``int``) to look for EOS, and the watch ticks there."""
        tokens = [int(first)]
        token, position = first.view(1, 1), torch.tensor([length], device=self.device)
        for _ in range(budget):
            if tokens[-1] in eos:
                break
            watch.tick(len(tokens))
            logits = decode_one_token(self.parts, token, position, self.cache, exact=True)
            token = sample_token(logits, torch.empty_like(logits).exponential_(generator=rng), sampling).view(1, 1)
            tokens.append(int(token))
            position += 1
        return tokens

    def _ensure_graph(self, cache: StaticKV, sampling: Sampling) -> _Graph:
        kernels = (self.triton_kernels, self.triton_gemv)
        key = (id(cache), sampling, self.chunk_tokens, kernels, tensor_fingerprint(self.model))
        if self._graph is None or self._graph_key != key:
            self._graph = self._graph_key = None
            torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            vocab = self.parts.lm_head.weight.shape[0]
            self._graph = _Graph(self.parts, cache, sampling, self.chunk_tokens, vocab, *kernels, self.device)
            torch.cuda.synchronize(self.device)
            self._graph_key = key
            self.captures += 1
            self.capture_seconds = time.perf_counter() - start
            logger.info("captured PE decoding graph in %.2f s", self.capture_seconds)
        return self._graph

    def _hf_generate(self, input_ids, max_new_tokens, seed, temperature, top_p, eos_token_id, watch: TokenWatch):
        """Eager transformers ``generate``, seeded as ``Generator.enhance_prompt`` always did; ``watch`` ticks
        with each token as a stopping criterion that never stops a sequence itself."""
        config = self.model.generation_config
        pad = config.pad_token_id if config.pad_token_id is not None else getattr(self.model.config, "pad_token_id", 0)
        watch.check()
        with self._seeded(seed):
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                pad_token_id=pad,
                eos_token_id=eos_token_id,
                stopping_criteria=watch.stopping_criteria(input_ids.shape[1]),
            )
        tokens = output[0, input_ids.shape[1] :].cpu()
        watch.finish(len(tokens))
        eos = _eos_set(eos_token_id)
        return tokens, bool(len(tokens)) and int(tokens[-1]) in eos


def decode_n_tokens(
    graph: _Graph,
    first: torch.Tensor,
    length: int,
    budget: int,
    eos: frozenset[int],
    rng: torch.Generator,
    watch: TokenWatch | None = None,
) -> list[int]:
    """Up to ``budget`` tokens after ``first`` by whole-chunk graph replays; the host reads each chunk's tokens once
    (its only sync) and stops at the first EOS. Steps run past EOS or the budget inside the last chunk are dropped.
    ``watch`` ticks before each replay, where the host has just read the tokens: a stop comes within one chunk."""
    watch = watch or TokenWatch(budget + 1)
    tokens = [int(first)]
    if not budget or tokens[-1] in eos:
        return tokens
    graph.token.view(-1).copy_(first)
    graph.position.fill_(length)
    graph.draw_noise(rng)
    while budget > 0:
        watch.tick(len(tokens))
        graph.run()
        if budget > graph.chunk:
            graph.draw_noise(rng)  # queued behind the replay: the GPU has it ready when the host comes back
        graph.done.synchronize()
        for token in graph.host_tokens[: min(budget, graph.chunk)].tolist():
            tokens.append(token)
            if token in eos:
                return tokens
        budget -= graph.chunk
    return tokens


def generate_tokens(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    seed: int,
    temperature: float = 0.6,
    top_p: float = 0.95,
    eos_token_id: int | list[int] | None = None,
    decoder: PEDecoder | None = None,
    watch: TokenWatch | None = None,
) -> tuple[torch.Tensor, bool]:
    """Seeded PE sampling: ``(new token ids, stopped_at_eos)``. Pass the ``decoder`` kept for ``model`` to reuse
    its cache and graph; without one a fresh ``PEDecoder`` is made (and captures) for this call. ``watch``: see
    ``PEDecoder.generate``."""
    decoder = decoder if decoder is not None else PEDecoder(model)
    if decoder.model is not model:
        raise ValueError("decoder was made for another model")
    return decoder.generate(input_ids, max_new_tokens, seed, temperature, top_p, eos_token_id, watch=watch)
