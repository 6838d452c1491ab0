"""NF4 weights dequantized in plain torch ops, which compilers fuse into the kernels around them.

bitsandbytes' ``dequantize_4bit`` is one opaque kernel that writes the whole bf16 weight; in plain ops, Inductor can
fold the dequantization into what follows it (the FP8 or INT8 rounding of ``compute``, a whole AOTInductor graph of
``aoti``), so the weight is read as 4 bits and written once in its final format.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..compat import nested_absmax


def dequantize_nf4(packed, absmax, code, shape, blocksize: int, nested=None, dtype=torch.bfloat16):
    """An NF4 weight of ``shape`` from its packed nibbles (high nibble first), in plain torch ops: ``code[nibble] *
    absmax[i // blocksize]`` in float32, cast to ``dtype``. ``nested`` (``compat.NestedAbsmax``): ``absmax`` holds
    uint8 codes, ``absmax = nested.code[absmax] * nested.absmax[j // nested.blocksize] + nested.offset``."""
    if nested is not None:
        scales = nested.absmax.repeat_interleave(nested.blocksize)[: absmax.numel()]
        absmax = nested.code[absmax.long()] * scales + nested.offset
    flat = packed.reshape(-1)
    nibbles = torch.stack(((flat >> 4) & 15, flat & 15), dim=-1).reshape(-1).long()
    count = absmax.numel() * blocksize
    values = code[nibbles]
    if values.numel() < count:  # the last block is partial
        values = F.pad(values, (0, count - values.numel()))
    weight = (values.view(-1, blocksize) * absmax.float().view(-1, 1)).to(dtype)
    return weight.reshape(-1)[: shape.numel()].reshape(shape)


def in_plain_layout(packed, state) -> bool:
    """Whether ``packed`` with its bitsandbytes ``QuantState`` is NF4 in bitsandbytes' own layout (bytes, not
    repacked for its CPU kernels), the layout ``dequantize_nf4`` reads."""
    if state is None or getattr(state, "packing_format_for_cpu", False) or state.quant_type != "nf4":
        return False
    return packed.dtype == torch.uint8


def dequantize_state(packed, state, dtype=torch.float32) -> torch.Tensor:
    """``dequantize_nf4`` of a weight's ``packed`` data and its ``QuantState`` (``in_plain_layout``)."""
    return dequantize_nf4(
        packed, state.absmax, state.code, state.shape, int(state.blocksize), nested_absmax(state), dtype
    )
