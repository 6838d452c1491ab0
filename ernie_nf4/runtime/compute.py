"""FP8 or INT8 tensor cores for the transformer's linear layers, the weights kept as they are stored (NF4).

``apply_compute(transformer, compute)`` gives every linear layer of the transformer's repeated blocks (where nearly
all of its arithmetic is) a forward that runs its matrix product in FP8 (E4M3) or INT8, which GPUs with such tensor
cores do at twice bf16's rate:

- the layer's weight is dequantized for each call as bitsandbytes does for its own product (NF4 stays NF4 in
  memory), scaled per output channel by a factor fixed at load (the channel's largest magnitude over the format's
  range) and rounded to FP8 or INT8: for FP8 on a GPU in one Triton kernel (``nf4_to_fp8``), elsewhere compiled in
  plain torch ops fused with what follows (``nf4_torch``), eager through bitsandbytes' own dequantization;
- the input is scaled per token (its largest magnitude over the format's range) and rounded the same way;
- ``torch._scaled_mm`` (FP8, both scales applied in the kernel) or ``torch._int_mm`` (INT8, int32 sums scaled after)
  multiplies them; the result is bf16, as the layer's own.

Compiled (``fast_transformer.compile_blocks``), the scaling and rounding fuse into the kernels around the product;
eager, they are separate kernels. In FP8 the feed-forward's activation (``gelu(gate) * up``) and its scaling for
the last layer run as one operator (``feed_forward``, ``gelu_mul_fp8``), on a GPU in one Triton kernel. Calls with
16 tokens or fewer keep the layer's own product (the INT8 kernel needs more rows); under ``auto``, calls with fewer
than ``AUTO_MIN_ROWS`` do (smaller images, where FP8 is slower). The layers' classes become subclasses of their own
(``compat.swap_class``): LoRAs attached after this add their term to the low-precision product.
"""

from __future__ import annotations

import enum
import functools
import logging

import torch
import torch.nn.functional as F

from ..compat import keep_nf4_layout, swap_class
from ..errors import EnvironmentUnsupported, InvalidArgument
from ..prompt_enhancer.kernels import nf4_gemv
from . import fp8_attention as attention_in_fp8
from .nf4_torch import dequantize_state, in_plain_layout

logger = logging.getLogger(__name__)

MIN_ROWS = 17  # torch._int_mm needs more than 16 rows; fewer take the layer's own product
# Under auto, FP8 from this many rows (tokens, text and image, across the batch), the layer's own product below. With
# compiled blocks on an NVIDIA H200 (docs/benchmarks.md, compute modes), FP8 took 0.65x bf16's step at 1024x1024
# with guidance (8,704 rows) and 0.66x without (4,352), but 0.98x at 512x512 with guidance (2,560 rows): there the
# scaling's extra kernels cost about what the products save, and bf16 keeps the smaller error.
AUTO_MIN_ROWS = 4096
# FP8 products accumulate in the tensor cores' own precision, without cuBLAS's periodic promotion of the sums to
# float32 (``torch._scaled_mm(use_fast_accum=True)``). On an NVIDIA H200 (torch 2.11), one compiled step of the
# transformer at 1024x1024 with guidance took 175.4 ms against 184.9 with the promotion, its output's error against
# the bf16 original the same to four digits (``python scripts/gpu_compute_step.py ROOT --modes fp8 fp8-exact``): the
# error is FP8's rounding, not the sums'.
FAST_ACCUMULATION = True
_CLASSES: dict[tuple[type, str], type] = {}


class Compute(str, enum.Enum):
    """How the transformer's linear layers multiply: ``bf16`` (the layer's own product), ``fp8``, ``int8``, or
    ``auto``: FP8 for products of ``AUTO_MIN_ROWS`` rows or more, where the device has FP8 (``available``'s first)
    and the blocks run compiled; bf16 otherwise."""

    AUTO = "auto"
    BF16 = "bf16"
    FP8 = "fp8"
    INT8 = "int8"

    @classmethod
    def parse(cls, value, argument: str = "compute") -> Compute:
        try:
            return value if isinstance(value, cls) else cls(str(value).strip().lower())
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise InvalidArgument(f"{argument} must be one of {choices}, got {value!r}", field="compute") from None


