"""Build an NF4 package from an ERNIE-Image original: the library behind ``python quantize.py``.

transformer, text_encoder and pe are quantized to 4-bit NF4 (double quantization, bf16 compute) through the
standard diffusers/transformers ``BitsAndBytesConfig``; every other component is copied byte for byte. The package
is written into a hidden sibling folder and renamed into place only when complete (``atomic.staged_folder``), so a
killed build never leaves a half package that looks whole, and an old package survives until the new one is done.
``--overwrite`` replaces only a folder that is a package, never the source or a folder holding or inside it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..atomic import clean_leftovers, staged_folder
from ..errors import EnvironmentUnsupported, InvalidArgument, PackageError
from ..formatting import format_bytes
from ..package.check import check_package
from ..package.format import (
    NF4_SETTINGS,
    PIPELINE_CLASS,
    QUANTIZABLE,
    bnb_config,
    component_class,
    components_of,
    diffusers_nf4_blocker,
    is_nf4,
)
from ..package.json_file import read_json
from ..package.metadata import (
    FORMAT_VERSION,
    METADATA_FILE,
    folder_bytes,
    is_own_metadata,
    measure_folder,
    sha256_file,
    totals,
    write_metadata,
)
from ..package.preview_map import PREVIEW_FILE, fit_preview_map, write_preview_map
from ..package.safetensors_header import REPAIR_HINT, read_safetensors_header
from ..progress import Detail, ProgressCallback, detail
from ..progress import report as report_progress
from ..system import free_device_memory, gpu_name, library_versions, peak_vram, reset_peak_vram, resolve_device
from ..torch_state import torch_state_kept
from ..variants import DEFAULT_VARIANT, VARIANTS
from .model_card import source_license, write_model_card
from .source import precheck_source, resolve_source

DEFAULT_SOURCE = VARIANTS[DEFAULT_VARIANT].source
DEFAULT_OUTPUT = VARIANTS[DEFAULT_VARIANT].default_package_dir
# NF4 weights take ~0.28 of their bf16 bytes; the estimate keeps a margin for quant states.
_NF4_SIZE_FACTOR = 0.35


def check_components(components) -> tuple[str, ...]:
    components = tuple(dict.fromkeys(components))
    unknown = [name for name in components if name not in QUANTIZABLE]
    if unknown:
        raise InvalidArgument(f"components: unknown {unknown}; choose from {list(QUANTIZABLE)}")
    if not components:
        raise InvalidArgument(f"components: give at least one of {list(QUANTIZABLE)}")
    return components


def _is_package(folder: Path) -> bool:
    """This project's package, or an ERNIE-Image pipeline folder (never any other folder, nor another pipeline)."""
    if (folder / METADATA_FILE).is_file() and is_own_metadata(folder / METADATA_FILE):
        return True
    try:
        return read_json(folder / "model_index.json", "").get("_class_name") == PIPELINE_CLASS
    except (OSError, ValueError, AttributeError):  # PackageError is a ValueError
        return False


def _same_or_contains(outer: Path, inner: Path) -> bool:
    """Whether folder ``outer`` is ``inner`` or holds it, by identity on disk (case-insensitive file systems and bind
    mounts included), not by spelling."""
    for candidate in (inner, *inner.parents):
        try:
            if candidate.exists() and outer.exists() and os.path.samefile(candidate, outer):
                return True
        except OSError:
            continue
    return False


def check_output(output: Path, source: str, overwrite: bool) -> None:
    """Refuse an ``output`` that would lose data: the source itself, a folder holding it or inside it, a file, or
    (with ``overwrite``) an existing folder that is not a package. Nothing is deleted by a refusal."""
    local = Path(source).expanduser()
    if local.exists():
        src = local.resolve()
        if _same_or_contains(output, src) or _same_or_contains(src, output.parent) or output == src:
            raise InvalidArgument(
                f"output {output}: it is the source {src}, holds it or lies inside it; choose a folder outside it"
            )
    if output.is_file() or output.is_symlink() and not output.is_dir():
        raise InvalidArgument(f"output {output}: is a file; choose a folder path for the package")
    if output.exists() and not overwrite:
        raise FileExistsError(
            f"output {output} exists; pass --overwrite to replace it "
            "(the old package stays until the new one is complete)"
        )
    if output.exists() and not _is_package(output):
        raise InvalidArgument(
            f"output {output}: exists and is not an ERNIE-Image package (no ernie-nf4 {METADATA_FILE}, no "
            f"{PIPELINE_CLASS} model_index.json), so --overwrite will not replace it; choose a new folder or remove "
            "it yourself"
        )


