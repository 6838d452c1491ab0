"""Measure original (bf16) vs NF4 per stage: ``python -m ernie_nf4.benchmark``.

Each mode is loaded and run in this process one after another, memory freed between: load seconds (from a
cold page cache where the files can be evicted), a short warm-up, then the median of ``--repeat`` runs (by default
3 for runs of fewer than 20 steps, whose single samples scatter, else 1) for each stage (PE, text encoding,
denoising and ms per step, VAE decode), total, peak VRAM and the GPU name.
Defaults reproduce the published ERNIE-Image-NF4 model card's example (its prompt, 512x512, 50 steps, guidance 4.0,
seed 1234, PE on). ``--fidelity`` adds ``fidelity``'s comparison of the outputs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..atomic import cannot_write_in, write_text
from ..build.model_card import write_model_card
from ..build.quantize import quantize_package
from ..build.source import resolve_source
from ..formatting import markdown_table
from ..package.format import quantizable_here
from ..package.metadata import METADATA_FILE, read_metadata
from ..package.metadata import write_metadata as save_metadata
from ..request import GenerationRequest, LoraChoice
from ..runtime.compute import Compute
from ..runtime.compute import resolve as resolve_compute
from ..runtime.generation import Generator
from ..runtime.loader import load_pipeline
from ..runtime.lora_files import check_lora_file
from ..runtime.memory_modes import MemoryMode
from ..runtime.prompt import check_max_pe_tokens
from ..stats import RUN_STAGES
from ..synthetic.original import build_original
from ..system import free_device_memory, gpu_name, library_versions, peak_vram, reset_peak_vram, resolve_device
from .fidelity import fidelity

# The prompt of the published ERNIE-Image-NF4 model card's example.
CARD_PROMPT = "一只橙色的小猫坐在木桌上,前面放着一张写有 Hello Ernie-Image NF4 的白纸,柔和自然光,写实风格。"


@dataclass(frozen=True)
class ModeSetup:
    folder: str  # "original" (bf16) or "package" (NF4)
    memory_mode: MemoryMode
    fast: bool = True  # fast_transformer's forward; False = diffusers' stock forward
    compile: bool = False


# Stock modes run diffusers' own transformer forward, as the published ERNIE-Image-NF4 model card does.
MODE_SETUPS = {
    "bf16": ModeSetup("original", MemoryMode.ALL_ON_GPU, fast=False),
    "bf16-offload": ModeSetup("original", MemoryMode.MODEL_OFFLOAD, fast=False),
    "nf4-stock": ModeSetup("package", MemoryMode.ALL_ON_GPU, fast=False),
    "nf4": ModeSetup("package", MemoryMode.ALL_ON_GPU),
    "nf4-compile": ModeSetup("package", MemoryMode.ALL_ON_GPU, compile=True),
    "nf4-low-vram": ModeSetup("package", MemoryMode.LOW_VRAM),
    "nf4-low-vram-compile": ModeSetup("package", MemoryMode.LOW_VRAM, compile=True),
}
MODES = tuple(MODE_SETUPS)
WARMUP_STEPS = 2
LORA_SUFFIX = "+lora"  # a package mode measured again with ``--lora`` attached and picked at scale 1


@dataclass
class ModeResult:
    mode: str
    status: str = "ok"  # or "skipped: why" / "failed: why"
    load_seconds: float | None = None
    warmup_seconds: float | None = None  # includes compiling, for nf4-compile
    cold_cache: bool | None = None
    moving_seconds: float | None = None  # low-vram: models' copies onto the GPU (GPU time), per timed run
    seconds: dict[str, float] = field(default_factory=dict)  # median per stage + total
    ms_per_step: float | None = None
    pe_tokens: int | None = None  # new tokens the PE wrote per run (random weights never stop: the cap)
    pe_ms_per_token: float | None = None  # PE seconds (prefill included) per new token
    peak_allocated_gib: float | None = None
    peak_reserved_gib: float | None = None
    # --previews: live previews a run gave, and their cost as a fraction of the run's time (the median of runs with
    # them against the median of runs without, taken in turns)
    previews_per_run: int | None = None
    preview_overhead: float | None = None
    # "fp8": the blocks' attention runs in FP8 in the calls whose products do (``runtime.fp8_attention``); "bf16"
    attention: str | None = None


ATTENTION_WORDS = {"fp8": "attention in FP8 where the products are and samples are long", "bf16": "attention in bf16"}


def evict_page_cache(folder: Path) -> bool:
    """Drop ``folder``'s files from the OS page cache (so the next load reads the disk); False if it can't."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in Path(folder).rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


