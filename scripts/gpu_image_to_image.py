"""Image-to-image and Upscale x2 on a GPU: seconds and peak memory per memory mode, each under its cap.

python scripts/gpu_image_to_image.py /tmp/ernie-full/ERNIE-Image-NF4 [--steps 20]

Each mode runs in its own process under ``torch.cuda.set_per_process_memory_fraction(cap / total)`` (all-on-gpu
under 12 GiB, low-vram under 6 GiB; eager blocks), with the package loaded once and warmed up. The cases: image to
image at 1024x1024 (strength 0.6), Upscale x2 from 512x512 to 1024x1024 and from 1024x1024 to 2048x2048 (strength
0.3, tiled where the size is above the mode's budget), PE off, guidance 4; then Enhance first (the PE alone, at most
64 tokens) and a 1024x1024 run from its text, edited. The init images are a fixed gradient
pattern. Prints one table row per mode and case.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys, time, torch
import numpy as np
from ernie_nf4.runtime.generation import Generator
from ernie_nf4.request import GenerationRequest, InitImage
mode, cap, package, steps = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.cuda.set_per_process_memory_fraction(cap * 2**30 / torch.cuda.get_device_properties(0).total_memory)

def picture(side):
    y, x = np.mgrid[0:side, 0:side] / side
    rgb = np.stack([x, y, (np.sin(12 * x) * np.cos(9 * y) + 1) / 2], -1)
    return InitImage.of((rgb * 255).astype(np.uint8))

cases = [("image to image", 1024, 1024, 0.6), ("upscale x2", 512, 1024, 0.3), ("upscale x2", 1024, 2048, 0.3)]
generator = Generator.from_pretrained(package, memory_mode=mode, max_pe_tokens=64)
generator.warm_up(1024, 1024)
for name, source, side, strength in cases:
    row = {"mode": mode, "cap_gib": cap, "case": f"{name} {source}->{side}", "steps": steps}
    try:
        request = GenerationRequest("a harbour at dawn", width=side, height=side, num_inference_steps=steps,
                                    use_pe=False, init_image=picture(source), strength=strength)
        done = []
        start = time.perf_counter()
        result = generator.generate(request, on_step=lambda d, t: done.append(t))
        row["seconds"] = round(time.perf_counter() - start, 2)
        row["steps_run"] = done[-1] if done else 0
        row["peak_reserved_gib"] = round(result.peak_vram.reserved_gib, 2)
        row["size"] = list(result.images[0].size)
        row["status"] = "ok"
    except Exception as err:
        row["status"] = f"{type(err).__name__}: {err}"[:300]
    print("ROW " + json.dumps(row), flush=True)
row = {"mode": mode, "cap_gib": cap, "case": "enhance first, then 1024 from the text", "steps": steps}
try:
    start = time.perf_counter()
    text = generator.enhance_prompt("a harbour at dawn", 1024, 1024, seed=7).text
    pe_seconds = time.perf_counter() - start
    request = GenerationRequest("a harbour at dawn", width=1024, height=1024, num_inference_steps=steps, seed=7,
                                enhanced_prompt=text + " Oil painting.")
    result = generator.generate(request)
    row["seconds"] = round(time.perf_counter() - start, 2)
    row["steps_run"], row["size"] = steps, list(result.images[0].size)
    row["peak_reserved_gib"] = round(result.peak_vram.reserved_gib, 2)
    row["status"] = f"ok: PE alone {pe_seconds:.2f} s, then the run took the edited text"
except Exception as err:
    row["status"] = f"{type(err).__name__}: {err}"[:300]
print("ROW " + json.dumps(row), flush=True)
"""

MODES = (("all-on-gpu", 12.0), ("low-vram", 6.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for mode, cap in MODES:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(cap), args.package, str(args.steps)], capture_output=True, text=True
        )
        found = [json.loads(x[4:]) for x in out.stdout.splitlines() if x.startswith("ROW ")]
        rows += found or [{"mode": mode, "cap_gib": cap, "case": "-", "status": out.stderr[-300:]}]
        print(*rows[-len(found or [1]) :], sep="\n", flush=True)
    print("\n| mode | cap GiB | case | size | steps run | s | peak reserved GiB | status |")
    print("|---|---:|---|---|---:|---:|---:|---|")
    for r in rows:
        size = "x".join(map(str, r.get("size", []))) or "–"
        print(
            f"| {r['mode']} | {r['cap_gib']:.0f} | {r['case']} | {size} | {r.get('steps_run', '–')} | "
            f"{r.get('seconds', '–')} | {r.get('peak_reserved_gib', '–')} | {r['status']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
