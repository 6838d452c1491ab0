#!/usr/bin/env bash
# Every NF4 mode on a CUDA GPU: the full-size synthetic package (unless WORK already holds it), then one benchmark run
# of every NF4 mode at 1024x1024 (RESOLUTION=512x512 for the other size; MODES to pick), 50 steps, PE capped at 256
# tokens. Results land in $OUT (or ./artifacts).
set -euo pipefail
out=${OUT:-artifacts}; mkdir -p "$out"
work=${WORK:-/tmp/ernie-full}
if [ ! -f "$work/ERNIE-Image-NF4/quantization_metadata.json" ]; then bash scripts/gpu_full_package.sh > "$out/package.log" 2>&1; fi
tail -6 "$out/package.log" 2>/dev/null || true
python3 -m ernie_nf4.benchmark --original "$work/ERNIE-Image" --package "$work/ERNIE-Image-NF4" \
  --modes ${MODES:-nf4-stock nf4 nf4-compile nf4-low-vram nf4-low-vram-compile} \
  --resolution ${RESOLUTION:-1024x1024} --steps 50 --max-pe-tokens 256 \
  --markdown "$out/bench.md" --json "$out/bench.json" > "$out/bench.log" 2>&1 || { tail -30 "$out/bench.log"; exit 1; }
cat "$out/bench.md"
