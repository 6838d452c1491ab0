"""The one place an ``ErnieImagePipeline`` is built, from an NF4 package or an original folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .metadata import METADATA_FILE, verify_package
from .quantize import component_class, diffusers_nf4_blocker
from .source import check_pipeline_folder
from .system import resolve_device

logger = logging.getLogger(__name__)

MEMORY_MODES = ("gpu", "model-offload")
_MODEL_COMPONENTS = ("transformer", "text_encoder", "pe")


def is_nf4(component_dir: Path) -> bool:
    config = component_dir / "config.json"
    return config.is_file() and "quantization_config" in json.loads(config.read_text())


def load_pipeline(
    model_dir: str | Path, device: str | None = None, memory_mode: str = "gpu", verify_sha256: bool = False
):
    """Load an ERNIE-Image pipeline (NF4 package or bf16 original) for ``device``.

    ``memory_mode``: ``gpu`` keeps every component on the device; ``model-offload`` keeps them in CPU memory
    and moves each to the GPU while it runs (diffusers model CPU offload; slower, much less VRAM).
    A package's metadata is validated and its file sizes (with ``verify_sha256``, also hashes) checked first;
    a damaged package raises ``PackageError`` naming the file and the fix. Only safetensors are read.
    """
    import torch
    from diffusers import ErnieImagePipeline

    if memory_mode not in MEMORY_MODES:
        raise ValueError(f"memory_mode must be one of {MEMORY_MODES}, got {memory_mode!r}")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"model_dir {model_dir}: no such folder")
    index = check_pipeline_folder(model_dir, argument="model_dir")
    if (model_dir / METADATA_FILE).exists():
        verify_package(model_dir, check_sha256=verify_sha256)
    device = resolve_device(device)
    if memory_mode == "model-offload" and device == "cpu":
        raise ValueError("memory_mode 'model-offload' needs a CUDA device; use memory_mode 'gpu' on the CPU")

    quantized = [name for name in _MODEL_COMPONENTS if name in index and is_nf4(model_dir / name)]
    if "transformer" in quantized and (blocker := diffusers_nf4_blocker()) is not None:
        raise RuntimeError(
            f"model_dir {model_dir}: its transformer is NF4, which diffusers loads only on a GPU ({blocker}); "
            "use --device cuda, or build a CPU package with `python quantize.py --components text_encoder pe`"
        )
    place = "cpu" if memory_mode == "model-offload" else device
    components = {}
    for name in _MODEL_COMPONENTS:
        if name not in index:
            continue
        target = device if name in quantized else place
        logger.info("loading %s (%s) on %s", name, "NF4" if name in quantized else "bf16", target)
        components[name] = component_class(index[name]).from_pretrained(
            model_dir / name, dtype=torch.bfloat16, device_map={"": target}, use_safetensors=True
        )
    pipe = ErnieImagePipeline.from_pretrained(model_dir, **components, dtype=torch.bfloat16, use_safetensors=True)
    if memory_mode == "model-offload":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.vae.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