def _check_disk(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise EnvironmentUnsupported(
            f"output {folder}: {format_bytes(free)} free, the package needs about {format_bytes(needed)}; "
            "free some disk or choose another --output"
        )


def check_not_quantized(folder: Path, components: dict, source: str) -> None:
    """A source whose models are already 4-bit is a package, not an original: say so in one line."""
    done = [name for name in QUANTIZABLE if name in components and is_nf4(folder / name)]
    if done:
        raise InvalidArgument(
            f"source {source}: already quantized ({', '.join(done)} in 4-bit); quantize.py needs the bf16 original "
            f"(e.g. {DEFAULT_SOURCE}). To run this package, pass it to the app: python app.py --model-dir {source}"
        )


@dataclass
class _Plan:
    source: Path
    source_id: str
    revision: str | None
    commit: str | None
    index: dict
    names: list[str]
    components: tuple[str, ...]
    before: dict[str, int]


def _plan(source: str, revision: str | None, components: tuple[str, ...], output: Path) -> _Plan:
    resolved = resolve_source(source, revision)
    index = json.loads((resolved.path / "model_index.json").read_text())
    entries = components_of(index)
    names = list(entries)
    missing = [name for name in names if not (resolved.path / name).is_dir()]
    if missing:
        raise InvalidArgument(f"source {source}: component folders {missing} are missing")
    for name in components:
        if name not in names:
            raise InvalidArgument(f"components: {name} is not in the source's model_index.json ({names})")
    check_not_quantized(resolved.path, entries, source)
    _check_source_weights(source, resolved.path, names)
    before = {name: folder_bytes(resolved.path / name) for name in names}
    _check_disk(output.parent, int(sum(b * (_NF4_SIZE_FACTOR if n in components else 1.0) for n, b in before.items())))
    return _Plan(resolved.path, resolved.id, resolved.revision, resolved.commit, index, names, components, before)


def _check_source_weights(source: str, folder: Path, names: list[str]) -> None:
    """Every safetensors file of the source whole (headers only, cheap): a cut or damaged one is named before any
    work, with the fix that helps (the original fetched again), not after its copy is checked in the package."""
    for name in names:
        for file in sorted((folder / name).rglob("*.safetensors")):
            try:
                if not file.is_file():
                    raise PackageError(f"{file}: not a file")
                read_safetensors_header(file)
            except PackageError as err:
                why = str(err).removesuffix(f"; {REPAIR_HINT}")
                raise InvalidArgument(f"source {source}: {why}; download the original again") from None


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


def _parameter_count(module) -> int:
    """Parameters of ``module`` as in the original (an NF4 weight packs two values in each stored byte)."""
    return sum(
        p.quant_state.shape.numel() if getattr(p, "quant_state", None) is not None else p.numel()
        for p in module.parameters()
    )


def _quantize_component(name: str, entry: list, source: Path, target: Path, device: str, keep_vision: bool) -> dict:
    """Quantize one component into ``target``; returns what was left out (empty when nothing was)."""
    import torch

    with torch_state_kept():
        model = component_class(name, entry, source).from_pretrained(
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
    free_device_memory()
    return dropped


def _write_component(plan: _Plan, name: str, staging: Path, device: str, keep_vision: bool, report) -> dict:
    """Quantize or copy one component into ``staging``; its metadata record."""
    t0 = time.perf_counter()
    vram = dropped = None
    if name in plan.components:
        report(detail("build_quantize", name=name, device=device))
        reset_peak_vram()
        dropped = _quantize_component(name, plan.index[name], plan.source, staging / name, device, keep_vision)
        vram = peak_vram()
        if dropped:
            modules, parameters = ", ".join(dropped["modules"]), dropped["parameters"]
            report(detail("build_left_out", name=name, modules=modules, parameters=parameters))
            plan.index[name] = ["transformers", dropped["saved_class"]]
    else:
        report(detail("build_copy", name=name))
        shutil.copytree(plan.source / name, staging / name)
    files = measure_folder(staging / name)
    return {
        "action": "quantized" if name in plan.components else "copied",
        "class": plan.index[name],
        **totals(plan.before[name], sum(entry["bytes"] for entry in files.values())),
        "files": files,
        "build_seconds": round(time.perf_counter() - t0, 3),
        "peak_vram": None
        if vram is None
        else {"allocated_bytes": vram.allocated_bytes, "reserved_bytes": vram.reserved_bytes},
        **({"left_out": dropped} if dropped else {}),
    }


def _write_preview_map(plan: _Plan, staging: Path, device: str, report) -> dict:
    """The live previews' map, fitted from the package's VAE (``package.preview_map``) and written beside the
    components; its metadata record (``files``)."""
    import torch

    report(detail("build_preview_map", device=device))
    with torch_state_kept():
        vae = component_class("vae", plan.index["vae"], staging).from_pretrained(
            staging / "vae", dtype=torch.float32, use_safetensors=True
        )
    path = write_preview_map(staging, fit_preview_map(vae.to(device)))
    del vae
    free_device_memory()
    return {PREVIEW_FILE: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}}


def _metadata(plan: _Plan, records: dict, staging: Path, device: str, started: float) -> dict:
    index_before = (plan.source / "model_index.json").stat().st_size
    index_after = (staging / "model_index.json").stat().st_size
    quantized_vram = [r["peak_vram"]["allocated_bytes"] for r in records.values() if r["peak_vram"]]
    return {
        "format_version": FORMAT_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "created_by": f"ernie-nf4 {__version__} (quantize_package)",
        "source": {
            "id": plan.source_id,
            "revision": plan.revision,
            "commit": plan.commit,
            "license": source_license(plan.source),
        },
        "quantization": dict(NF4_SETTINGS),
        "components_quantized": [n for n in plan.names if n in plan.components],
        "components_kept": [n for n in plan.names if n not in plan.components],
        "components": records,
        "totals": totals(
            sum(plan.before.values()) + index_before, sum(r["bytes_after"] for r in records.values()) + index_after
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


def quantize_package(
    source: str = DEFAULT_SOURCE,
    output: str | Path = DEFAULT_OUTPUT,
    components=QUANTIZABLE,
    revision: str | None = None,
    overwrite: bool = False,
    device: str | None = None,
    on_progress: ProgressCallback | None = None,
    keep_vision: bool = False,
) -> Path:
    """Quantize ``components`` of the ERNIE-Image at ``source`` into an NF4 package at ``output``.

    The text encoder is saved as its language model alone (its vision tower and projector are never used for
    text-to-image); ``keep_vision`` keeps the whole vision-language model instead.
    Raises ``InvalidArgument`` (bad argument, source or output), ``FileExistsError`` (output exists and not
    ``overwrite``), ``EnvironmentUnsupported`` (no GPU for the transformer, not enough disk) before any heavy
    work. Returns the package folder. ``on_progress`` gets ``Progress("build", ...)`` events: what is being done, and
    once the source is read, how much (its components' bytes, and its VAE's again for the live previews' map).
    """

    def report(message: Detail, done: float | None = None, total: float | None = None) -> None:
        report_progress(on_progress, "build", message, done=done, total=total)

    components = check_components(components)
    if not str(output).strip():
        raise InvalidArgument("output: empty; give the folder to write the package to, e.g. --output ./ERNIE-Image-NF4")
    output = Path(output).expanduser().resolve()
    clean_leftovers(output)
    check_output(output, source, overwrite)
    precheck_source(source)
    device = resolve_device(device)
    if "transformer" in components and (blocker := diffusers_nf4_blocker()) is not None:
        can = [c for c in components if c != "transformer"] or ["text_encoder", "pe"]
        raise EnvironmentUnsupported(
            f"components: quantizing the transformer needs a CUDA GPU (diffusers says: {blocker}). "
            f"On this machine only {' '.join(can)} can be quantized: --components {' '.join(can)} --device cpu"
        )
    report(detail("build_source", source=source))
    output.parent.mkdir(parents=True, exist_ok=True)
    plan = _plan(source, revision, components, output)
    started = time.perf_counter()
    with staged_folder(output) as staging:
        records, files, total = _write_parts(plan, staging, device, keep_vision, report)
        metadata = {**_metadata(plan, records, staging, device, started), "files": files}
        write_metadata(staging, metadata)
        write_model_card(staging)
        check_package(staging, argument="output")  # what the loader checks: a package it refuses is never kept
    after, reduction = format_bytes(metadata["totals"]["bytes_after"]), metadata["totals"]["reduction"]
    said = detail("build_done", output=output, size=after, reduction=reduction, seconds=metadata["build"]["seconds"])
    report(said, total, total)
    return output


def _write_parts(plan: _Plan, staging: Path, device: str, keep_vision: bool, report) -> tuple[dict, dict, int]:
    """Every component, the index and the live previews' map into ``staging``, saying how much is done (the source's
    bytes, and the VAE's once more for the map fitted from it); their records, the map's, and that amount's total."""
    records, done, total = {}, 0, sum(plan.before.values()) + plan.before.get("vae", 0)
    for step, name in enumerate(plan.names, 1):
        said = _step_reporter(report, step, len(plan.names), done, total)
        records[name] = _write_component(plan, name, staging, device, keep_vision, said)
        done += plan.before[name]
    (staging / "model_index.json").write_text(json.dumps(plan.index, indent=2) + "\n")
    files = _write_preview_map(plan, staging, device, lambda message: report(message, done, total))
    return records, files, total


def _step_reporter(report, step: int, steps: int, done: int, total: int) -> Callable[[Detail], None]:
    """What component ``step`` of ``steps`` says, with the source's bytes done before it (of ``total``)."""
    return lambda message: report(message.adding(step=step, steps=steps), done, total)
