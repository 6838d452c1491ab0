"""The one place an ``ErnieImagePipeline`` is built, from an NF4 package or an original folder."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from .metadata import METADATA_FILE, verify_package
from .quantize import component_class, diffusers_nf4_blocker
from .source import check_pipeline_folder
from .system import resolve_device, use_expandable_segments

logger = logging.getLogger(__name__)

# gpu: everything stays on the GPU. low-vram: the VAE stays, the other models take turns (residency.py).
# model-offload: diffusers' enable_model_cpu_offload (what the seed README ran the bf16 original with).
MEMORY_MODES = ("gpu", "low-vram", "model-offload")
_MODEL_COMPONENTS = ("transformer", "text_encoder", "pe")


def is_nf4(component_dir: Path) -> bool:
    config = component_dir / "config.json"
    return config.is_file() and "quantization_config" in json.loads(config.read_text())


class _TextModelTypeFilter(logging.Filter):
    """diffusers warns that the text encoder is not a ``Mistral3Model``; a package's is that model's language
    model alone (quantize.py leaves out the vision tower), which the pipeline runs exactly the same way."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Expected types for text_encoder")


@contextlib.contextmanager
def _quiet_text_encoder_type_warning():
    target = logging.getLogger("diffusers.pipelines.pipeline_utils")
    quiet = _TextModelTypeFilter()
    target.addFilter(quiet)
    try:
        yield
    finally:
        target.removeFilter(quiet)


def load_pipeline(
    model_dir: str | Path,
    device: str | None = None,
    memory_mode: str = "gpu",
    verify_sha256: bool = False,
    fast: bool = True,
    compile: bool = False,
):
    """Load an ERNIE-Image pipeline (NF4 package or bf16 original) for ``device``.

    ``memory_mode``: ``gpu`` keeps every component on the device; ``low-vram`` keeps only the VAE there and
    moves the PE, the text encoder and the transformer onto the GPU one at a time, from pinned CPU memory,
    as each is needed (``pipe.residency``); ``model-offload`` is diffusers' model CPU offload.
    ``fast`` runs the transformer with ``fast_transformer``'s forward (flash attention without a padding
    mask, same outputs) and applies ``placement``'s memory savers (text encoder's token table in CPU memory,
    tiled VAE decode above 512 px); ``fast=False`` is diffusers' stock execution, the benchmark's baseline.
    ``compile`` adds regional ``torch.compile`` of the transformer's blocks (compiled on first use) and, in
    ``gpu`` mode, CUDA-graphed PE decoding (``pe_decoding``).
    A package's metadata is validated and its file sizes (with ``verify_sha256``, also hashes) checked first;
    a damaged package raises ``PackageError`` naming the file and the fix. Only safetensors are read.
    """
    import torch
    from diffusers import ErnieImagePipeline

    from .fast_transformer import compile_blocks, enable_fast_path
    from .pe_decoding import compile_decoding
    from .placement import embeddings_on_cpu, tile_vae
    from .residency import Residency

    if memory_mode not in MEMORY_MODES:
        raise ValueError(f"memory_mode must be one of {MEMORY_MODES}, got {memory_mode!r}")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"model_dir {model_dir}: no such folder")
    index = check_pipeline_folder(model_dir, argument="model_dir")
    if (model_dir / METADATA_FILE).exists():
        verify_package(model_dir, check_sha256=verify_sha256)
    device = resolve_device(device)
    if memory_mode != "gpu" and device == "cpu":
        raise ValueError(f"memory_mode {memory_mode!r} needs a CUDA device; use memory_mode 'gpu' on the CPU")
    if compile and not fast:
        raise ValueError("compile needs fast=True (it compiles the fast path's blocks)")
    if device.startswith("cuda"):
        use_expandable_segments()

    quantized = [name for name in _MODEL_COMPONENTS if name in index and is_nf4(model_dir / name)]
    if "transformer" in quantized and (blocker := diffusers_nf4_blocker()) is not None:
        raise RuntimeError(
            f"model_dir {model_dir}: its transformer is NF4, which diffusers loads only on a GPU ({blocker}); "
            "use --device cuda, or build a CPU package with `python quantize.py --components text_encoder pe`"
        )
    place = device if memory_mode == "gpu" else "cpu"
    residency = Residency(device) if memory_mode == "low-vram" else None
    components = {}
    for name in _MODEL_COMPONENTS:
        if name not in index:
            continue
        target = device if name in quantized else place
        logger.info("loading %s (%s) on %s", name, "NF4" if name in quantized else "bf16", target)
        components[name] = component_class(index[name]).from_pretrained(
            model_dir / name, dtype=torch.bfloat16, device_map={"": target}, use_safetensors=True
        )
        if fast and name == "text_encoder":
            embeddings_on_cpu(components[name])
        if residency is not None:  # to pinned CPU memory before the next one loads
            residency.add(name, components[name])
    with _quiet_text_encoder_type_warning():
        pipe = ErnieImagePipeline.from_pretrained(model_dir, **components, dtype=torch.bfloat16, use_safetensors=True)
    if memory_mode == "model-offload":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.vae.to(device)
    pipe.residency = residency
    if fast:
        enable_fast_path(pipe.transformer)
        tile_vae(pipe.vae)
    if compile:
        compile_blocks(pipe.transformer)
        if pipe.pe is not None and memory_mode == "gpu":  # CUDA graphs want the PE to stay where it is
            compile_decoding(pipe.pe)
    pipe.set_progress_bar_config(disable=True)
    return pipe
