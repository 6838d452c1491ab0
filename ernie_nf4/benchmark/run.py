"""Measure original (bf16) vs NF4 per stage: ``python -m ernie_nf4.benchmark``.

Each mode is loaded and run in this process one after another, memory freed between: load seconds (from a
cold page cache where the files can be evicted), a short warm-up, then the median of ``--repeat`` runs for
each stage (PE, text encoding, denoising and ms per step, VAE decode), total, peak VRAM and the GPU name.
Defaults reproduce the seed README's experiment (its prompt, 512x512, 50 steps, guidance 4.0, seed 1234, PE on).
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..build.model_card import write_model_card
from ..build.quantize import quantize_package
from ..build.source import resolve_source
from ..compat import pad_text
from ..formatting import markdown_table
from ..package.format import quantizable_here
from ..package.metadata import METADATA_FILE, read_metadata
from ..package.metadata import write_metadata as save_metadata
from ..request import GenerationRequest
from ..runtime.generation import Generator
from ..runtime.loader import load_pipeline
from ..runtime.memory_modes import MemoryMode
from ..stats import RUN_STAGES
from ..synthetic.build import build_original
from ..system import free_device_memory, gpu_name, library_versions, peak_vram, reset_peak_vram, resolve_device

SEED_PROMPT = "一只橙色的小猫坐在木桌上,前面放着一张写有 Hello Ernie-Image NF4 的白纸,柔和自然光,写实风格。"


@dataclass(frozen=True)
class ModeSetup:
    folder: str  # "original" (bf16) or "package" (NF4)
    memory_mode: MemoryMode
    fast: bool = True  # fast_transformer's forward; False = diffusers' stock forward
    compile: bool = False


# Stock modes run diffusers' own transformer forward, as the seed README did.
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


def run_mode(mode: str, folder: Path, device: str, request: GenerationRequest, repeat: int, max_pe_tokens: int, log):

    result = ModeResult(mode)
    setup = MODE_SETUPS[mode]
    if setup.memory_mode.needs_cuda and not device.startswith("cuda"):
        result.status = "skipped: needs a CUDA GPU"
        log(f"[{mode}] {result.status}")
        return result
    free_device_memory()
    result.cold_cache = evict_page_cache(folder)
    log(f"[{mode}] loading {folder} ({'cold' if result.cold_cache else 'warm'} page cache)")
    reset_peak_vram()
    start = time.perf_counter()
    loaded = load_pipeline(folder, device=device, memory_mode=setup.memory_mode, fast=setup.fast, compile=setup.compile)
    generator = Generator(loaded, max_pe_tokens=max_pe_tokens, prompt_cache_size=0)  # every run pays every stage
    result.load_seconds = time.perf_counter() - start
    log(f"[{mode}] loaded in {result.load_seconds:.1f} s; warm-up ({WARMUP_STEPS} steps)")
    warmup = GenerationRequest(**{**asdict(request), "num_inference_steps": WARMUP_STEPS})
    start = time.perf_counter()
    generator.generate(warmup)
    gc.collect()  # as Generator.warm_up does: no full collection of the warm-up's garbage inside a timed run
    result.warmup_seconds = time.perf_counter() - start
    moved = loaded.seconds_moving
    runs = []
    for index in range(repeat):
        reset_peak_vram()
        run = generator.generate(
            request, on_stage=lambda stage, sec, n=index + 1: log(f"[{mode}] run {n}/{repeat}: {stage} {sec:.2f} s")
        )
        runs.append(run)
        log(f"[{mode}] run {index + 1}/{repeat}: total {run.seconds.total:.2f} s")
    result.seconds = {key: statistics.median(r.seconds.as_dict()[key] for r in runs) for key in (*RUN_STAGES, "total")}
    result.ms_per_step = 1000 * result.seconds["denoising"] / (request.num_inference_steps * request.num_images)
    tokens = [r.enhancement.tokens for r in runs if r.enhancement is not None]
    if tokens:
        result.pe_tokens = int(statistics.median(tokens))
        result.pe_ms_per_token = 1000 * result.seconds["pe"] / result.pe_tokens
    if moved is not None:
        result.moving_seconds = (loaded.seconds_moving - moved) / repeat
    peaks = [r.peak_vram for r in runs if r.peak_vram] or [peak_vram()]
    if peaks[0] is not None:
        result.peak_allocated_gib = max(p.allocated_bytes for p in peaks) / 2**30
        result.peak_reserved_gib = max(p.reserved_bytes for p in peaks) / 2**30
    del generator, loaded
    free_device_memory()
    return result


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


def _ssim(a, b) -> float:
    """Mean SSIM of two grayscale images in [0, 1] (7x7 uniform windows)."""
    import torch.nn.functional as F

    c1, c2 = 0.01**2, 0.03**2
    a, b = a[None, None], b[None, None]
    mu_a, mu_b = F.avg_pool2d(a, 7, 1), F.avg_pool2d(b, 7, 1)
    var_a = F.avg_pool2d(a * a, 7, 1) - mu_a**2
    var_b = F.avg_pool2d(b * b, 7, 1) - mu_b**2
    cov = F.avg_pool2d(a * b, 7, 1) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim.mean())


def _relative_error(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _float(value):
    import torch

    return value.float() if torch.is_tensor(value) and value.is_floating_point() else value


def _float32_compute(model) -> None:
    """Make an NF4 (or bf16) model compute in float32: its 4-bit weights are dequantized to float32."""
    import bitsandbytes as bnb
    import torch

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.compute_dtype = torch.float32
        for key, buffer in module._buffers.items():
            if buffer is not None and buffer.is_floating_point():
                module._buffers[key] = buffer.float()
    for param in model.parameters():
        if not isinstance(param, bnb.nn.Params4bit):
            param.data = param.data.float()


def fidelity(original: str, package: str, request: GenerationRequest, device: str, log=print) -> dict:
    """NF4 vs bf16 on the same seed and latents, PE off: the transformer's relative output error at a few
    steps (same inputs), cosine similarity of the final latents, PSNR and SSIM of the decoded images.
    Also the fast path (eager and compiled) against the stock forward of the same NF4 model, beside two yardsticks:
    the stock forward with another attention kernel (bf16 rounding noise) and a float32 run of the NF4 weights."""
    import numpy as np
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..runtime.fast_transformer import compile_blocks, disable_fast_path, enable_fast_path

    request = GenerationRequest(**{**asdict(request), "use_pe": False, "num_images": 1})
    generators = {
        "bf16": Generator(load_pipeline(original, device=device, fast=False)),
        "nf4": Generator(load_pipeline(package, device=device)),
    }
    reference = generators["bf16"]
    nf4 = generators["nf4"].pipe.transformer
    latents0 = reference.initial_latents(request.seed, request.width, request.height)
    with torch.no_grad():
        text = reference.pipe.encode_prompt([request.prompt], reference.device)
        negative = reference.pipe.encode_prompt([request.negative_prompt], reference.device)
        text_bth, text_lens = pad_text(reference.pipe, negative + text, reference.device, latents0.dtype)

        def inputs(t: float) -> dict:
            return dict(
                hidden_states=torch.cat([latents0, latents0]),
                text_bth=text_bth,
                text_lens=text_lens,
                timestep=torch.full((2,), t, device=reference.device, dtype=latents0.dtype),
                return_dict=False,
            )

        timesteps = (999.0, 500.0, 20.0)
        out = {name: {} for name in ("bf16", "stock", "stock_math_attention", "fast", "compiled")}
        for t in timesteps:
            out["bf16"][t] = reference.pipe.transformer(**inputs(t))[0]
            out["fast"][t] = nf4(**inputs(t))[0]
            disable_fast_path(nf4)
            out["stock"][t] = nf4(**inputs(t))[0]
            with sdpa_kernel(SDPBackend.MATH):  # the stock model with another attention kernel: bf16 noise
                out["stock_math_attention"][t] = nf4(**inputs(t))[0]
            enable_fast_path(nf4)
        compile_blocks(nf4)
        nf4(**inputs(timesteps[0]))  # the eager call that sets compilation up
        for t in timesteps:
            out["compiled"][t] = nf4(**inputs(t))[0]
        disable_fast_path(nf4)  # the image comparison below runs the fast path eagerly (--no-compile)
        enable_fast_path(nf4)
        finals, images = {}, {}
        for name, gen in generators.items():
            pipe = gen.pipe
            finals[name] = pipe(
                prompt_embeds=pipe.encode_prompt([request.prompt], gen.device),
                negative_prompt_embeds=pipe.encode_prompt([request.negative_prompt], gen.device),
                height=request.height,
                width=request.width,
                num_inference_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                latents=latents0.clone(),
                output_type="latent",
                use_pe=False,
            ).images
            images[name] = np.asarray(gen.decode(finals[name])[0], dtype=np.float64) / 255.0
        # Last (it changes the NF4 model for good): the same NF4 weights computing in float32, as a reference
        # that tells rounding noise from real differences.
        disable_fast_path(nf4)
        _float32_compute(nf4)
        with sdpa_kernel(SDPBackend.MATH):
            fp32 = {t: nf4(**{k: _float(v) for k, v in inputs(t).items()})[0] for t in timesteps}

    def relative(a: str, b) -> dict:
        return {str(int(t)): _relative_error(out[a][t], b[t]) for t in timesteps}

    cosine = float(
        torch.nn.functional.cosine_similarity(finals["nf4"].flatten().float(), finals["bf16"].flatten().float(), dim=0)
    )
    mse = float(np.mean((images["nf4"] - images["bf16"]) ** 2))
    gray = {n: torch.from_numpy(im.mean(axis=2)).float() for n, im in images.items()}
    result = {
        "transformer_relative_error": relative("fast", out["bf16"]),
        "fast_path_vs_stock_relative_error": relative("fast", out["stock"]),
        "compiled_vs_stock_relative_error": relative("compiled", out["stock"]),
        "stock_other_attention_kernel_relative_error": relative("stock_math_attention", out["stock"]),
        "vs_float32_relative_error": {name: relative(name, fp32) for name in ("stock", "fast", "compiled")},
        "final_latent_cosine": cosine,
        "psnr_db": float("inf") if mse == 0 else 10 * np.log10(1.0 / mse),
        "ssim": _ssim(gray["nf4"], gray["bf16"]),
        "settings": asdict(request),
    }
    log(
        f"[fidelity] nf4 vs bf16 {json.dumps(result['transformer_relative_error'])}; "
        f"fast vs stock {json.dumps(result['fast_path_vs_stock_relative_error'])}; "
        f"compiled vs stock {json.dumps(result['compiled_vs_stock_relative_error'])}; cosine {cosine:.4f} "
        f"PSNR {result['psnr_db']:.2f} dB SSIM {result['ssim']:.4f}"
    )
    del generators
    free_device_memory()
    return result


def benchmark(
    original: str | None,
    package: str | None,
    modes=MODES,
    request: GenerationRequest | None = None,
    repeat: int = 1,
    device: str | None = None,
    max_pe_tokens: int = 256,
    synthetic: str | None = None,
    write_metadata: bool = False,
    markdown: str | None = None,
    command: str | None = None,
    with_fidelity: bool = False,
    log=print,
) -> dict:
    """Run the benchmark and return its report (also written to metadata / markdown when asked)."""

    request = request or GenerationRequest(
        SEED_PROMPT, width=512, height=512, num_inference_steps=50, guidance_scale=4.0, seed=1234
    )
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"modes: unknown {unknown}; choose from {list(MODES)}")
    device = resolve_device(device)
    if synthetic is not None:
        original, package = prepare_synthetic(synthetic, original, package, device, log)
    folders = {"original": original, "package": package}
    for mode in modes:
        kind = MODE_SETUPS[mode].folder
        if folders[kind] is None:
            raise ValueError(f"mode {mode} needs --{kind}")
    if original is not None and not Path(original).is_dir():
        original = str(resolve_source(original).path)
        folders["original"] = original
    if (write_metadata or with_fidelity) and package is None:
        raise ValueError("--write-metadata and --fidelity need --package")
    if with_fidelity and original is None:
        raise ValueError("--fidelity needs --original")

    results = [
        run_mode(m, Path(folders[MODE_SETUPS[m].folder]), device, request, repeat, max_pe_tokens, log) for m in modes
    ]
    report = {
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "gpu": gpu_name(device),
        "device": device,
        "versions": library_versions(),
        "synthetic": synthetic,
        "settings": {**asdict(request), "repeat": repeat, "max_pe_tokens": max_pe_tokens},
        "modes": [asdict(r) for r in results],
        "fidelity": fidelity(folders["original"], folders["package"], request, device, log) if with_fidelity else None,
        "command": command,
        "bf16_tflops": bf16_matmul_tflops(device),
        "transformer_config": _transformer_config(folders["package"] or folders["original"]),
    }
    if write_metadata:
        meta = read_metadata(package)
        key = (
            f"{request.width}x{request.height}-{request.num_inference_steps}steps-{'pe' if request.use_pe else 'nope'}"
        )
        meta["benchmarks"][key] = report
        save_metadata(Path(package), meta)
        write_model_card(package)  # the card's benchmark tables follow the metadata
        log(f"results stored in {package}/quantization_metadata.json under benchmarks.{key}")
    if markdown:
        Path(markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(markdown).write_text(markdown_table(report))
    return report


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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--prompt", default=SEED_PROMPT, help="prompt (default: the seed README's)")
    p.add_argument("--width", type=int, default=512, help="image width")
    p.add_argument("--height", type=int, default=512, help="image height")
    p.add_argument("--resolution", help="WIDTHxHEIGHT, e.g. 1024x1024 (overrides --width/--height)")
    p.add_argument("--num-inference-steps", "--steps", dest="steps", type=int, default=50, help="denoising steps")
    p.add_argument("--guidance-scale", "--guidance", dest="guidance", type=float, default=4.0, help="guidance scale")
    p.add_argument("--seed", type=int, default=1234, help="seed")
    p.add_argument("--use-pe", action=argparse.BooleanOptionalAction, default=True, help="run the prompt enhancer")
    p.add_argument("--max-pe-tokens", type=int, default=256, help="cap on the PE's new tokens")
    p.add_argument("--repeat", type=int, default=1, help="timed runs per mode (median reported)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu")
    p.add_argument("--write-metadata", action="store_true", help="store results in the package's metadata")
    p.add_argument("--markdown", help="write a markdown table to this file")
    p.add_argument("--json", help="write the full report as JSON to this file")
    p.add_argument("--fidelity", action="store_true", help="also compare NF4 with bf16 outputs (PE off)")
    return p


def main(argv: list[str] | None = None) -> int:

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resolution:
        try:
            args.width, args.height = (int(v) for v in args.resolution.lower().split("x"))
        except ValueError:
            parser.error(f"--resolution must be WIDTHxHEIGHT, e.g. 1024x1024, got {args.resolution!r}")
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
            command="python -m ernie_nf4.benchmark " + shlex.join(sys.argv[1:] if argv is None else argv),
            log=lambda message: print(message, flush=True),
        )
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print()
    print(markdown_table(report))
    return 0