SHORT_RUN_STEPS = 20  # below this, a run lasts a second or two on a fast card: one sample of it scatters


def default_repeat(steps: int) -> int:
    """Timed runs a mode when none is asked for: 3 for runs of fewer than ``SHORT_RUN_STEPS`` steps (8-step runs at
    1024x1024 on an H100 differed by 20% between two samples of the same path), else 1."""
    return 3 if steps < SHORT_RUN_STEPS else 1


def _timed_runs(generator, request, repeat: int, log) -> list:
    runs = []
    for index in range(repeat):
        reset_peak_vram()
        run = generator.generate(
            request, on_stage=lambda stage, sec, n=index + 1: log(f"run {n}/{repeat}: {stage} {sec:.2f} s")
        )
        runs.append(run)
        log(f"run {index + 1}/{repeat}: total {run.seconds.total:.2f} s")
    return runs


def _summarize(result: ModeResult, runs: list, request) -> None:
    """The timed runs' medians per stage, ms a step, the PE's tokens and the largest peaks, into ``result``."""
    result.seconds = {key: statistics.median(r.seconds.as_dict()[key] for r in runs) for key in (*RUN_STAGES, "total")}
    result.ms_per_step = 1000 * result.seconds["denoising"] / (request.num_inference_steps * request.num_images)
    tokens = [r.enhancement.tokens for r in runs if r.enhancement is not None]
    if tokens:
        result.pe_tokens = int(statistics.median(tokens))
        result.pe_ms_per_token = 1000 * result.seconds["pe"] / result.pe_tokens
    peaks = [r.peak_vram for r in runs if r.peak_vram] or [peak_vram()]
    if peaks[0] is not None:
        result.peak_allocated_gib = max(p.allocated_bytes for p in peaks) / 2**30
        result.peak_reserved_gib = max(p.reserved_bytes for p in peaks) / 2**30


def run_mode(
    mode: str,
    folder: Path,
    device: str,
    request,
    repeat: int,
    max_pe_tokens: int,
    log,
    lora=None,
    previews=False,
    compute: Compute = Compute.BF16,
):
    """One mode: load, warm up, ``repeat`` timed runs; with ``lora`` (a file), that LoRA attached and picked at
    scale 1 (the mode's name gets ``+lora``); with ``previews``, the live previews' cost (``measure_previews``); with
    a ``compute`` other than bf16 (``runtime.compute``), the transformer's linear layers multiply in it (the mode's
    name gets ``+fp8``, ``+int8``)."""
    setup = MODE_SETUPS[mode]
    loras = [("lora", lora)] if lora else []
    if lora:
        request, mode = replace(request, loras=(LoraChoice("lora", 1.0),)), mode + LORA_SUFFIX
    if compute is not Compute.BF16:
        mode = f"{mode}+{compute.value}"
    result = ModeResult(mode)
    if setup.memory_mode.needs_cuda and not device.startswith("cuda"):
        result.status = "skipped: needs a CUDA GPU"
        log(f"[{mode}] {result.status}")
        return result
    free_device_memory()
    result.cold_cache = evict_page_cache(folder)
    log(f"[{mode}] loading {folder} ({'cold' if result.cold_cache else 'warm'} page cache)")
    reset_peak_vram()
    start = time.perf_counter()
    how = dict(memory_mode=setup.memory_mode, fast=setup.fast, compile=setup.compile, loras=loras, compute=compute)
    loaded = load_pipeline(folder, device=device, **how)
    generator = Generator(loaded, max_pe_tokens=max_pe_tokens, prompt_cache_size=0)  # every run pays every stage
    result.load_seconds = time.perf_counter() - start
    result.attention = (
        "fp8" if any(getattr(m, "fp8_attention_on", False) for m in loaded.pipe.transformer.modules()) else "bf16"
    )
    log(
        f"[{mode}] loaded in {result.load_seconds:.1f} s ({ATTENTION_WORDS[result.attention]}); warm-up"
        f" ({WARMUP_STEPS} steps)"
    )
    warmup = replace(request, num_inference_steps=WARMUP_STEPS)
    start = time.perf_counter()
    generator.generate(warmup)
    gc.collect()  # as Generator.warm_up does: no full collection of the warm-up's garbage inside a timed run
    result.warmup_seconds = time.perf_counter() - start
    moved = loaded.seconds_moving
    _summarize(result, _timed_runs(generator, request, repeat, lambda message: log(f"[{mode}] {message}")), request)
    if moved is not None:
        result.moving_seconds = (loaded.seconds_moving - moved) / repeat
    if previews:
        measure_previews(generator, request, repeat, result, lambda message: log(f"[{mode}] {message}"))
    del generator, loaded
    free_device_memory()
    return result


