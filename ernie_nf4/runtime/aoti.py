"""Ahead-of-time compiled transformer blocks (``torch.export`` + AOTInductor), for hosts where ``torch.compile``
cannot run, such as Hugging Face's ZeroGPU Spaces.

One fast-path block (``fast_transformer.FastErnieImageBlock``) is exported as two graphs: before attention (norm,
modulation, q/k/v projections, rotary: ``q, k, v``) and after it (output projection, gate, MLP). Attention runs
eagerly between them, per sample, as in the fast block; the token count is a dynamic dimension of both graphs, so
every image size and prompt length runs the same compiled code. Each graph is compiled once and serves all
blocks: a block's own tensors are swapped in as the compiled code's constants for its call (no copies).

bitsandbytes keeps an NF4 layer's quantization state (absmax, double-quantized absmax, code tables) in a Python
object, not in the layer's state dict, so an exported layer would carry block 0's state as a constant of the graph.
Here each block is exported through a view (``_BeforeAttention``, ``_AfterAttention``) whose every tensor is a
buffer or parameter with the same name in every block, and whose NF4 weights are dequantized inside the graph in
plain torch ops (``dequantize_nf4``: float32, then bf16, as bitsandbytes' ``dequantize_4bit`` does).

``compile_blocks_ahead_of_time(transformer)`` captures a block's inputs, exports, compiles (``spaces.aoti_compile``
where the ``spaces`` package imports, else the same recipe in torch's own calls: ``torch_compile``), checks the
first and last blocks against eager and applies the result to every block (``AotiBlocks``; ``remove()`` goes back to
eager). Any failure logs one line and leaves the model eager, the reason in ``AotiBlocks.describe()``.
``compile_archives`` and ``apply_archives`` split the same work where the compiling happens in another process
(ZeroGPU's GPU worker).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_ernie_image import ErnieImageFeedForward

from ..compat import NestedAbsmax, nested_absmax
from ..torch_state import torch_state_kept
from .fast_transformer import (
    PRIME_LATENT,
    PRIME_TEXT,
    CompileState,
    FastErnieImageTransformer2DModel,
    after_attention,
    attend,
    before_attention,
    dummy_call,
)
from .nf4_torch import dequantize_nf4, in_plain_layout

logger = logging.getLogger(__name__)

# Inductor settings of the compiled blocks: the tensors stay out of the archive and are never folded into new
# constants (a folded constant would be block 0's for every block). spaces.aoti_compile sets these too.
INDUCTOR_OPTIONS = {
    "aot_inductor.package_constants_in_so": False,
    "always_keep_tensor_constants": True,
    "joint_graph_constant_folding": False,
}
MAX_TOKENS = 1 << 20  # the dynamic token dimension's upper bound (a 2048x2048 CFG batch has about 33,000)
CHECK_TOLERANCE = 2e-2  # relative error of a compiled block against eager: bf16 rounds differently, no more
DESCRIPTIONS = {
    CompileState.PENDING: "eager: not compiled yet (ahead of time)",
    CompileState.ACTIVE: "compiled ahead of time (AOTInductor)",
}


class _LinearView(torch.nn.Module):
    """A linear layer (bitsandbytes' ``Linear4bit`` or ``nn.Linear``) whose every tensor is a buffer of this
    module, the layer's own tensors (no copies)."""

    def __init__(self, layer: torch.nn.Module, name: str):
        super().__init__()
        import bitsandbytes as bnb

        self.nf4 = type(layer) is bnb.nn.Linear4bit
        if not self.nf4 and type(layer) is not torch.nn.Linear:
            raise ValueError(
                f"{name} is a {type(layer).__name__}: blocks with LoRAs attached or a compute mode other than bf16 "
                "run eagerly (load without them to compile ahead of time)"
            )
        self.register_buffer("bias", None if layer.bias is None else layer.bias.data)
        if not self.nf4:
            self.register_buffer("weight", layer.weight.data)
            return
        state = layer.weight.quant_state
        if not in_plain_layout(layer.weight.data, state):
            raise ValueError(f"{name}: not an NF4 weight in bitsandbytes' own layout")
        self.shape, self.blocksize, self.dtype = state.shape, int(state.blocksize), state.dtype
        for key, tensor in (("packed", layer.weight.data), ("absmax", state.absmax), ("code", state.code)):
            self.register_buffer(key, tensor)
        self.nested_blocksize = None
        if (nested := nested_absmax(state)) is not None:
            self.nested_blocksize = nested.blocksize
            for key, tensor in (("nested_absmax", nested.absmax), ("nested_code", nested.code)):
                self.register_buffer(key, tensor)
            self.register_buffer("offset", nested.offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.nf4:
            return F.linear(x, self.weight, self.bias)
        nested = None
        if self.nested_blocksize is not None:
            nested = NestedAbsmax(self.nested_absmax, self.nested_code, self.offset, self.nested_blocksize)
        weight = dequantize_nf4(self.packed, self.absmax, self.code, self.shape, self.blocksize, nested, self.dtype)
        return F.linear(x, weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def _views(layer, index: int, names: dict) -> dict:
    return {key: _LinearView(module, f"layers.{index}.{path}") for key, (path, module) in names.items()}


class _BeforeAttention(torch.nn.Module):
    """The fast block up to attention: ``(x, cos, sin, shift_msa, scale_msa) -> (q, k, v)``, ``[1, heads, T, D]``."""

    def __init__(self, block, index: int):
        super().__init__()
        attn = block.self_attention
        self.heads = attn.heads
        self.norm, self.norm_q, self.norm_k = block.adaLN_sa_ln, attn.norm_q, attn.norm_k
        paths = {k: (f"self_attention.{k}", getattr(attn, k)) for k in ("to_q", "to_k", "to_v")}
        for key, view in _views(block, index, paths).items():
            setattr(self, key, view)

    def forward(self, x, cos, sin, shift, scale):
        return before_attention(x, cos, sin, shift, scale, self.norm, self)


class _AfterAttention(torch.nn.Module):
    """The fast block after attention: ``(x, attention [1, heads, T, D], gate_msa, shift_mlp, scale_mlp, gate_mlp)
    -> x``."""

    def __init__(self, block, index: int):
        super().__init__()
        self.norm = block.adaLN_mlp_ln
        paths = {"to_out": ("self_attention.to_out.0", block.self_attention.to_out[0])}
        paths |= {k: (f"mlp.{k}", getattr(block.mlp, k)) for k in ("gate_proj", "up_proj", "linear_fc2")}
        for key, view in _views(block, index, paths).items():
            setattr(self, key, view)

    def forward(self, x, attention, gate_msa, shift_mlp, scale_mlp, gate_mlp):
        return after_attention(x, attention, gate_msa, shift_mlp, scale_mlp, gate_mlp, self.to_out, self.norm, self.mlp)

    def mlp(self, h):
        """The block's MLP (diffusers' own forward) over this view's layers."""
        return ErnieImageFeedForward.forward(self, h)


def check_blocks(transformer) -> None:
    """Raise ``ValueError`` naming the first block layer that cannot be compiled ahead of time (a LoRA attached, a
    compute mode other than bf16, weights bitsandbytes repacked), or the model when it does not run the fast path."""
    if not isinstance(transformer, FastErnieImageTransformer2DModel):
        raise ValueError(
            f"transformer must run the fast path (fast_transformer.enable_fast_path), got {type(transformer).__name__}"
        )
    for index, block in enumerate(transformer.layers):
        _BeforeAttention(block, index), _AfterAttention(block, index)


@dataclass
class AotiArchives:
    """The two compiled graphs (AOTInductor packages, as bytes): picklable, they cross from a GPU worker back to
    the app's process. ``seconds``: capturing, exporting and compiling them."""

    before: bytes
    after: bytes
    seconds: float


def block_inputs(transformer, lengths: tuple[int, ...] = PRIME_TEXT) -> tuple:
    """Real inputs of one block (the model's own packing of a small random batch, one sample per prompt length; a
    CFG batch by default): ``(x, (cos, sin), temb, segments)``."""
    with torch.no_grad():
        packed = transformer._pack(**dummy_call(transformer, PRIME_LATENT, lengths))
    return packed.x, packed.rotary, tuple(packed.temb), packed.segments


def _export(transformer, inputs) -> tuple:
    """The exported programs of block 0 before and after attention, the token count dynamic."""
    x, (cos, sin), temb, segments = inputs
    tokens = torch.export.Dim("tokens", min=2, max=MAX_TOKENS)
    block = transformer.layers[0]
    with torch.no_grad(), torch_state_kept():
        before = _BeforeAttention(block, 0).eval()
        query, key, value = before(x, cos, sin, temb[0], temb[1])
        attention = attend(query, key, value, segments)
        before_program = torch.export.export(
            before,
            (x, cos, sin, temb[0], temb[1]),
            dynamic_shapes=({1: tokens}, {1: tokens}, {1: tokens}, None, None),
            strict=False,
        )
        after_program = torch.export.export(
            _AfterAttention(block, 0).eval(),
            (x, attention, *temb[2:]),
            dynamic_shapes=({1: tokens}, {2: tokens}, None, None, None, None),
            strict=False,
        )
    return before_program, after_program


def spaces_compile(program) -> bytes:
    """An exported program compiled by the ``spaces`` package's ``aoti_compile`` (ZeroGPU's AoTI path) into an
    AOTInductor package's bytes; the block 0 tensors it also returns are not kept."""
    from spaces.zero.torch.aoti import aoti_compile

    archive = aoti_compile(program, dict(INDUCTOR_OPTIONS)).archive_file
    return archive.getvalue() if isinstance(archive, io.BytesIO) else bytes(archive)


def packaging_options() -> dict:
    """``INDUCTOR_OPTIONS`` plus the packaging the ``spaces`` package uses: the compiled code is built to take its
    constants from outside (torch 2.10 on: in the separate ``pickle_weights`` form; before: on disk), so the archive
    holds code only and this path builds what ZeroGPU's builds."""
    options = dict(INDUCTOR_OPTIONS, **{"aot_inductor.package": True})
    if hasattr(torch._inductor.config.aot_inductor, "package_constants_on_disk_format"):
        options["aot_inductor.package_constants_on_disk_format"] = "pickle_weights"
    else:
        options["aot_inductor.package_constants_on_disk"] = True
    return options


def torch_compile(program) -> bytes:
    """An exported program compiled by torch's AOTInductor into a package's bytes, as ``spaces.aoti_compile`` does
    it (``packaging_options``; the block 0 tensors the compile also returns are left out)."""
    from torch._inductor.package.package import package_aoti

    args, kwargs = program.example_inputs
    artifacts = torch._inductor.aot_compile(program.module(), args, kwargs, options=packaging_options())
    buffer = io.BytesIO()
    package_aoti(buffer, [artifact for artifact in artifacts if isinstance(artifact, str)])
    return buffer.getvalue()


def default_compile(program) -> bytes:
    """``spaces_compile`` where the ``spaces`` package's AoTI helpers import (ZeroGPU; they need a CUDA build of
    torch), else ``torch_compile``."""
    try:
        import spaces.zero.torch.aoti  # noqa: F401
    except Exception:  # not installed, or not importable on this torch
        return torch_compile(program)
    return spaces_compile(program)


def compile_archives(transformer, compile_fn=None, check: bool = True) -> AotiArchives:
    """Export and compile the fast path's block (``compile_fn(exported_program) -> bytes``, default
    ``default_compile``); with ``check``, the first and last blocks run compiled and are compared with eager.
    Raises on any failure (``compile_blocks_ahead_of_time`` turns that into a reason and keeps the model eager)."""
    start = time.perf_counter()
    check_blocks(transformer)
    inputs = block_inputs(transformer)
    programs = _export(transformer, inputs)
    compile_fn = default_compile if compile_fn is None else compile_fn
    archives = AotiArchives(*(bytes(compile_fn(program)) for program in programs), seconds=0.0)
    if check:  # a CFG batch and one sample (whose attention comes out of SDPA in another layout)
        for case in (inputs, block_inputs(transformer, PRIME_TEXT[:1])):
            _check(transformer, _Compiled(archives), case)
    archives.seconds = time.perf_counter() - start
    return archives


class _Graph:
    """One compiled graph (an AOTInductor package's bytes), loaded on its first call in each process (a forked
    worker loads its own), run with a block's tensors as its constants (swapped in when another block calls; that
    every constant is given is checked on a block's first call only, as ``spaces`` does)."""

    def __init__(self, archive: bytes):
        self.archive = archive
        self._model, self._pid, self._weights, self._checked = None, None, None, set()
        self._lock = threading.Lock()

    def _loaded(self):
        if self._pid != os.getpid():
            self._model = torch._inductor.aoti_load_package(io.BytesIO(self.archive))
            self._pid, self._weights, self._checked = os.getpid(), None, set()
        return self._model

    def __call__(self, weights: dict, *args):
        with self._lock:
            model = self._loaded()
            if self._weights is not weights:
                first = id(weights) not in self._checked
                model.load_constants(weights, check_full_update=first, user_managed=True)
                self._weights = weights
                self._checked.add(id(weights))
            return model(*args)

    def constant_names(self) -> set[str]:
        with self._lock:
            return set(self._loaded().get_constant_fqns())


class _Compiled:
    """Both graphs of the block."""

    def __init__(self, archives: AotiArchives):
        self.before, self.after = _Graph(archives.before), _Graph(archives.after)


class _BlockForward:
    """A block's ``forward`` through the compiled graphs, with the block's own tensors; calls that are not the
    fast path's (``segments`` not a tuple: the stock model forward) run the block's own forward."""

    def __init__(self, block, index: int, compiled: _Compiled):
        self.block, self.compiled = block, compiled
        self.before = _BeforeAttention(block, index).state_dict(keep_vars=True)
        self.after = _AfterAttention(block, index).state_dict(keep_vars=True)

    def __call__(self, x, rotary, temb, segments):
        if not isinstance(segments, tuple):
            return type(self.block).forward(self.block, x, rotary, temb, segments)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = temb
        x = x.contiguous()
        query, key, value = self.compiled.before(self.before, x, *rotary, shift_msa, scale_msa)
        # The compiled code reads its inputs with the strides it was exported with (contiguous) and never checks
        # them: one sample's attention comes out of SDPA as a transposed view.
        attention = attend(query, key, value, segments).contiguous()
        return self.compiled.after(self.after, x, attention, gate_msa, shift_mlp, scale_mlp, gate_mlp)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _check(transformer, compiled: _Compiled, inputs) -> None:
    """The compiled graphs hold no tensor of their own, and the first and last blocks, each with its own tensors,
    give what they give eagerly on ``inputs`` (within bf16 rounding); raise ``RuntimeError`` naming what differs."""
    layers = transformer.layers
    names = set(_BlockForward(layers[0], 0, compiled).before) | set(_BlockForward(layers[0], 0, compiled).after)
    own = (compiled.before.constant_names() | compiled.after.constant_names()) - names
    if own:
        raise RuntimeError(f"the compiled block holds tensors of its own ({', '.join(sorted(own)[:3])})")
    x, rotary, temb, segments = inputs
    with torch.no_grad():
        for index in sorted({0, len(layers) - 1}):
            block = layers[index]
            expected = block(x, rotary, list(temb), segments)
            error = _relative_error(_BlockForward(block, index, compiled)(x, rotary, temb, segments), expected)
            if not error <= CHECK_TOLERANCE:
                raise RuntimeError(f"block {index} compiled differs from eager (relative error {error:.3g})")


class AotiBlocks:
    """The transformer's blocks running ahead-of-time compiled code, or why they run eagerly.

    It answers as a ``fast_transformer.BlockCompiler`` does where the app shows the state (``state``, ``active``,
    ``activate()``, ``describe()``): ``compiled ahead of time (AOTInductor)`` or ``eager: ahead-of-time compile
    failed (why)``. ``remove()`` puts the blocks back on their eager forward."""

    fallback_calls = 0  # every fast-path call of an applied block runs the compiled code
    expected_seconds = None  # never waited for as a quick compile

    def __init__(self, transformer, seconds: float | None = None):
        self.transformer = transformer
        self.state = CompileState.PENDING
        self.error: str | None = None
        self.seconds = seconds  # capturing, exporting and compiling
        self._applied: list = []

    @property
    def active(self) -> bool:
        return self.state is CompileState.ACTIVE

    def activate(self) -> bool:
        return self.active

    def wait(self, timeout: float | None = None) -> CompileState:
        return self.state

    def describe(self) -> str:
        if self.state is CompileState.FAILED:
            return f"eager: ahead-of-time compile failed ({self.error})"
        return DESCRIPTIONS[self.state]

    def apply(self, archives: AotiArchives) -> AotiBlocks:
        """Every block's ``forward`` through ``archives``' graphs (its own tensors swapped in); on failure the
        blocks stay eager and ``describe()`` says why."""
        try:
            check_blocks(self.transformer)
            compiled = _Compiled(archives)
            forwards = [_BlockForward(b, i, compiled) for i, b in enumerate(self.transformer.layers)]
        except Exception as err:
            return self.fail(err)
        for block, forward in zip(self.transformer.layers, forwards, strict=True):
            block.forward = forward  # this instance only: the model's forward calls it through block(...)
        self._applied = list(self.transformer.layers)
        self.seconds = archives.seconds if self.seconds is None else self.seconds
        self.state = CompileState.ACTIVE
        logger.info("transformer blocks: compiled ahead of time (%d blocks)", len(self._applied))
        return self

    def remove(self) -> None:
        """Back to the eager forward of every block."""
        for block in self._applied:
            block.__dict__.pop("forward", None)
        self._applied = []
        if self.state is CompileState.ACTIVE:
            self.state = CompileState.PENDING

    def fail(self, err: Exception | str) -> AotiBlocks:
        """Eager for good, ``err`` (an exception or a reason) saying why; one log line."""
        if isinstance(err, Exception):
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            err = f"{type(err).__name__}: {' '.join(lines[:2])}"
        self.error, self.state = str(err)[:300], CompileState.FAILED
        logger.warning("compiling the transformer blocks ahead of time failed, they run eagerly: %s", self.error)
        return self


def apply_archives(transformer, archives: AotiArchives) -> AotiBlocks:
    """``archives`` (from ``compile_archives``, here or in another process) applied to every block."""
    return AotiBlocks(transformer).apply(archives)


def compile_blocks_ahead_of_time(transformer, compile_fn=None) -> AotiBlocks:
    """Export, compile, check and apply the fast path's block to every block of ``transformer``
    (``compile_archives``, then ``apply_archives``); on any failure one log line, the model eager, and
    ``describe()`` says why. ``compile_fn(exported_program) -> bytes``: default ``default_compile``."""
    blocks = AotiBlocks(transformer)
    try:
        archives = compile_archives(transformer, compile_fn)
    except Exception as err:  # compiling is an optimisation: never let it cost a run
        return blocks.fail(err)
    return blocks.apply(archives)
