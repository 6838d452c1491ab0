"""Where one compiled denoising step's GPU time goes, kernel by kernel, in each compute mode.

    python scripts/gpu_profile_step.py /tmp/ernie-full --modes fp8 bf16 --sizes 1024 512

(``fp8-unfused``: FP8 with the feed-forward as its layers run it, the activation's scaling fused by Inductor,
rather than through ``gelu_mul_fp8``; ``fp8-exact``: FP8 with its sums promoted to float32 as cuBLAS does by
default.)

ROOT holds ``ERNIE-Image-NF4`` (as ``scripts/gpu_full_package.sh`` writes it). Each mode loads the package's
transformer, compiles its blocks, and for each size runs a CFG batch (two prompts of ``--text`` tokens): the step's
wall time (median of ``--repeat``) and the host's time to issue it, then one step under torch.profiler, printing
the GPU's total kernel time and the ``--top`` kernels by their own time (milliseconds, calls, name).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from gpu_compute_step import load, step_ms
from torch.profiler import ProfilerActivity, profile

from ernie_nf4.runtime import fast_transformer
from ernie_nf4.runtime.compute import feed_forward
from ernie_nf4.runtime.fast_transformer import compile_blocks, dummy_call
from ernie_nf4.system import free_device_memory


def host_ms(model, inputs, repeat: int) -> float:
    """The host's time to issue one step (no wait for the GPU at its end): near the step's wall time, the GPU waits
    on the host (launches, or a synchronization inside the step)."""
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(**inputs, return_dict=False)
        times.append(1000 * (time.perf_counter() - start))
        torch.cuda.synchronize()
    return sorted(times)[len(times) // 2]


def kernel_table(model, inputs, top: int) -> list[str]:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model(**inputs, return_dict=False)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) / 1000
    lines = [f"GPU kernel time {total:.1f} ms"]
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        lines.append(f"  {e.self_device_time_total / 1000:8.2f} ms {e.count:5d}x  {e.key[:110]}")
    return lines


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root", type=Path)
    p.add_argument("--modes", nargs="+", default=["fp8", "bf16"])
    p.add_argument("--sizes", nargs="+", type=int, default=[1024, 512])
    p.add_argument("--text", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}", flush=True)
    for mode in args.modes:
        # "fp8-unfused": FP8 with the feed-forward as the layers run it, which Inductor fuses, for comparison
        fast_transformer.feed_forward = (lambda mlp, x: mlp(x)) if mode.endswith("-unfused") else feed_forward
        model = load(args.root / "ERNIE-Image-NF4", mode.removesuffix("-unfused"))
        compiler = compile_blocks(model)
        for size in args.sizes:
            inputs = dummy_call(model, (size // 16, size // 16), (args.text, args.text))
            start = time.perf_counter()
            model(**inputs, return_dict=False)  # the first call compiles
            torch.cuda.synchronize()
            first = time.perf_counter() - start
            print(f"[{mode} {size}] first call {first:.1f} s ({compiler.describe()})", flush=True)
            step, host = step_ms(model, inputs, args.repeat), host_ms(model, inputs, args.repeat)
            print(f"[{mode} {size}] step {step:.1f} ms, issued by the host in {host:.1f} ms", flush=True)
            print("\n".join(f"[{mode} {size}] {line}" for line in kernel_table(model, inputs, args.top)), flush=True)
        del model, compiler
        free_device_memory()


if __name__ == "__main__":
    main()