def measure_previews(generator, request, repeat: int, result: ModeResult, log) -> None:
    """Live previews' cost: ``max(repeat, 3)`` runs without them and as many with them, in turns (so that a drift
    of the clock or the card weighs on both); ``result`` gets the previews a run gave and the fraction of the run's
    time they added (the medians' ratio, minus 1; near 0 is within the runs' noise)."""
    plain, previewed, counts = [], [], []
    for index in range(max(repeat, 3)):
        plain.append(generator.generate(request).seconds.total)
        shown = []
        previewed.append(
            generator.generate(request, on_preview=lambda *args, seen=shown: seen.append(args)).seconds.total
        )
        counts.append(len(shown))
        log(f"previews {index + 1}: {plain[-1]:.2f} s without, {previewed[-1]:.2f} s with {len(shown)} previews")
    result.previews_per_run = max(counts)
    result.preview_overhead = statistics.median(previewed) / statistics.median(plain) - 1
    log(f"live previews: {result.previews_per_run} a run, {result.preview_overhead:+.2%} of the run's time")


def bf16_matmul_tflops(device: str) -> float | None:
    """The card's bf16 matrix rate, measured (8192³ products after a warm-up): the yardstick of the step floor."""
    import torch

    if not device.startswith("cuda"):
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start, runs = time.perf_counter(), 10
    for _ in range(runs):
        a @ b
    torch.cuda.synchronize(device)
    return runs * 2 * 8192**3 / (time.perf_counter() - start) / 1e12


def benchmark(
    original: str | None,
    package: str | None,
    modes=MODES,
    request: GenerationRequest | None = None,
    repeat: int | None = None,
    device: str | None = None,
    max_pe_tokens: int = 256,
    synthetic: str | None = None,
    write_metadata: bool = False,
    markdown: str | None = None,
    command: str | None = None,
    with_fidelity: bool = False,
    log=print,
    lora: str | None = None,
    previews: bool = False,
    computes=(Compute.BF16,),
) -> dict:
    """Run the benchmark and return its report (also written to metadata / markdown when asked), ``repeat`` timed
    runs a mode (None: ``default_repeat``). With ``lora`` (a LoRA file), each package mode is measured again with it
    picked at scale 1; with ``previews``, what live previews cost (``measure_previews``). ``computes``: the package's
    modes again in each (``runtime.compute``); with the fidelity section, each one's error against bf16 too."""
    request = request or GenerationRequest(
        CARD_PROMPT, width=512, height=512, num_inference_steps=50, guidance_scale=4.0, seed=1234
    )
    repeat = _checked(modes, repeat, request.num_inference_steps)
    _check_files(package, markdown, lora, max_pe_tokens)
    device = resolve_device(device)
    # each once, bf16 first, checked on the card (auto as for compiled blocks: the loader makes it bf16 for eager ones)
    computes = list(dict.fromkeys([Compute.BF16, *(resolve_compute(c, device, compiled=True) for c in computes)]))
    folders = _folders(original, package, modes, synthetic, device, write_metadata, with_fidelity, log)
    runs = _runs(modes, computes, lora)
    results = [
        run_mode(
            m, Path(folders[MODE_SETUPS[m].folder]), device, request, repeat, max_pe_tokens, log, file, previews, c
        )
        for m, file, c in runs
    ]
    report = {
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "gpu": gpu_name(device),
        "device": device,
        "versions": library_versions(),
        "synthetic": synthetic,
        "settings": {**asdict(request), "repeat": repeat, "max_pe_tokens": max_pe_tokens, "lora": lora}
        | {"computes": [c.value for c in computes]}
        | ({"previews": True} if previews else {}),
        "modes": [asdict(r) for r in results],
        "fidelity": fidelity(folders["original"], folders["package"], request, device, log, computes[1:])
        if with_fidelity
        else None,
        "command": command,
        "bf16_tflops": bf16_matmul_tflops(device),
        "transformer_config": _transformer_config(folders["package"] or folders["original"]),
    }
    if write_metadata:
        _store_in_package(report, folders["package"], request, log)
    if markdown:
        write_text(markdown, markdown_table(report))
    return report


