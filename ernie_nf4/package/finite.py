"""A cheap look for broken weights: a sample of every floating-point tensor in a safetensors file, read from disk
at the tensor's start, middle and end, must hold no NaN or infinite value.

Weights that are NaN everywhere (a failed training or conversion, a damaged file whose size and header still
agree) load and run, and every image comes out flat; quantized weights carry their scales (``absmax`` and the
nested quantization state) as floating-point tensors, so NF4 weights are covered too. Reading ``SAMPLE`` values
at three places of each tensor costs milliseconds for a whole package.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PackageError

SAMPLE = 256
# dtype -> (bytes per value, exponent bits): a value whose exponent bits are all set is NaN or infinite
_FLOATS = {"F16": (2, 0x7C00), "BF16": (2, 0x7F80), "F32": (4, 0x7F800000), "F64": (8, 0x7FF0000000000000)}
_BROKEN_HINT = (
    "the weights are broken (images would come out flat); re-download the package, or rebuild it from a sound "
    "original with `python quantize.py --overwrite`"
)


def _windows(count: int) -> list[int]:
    """The first index of each sampled window of a tensor of ``count`` values."""
    return sorted({0, max(0, (count - SAMPLE) // 2), max(0, count - SAMPLE)})


def check_finite_sample(path: Path, header_length: int, header: dict) -> None:
    """Raise ``PackageError`` naming ``path`` and the tensor when a sampled value of a floating tensor is NaN or
    infinite. ``header``: the file's parsed safetensors header (checked), ``header_length``: its length in bytes."""
    import numpy as np

    base = 8 + header_length
    floats = [(name, entry) for name, entry in header.items() if name != "__metadata__" and entry["dtype"] in _FLOATS]
    with open(path, "rb") as handle:
        for name, entry in sorted(floats, key=lambda item: item[1]["data_offsets"][0]):
            width, exponent = _FLOATS[entry["dtype"]]
            start, stop = entry["data_offsets"]
            count = (stop - start) // width
            for first in _windows(count):
                handle.seek(base + start + first * width)
                bits = np.frombuffer(handle.read(min(SAMPLE, count) * width), dtype=f"<u{width}")
                if np.any((bits & np.array(exponent, dtype=bits.dtype)) == exponent):
                    raise PackageError(f"{path}: tensor {name!r} holds NaN or infinite values; {_BROKEN_HINT}")
