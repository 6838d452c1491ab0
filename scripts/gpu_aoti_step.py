"""The transformer's denoising step eagerly, with ``torch.compile``'d blocks and with ahead-of-time compiled blocks.

    python scripts/gpu_aoti_step.py /tmp/ernie-full --sizes 1024 512 --out /tmp/aoti-step.json

ROOT holds ``ERNIE-Image-NF4`` (the full-size package). Its transformer loads on the GPU with the fast path; a CFG
batch (two prompts of ``--text`` tokens) at each size runs eagerly, then with ahead-of-time compiled blocks
(``runtime.aoti``: torch.export + AOTInductor; ``spaces.aoti_compile`` where the ``spaces`` package works, else
torch's own packaging, which the output names), then with regional ``torch.compile`` (``BlockCompiler``). Prints
milliseconds a step (median of ``--repeat``) for each, the seconds each compile took, and the relative error of
each compiled output against eager; writes them as JSON to ``--out``. Exits 1 when the ahead-of-time compile fails
or its output differs from eager by more than bf16 rounding (``--tolerance``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import gpu_compute_step  # this folder's, first on the path when a script runs
import torch
from diffusers import ErnieImageTransformer2DModel

from ernie_nf4.runtime import aoti
from ernie_nf4.runtime.fast_transformer import compile_blocks, dummy_call, enable_fast_path


def step_ms(model, inputs, repeat: int) -> float:
    model(**inputs, return_dict=False)  # burn in
    return gpu_compute_step.step_ms(model, inputs, repeat)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def compiler_name() -> str:
    try:
        import spaces.zero.torch.aoti  # noqa: F401
    except Exception as err:
        return f"torch AOTInductor, packaged as spaces does (spaces' AoTI helpers unavailable: {type(err).__name__})"
    return "spaces.aoti_compile"


def measure(model, cases: dict, repeat: int, label: str) -> dict:
    """ms a step and the output of each case."""
    out = {}
    for size, inputs in cases.items():
        ms = step_ms(model, inputs, repeat)
        out[size] = dict(ms=ms, output=model(**inputs, return_dict=False)[0])
        print(f"[{label}] {size}x{size}: {ms:.1f} ms/step", flush=True)
    return out


@torch.no_grad()
def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("root", type=Path, help="folder holding ERNIE-Image-NF4")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024], help="image sizes (square, pixels)")
    p.add_argument("--text", type=int, default=256, help="text tokens of each prompt")
    p.add_argument("--repeat", type=int, default=5, help="timed steps per case (median)")
    p.add_argument("--tolerance", type=float, default=2e-2, help="largest relative error of AoTI vs eager")
    p.add_argument("--skip-torch-compile", action="store_true", help="time eager and AoTI only")
    p.add_argument("--out", type=Path, default=Path("aoti-step.json"), help="where the JSON results go")
    args = p.parse_args()
    model = ErnieImageTransformer2DModel.from_pretrained(
        args.root / "ERNIE-Image-NF4" / "transformer",
        dtype=torch.bfloat16,
        device_map={"": "cuda"},
        use_safetensors=True,
    )
    enable_fast_path(model)
    cases = {s: dummy_call(model, (s // 16, s // 16), (args.text, args.text)) for s in args.sizes}
    eager = measure(model, cases, args.repeat, "eager")
    start = time.perf_counter()
    blocks = aoti.compile_blocks_ahead_of_time(model)
    result = dict(
        gpu=torch.cuda.get_device_name(),
        torch=torch.__version__,
        text_tokens=args.text,
        aoti_compiler=compiler_name(),
        aoti_state=blocks.describe(),
        aoti_compile_s=time.perf_counter() - start,
    )
    print(f"[aoti] {blocks.describe()} in {result['aoti_compile_s']:.1f} s ({result['aoti_compiler']})", flush=True)
    failed = not blocks.active
    runs = {"eager": eager}
    if blocks.active:
        runs["aoti"] = measure(model, cases, args.repeat, "aoti")
        blocks.remove()
    if not args.skip_torch_compile:
        compiler = compile_blocks(model)
        start = time.perf_counter()
        model(**cases[args.sizes[0]], return_dict=False)  # eager, then compiles
        result["torch_compile_s"], result["torch_compile_state"] = time.perf_counter() - start, compiler.describe()
        runs["compiled"] = measure(model, cases, args.repeat, "compiled")
    for size in args.sizes:
        row = {f"{name}_ms": run[size]["ms"] for name, run in runs.items()}
        for name in ("aoti", "compiled"):
            if name in runs:
                row[f"{name}_error_vs_eager"] = relative(runs[name][size]["output"], eager[size]["output"])
        result[f"{size}x{size}"] = row
        failed |= not row.get("aoti_error_vs_eager", float("inf")) <= args.tolerance
    result["ok"] = not failed
    print(json.dumps(result, indent=2), flush=True)
    args.out.write_text(json.dumps(result, indent=2))
    if failed:
        print(f"FAILED: ahead-of-time compiled blocks are missing or differ from eager: {blocks.describe()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
