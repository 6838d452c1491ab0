"""A faster way to run diffusers' ``ErnieImageTransformer2DModel``: same weights, same image-token outputs.

``enable_fast_path(transformer)`` swaps the model's and its blocks' classes for the subclasses below through
``compat.swap_class`` (weights, config and quantization untouched; ``disable_fast_path`` swaps them back): the one
change this project makes to a diffusers object. What the fast forward keeps for a model (its ``BlockCompiler``, the
last rotary tables) lives beside it in ``_FastState``, not on it. What changes against the stock forward of
diffusers 0.42.1:

- **No padding mask.** The stock model pads every sample's text to the longest one and passes a
  ``[B, 1, 1, S]`` mask, which keeps SDPA off its flash/cuDNN kernels and spends compute on padding. Here
  each sample's own tokens (its image tokens, then its text tokens: exactly what the mask lets through) are
  packed into one sequence; the linear layers run on the packed tokens and attention runs per sample.
- **Batch-first, no copies.** The stock blocks permute ``[S, B, H]`` to ``[B, S, H]`` and back in every
  block, and expand the six AdaLN modulations to full ``[S, B, H]`` tensors; here they broadcast.
- **Rotary tables once.** cos/sin are computed once per forward, not twice per block.
- **Regional ``torch.compile``** of the repeated block (``BlockCompiler``, ``compile_blocks``), which fuses the
  float32 modulation arithmetic into single kernels. One block function is compiled with dynamic shapes and
  warmed on small inputs for one block (one graph for CFG batches, one for single samples); every block, image
  size and prompt length then runs that code. It can compile in a background thread while calls run eagerly,
  and is switched on between calls (``BlockCompiler.activate``), so a call is wholly eager or wholly compiled.
  Once on, the compiled code is only looked up, never recompiled: inputs it does not cover run eagerly
  (counted in ``fallback_calls``, logged once). Compiled and eager blocks round bf16 differently in the last
  bits, so an image differs slightly between the two paths; within one path the same inputs give the same
  outputs. Inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``) makes later compiles quick.

The packed path needs one timestep for the whole batch (true for ``ErnieImagePipeline``, which runs the
conditional and unconditional halves at the same step); any other call runs the stock forward.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import threading
import time
import types
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_ernie_image import (
    ErnieImageSharedAdaLNBlock,
    ErnieImageTransformer2DModel,
    ErnieImageTransformer2DModelOutput,
)

from ..compat import inductor_default_cache_dir, keep_nf4_layout, run_compiled_only, swap_class
from ..torch_state import torch_state_kept
from . import fp8_attention
from .compile_record import last_seconds, remember
from .compute import feed_forward, fp8_product

logger = logging.getLogger(__name__)

COMPILE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ernie-nf4" / "torch-compile"
# The compiled block's warm-up: a 512x512 image's 32x32 latent with two prompt lengths (a CFG batch), and the first
# of them alone (one sample: guidance <= 1). Token counts no model width equals, so dynamo ties no dimension to a
# weight's (duck sizing) and every real size stays dynamic. A few MB on the full-size model.
WARM_LATENT, WARM_TEXT = (32, 32), (37, 23)
# The priming call (bitsandbytes' first-use set-up of every layer): as small as a call gets.
PRIME_LATENT, PRIME_TEXT = (4, 4), (3, 2)
# Seconds a compile takes once a helper compiled its kernels (``compile_ahead``): 4.0 to 5.2 s for the full-size model
# on an NVIDIA H200 from a warm cache; a request then waits for it (``serving.compiling.await_quick_compile``).
AHEAD_QUICK_SECONDS = 5.0


def warm_latents(transformer) -> list[tuple[int, int]]:
    """The latent sizes the compile is warmed on, so that the compiled code covers every path a block's call can take
    (a call on a path it was not warmed on would run eagerly): ``WARM_LATENT``; where the linear layers change their
    product from a number of rows above the warm-up's (``compute.apply_compute``'s ``min_rows``, such as ``auto``'s),
    sizes of a single sample and of a CFG batch of that many tokens; and where attention runs in FP8 from a sample's
    length (``fp8_attention.uses_fp8``), a size whose samples are that long."""
    rows = max((getattr(m, "compute_min_rows", 0) for m in transformer.layers[0].modules()), default=0)
    attn = transformer.layers[0].self_attention
    tokens = getattr(attn, "fp8_attention_min_tokens", fp8_attention.MIN_SAMPLE_TOKENS)
    attention = getattr(attn, "fp8_attention_on", False)

    def path(side: int, texts: tuple[int, ...]) -> tuple:
        segments = [side * side + n for n in texts]
        products = sum(segments) >= rows
        return len(texts), products, attention and products and sum(segments) >= len(segments) * tokens

    def side_for(n: int) -> int:  # side * side >= n
        return math.isqrt(max(n, 1) - 1) + 1

    patch, warm_side = transformer.config.patch_size, WARM_LATENT[0] // transformer.config.patch_size
    sides = [warm_side, side_for(rows), side_for(-(-rows // 2) - min(WARM_TEXT)), side_for(tokens)]
    covered, chosen = set(), []
    for side in sides:
        paths = {path(side, texts) for texts in (WARM_TEXT, WARM_TEXT[:1])}
        if not paths <= covered:
            covered |= paths
            chosen.append((side * patch, side * patch))
    return chosen


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` in float32, back in ``x``'s dtype (as the stock block computes it)."""
    return (x.float() * (1 + scale.float()) + shift.float()).to(x.dtype)