def _runs(modes, computes, lora) -> list[tuple]:
    """(mode, LoRA file, compute) to measure: every mode in bf16 (the yardstick), the package's modes again in each
    other compute mode (``auto`` the compiled ones alone: eager, it is bf16), then with the LoRA."""
    package_modes = [m for m in modes if MODE_SETUPS[m].folder == "package"]
    runs = [(m, None, Compute.BF16) for m in modes]
    for c in computes:
        if c is not Compute.BF16:
            runs += [(m, None, c) for m in package_modes if c is not Compute.AUTO or MODE_SETUPS[m].compile]
    return runs + [(m, lora, Compute.BF16) for m in package_modes if lora]


def _checked(modes, repeat: int | None, steps: int) -> int:
    """``repeat`` (``default_repeat``'s when None), once it and ``modes`` are checked."""
    repeat = default_repeat(steps) if repeat is None else repeat
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"modes: unknown {unknown}; choose from {list(MODES)}")
    return repeat


def _check_files(package, markdown, lora, max_pe_tokens) -> None:
    """What can be checked before a run of many minutes: the files it reads and writes, the PE's cap."""
    check_max_pe_tokens(max_pe_tokens)
    if package is not None and Path(package).exists() and not Path(package).is_dir():
        raise ValueError(f"--package {package} is a file; give the package's folder")
    if lora:
        try:
            check_lora_file(Path(lora).stem, lora)
        except ValueError as err:
            raise ValueError(f"--lora: {err}") from None
    problem = markdown and cannot_write_in(Path(markdown).parent)
    if problem:
        raise ValueError(f"--markdown {markdown}: {problem}; give a file in a folder this user can write")
    if markdown:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)


def _folders(original, package, modes, synthetic, device, write_metadata, with_fidelity, log) -> dict:
    """``{"original": ..., "package": ...}`` the modes read (a synthetic pair built when asked, a Hub id fetched);
    ``ValueError`` naming the argument when something the modes need is missing."""
    if synthetic is not None:
        original, package = prepare_synthetic(synthetic, original, package, device, log)
    folders = {"original": original, "package": package}
    for mode in modes:
        kind = MODE_SETUPS[mode].folder
        if folders[kind] is None:
            raise ValueError(f"mode {mode} needs --{kind}")
    if original is not None and not Path(original).is_dir():
        folders["original"] = str(resolve_source(original).path)
    if (write_metadata or with_fidelity) and package is None:
        raise ValueError("--write-metadata and --fidelity need --package")
    if with_fidelity and original is None:
        raise ValueError("--fidelity needs --original")
    return folders


def _store_in_package(report: dict, package: str, request: GenerationRequest, log) -> None:
    """The report into the package's metadata (under its settings' key) and its model card."""
    meta = read_metadata(package)
    key = f"{request.width}x{request.height}-{request.num_inference_steps}steps-{'pe' if request.use_pe else 'nope'}"
    meta["benchmarks"][key] = report
    save_metadata(Path(package), meta)
    write_model_card(package)  # the card's benchmark tables follow the metadata
    log(f"results stored in {package}/quantization_metadata.json under benchmarks.{key}")


def _transformer_config(folder: str | None) -> dict | None:
    path = Path(folder or "") / "transformer" / "config.json"
    return json.loads(path.read_text()) if folder and path.is_file() else None


