"""What ``memory_mode="auto"`` picks on a GPU under per-process memory caps (held as caps, not read as peaks).

python scripts/gpu_memory_caps.py /tmp/ernie-full/ERNIE-Image-NF4 [--caps 12 8 6] [--steps 8] [--lora FILE]

Each cap runs in its own process: ``torch.cuda.set_per_process_memory_fraction(cap / total)``, then the package is
loaded with ``memory_mode="auto"`` and 1024x1024 requests with 1 and 4 images run (PE on, capped at 64 tokens; the
memory peak does not depend on the step count); with ``--lora``, that LoRA is attached and picked at scale 1. Prints
one table row per cap.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys, time, torch
from ernie_nf4.runtime.generation import Generator
from ernie_nf4.request import GenerationRequest, LoraChoice
cap, package, steps, lora = float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
loras, picked = ([("lora", lora)], (LoraChoice("lora", 1.0),)) if lora else ([], ())
torch.cuda.set_per_process_memory_fraction(cap * 2**30 / torch.cuda.get_device_properties(0).total_memory)
row = {"cap_gib": cap}
try:
    generator = Generator.from_pretrained(package, memory_mode="auto", max_pe_tokens=64, loras=loras)
    row["mode"], row["reason"] = generator.loaded.memory_mode.value, generator.loaded.memory_mode_reason
    for images in (1, 4):
        start = time.perf_counter()
        result = generator.generate(GenerationRequest("a poster", width=1024, height=1024,
                                                      num_inference_steps=steps, num_images=images, loras=picked))
        row[f"{images}img_s"] = round(time.perf_counter() - start, 2)
        row[f"{images}img_peak_reserved_gib"] = round(result.peak_vram.reserved_gib, 2)
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
    args = parser.parse_args()
    rows = []
    for cap in args.caps:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(cap), args.package, str(args.steps), args.lora],
            capture_output=True,
            text=True,
        )
        line = next((x for x in out.stdout.splitlines() if x.startswith("ROW ")), None)
        rows.append(json.loads(line[4:]) if line else {"cap_gib": cap, "status": out.stderr[-300:]})
        print(rows[-1], flush=True)
    print("\n| cap GiB | mode | 1 image s | peak GiB | 4 images s | peak GiB | status |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['cap_gib']:.0f} | {r.get('mode', '–')} | {r.get('1img_s', '–')} | "
            f"{r.get('1img_peak_reserved_gib', '–')} | {r.get('4img_s', '–')} | "
            f"{r.get('4img_peak_reserved_gib', '–')} | {r['status']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