def _gated(residual: torch.Tensor, gate: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return residual + (gate.float() * out.float()).to(residual.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The stock rotary embedding (non-interleaved rotate-half over the whole head) with precomputed tables."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def attend(query, key, value, segments: tuple[int, ...]) -> torch.Tensor:
    """Attention within each sample's tokens of a packed batch (``segments``: tokens per sample)."""
    if len(segments) == 1:
        return F.scaled_dot_product_attention(query, key, value)
    parts, start = [], 0
    for length in segments:
        end = start + length
        parts.append(
            F.scaled_dot_product_attention(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end])
        )
        start = end
    return torch.cat(parts, dim=2)


def _projections(h, cos, sin, attn) -> tuple:
    """``attn``'s ``q, k, v`` of ``h`` (``[1, T, heads, D]``): its projections, ``norm_q``/``norm_k`` and the rotary
    tables (``attn``: anything with ``to_q``, ``to_k``, ``to_v``, ``norm_q``, ``norm_k``, ``heads``)."""
    query = _rotate(attn.norm_q(attn.to_q(h).unflatten(-1, (attn.heads, -1))), cos, sin)
    key = _rotate(attn.norm_k(attn.to_k(h).unflatten(-1, (attn.heads, -1))), cos, sin)
    return query, key, attn.to_v(h).unflatten(-1, (attn.heads, -1))


def before_attention(x, cos, sin, shift, scale, norm, attn) -> tuple:
    """A block's ``q, k, v`` (``[1, heads, T, D]``): ``x`` through ``norm`` (its ``adaLN_sa_ln``), modulated, then
    ``_projections``."""
    return tuple(t.transpose(1, 2) for t in _projections(_modulate(norm(x), scale, shift), cos, sin, attn))


def after_attention(x, out, gate_msa, shift_mlp, scale_mlp, gate_mlp, to_out, norm, mlp) -> torch.Tensor:
    """The rest of a block from attention's output ``out`` (``[1, heads, T, D]``): ``to_out``, the gated residual,
    then ``_feed_forward``."""
    x = _gated(x, gate_msa, to_out(out.transpose(1, 2).flatten(2, 3)))
    return _feed_forward(x, shift_mlp, scale_mlp, gate_mlp, norm, mlp)


def _feed_forward(x, shift_mlp, scale_mlp, gate_mlp, norm, mlp) -> torch.Tensor:
    """``x`` through ``norm`` (its ``adaLN_mlp_ln``) modulated, ``mlp`` (through ``compute.feed_forward``) and its
    gated residual."""
    h = _modulate(norm(x), scale_mlp, shift_mlp)
    return _gated(x, gate_mlp, feed_forward(mlp, h))


def _fp8_attention(x, rotary, shift_msa, scale_msa, gate_msa, norm, attn, segments) -> torch.Tensor:
    """``x`` through a block's attention in FP8 (``fp8_attention``) and its gated residual; the output projection
    takes the attention's FP8 output as it is."""
    h = _modulate(norm(x), scale_msa, shift_msa)
    out, scale = fp8_attention.self_attention(attn, *_projections(h, *rotary, attn), segments)
    return _gated(x, gate_msa, fp8_product(attn.to_out[0], out, scale).unsqueeze(0).to(x.dtype))


@dataclass
class _FastState:
    """What the fast forward keeps for one model: its ``BlockCompiler`` (when compiling) and the last rotary tables
    (key, (cos, sin))."""

    compiler: BlockCompiler | None = None
    rotary: tuple | None = None


# Per model, beside it rather than on it; an entry goes with its model.
_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state(model) -> _FastState:
    state = _STATES.get(model)
    if state is None:
        state = _STATES[model] = _FastState()
    return state


class FastErnieImageBlock(ErnieImageSharedAdaLNBlock):
    """The stock block on packed tokens: ``x`` is ``[1, T, H]`` holding each sample's tokens back to back,
    ``segments`` their lengths; attention never crosses a segment."""

    def forward(self, x, rotary, temb, segments):
        if not isinstance(segments, tuple):  # called by the stock model forward (the fallback): stock block
            return super().forward(x, rotary, temb, segments)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = temb
        attn = self.self_attention
        if fp8_attention.uses_fp8(attn, x.shape[1], len(segments)):
            x = _fp8_attention(x, rotary, shift_msa, scale_msa, gate_msa, self.adaLN_sa_ln, attn, segments)
            return _feed_forward(x, shift_mlp, scale_mlp, gate_mlp, self.adaLN_mlp_ln, self.mlp)
        query, key, value = before_attention(x, *rotary, shift_msa, scale_msa, self.adaLN_sa_ln, attn)
        out = attend(query, key, value, segments)
        mlp_parts = (attn.to_out[0], self.adaLN_mlp_ln, self.mlp)
        return after_attention(x, out, gate_msa, shift_mlp, scale_mlp, gate_mlp, *mlp_parts)


@dataclass
class _Packed:
    """A batch as the blocks take it: each sample's image tokens, then its text tokens, back to back."""

    x: torch.Tensor  # [1, T, hidden]
    rotary: tuple[torch.Tensor, torch.Tensor]  # cos, sin: [1, T, 1, head_dim]
    temb: list[torch.Tensor]  # the six AdaLN modulations, [1, 1, hidden] each: one row serves every token
    segments: tuple[int, ...]  # tokens per sample
    conditioning: torch.Tensor  # [B, hidden], for the final norm


class FastErnieImageTransformer2DModel(ErnieImageTransformer2DModel):
    _repeated_blocks = ["FastErnieImageBlock"]

    def forward(self, hidden_states, timestep, text_bth, text_lens, return_dict: bool = True):
        B, _, H, W = hidden_states.shape
        if self.patch_size != 1 or B == 0 or text_bth.shape[1] == 0 or not bool((timestep == timestep[0]).all()):
            return super().forward(hidden_states, timestep, text_bth, text_lens, return_dict=return_dict)
        packed = self._pack(hidden_states, timestep, text_bth, text_lens)
        compiler = _state(self).compiler
        if compiler is not None and compiler.active:  # read once: a call is wholly compiled or wholly eager
            x = compiler.run_blocks(self.layers, packed)
        else:
            x = packed.x
            for layer in self.layers:
                x = layer(x, packed.rotary, packed.temb, packed.segments)
        out = self._unpack(x, packed, H, W)
        if compiler is not None and compiler.compile_after_next_call:
            compiler.compile_after_next_call = False
            compiler.primed = True  # this call set every layer up
            if compiler.compile():
                compiler.activate()
        return ErnieImageTransformer2DModelOutput(sample=out) if return_dict else (out,)

    def _pack(self, hidden_states, timestep, text_bth, text_lens) -> _Packed:
        _, _, H, W = hidden_states.shape
        device, dtype = hidden_states.device, hidden_states.dtype
        img = self.x_embedder(hidden_states)  # [B, N, hidden]
        text = self.text_proj(text_bth) if self.text_proj is not None else text_bth  # [B, Tmax, hidden]
        lengths = [int(n) for n in text_lens.tolist()]
        # [1, T, hidden], a tensor of its own (not a view): the blocks' compiled code is guarded on what a view is of
        x = torch.cat([t for b, n in enumerate(lengths) for t in (img[b : b + 1], text[b : b + 1, :n])], dim=1)
        rotary = self._rotary(H, W, tuple(lengths), device, dtype)
        # Computed for the whole batch as the stock model does (a one-row NF4 matmul takes another kernel and
        # rounds differently), then one row serves every packed token: the batch shares its timestep.
        c = self.time_embedding(self.time_proj(timestep).to(dtype=dtype))  # [B, hidden]
        temb = [t[:1, None] for t in self.adaLN_modulation(c).chunk(6, dim=-1)]  # 6 x [1, 1, hidden]
        return _Packed(x, rotary, temb, tuple(H * W + n for n in lengths), c)

    def _unpack(self, x: torch.Tensor, packed: _Packed, H: int, W: int) -> torch.Tensor:
        """The image tokens of the blocks' output through the final norm and projection: ``[B, C, H, W]``."""
        B, n_img = len(packed.segments), H * W
        starts = [sum(packed.segments[:b]) for b in range(B)]
        x = torch.stack([x[0, s : s + n_img] for s in starts])  # image tokens: [B, N, hidden]
        scale, shift = self.final_norm.linear(packed.conditioning).chunk(2, dim=-1)
        x = (self.final_norm.norm(x) * (1 + scale[:, None]) + shift[:, None]).type_as(x)
        return self.final_linear(x).view(B, H, W, self.out_channels).permute(0, 3, 1, 2).contiguous()

    def _rotary(self, H: int, W: int, lengths: tuple[int, ...], device, dtype):
        """cos/sin tables of the packed tokens' positions, built as the stock forward builds its position ids.
        The same for every step of an image, so the last one is kept."""
        key = (H, W, lengths, device, dtype)
        state = _state(self)
        if state.rotary is not None and state.rotary[0] == key:
            return state.rotary[1]
        grid = torch.stack(
            torch.meshgrid(
                torch.arange(H, device=device, dtype=torch.float32),
                torch.arange(W, device=device, dtype=torch.float32),
                indexing="ij",
            ),
            dim=-1,
        ).reshape(-1, 2)
        ids = []
        for length in lengths:
            text_ids = torch.zeros((length, 3), device=device)
            text_ids[:, 0] = torch.arange(length, device=device, dtype=torch.float32)
            ids += [torch.cat([torch.full((H * W, 1), float(length), device=device), grid], dim=-1), text_ids]
        freqs = self.pos_embed(torch.cat(ids)[None])  # [1, T, 1, head_dim], float32
        rotary = (torch.cos(freqs).to(dtype), torch.sin(freqs).to(dtype))
        state.rotary = (key, rotary)
        return rotary


def use_compile_cache(cache_dir: str | Path | None = COMPILE_CACHE) -> str | None:
    """Point Inductor's on-disk cache at ``cache_dir`` unless the user chose a folder (``TORCHINDUCTOR_CACHE_DIR``).
    torch sets that variable to its own default, a folder in the temporary directory (emptied at boot on many
    systems), the first time it reads it, which importing bitsandbytes does: that value counts as not chosen.
    Returns the folder Inductor uses from now on (None: not decided yet)."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    default = inductor_default_cache_dir()
    if cache_dir is not None and (current is None or Path(current).resolve() == Path(default).resolve()):
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    return os.environ.get("TORCHINDUCTOR_CACHE_DIR")


def dummy_call(transformer, latent: tuple[int, int], text_lengths: tuple[int, ...], seed: int = 0) -> dict:
    """Forward arguments of a random batch as ``ErnieImagePipeline`` passes it (one sample per text length, one
    timestep, texts zero-padded to the longest) on the model's device and dtype."""
    config, (height, width) = transformer.config, latent
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(len(text_lengths), config.in_channels, height, width, generator=g)
    text = torch.zeros(len(text_lengths), max(text_lengths), config.text_in_dim)
    for i, n in enumerate(text_lengths):
        text[i, :n] = torch.randn(n, config.text_in_dim, generator=g)
    device, dtype = transformer.device, transformer.dtype
    return dict(
        hidden_states=hidden.to(device, dtype),
        timestep=torch.full((len(text_lengths),), 500.0, device=device, dtype=dtype),
        text_bth=text.to(device, dtype),
        text_lens=torch.tensor(text_lengths, device=device),
    )


# Eager runs of ``_run_block`` in this thread. The compiled code never executes the counting line (dynamo folds
# ``is_compiling()`` to True while tracing), so a rise during a compiled call means some block ran eagerly.
_EAGER = threading.local()


def _eager_calls() -> int:
    return getattr(_EAGER, "calls", 0)


def _run_block(layer, x, rotary, temb, segments):
    """The function ``BlockCompiler`` compiles: one fast block."""
    if not torch.compiler.is_compiling():
        _EAGER.calls = _eager_calls() + 1
    return layer(x, rotary, temb, segments)


def _own_copy(fn):
    """``fn`` with a code object of its own. Dynamo keeps compiled code per code object (8 variants at most), so
    each model's compiled block lives apart from another's (a replica on another GPU, a model in a test)."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


class CompileState(str, enum.Enum):
    PENDING = "pending"  # not compiled (yet)
    COMPILING = "compiling"  # calls run eagerly meanwhile
    READY = "ready"  # compiled; ``activate()`` switches the forward to it
    ACTIVE = "active"  # the forward runs the compiled block
    FAILED = "failed"  # eager for good; ``BlockCompiler.error`` says why


_DESCRIPTIONS = {
    CompileState.PENDING: "eager: not compiled yet",
    CompileState.COMPILING: "eager: compiling in the background",
    CompileState.READY: "compiled (from the next run)",
    CompileState.ACTIVE: "compiled",
}


class BlockCompiler:
    """Regional ``torch.compile`` of one fast-path model's repeated block, and the switch to it.

    ``prime()`` runs one small eager call: bitsandbytes sets each NF4 layer up on its first use, which must happen
    outside a graph (and before another thread runs the same layers). ``compile()`` compiles ``_run_block`` with
    dynamic shapes and warms it on the first block with small inputs (a CFG batch, then one sample), on a side
    stream on CUDA, then checks that the last block runs the same code; any failure logs one line and leaves the
    model eager (``FAILED``): compiling never costs a run. ``start()`` does the same in a background thread while
    calls run eagerly. ``activate()`` switches the forward to the compiled code once it is ``READY``: call it between
    runs (``ImageService`` does before each request), so no image changes path halfway.

    Once active, compiled code is only looked up (``torch._dynamo.run``), never compiled again on the caller's time:
    a block whose inputs the compiled graphs do not cover runs eagerly, counted in ``fallback_calls`` and logged once.
    ``cache_dir`` keeps Inductor's compiled kernels between runs (``use_compile_cache``), with a
    record of each compile that succeeded (``compile_record``): ``cached_seconds`` says how long the same compile
    took here before, None when this is the first. ``ahead``, a ``compile_ahead.CompileAhead`` helper process compiling
    the same block (set before ``start()``), is waited for before compiling: its kernels make the compile quick.
    """

    def __init__(self, transformer, cache_dir: str | Path | None = COMPILE_CACHE, backend="inductor"):
        if not isinstance(transformer, FastErnieImageTransformer2DModel):
            raise TypeError(f"transformer must run the fast path (enable_fast_path), got {type(transformer).__name__}")
        use_compile_cache(cache_dir)
        # Weakly: the model's fast-path state holds this compiler, and a strong reference back would keep the model
        # (and its GPU memory) alive after everything else let it go.
        self._transformer = weakref.ref(transformer)
        # Where this machine's compiles are recorded (compile_record): Inductor's cache folder, when one is set.
        self.record_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        # Seconds the same compile took here before (its kernels are then in the cache), or None: a first compile
        # (read as the compile begins).
        self.cached_seconds: float | None = None
        self.backend = backend
        # compile_ahead.CompileAhead: a helper process compiling the same block into the cache; waited for first
        self.ahead = None
        self.state = CompileState.PENDING
        self.error: str | None = None
        self.seconds: float | None = None  # compiling and warming up
        self.fallback_calls = 0
        self.primed = False
        self.compile_after_next_call = False  # compile_blocks(background=False)
        self._run = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        _state(transformer).compiler = self  # what the fast forward consults

    @property
    def transformer(self):
        """The model whose blocks this compiles (None once nothing else holds it)."""
        return self._transformer()

    @property
    def active(self) -> bool:
        return self.state is CompileState.ACTIVE

    def recorded_seconds(self) -> float | None:
        """How long this compile took on this machine before (its record: ``compile_record``); None when it never
        did, and its kernels are not in the cache."""
        return last_seconds(self.transformer, self.record_dir) if self.record_dir else None

    @property
    def expected_seconds(self) -> float | None:
        """How long this compile takes with its kernels in Inductor's cache: the record's seconds
        (``cached_seconds``), or ``AHEAD_QUICK_SECONDS`` once the helper has compiled them ahead (``ahead``); None
        for a first compile, also while the helper still runs."""
        if self.cached_seconds is not None:
            return self.cached_seconds
        if self.ahead is not None and self.ahead.succeeded:
            return AHEAD_QUICK_SECONDS
        return None

    def describe(self) -> str:
        """For people: ``compiled``, ``eager: compiling in the background``, ``eager: compile failed (why)``, ..."""
        if self.state is CompileState.FAILED:
            return f"eager: compile failed ({self.error})"
        return _DESCRIPTIONS[self.state]

    def prime(self) -> None:
        """One small eager call, so that bitsandbytes' first-use set-up of every layer happens now."""
        with _on_device(self.transformer.device), torch.no_grad():
            self.transformer(**dummy_call(self.transformer, PRIME_LATENT, PRIME_TEXT), return_dict=False)
        self.primed = True

    def compile(self) -> bool:
        """Compile and warm up in this thread; True when ``READY`` (then ``activate()``), False when it failed."""
        if self._begin() and (inputs := self._prepare()) is not None:
            return self._compile(*inputs)
        return self.state in (CompileState.READY, CompileState.ACTIVE)

    def start(self) -> BlockCompiler:
        """Compile in a background thread (daemon); calls keep running eagerly until ``activate()``."""
        # Priming and the warm-up inputs happen here, on the caller's stream: the thread uses the GPU only once
        # it has compiled.
        if self._begin() and (inputs := self._prepare()) is not None:
            self._thread = threading.Thread(target=self._compile, args=inputs, name="ernie-nf4-compile", daemon=True)
            self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> CompileState:
        """Wait for a background compile (at most ``timeout`` seconds); the state then."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def activate(self) -> bool:
        """Switch the forward to the compiled block if it is ready; True when the compiled block is in use. At the
        switch, the GPU memory the warm-up freed is given back: the caching allocator kept it for the warm-up's
        stream alone, where no call could reuse it (a few hundred MB of dequantized weights on the full-size model).
        Called between runs, that costs no run a stall."""
        with self._lock:
            switched = self.state is CompileState.READY
            if switched:
                self.state = CompileState.ACTIVE
                logger.info("transformer blocks: switched to the compiled code")
            active = self.state is CompileState.ACTIVE
        if switched and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return active

    @property
    def compiling(self) -> bool:
        """True while a background compile is under way (its thread alive)."""
        thread = self._thread
        return self.state is CompileState.COMPILING and thread is not None and thread.is_alive()

    def run_blocks(self, layers, packed: _Packed) -> torch.Tensor:
        """Every block through the compiled code (the forward calls this while ``active``)."""
        run, x = self._run, packed.x
        before = _eager_calls()
        for layer in layers:
            x = run(layer, x, packed.rotary, packed.temb, packed.segments)
        if missed := _eager_calls() - before:
            self._note_fallbacks(missed, packed)
        return x

    def _begin(self) -> bool:
        """PENDING -> COMPILING, primed; False when already begun, or when priming failed (then FAILED)."""
        with self._lock:
            if self.state is not CompileState.PENDING:
                return False
            # read now, with the model where it compiles (low-vram moves it onto the GPU just before)
            self.cached_seconds = self.recorded_seconds()
            self.state = CompileState.COMPILING
        try:
            if not self.primed:
                self.prime()
        except Exception as err:
            self._fail(err)
            return False
        return True

    def _fail(self, err: Exception) -> None:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]  # dynamo: "backend raised:\n why"
        self.error = f"{type(err).__name__}: {' '.join(lines[:2])}"[:300]
        self.state = CompileState.FAILED
        logger.warning("compiling the transformer blocks failed, they run eagerly: %s", self.error)

    def _prepare(self) -> tuple[list[_Packed], object] | None:
        """The warm-up's block inputs, made by the model's own packing (so strides and dtypes are a real call's),
        and, on CUDA, an event marking them done; None when that failed (then FAILED)."""
        model = self.transformer
        try:
            with _on_device(model.device), torch.no_grad():
                inputs = [
                    model._pack(**dummy_call(model, latent, lengths, seed))
                    for latent in warm_latents(model)
                    for seed, lengths in enumerate((WARM_TEXT, WARM_TEXT[:1]))
                ]
                done = None
                if model.device.type == "cuda":
                    done = torch.cuda.Event()
                    done.record(torch.cuda.current_stream(model.device))
        except Exception as err:
            self._fail(err)
            return None
        return inputs, done

    def _compile(self, inputs: list[_Packed], done) -> bool:
        if self.ahead is not None:
            try:
                self.ahead.wait()  # its kernels make this compile quick; a helper that failed leaves it a first one
            except Exception as err:  # the helper is an optimisation: compile whatever happened to it
                logger.warning("waiting for the compile helper failed (%s: %s)", type(err).__name__, err)
        with torch_state_kept():  # not beside a model load (``torch_state``); the time waited for one is not counted
            return self._compile_now(inputs, done)

    def _compile_now(self, inputs: list[_Packed], done) -> bool:
        start = time.perf_counter()
        model = self.transformer
        if model is None:  # let go while this waited (for the helper): nothing is left to compile
            with self._lock:
                self.error, self.state = "the model was released before its compile began", CompileState.FAILED
            return False
        layers = model.layers
        try:
            fn = _own_copy(_run_block)
            compiled = torch.compile(fn, dynamic=True, backend=self.backend)
            run = run_compiled_only(fn)
            with _side_stream(model.device, done), torch.no_grad():
                for p in inputs:
                    compiled(layers[0], p.x, p.rotary, p.temb, p.segments)
                before = _eager_calls()
                for p in inputs:  # every block, each on the one before's output, as the forward runs them
                    x = p.x
                    for layer in layers:
                        x = run(layer, x, p.rotary, p.temb, p.segments)
                if missed := _eager_calls() - before:
                    raise RuntimeError(
                        f"the compiled block's guards fail for {missed} of {len(inputs) * len(layers)} blocks"
                    )
        except Exception as err:  # compiling is an optimisation: never let it cost a run
            self._fail(err)
            return False
        self._run, self.seconds = run, time.perf_counter() - start
        with self._lock:
            self.state = CompileState.READY
        logger.info("transformer blocks compiled in %.1f s", self.seconds)
        if self.record_dir:
            remember(model, self.seconds, self.record_dir)
        return True

    def _note_fallbacks(self, missed: int, packed: _Packed) -> None:
        with self._lock:
            first = self.fallback_calls == 0
            self.fallback_calls += missed
        if first:
            logger.warning(
                "the compiled transformer block does not cover a call (%d tokens in %d samples): %d blocks ran "
                "eagerly (counted in BlockCompiler.fallback_calls)",
                packed.x.shape[1],
                len(packed.segments),
                missed,
            )


def _on_device(device: torch.device):
    """Kernels, streams and Triton's compiled code go to ``device`` (also when it is not cuda:0)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def _side_stream(device: torch.device, done):
    """On CUDA: this GPU and a stream of its own that waits for ``done``, synchronized on the way out."""
    if device.type != "cuda":
        yield
        return
    with torch.cuda.device(device):
        stream = torch.cuda.Stream(device)
        if done is not None:
            stream.wait_event(done)
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()


def enable_fast_path(transformer) -> None:
    """Run ``transformer`` (an ``ErnieImageTransformer2DModel``, bf16 or NF4) with the fast forward."""
    if not isinstance(transformer, ErnieImageTransformer2DModel):
        raise TypeError(f"transformer must be an ErnieImageTransformer2DModel, got {type(transformer).__name__}")
    keep_nf4_layout(transformer)  # the layout the compiled blocks and ahead-of-time graphs read
    swap_class(transformer, FastErnieImageTransformer2DModel)
    for layer in transformer.layers:
        swap_class(layer, FastErnieImageBlock)


def disable_fast_path(transformer) -> None:
    """Back to the stock forward (a ``BlockCompiler`` is detached too)."""
    if isinstance(transformer, FastErnieImageTransformer2DModel):
        swap_class(transformer, ErnieImageTransformer2DModel)
        _STATES.pop(transformer, None)
        for layer in transformer.layers:
            swap_class(layer, ErnieImageSharedAdaLNBlock)


def compile_blocks(
    transformer, cache_dir: str | Path | None = COMPILE_CACHE, background: bool = False
) -> BlockCompiler:
    """Regional ``torch.compile`` of the fast path's repeated block (``BlockCompiler``); enables the fast path.

    ``background=False``: the next call runs eagerly (setting every layer up), then compiles before it returns;
    the calls after it run compiled (``Generator.warm_up`` makes that call). ``background=True``: a small eager
    call now, then compiling in a background thread while calls run eagerly; ``activate()`` between calls
    switches to the compiled block once it is ready.
    """
    if not isinstance(transformer, FastErnieImageTransformer2DModel):
        enable_fast_path(transformer)
    compiler = BlockCompiler(transformer, cache_dir)
    if background:
        compiler.start()
    else:
        compiler.compile_after_next_call = True
    return compiler