def available(device: str | torch.device) -> tuple[Compute, ...]:
    """The compute modes ``device`` runs, fastest first (compiled blocks at 1024x1024: FP8 0.65x bf16 on an NVIDIA
    H200, INT8 0.94x on an H100). A low-precision mode counts only when a small product of its kind runs there
    (``_runs``): FP8 with per-row scales needs compute capability 8.9 or newer and a torch that has the kernel for the
    card, INT8 8.0. CPUs run both with reference kernels, not faster than bf16."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    runs = [c for c in (Compute.FP8, Compute.INT8) if _runs(str(device), c)]
    if device.type == "cuda" and Compute.FP8 in runs:
        return (Compute.FP8, Compute.BF16, *[c for c in runs if c is not Compute.FP8])
    return (Compute.BF16, *runs)


@functools.cache
def _runs(device: str, compute: Compute) -> bool:
    """Whether a small product in ``compute`` runs on ``device`` (a kernel the card or this torch lacks raises)."""
    if device.startswith("cuda"):
        if torch.version.hip is not None:  # AMD: another FP8 format, and these kernels are untested there
            return False
        if torch.cuda.get_device_capability(torch.device(device)) < ((8, 9) if compute is Compute.FP8 else (8, 0)):
            return False
    try:
        x = torch.randn(32, 64, device=device)
        w = torch.randn(32, 64, device=device)
        xq, x_scale = _per_token(x, compute)
        wq, w_scale = _per_token(w, compute)
        if compute is Compute.FP8:
            torch._scaled_mm(xq, wq.t(), scale_a=x_scale, scale_b=w_scale.t(), out_dtype=torch.bfloat16)
        else:
            torch._int_mm(xq, wq.t())
        return True
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def resolve(compute, device: str | torch.device, compiled: bool = False) -> Compute:
    """``compute`` for ``device``: ``auto`` stays ``auto`` (FP8 for large products) where FP8 is the fastest the
    device has and the blocks run ``compiled``, else becomes bf16 (eager, the low-precision products' separate
    scaling kernels cost more than they save); a mode it lacks raises ``EnvironmentUnsupported`` naming the card and
    the modes it has."""
    compute, modes = Compute.parse(compute), available(device)
    if compute is Compute.AUTO:
        return Compute.AUTO if compiled and modes[0] is Compute.FP8 else Compute.BF16
    if compute not in modes:
        name = torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else device
        have = ", ".join(m.value for m in modes)
        raise EnvironmentUnsupported(
            f"compute {compute.value!r} does not run on {name} with torch {torch.__version__} (FP8 needs compute "
            f"capability 8.9 or newer, INT8 8.0 or newer, and a torch with their kernels for the card); use --compute "
            f"auto, or one of: {have}"
        )
    return compute


# ---------------------------------------------------------------- formats


def _range(compute: Compute) -> float:
    return torch.finfo(torch.float8_e4m3fn).max if compute is Compute.FP8 else 127.0


def _to_format(x: torch.Tensor, inverse_scale: torch.Tensor, compute: Compute) -> torch.Tensor:
    """``x * inverse_scale`` rounded to ``compute``'s format. The values are within its range, or past it by at most
    bf16's rounding (2**-8: a compiled weight in float32 against the scale taken from bitsandbytes' bf16 values),
    which still rounds to the largest FP8 value (448, where 464 would round away) and is clamped for INT8."""
    y = x.float() * inverse_scale
    if compute is Compute.FP8:
        return y.to(torch.float8_e4m3fn)
    return y.round_().clamp_(-127, 127).to(torch.int8)


def _per_token(x: torch.Tensor, compute: Compute) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ([rows, in]) scaled per row into ``compute``'s format, and the scales ([rows, 1], float32)."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp_(min=1e-12)
    scale = amax / _range(compute)
    return _to_format(x, 1.0 / scale, compute), scale


def _weight(layer) -> torch.Tensor:
    """The layer's weight as it multiplies (``[out, in]``): NF4 dequantized as bitsandbytes does, else as stored.
    In compiled code, the same arithmetic in plain torch ops, kept in float32 (``nf4_torch``): Inductor fuses it with
    the scaling and rounding that follow, one kernel from 4 bits to 8 where bitsandbytes' kernel would write a bf16
    weight first."""
    weight = layer.weight
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is None:
        return weight
    if torch.compiler.is_compiling() and in_plain_layout(weight.data, quant_state):
        return dequantize_state(weight.data, quant_state, torch.float32)
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.dequantize_4bit(weight.data, quant_state)


@torch.library.custom_op("ernie_nf4::nf4_to_fp8", mutates_args=())
def nf4_to_fp8(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    code: torch.Tensor,
    absmax2: torch.Tensor,
    code2: torch.Tensor,
    offset: torch.Tensor,
    inverse_scale: torch.Tensor,
    blocksize: int,
    blocksize2: int,
    nested: bool,
) -> torch.Tensor:
    """An NF4 weight (its packed bytes and its state's tensors) dequantized in float32, each output channel
    multiplied by ``inverse_scale`` and rounded to FP8, in one Triton kernel at memory speed
    (``prompt_enhancer.kernels.nf4_gemv.dequantize_packed``). An operator of its own, so that compiled blocks call
    the kernel as it is: what Inductor generates from the same arithmetic in torch ops runs at a third of the speed,
    held back by its table reads."""
    n = inverse_scale.shape[0]
    constants = {"NESTED": nested, "QBLOCK": blocksize, "QBLOCK2": blocksize2}
    shape = (n, packed.numel() * 2 // n)
    return nf4_gemv.dequantize_packed(
        packed, absmax, code, absmax2, code2, offset, shape, constants, torch.float8_e4m3fn, row_scale=inverse_scale
    )


@nf4_to_fp8.register_fake
def _(packed, absmax, code, absmax2, code2, offset, inverse_scale, blocksize, blocksize2, nested):
    n = inverse_scale.shape[0]
    return packed.new_empty((n, packed.numel() * 2 // n), dtype=torch.float8_e4m3fn)


@torch.library.custom_op("ernie_nf4::gelu_mul_fp8", mutates_args=())
def gelu_mul_fp8(gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``_per_token(up * gelu(gate), Compute.FP8)`` of ``[rows, n]`` activations: on a GPU with Triton in one kernel
    that reads each row once (``prompt_enhancer.kernels.nf4_gemv.gelu_mul_fp8``), elsewhere in those torch ops. An
    operator of its own, so that compiled blocks call the kernel as it is: what Inductor generates for the same work
    reads each row twice, at about a third of the speed (the feed-forward's activation is the widest of the block,
    12,288 values a token in the full-size model)."""
    width = gate.shape[-1]
    if gate.is_cuda and width <= nf4_gemv.ROW_KERNEL_MAX and _activation_kernel_runs(str(gate.device), width):
        return nf4_gemv.gelu_mul_fp8(gate, up)
    return _per_token(up * F.gelu(gate), Compute.FP8)


@functools.cache
def _activation_kernel_runs(device: str, width: int) -> bool:
    """Whether ``nf4_gemv.gelu_mul_fp8`` runs on ``device`` for rows of ``width`` (each width its own compiled
    kernel) and gives what the torch ops give (each value within one FP8 step), checked once on a sample of 8 rows;
    if not, one log line and the torch ops from then on."""
    if not nf4_gemv.available():
        return False
    g = torch.Generator(device=device).manual_seed(0)
    gate, up = (torch.randn(8, width, device=device, generator=g).mul_(3).to(torch.bfloat16) for _ in range(2))
    try:
        xq, scales = nf4_gemv.gelu_mul_fp8(gate, up)
    except Exception as err:  # a Triton or driver that cannot build or launch it
        logger.warning("the FP8 activation kernel does not run on %s (%s); torch ops scale it", device, err)
        return False
    want, want_scales = _per_token(up * F.gelu(gate), Compute.FP8)
    steps = (xq.view(torch.uint8).int() - want.view(torch.uint8).int()).abs().max()
    if steps > 1 or not torch.allclose(scales, want_scales, rtol=2**-7, atol=0):
        logger.warning("the FP8 activation kernel differs from torch's ops on %s; torch ops scale it", device)
        return False
    return True


@gelu_mul_fp8.register_fake
def _(gate, up):
    scales = gate.new_empty((gate.shape[0], 1), dtype=torch.float32)
    return gate.new_empty(gate.shape, dtype=torch.float8_e4m3fn), scales


def feed_forward(mlp, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` for the stock block's feed-forward (``linear_fc2(up_proj(x) * gelu(gate_proj(x)))``). Where
    ``linear_fc2`` multiplies in FP8 (``apply_compute``) and ``x`` has the rows for it, the activation and
    ``linear_fc2``'s input scaling are one operator (``gelu_mul_fp8``); a LoRA on ``linear_fc2`` adds its term from
    the activation, as its own forward does. Any other ``mlp`` (a function of its own) is called as it is."""
    out_layer = getattr(mlp, "linear_fc2", None)
    if getattr(type(out_layer), "_compute", None) is not Compute.FP8:
        return mlp(x)
    if x.numel() // x.shape[-1] < out_layer.compute_min_rows:
        return mlp(x)
    gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    width = gate.shape[-1]
    out = _product(out_layer, *gelu_mul_fp8(gate.reshape(-1, width), up.reshape(-1, width)), Compute.FP8)
    if hasattr(out_layer, "add_lora_term"):
        out = out_layer.add_lora_term((up * F.gelu(gate)).reshape(-1, width), out)
    return out.reshape(*x.shape[:-1], out.shape[-1]).to(x.dtype)


def _fp8_kernel_fits(layer) -> bool:
    """Whether ``nf4_to_fp8`` reads ``layer``'s weight: NF4 in bitsandbytes' layout on a CUDA GPU with Triton, a
    float32 table, and rows of whole 8-element words. Asked once, where the model loads (NF4 loads onto the GPU);
    each call also checks that the weight is on the GPU in that layout (low-vram moves it), else takes torch ops."""
    weight = layer.weight
    state = getattr(weight, "quant_state", None)
    return (
        weight.is_cuda
        and in_plain_layout(weight.data, state)
        and state.code.dtype == torch.float32
        and state.shape[1] % 8 == 0
        and nf4_gemv.available()
    )


def _weight_in_format(layer, compute: Compute) -> torch.Tensor:
    """The layer's weight scaled per output channel and rounded to ``compute``'s format (``[out, in]``)."""
    packed, state = layer.weight.data, getattr(layer.weight, "quant_state", None)
    if compute is Compute.FP8 and layer.compute_kernel and packed.is_cuda and in_plain_layout(packed, state):
        return _fp8_weight(packed, state, layer.compute_inverse_scale)
    return _to_format(_weight(layer), layer.compute_inverse_scale[:, None], compute)


def _fp8_weight(packed, state, inverse_scale) -> torch.Tensor:
    """``nf4_to_fp8`` of a weight's packed bytes and its ``QuantState``."""
    constants = nf4_gemv.nesting(state)
    blocks = int(constants["QBLOCK"]), int(constants["QBLOCK2"])
    return nf4_to_fp8(packed, *nf4_gemv.state_tensors(state), inverse_scale, *blocks, constants["NESTED"])


def _product(layer, xq: torch.Tensor, x_scale: torch.Tensor, compute: Compute) -> torch.Tensor:
    """``layer``'s output (``[rows, out]``, in its compute dtype) for an input already scaled per row into
    ``compute``'s format (``xq``, its scales ``x_scale``)."""
    dtype = getattr(layer, "compute_dtype", None) or torch.bfloat16
    wq = _weight_in_format(layer, compute)
    if compute is Compute.FP8:
        out = torch._scaled_mm(
            xq,
            wq.t(),
            scale_a=x_scale,
            scale_b=layer.compute_scale[None],
            out_dtype=dtype,
            use_fast_accum=FAST_ACCUMULATION,
        )
    else:
        out = (torch._int_mm(xq, wq.t()).float() * x_scale * layer.compute_scale[None]).to(dtype)
    if layer.bias is not None:
        out = out + layer.bias.to(dtype)
    return out


def fp8_product(layer, xq: torch.Tensor, x_scale: torch.Tensor) -> torch.Tensor:
    """``layer``'s output (``[rows, out]``) for an input already in FP8 (``xq``, ``[rows, in]``, its scales
    ``x_scale`` per row), ``layer`` multiplying in FP8 (``apply_compute``); a LoRA on it adds its term from the
    input's values."""
    out = _product(layer, xq, x_scale, Compute.FP8)
    if hasattr(layer, "add_lora_term"):
        out = layer.add_lora_term((xq.float() * x_scale).to(out.dtype), out)
    return out


def _low_precision_class(base: type, compute: Compute) -> type:
    """``base`` (``nn.Linear`` or bitsandbytes' ``Linear4bit``) multiplying in ``compute``."""
    key = (base, compute.value)
    if key not in _CLASSES:

        def forward(self, x):
            rows = x.reshape(-1, x.shape[-1])
            if rows.shape[0] < self.compute_min_rows:
                return base.forward(self, x)
            out = _product(self, *_per_token(rows, compute), compute)
            return out.reshape(*x.shape[:-1], out.shape[-1]).to(x.dtype)

        name = f"{compute.value.upper()}{base.__name__}"
        _CLASSES[key] = type(name, (base,), {"forward": forward, "_compute": compute})
    return _CLASSES[key]


def _fits(layer: torch.nn.Linear) -> bool:
    """The low-precision kernels need both widths a multiple of 16."""
    return layer.in_features % 16 == 0 and layer.out_features % 16 == 0


def apply_compute(transformer, compute, min_rows: int | None = None, fp8_attention: bool = True) -> Compute:
    """Make the linear layers of ``transformer``'s repeated blocks multiply in ``compute`` (``Compute`` or its name;
    ``auto`` is resolved for the model's device, as for compiled blocks: FP8 from ``AUTO_MIN_ROWS`` rows where the
    device has FP8, else bf16). ``min_rows``: calls with fewer rows keep the layer's own product (default
    ``MIN_ROWS``, or ``AUTO_MIN_ROWS`` under ``auto``). Call it once, after the model is loaded on the device it will
    run on and before LoRAs are attached or it is compiled; ``bf16`` changes nothing. Returns the mode in force.

    ``fp8_attention``: in FP8, attention too where the device has the kernel (``fp8_attention``): the blocks' own
    attention, and the output projection takes its output as it is.

    Each layer gets two float32 buffers of its output width (its weight's scale per channel and that scale's
    inverse): a few MB for the full-size model, which move with it in every memory mode."""
    if min_rows is not None and min_rows < MIN_ROWS:
        raise InvalidArgument(f"min_rows must be {MIN_ROWS} or more (the INT8 kernel's least), got {min_rows}")
    compute = resolve(compute, transformer.device, compiled=True)
    if compute is Compute.BF16:
        return compute
    if min_rows is None:
        min_rows = AUTO_MIN_ROWS if compute is Compute.AUTO else MIN_ROWS
    mode = Compute.FP8 if compute is Compute.AUTO else compute
    keep_nf4_layout(transformer)  # the layout the compiled dequantization reads
    with torch.no_grad():
        for block in transformer.layers:
            for layer in block.modules():
                if not isinstance(layer, torch.nn.Linear) or getattr(type(layer), "_compute", None) or not _fits(layer):
                    continue
                if hasattr(layer, "lora_down"):  # its LoRA term would be lost under the new forward
                    raise InvalidArgument("apply_compute must come before attach_loras", field="compute")
                amax = _weight(layer).float().abs().amax(dim=1).clamp_(min=1e-12)
                scale = amax / _range(mode)
                layer.register_buffer("compute_scale", scale, persistent=False)
                layer.register_buffer("compute_inverse_scale", 1.0 / scale, persistent=False)
                layer.compute_kernel = mode is Compute.FP8 and _fp8_kernel_fits(layer)
                layer.compute_min_rows = min_rows
                swap_class(layer, _low_precision_class(type(layer), mode))
            if mode is Compute.FP8 and fp8_attention:
                attention_in_fp8.prepare(block.self_attention)
    return compute
