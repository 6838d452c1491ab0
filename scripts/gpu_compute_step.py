"""The transformer's denoising step in each compute mode, eager and compiled, and its error against bf16 weights.

    python scripts/gpu_compute_step.py /tmp/ernie-full --size 1024 --modes bf16 fp8 int8

ROOT holds ``ERNIE-Image`` (the bf16 original) and ``ERNIE-Image-NF4`` (its package), as
``scripts/gpu_full_package.sh`` writes them. Each mode loads the package's transformer anew, runs a CFG batch (two
prompts of ``--text`` tokens) eagerly and compiled, and reports milliseconds a step (median of ``--repeat``), peak
GPU memory, and the relative error of its output against the bf16 original's at three timesteps, beside NF4's own
(bf16 compute). ``fp8-exact``: FP8 with its sums promoted to float32 as cuBLAS does by default, against ``fp8``'s
tensor-core accumulation; ``fp8-bf16-attention``: FP8 products with attention kept in bf16, against ``fp8``'s FP8
attention (where the card has cuDNN's kernel).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from diffusers import ErnieImageTransformer2DModel

from ernie_nf4.runtime import compute as compute_module
from ernie_nf4.runtime.compute import apply_compute
from ernie_nf4.runtime.fast_transformer import compile_blocks, dummy_call, enable_fast_path
from ernie_nf4.system import free_device_memory

TIMESTEPS = (999.0, 500.0, 20.0)


def load(folder: Path, compute: str | None):
    """The package's transformer on the GPU in ``compute`` (None: as stored, for the bf16 original), on the fast
    path. ``fp8-exact``: FP8 with cuBLAS's periodic promotion of its sums to float32 (``compute.FAST_ACCUMULATION``
    off); ``fp8-bf16-attention``: attention kept in bf16; both for comparison."""
    model = ErnieImageTransformer2DModel.from_pretrained(
        folder / "transformer", dtype=torch.bfloat16, device_map={"": "cuda"}, use_safetensors=True
    )
    if compute is not None:
        compute_module.FAST_ACCUMULATION = not compute.endswith("-exact")
        mode = compute.removesuffix("-exact").removesuffix("-bf16-attention")
        apply_compute(model, mode, fp8_attention=not compute.endswith("-bf16-attention"))
    enable_fast_path(model)
    return model


def step_ms(model, inputs, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(**inputs, return_dict=False)
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def outputs(model, inputs) -> dict:
    at = {t: {**inputs, "timestep": torch.full_like(inputs["timestep"], t)} for t in TIMESTEPS}
    return {t: model(**kwargs, return_dict=False)[0] for t, kwargs in at.items()}


def relative(a: dict, b: dict) -> dict:
    return {int(t): float((a[t].float() - b[t].float()).norm() / b[t].float().norm()) for t in TIMESTEPS}


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root", type=Path)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--text", type=int, default=256)
    p.add_argument("--modes", nargs="+", default=["bf16", "fp8", "int8"])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    latent = (args.size // 16, args.size // 16)
    reference = load(args.root / "ERNIE-Image", None)
    inputs = dummy_call(reference, latent, (args.text, args.text))
    truth = {t: v.cpu() for t, v in outputs(reference, inputs).items()}
    del reference
    free_device_memory()
    rows = []
    for mode in args.modes:
        torch.cuda.reset_peak_memory_stats()
        model = load(args.root / "ERNIE-Image-NF4", mode)
        print(f"[{mode}] loaded", flush=True)
        error = relative({t: v.cpu() for t, v in outputs(model, inputs).items()}, truth)
        eager = step_ms(model, inputs, args.repeat)
        print(f"[{mode}] error {error}, eager {eager:.1f} ms; compiling", flush=True)
        compiler = compile_blocks(model)
        start = time.perf_counter()
        model(**inputs, return_dict=False)  # eager, then compiles
        compile_s = time.perf_counter() - start
        compiled = step_ms(model, inputs, args.repeat)
        same = torch.equal(model(**inputs, return_dict=False)[0], model(**inputs, return_dict=False)[0])
        row = dict(
            mode=mode,
            eager_ms=eager,
            compiled_ms=compiled,
            compile_s=compile_s,
            state=compiler.describe(),
            fallbacks=compiler.fallback_calls,
            peak_gib=torch.cuda.max_memory_allocated() / 2**30,
            error_vs_bf16=error,
            same_twice=same,
        )
        print(json.dumps(row), flush=True)
        rows.append(row)
        del model, compiler
        free_device_memory()
    base = {r["mode"]: r for r in rows}.get("bf16")
    print(f"\n{torch.cuda.get_device_name()}, {args.size}x{args.size}, CFG batch, {args.text} text tokens each")
    print("| compute | eager ms | compiled ms | compiled vs bf16 | peak GiB | error vs bf16 weights (t=999/500/20) |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        ratio = f"{r['compiled_ms'] / base['compiled_ms']:.2f}x" if base else "-"
        errors = " / ".join(f"{e:.4f}" for e in r["error_vs_bf16"].values())
        print(
            f"| {r['mode']} | {r['eager_ms']:.1f} | {r['compiled_ms']:.1f} | {ratio} | {r['peak_gib']:.2f} | {errors} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