def prepare_synthetic(size: str, original: str | None, package: str | None, device: str, log):
    """Build (or reuse) a random-weight original and its NF4 package."""

    original = original or f"artifacts/ERNIE-Image-synthetic-{size}"
    package = package or f"{original}-NF4"
    if not Path(original).is_dir():
        log(f"building the synthetic {size} original at {original} (random weights: images are noise)")
        build_original(original, size=size, device=device)
    if not (Path(package) / METADATA_FILE).is_file():
        components = quantizable_here()
        log(f"quantizing {components} into {package}")
        quantize_package(original, package, components=components, device=device, overwrite=True)
    return original, package


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ernie_nf4.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--original", help="bf16 original: local diffusers folder or Hub id")
    p.add_argument("--package", help="NF4 package folder")
    p.add_argument(
        "--synthetic",
        nargs="?",
        const="full",
        choices=("full", "tiny"),
        help="build (or reuse) a random-weight original of this size and its NF4 package (default size: full)",
    )
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="what to measure, in order")
    p.add_argument("--prompt", default=CARD_PROMPT, help="prompt (default: the published ERNIE-Image-NF4 model card's)")
    p.add_argument("--width", type=int, default=512, help="image width")
    p.add_argument("--height", type=int, default=512, help="image height")
    p.add_argument("--resolution", help="WIDTHxHEIGHT, e.g. 1024x1024 (overrides --width/--height)")
    p.add_argument("--num-inference-steps", "--steps", dest="steps", type=int, default=50, help="denoising steps")
    p.add_argument("--guidance-scale", "--guidance", dest="guidance", type=float, default=4.0, help="guidance scale")
    p.add_argument("--seed", type=int, default=1234, help="seed")
    p.add_argument("--use-pe", action=argparse.BooleanOptionalAction, default=True, help="run the prompt enhancer")
    p.add_argument("--max-pe-tokens", type=int, default=256, help="cap on the PE's new tokens")
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help=f"timed runs per mode, the median reported (default: 3 below {SHORT_RUN_STEPS} steps, else 1)",
    )
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu")
    p.add_argument("--write-metadata", action="store_true", help="store results in the package's metadata")
    p.add_argument("--markdown", help="write a markdown table to this file")
    p.add_argument("--json", help="write the full report as JSON to this file")
    p.add_argument("--fidelity", action="store_true", help="also compare NF4 with bf16 outputs (PE off)")
    p.add_argument(
        "--lora",
        help="a LoRA file: each package mode is measured again with it picked at scale 1 (a random rank-64 one "
        "for the full-size model: python -m ernie_nf4.synthetic.lora)",
    )
    p.add_argument(
        "--compute",
        nargs="+",
        choices=[c.value for c in Compute],
        default=[Compute.BF16.value],
        help="how the transformer's linear layers multiply: every mode runs in bf16, and each package mode again in "
        "each other one named here (+fp8 / +int8; +auto for the compiled modes, FP8 from 4,096 rows where the card "
        "has it, else bf16); with --fidelity, fp8's and int8's error against bf16 too",
    )
    p.add_argument(
        "--previews",
        action="store_true",
        help="also measure live previews: runs with and without them in turns, their cost as a fraction of the "
        "run's time (the app's target: at most 5%%)",
    )
    return p


def main(argv: list[str] | None = None) -> int:

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resolution:
        try:
            args.width, args.height = (int(v) for v in args.resolution.lower().split("x"))
        except ValueError:
            parser.error(f"--resolution must be WIDTHxHEIGHT, e.g. 1024x1024, got {args.resolution!r}")
    problem = args.json and cannot_write_in(Path(args.json).parent)
    if problem:
        parser.error(f"--json {args.json}: {problem}; give a file in a folder this user can write")
    logging.basicConfig(level=logging.WARNING)
    try:
        request = GenerationRequest(
            args.prompt,
            width=args.width,
            height=args.height,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            use_pe=args.use_pe,
        )
        report = benchmark(
            args.original,
            args.package,
            modes=args.modes,
            request=request,
            repeat=args.repeat,
            device=args.device,
            max_pe_tokens=args.max_pe_tokens,
            synthetic=args.synthetic,
            write_metadata=args.write_metadata,
            markdown=args.markdown,
            with_fidelity=args.fidelity,
            lora=args.lora,
            previews=args.previews,
            computes=[Compute.parse(c) for c in args.compute],
            command="python -m ernie_nf4.benchmark " + shlex.join(sys.argv[1:] if argv is None else argv),
            log=lambda message: print(message, flush=True),
        )
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print()
    print(markdown_table(report))
    return 0
