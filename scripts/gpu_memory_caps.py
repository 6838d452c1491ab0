"""What the app picks and holds on a GPU under per-process memory caps (held as caps, not read as peaks).

python scripts/gpu_memory_caps.py /tmp/ernie-full/ERNIE-Image-NF4 [--caps 12 8 6] [--steps 8] [--lora FILE]
                                  [--no-compile] [--compute fp8]

Each cap runs in its own process: ``torch.cuda.set_per_process_memory_fraction(cap / total)``, then the app's service
loads the package with its defaults (``memory_mode="auto"``; the transformer blocks compiled as the app compiles
them: at load in low-vram mode, in the background in all-on-gpu mode, waited for here before the first request so
that every request runs compiled; ``--no-compile``: eager), and 1024x1024 requests with 1 and 4 images run (PE on,
capped at 64 tokens; the memory peak does not depend on the step count); with ``--lora``, that LoRA is offered and
picked at scale 1. Prints one table row per cap.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys, time, torch
from ernie_nf4.request import GenerationRequest, LoraChoice
from ernie_nf4.serving.loras import LoraSource
from ernie_nf4.serving.service import ImageService, ServiceConfig
cap, package, steps, lora, compile, compute = float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), *sys.argv[4:7]
loras, picked = ((LoraSource("lora", lora),), (LoraChoice("lora", 1.0),)) if lora else ((), ())
torch.cuda.set_per_process_memory_fraction(cap * 2**30 / torch.cuda.get_device_properties(0).total_memory)
row = {"cap_gib": cap}
try:
    config = ServiceConfig(model_dir=package, repo_id=None, source=None, max_pe_tokens=64, loras=loras,
                           compile=False if compile == "off" else None, compute=compute)
    service = ImageService(config)
    loaded = service.load().loaded
    if service.compiler is not None:
        service.compiler.wait(timeout=300)
    row["mode"], row["reason"] = loaded.memory_mode.value, loaded.memory_mode_reason
    for images in (1, 4):
        start = time.perf_counter()
        result = service.generate(GenerationRequest("a poster", width=1024, height=1024,
                                                    num_inference_steps=steps, num_images=images, loras=picked))
        row[f"{images}img_s"] = round(time.perf_counter() - start, 2)
        row[f"{images}img_peak_reserved_gib"] = round(result.peak_vram.reserved_gib, 2)
        row[f"{images}img_compiled"] = service.last_run_compiled
    row["compile_status"] = service.compile_status
    row["status"] = "ok"
except Exception as err:
    row["status"] = f"{type(err).__name__}: {err}"[:300]
print("ROW " + json.dumps(row), flush=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package")
    parser.add_argument("--caps", nargs="+", type=float, default=[12.0, 8.0, 6.0, 5.0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lora", default="", help="a LoRA file to attach and pick at scale 1")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="as the app's flag")
    parser.add_argument("--compute", default="bf16", help="as the app's flag: bf16, fp8, int8 or auto")
    args = parser.parse_args()
    rows, compile = [], "on" if args.compile else "off"
    for cap in args.caps:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(cap), args.package, str(args.steps), args.lora, compile, args.compute],
            capture_output=True,
            text=True,
        )
        line = next((x for x in out.stdout.splitlines() if x.startswith("ROW ")), None)
        rows.append(json.loads(line[4:]) if line else {"cap_gib": cap, "status": out.stderr[-300:]})
        print(rows[-1], flush=True)
    print("\n| cap GiB | mode | blocks | 1 image s | peak GiB | 4 images s | peak GiB | status |")
    print("|---:|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['cap_gib']:.0f} | {r.get('mode', '–')} | {r.get('compile_status', '–')} | {r.get('1img_s', '–')} | "
            f"{r.get('1img_peak_reserved_gib', '–')} | {r.get('4img_s', '–')} | "
            f"{r.get('4img_peak_reserved_gib', '–')} | {r['status']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
