"""Build an NF4 package from an ERNIE-Image original: the library behind ``python quantize.py``.

transformer, text_encoder and pe are quantized to 4-bit NF4 (double quantization, bf16 compute) through
the standard diffusers/transformers ``BitsAndBytesConfig``; every other component is copied byte for byte.
The package is written into a hidden sibling folder and renamed into place only when complete, so a killed
build never leaves a half package that looks whole, and an old package survives until the new one is done.
"""

from __future__ import annotations

import datetime as dt
import gc
import importlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .metadata import FORMAT_VERSION, folder_bytes, measure_folder, totals, verify_package, write_metadata
from .model_card import source_license, write_model_card
from .source import precheck_source, resolve_source
from .system import gpu_name, library_versions, peak_vram, reset_peak_vram, resolve_device

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = "baidu/ERNIE-Image"
DEFAULT_OUTPUT = "ERNIE-Image-NF4"
QUANTIZABLE = ("transformer", "text_encoder", "pe")
NF4_SETTINGS = {
    "method": "bitsandbytes",
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
}
# NF4 weights take ~0.28 of their bf16 bytes; the estimate keeps a margin for quant states.
_NF4_SIZE_FACTOR = 0.35


def bnb_config(library: str):
    """The ``BitsAndBytesConfig`` of ``library`` ("diffusers" or "transformers") with our NF4 settings."""
    import torch

    config_class = importlib.import_module(library).BitsAndBytesConfig
    return config_class(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def component_class(entry: list):
    """The class a ``model_index.json`` entry ``[library, class name]`` names."""
    library, class_name = entry
    return getattr(importlib.import_module(library), class_name)


def diffusers_nf4_blocker() -> str | None:
    """Why diffusers refuses to quantize here (its own environment check), or None when it can."""
    from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer

    try:
        BnB4BitDiffusersQuantizer(bnb_config("diffusers")).validate_environment()
    except (RuntimeError, ImportError) as err:
        return str(err)
    return None


def check_components(components) -> tuple[str, ...]:
    components = tuple(dict.fromkeys(components))
    unknown = [name for name in components if name not in QUANTIZABLE]
    if unknown:
        raise ValueError(f"components: unknown {unknown}; choose from {list(QUANTIZABLE)}")
    if not components:
        raise ValueError(f"components: give at least one of {list(QUANTIZABLE)}")
    return components


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(output: Path) -> None:
    """Remove what a killed build left beside ``output``; restore the old package if the swap was cut."""
    for leftover in sorted(output.parent.glob(f".{output.name}.building-*")):
        pid = int(leftover.name.rsplit("-", 1)[1])
        if pid != os.getpid() and _pid_alive(pid):
            raise RuntimeError(f"output {output}: another build (pid {pid}) is writing it; wait for it to finish")
        logger.info("removing leftover %s of an interrupted build", leftover)
        shutil.rmtree(leftover)
    for old in sorted(output.parent.glob(f".{output.name}.old-*")):
        if not output.exists():
            logger.info("restoring %s from an interrupted swap", output)
            old.rename(output)
        else:
            shutil.rmtree(old)


def _check_disk(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            f"output {folder}: {free / 1e9:.2f} GB free, the package needs about {needed / 1e9:.2f} GB; "
            "free some disk or choose another --output"
        )


def _quantize_component(name: str, entry: list, source: Path, target: Path, device: str, keep_vision: bool) -> dict:
    """Quantize one component into ``target``; returns what was left out (empty when nothing was)."""
    import torch

    model = component_class(entry).from_pretrained(
        source / name,
        quantization_config=bnb_config(entry[0]),
        dtype=torch.bfloat16,
        device_map={"": device},
        use_safetensors=True,
    )
    dropped = {}
    if name == "text_encoder" and not keep_vision and hasattr(model, "vision_tower"):
        model, dropped = _text_model_only(model)
    model.save_pretrained(target, max_shard_size="100GB")
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return dropped


def _parameter_count(module) -> int:
    """Parameters of ``module`` as in the original (an NF4 weight packs two values in each stored byte)."""
    return sum(
        p.quant_state.shape.numel() if getattr(p, "quant_state", None) is not None else p.numel()
        for p in module.parameters()
    )


def _text_model_only(model):
    """The language model of a vision-language text encoder (``Mistral3Model``), ready to save as its own
    model, and a record of what was left out. ``ErnieImagePipeline.encode_prompt`` reads only the
    language model's ``hidden_states[-2]`` (no pixels are ever passed), which this model gives unchanged."""
    text = model.language_model
    left_out = [n for n in ("vision_tower", "multi_modal_projector") if hasattr(model, n)]
    text.config.quantization_config = model.config.quantization_config
    text.hf_quantizer = model.hf_quantizer
    text.config.architectures = [type(text).__name__]
    dropped = {
        "modules": left_out,
        "parameters": sum(_parameter_count(getattr(model, n)) for n in left_out),
        "original_class": type(model).__name__,
        "saved_class": type(text).__name__,
        "why": "text-to-image never reads them: the pipeline passes no images to the text encoder",
    }
    return text, dropped


def quantize_package(
    source: str = DEFAULT_SOURCE,
    output: str | Path = DEFAULT_OUTPUT,
    components=QUANTIZABLE,
    revision: str | None = None,
    overwrite: bool = False,
    device: str | None = None,
    on_progress: Callable[[str], None] | None = None,
    keep_vision: bool = False,
) -> Path:
    """Quantize ``components`` of the ERNIE-Image at ``source`` into an NF4 package at ``output``.

    The text encoder is saved as its language model alone (its vision tower and projector are never used for
    text-to-image); ``keep_vision`` keeps the whole vision-language model instead.

    Raises ``ValueError`` (bad argument or source), ``FileExistsError`` (output exists and not
    ``overwrite``), ``RuntimeError`` (no GPU for the transformer), ``OSError`` (not enough disk) before
    any heavy work. Returns the package folder.
    """

    def report(message: str) -> None:
        logger.info(message)
        if on_progress is not None:
            on_progress(message)

    components = check_components(components)
    output = Path(output).expanduser().resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(output)
    if output.exists() and not overwrite:
        raise FileExistsError(
            f"output {output} exists; pass --overwrite to replace it "
            "(the old package stays until the new one is complete)"
        )
    precheck_source(source)
    device = resolve_device(device)
    if "transformer" in components:
        blocker = diffusers_nf4_blocker()
        if blocker is not None:
            can = [c for c in components if c != "transformer"] or ["text_encoder", "pe"]
            raise RuntimeError(
                f"components: quantizing the transformer needs a CUDA GPU (diffusers says: {blocker}). "
                f"On this machine only {' '.join(can)} can be quantized: --components {' '.join(can)} --device cpu"
            )

    report(f"getting the original from {source}")
    resolved = resolve_source(source, revision)
    index = resolved.path.joinpath("model_index.json")
    model_index = json.loads(index.read_text())
    names = [key for key, value in model_index.items() if not key.startswith("_") and isinstance(value, list)]
    missing = [name for name in names if not (resolved.path / name).is_dir()]
    if missing:
        raise ValueError(f"source {source}: component folders {missing} are missing")
    for name in components:
        if name not in names:
            raise ValueError(f"components: {name} is not in the source's model_index.json ({names})")

    before = {name: folder_bytes(resolved.path / name) for name in names}
    needed = sum(b * (_NF4_SIZE_FACTOR if n in components else 1.0) for n, b in before.items())
    _check_disk(output.parent, int(needed))

    staging = output.with_name(f".{output.name}.building-{os.getpid()}")
    staging.mkdir()
    started = time.perf_counter()
    records = {}
    try:
        for step, name in enumerate(names, 1):
            t0 = time.perf_counter()
            if name in components:
                report(f"[{step}/{len(names)}] quantizing {name} to NF4 on {device}")
                reset_peak_vram()
                dropped = _quantize_component(
                    name, model_index[name], resolved.path, staging / name, device, keep_vision
                )
                vram = peak_vram()
                if dropped:
                    report(
                        f"    {name}: left out {', '.join(dropped['modules'])} ({dropped['parameters']:,} parameters)"
                    )
                    model_index[name] = ["transformers", dropped["saved_class"]]
            else:
                report(f"[{step}/{len(names)}] copying {name}")
                shutil.copytree(resolved.path / name, staging / name)
                vram = dropped = None
            files = measure_folder(staging / name)
            after = sum(entry["bytes"] for entry in files.values())
            records[name] = {
                "action": "quantized" if name in components else "copied",
                "class": model_index[name],
                **totals(before[name], after),
                "files": files,
                "build_seconds": round(time.perf_counter() - t0, 3),
                "peak_vram": vram,
                **({"left_out": dropped} if dropped else {}),
            }
        if model_index == json.loads(index.read_text()):
            shutil.copy2(index, staging / "model_index.json")
        else:  # a component is saved as another class (the text encoder without its vision tower)
            (staging / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
        index_before, index_after = index.stat().st_size, (staging / "model_index.json").stat().st_size
        quantized_vram = [r["peak_vram"]["allocated_bytes"] for r in records.values() if r["peak_vram"]]
        metadata = {
            "format_version": FORMAT_VERSION,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "created_by": f"ernie-nf4 {__version__} (quantize_package)",
            "source": {
                "id": resolved.id,
                "revision": resolved.revision,
                "commit": resolved.commit,
                "license": source_license(resolved.path),
            },
            "quantization": dict(NF4_SETTINGS),
            "components_quantized": [n for n in names if n in components],
            "components_kept": [n for n in names if n not in components],
            "components": records,
            "totals": totals(
                sum(before.values()) + index_before, sum(r["bytes_after"] for r in records.values()) + index_after
            ),
            "versions": library_versions(),
            "gpu": gpu_name(device),
            "device": device,
            "build": {
                "seconds": round(time.perf_counter() - started, 3),
                "peak_vram_allocated_bytes": max(quantized_vram) if quantized_vram else None,
            },
            "benchmarks": {},
        }
        write_metadata(staging, metadata)
        write_model_card(staging)  # README.md: the Hub model card, from the metadata alone
        verify_package(staging, check_sha256=False)
        # Swap into place: the old package (if any) is moved aside only now, and removed last.
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        if output.exists():
            output.rename(old)
        staging.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report(
        f"done: {output} ({metadata['totals']['bytes_after'] / 1e9:.2f} GB, "
        f"{metadata['totals']['reduction']:.1%} smaller than the original) in {metadata['build']['seconds']:.1f} s"
    )
    return output
