#!/usr/bin/env bash
# On a CUDA GPU: build the full-size random-weight original, quantize it with quantize.py,
# and print per-component sizes (beside the published ERNIE-Image-NF4 package's), build time and peak VRAM. Results land in $OUT (or ./artifacts).
set -euo pipefail
out=${OUT:-artifacts}; mkdir -p "$out"
work=${WORK:-/tmp/ernie-full}; rm -rf "$work"; mkdir -p "$work"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
start=$(date +%s)
python3 -m ernie_nf4.synthetic --size full --device cuda --output "$work/ERNIE-Image"
echo "original built in $(( $(date +%s) - start )) s"
python3 quantize.py --source "$work/ERNIE-Image" --output "$work/ERNIE-Image-NF4"
cp "$work/ERNIE-Image-NF4/quantization_metadata.json" "$out/full_quantization_metadata.json"
python3 - "$work/ERNIE-Image-NF4" <<'PY'
import sys
from ernie_nf4.package.metadata import read_metadata
meta = read_metadata(sys.argv[1])
published = {"transformer": 4_146_045_428, "text_encoder": 2_585_177_824, "pe": 2_367_115_496}
print(f"card: {meta['gpu']}; versions: {meta['versions']}")
print(f"{'component':14} {'before B':>16} {'after B':>16} {'published NF4 B':>16} {'build s':>8} {'peak alloc GiB':>14}")
for name, c in meta["components"].items():
    vram = c["peak_vram"]["allocated_bytes"] / 2**30 if c["peak_vram"] else float("nan")
    print(f"{name:14} {c['bytes_before']:>16,} {c['bytes_after']:>16,} {published.get(name, 0):>16,} {c['build_seconds']:>8.1f} {vram:>14.2f}")
t = meta["totals"]
print(f"{'total':14} {t['bytes_before']:>16,} {t['bytes_after']:>16,} {9_301_075_597:>16,} {meta['build']['seconds']:>8.1f}"
      f" {meta['build']['peak_vram_allocated_bytes'] / 2**30:>14.2f}")
PY
