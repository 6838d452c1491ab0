"""Low-vram's page-locked CPU memory for a package, against what ``pin_memory=True`` per tensor would lock.

    python scripts/gpu_low_vram_host_memory.py /tmp/ernie-full/ERNIE-Image-NF4

PyTorch's pinned-memory cache rounds every block up to a power of two; ``residency`` locks one buffer per model of
exactly its bytes (``page_lock``). Prints, per model: its bytes, the buffer locked now, and the sum of the tensors'
sizes rounded up to powers of two (what one ``pin_memory=True`` copy per tensor locks).
"""

import sys

import torch

from ernie_nf4.runtime.loader import load_pipeline


def power_of_two(size: int) -> int:
    return 1 << (size - 1).bit_length() if size > 1 else size


loaded = load_pipeline(sys.argv[1], memory_mode="low-vram")
residency = loaded.residency
cache = torch.cuda.host_memory_stats().get("allocated_bytes.current")
print(f"{'model':14} {'bytes':>16} {'locked now':>16} {'pin_memory per tensor':>22}")
totals = [0, 0, 0]
for name in residency.names:
    model = residency._models[name]
    row = (model.bytes, model.host.numel() if model.pinned else 0, sum(power_of_two(t.nbytes) for t in model.tensors))
    totals = [a + b for a, b in zip(totals, row, strict=True)]
    print(f"{name:14} {row[0]:>16,} {row[1]:>16,} {row[2]:>22,}")
print(f"{'total':14} {totals[0]:>16,} {totals[1]:>16,} {totals[2]:>22,}")
print(f"PyTorch's pinned-memory cache holds {cache:,} bytes; {torch.cuda.get_device_name()}")
