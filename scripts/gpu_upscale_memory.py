"""Upscale x2 to 2048x2048 on a GPU under per-process memory caps: the tiles keep each memory mode within the memory
it was measured at, with the compiled blocks, and the same request gives the same bytes.

python scripts/gpu_upscale_memory.py /tmp/ernie-full/ERNIE-Image-NF4 [--runs low-vram:6:eager all-on-gpu:12:compiled]

Each run (MODE:CAP_GIB:eager|compiled; CAP_GIB 0 for none) goes in its own process:
``torch.cuda.set_per_process_memory_fraction`` holds the cap, the package is loaded in that mode (compiled: the
blocks compiled by a warm-up at the size), a 1024x1024 (``--size``) text-to-image request runs, then Vary (subtle) of
its image and Upscale x2 of it at 2048x2048 (in tiles), twice; then Enhance first (the PE alone, at most 64
tokens) and a run from its text, edited. Prints one table row per run: seconds and peak reserved GiB of
each, the tiles and steps the upscale reported, whether its two runs gave the same bytes, and the graphs compiled
during the upscale (0: no recompile).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys, time, torch
from ernie_nf4.follow_ups import upscale_request, vary_request
from ernie_nf4.request import GenerationRequest
from ernie_nf4.runtime.generation import Generator
mode, cap, kind, package = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
steps, size = int(sys.argv[5]), int(sys.argv[6])
if cap:  # 0: no cap
    torch.cuda.set_per_process_memory_fraction(cap * 2**30 / torch.cuda.get_device_properties(0).total_memory)
row = {"mode": mode, "cap_gib": cap, "blocks": kind}
def graphs():
    from torch._dynamo.utils import counters
    return sum(counters["stats"].values())
def timed(name, generator, request, **hooks):
    start = time.perf_counter()
    result = generator.generate(request, **hooks)
    row[name + "_s"] = round(time.perf_counter() - start, 2)
    row[name + "_peak_gib"] = round(result.peak_vram.reserved_gib, 2) if result.peak_vram else None
    return result
try:
    generator = Generator.from_pretrained(package, memory_mode=mode, compile=kind == "compiled", max_pe_tokens=64)
    if kind == "compiled":
        row["warm_up_s"] = round(generator.warm_up(size, size), 1)
    text = GenerationRequest("a lighthouse at dusk, a poster", width=size, height=size, num_inference_steps=steps,
                             seed=7, use_pe=False)
    image = timed("text", generator, text).images[0]
    timed("vary", generator, vary_request(text, image, seed=8))
    up, calls, before = upscale_request(text, image), [], graphs()
    first = timed("upscale", generator, up, on_step=lambda done, total: calls.append((done, total)))
    row["new_graphs"] = graphs() - before
    row["upscale_size"] = "x".join(map(str, first.images[0].size))
    row["tiles"] = generator.tile_count(up)
    row["steps_reported"] = f"{len(calls)}/{calls[-1][1]}"
    row["same_bytes"] = generator.generate(up).images[0].tobytes() == first.images[0].tobytes()
    start = time.perf_counter()
    written = generator.enhance_prompt(text.prompt, size, size, seed=7).text
    row["enhance_s"] = round(time.perf_counter() - start, 2)
    edited = GenerationRequest(text.prompt, width=size, height=size, num_inference_steps=steps, seed=7,
                               enhanced_prompt=written + " Oil painting.")
    timed("enhanced", generator, edited)
    row["status"] = "ok"
except Exception as err:
    row["status"] = f"{type(err).__name__}: {err}"[:300]
print("ROW " + json.dumps(row), flush=True)
"""
COLUMNS = (
    "mode", "cap_gib", "blocks", "text_s", "text_peak_gib", "vary_s", "vary_peak_gib", "upscale_size", "upscale_s",
    "upscale_peak_gib", "tiles", "steps_reported", "same_bytes", "new_graphs", "enhance_s", "enhanced_s",
    "enhanced_peak_gib", "status",
)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package")
    parser.add_argument(
        "--runs", nargs="+", default=["low-vram:6:eager", "low-vram:6:compiled", "all-on-gpu:12:compiled"]
    )
    parser.add_argument(
        "--steps", type=int, default=10, help="the text-to-image steps (the upscale runs 30 %% of them)"
    )
    parser.add_argument("--size", type=int, default=1024, help="side of the text-to-image result (upscaled to twice)")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        mode, cap, kind = run.split(":")
        out = subprocess.run(
            [sys.executable, "-c", CHILD, mode, cap, kind, args.package, str(args.steps), str(args.size)],
            capture_output=True,
            text=True,
        )
        line = next((x for x in out.stdout.splitlines() if x.startswith("ROW ")), None)
        rows.append(json.loads(line[4:]) if line else {"mode": mode, "cap_gib": cap, "status": out.stderr[-600:]})
        print(rows[-1], flush=True)
    print("\n| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row.get(name, "–")) for name in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
