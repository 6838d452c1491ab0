"""Whether the transformer blocks compiled on this machine before: a record beside Inductor's on-disk cache.

Inductor keeps what it compiled in ``TORCHINDUCTOR_CACHE_DIR`` (``fast_transformer.COMPILE_CACHE`` by default), so a
later start compiles the same blocks in a few seconds instead of tens. Whether a start will be that quick cannot be
read from Inductor's files; this module keeps one small JSON file per kind of compile in that folder, written after
a compile succeeds: its key names the card, the software versions, the model's shapes, the layers' compute kinds and
the code that is compiled, so that any of them changing counts as a first compile again. ``last_seconds`` reads it
(None: no such compile here yet); the app then waits for a quick compile before its first image instead of running
that image eagerly.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import sys
import time
from importlib import metadata
from pathlib import Path

from ..atomic import write_text

logger = logging.getLogger(__name__)

FOLDER = "ernie-nf4-blocks"  # in the cache folder
# The code that is compiled (relative to the package): a change to it makes Inductor compile afresh.
_SOURCES = (
    "runtime/fast_transformer.py",
    "runtime/compute.py",
    "runtime/fp8_attention.py",
    "runtime/lora.py",
    "compat.py",
)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _code_digest() -> str:
    here = Path(__file__).parents[1]
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def _block_tensors(layer) -> list[list]:
    """A block's tensors as the compiled code sees them (a LoRA's rank, the layout low-vram gives them), read from
    its parameters and buffers: ``state_dict`` would make bitsandbytes undo the layout it packs an NF4 weight into on
    CPUs with AVX512-BF16, so that the next call meets a weight of another shape than the compiled code's. An NF4
    weight is described by its own shape and blocks, which that packing keeps."""
    rows = []
    for name, t in itertools.chain(layer.named_parameters(), layer.named_buffers()):
        aligned = t.storage_offset() % 16 == 0
        if (state := getattr(t, "quant_state", None)) is not None:
            rows.append([name, list(state.shape), state.quant_type, state.blocksize, str(t.dtype), aligned])
        else:
            rows.append([name, list(t.shape), str(t.dtype), list(t.stride()), aligned])
    return rows


def describe(transformer) -> dict:
    """What a compile of ``transformer``'s blocks depends on, besides the inputs' sizes (they are dynamic)."""
    import torch

    device = transformer.device
    card = None
    if device.type == "cuda":
        capability = list(torch.cuda.get_device_capability(device))
        card = {"name": torch.cuda.get_device_name(device), "capability": capability}
    layer_kinds = sorted({type(m).__name__ for layer in transformer.layers for m in layer.modules()})
    # from how many rows a low-precision layer multiplies in its format (``compute``: fp8 and auto differ there)
    min_rows = sorted({m.compute_min_rows for m in transformer.layers[0].modules() if hasattr(m, "compute_min_rows")})
    tensors = _block_tensors(transformer.layers[0])
    config = transformer.config
    return {
        "device": device.type,
        "card": card,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "bitsandbytes": _version("bitsandbytes"),
        "diffusers": _version("diffusers"),
        "model": {key: value for key, value in config.items() if not key.startswith("_")},
        "dtype": str(transformer.dtype),
        "layer_kinds": layer_kinds,
        "compute_min_rows": min_rows,
        "fp8_attention": bool(getattr(transformer.layers[0].self_attention, "fp8_attention_on", False)),
        "cudnn_frontend": _version("nvidia-cudnn-frontend"),
        "block_tensors": tensors,
        "code": _code_digest(),
    }


def _plain(value):
    """A config value JSON cannot write (e.g. a quantization config) as what it holds."""
    return value.to_dict() if hasattr(value, "to_dict") else repr(value)


def _dumps(entry: dict, **kwargs) -> str:
    return json.dumps(entry, sort_keys=True, default=_plain, **kwargs)


def record_path(transformer, cache_dir: str | Path) -> Path:
    """The record's file for ``transformer`` in ``cache_dir``, Inductor's cache folder."""
    key = hashlib.sha256(_dumps(describe(transformer)).encode()).hexdigest()[:24]
    return Path(cache_dir) / FOLDER / f"{key}.json"


def last_seconds(transformer, cache_dir: str | Path) -> float | None:
    """Seconds the last such compile took here, or None when there was none (or its record is unreadable)."""
    try:
        return float(json.loads(record_path(transformer, cache_dir).read_text())["seconds"])
    except Exception:  # no record, or one that cannot be read: a first compile
        return None


def remember(transformer, seconds: float, cache_dir: str | Path) -> None:
    """Write the record after a compile that succeeded; any failure only logs a line (a record is a hint)."""
    try:
        path = record_path(transformer, cache_dir)
        entry = {"seconds": round(seconds, 2), "written": time.strftime("%Y-%m-%dT%H:%M:%S"), **describe(transformer)}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, _dumps(entry, indent=1))  # replicas of one card may write the same record at once
    except Exception as err:
        logger.warning("could not write the compile record in %s (%s: %s)", cache_dir, type(err).__name__, err)
