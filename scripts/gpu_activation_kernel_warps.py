"""The FP8 feed-forward activation kernel (``gelu_mul_fp8``) at the transformer's 1024x1024 shape (8,704 rows of
12,288: a CFG batch of 4,096 image and 256 text tokens each), as the library launches it and at each warp count.

    python scripts/gpu_activation_kernel_warps.py

Prints microseconds a call (mean of 30 after a call) for the library's launch ("current"), the time reading and
writing its bytes would take at 3.35 TB/s (an H100's memory), and for each warp count its time and whether its FP8
codes equal the library's launch's, bit for bit ("same").
"""

from __future__ import annotations

import torch
from gpu_fp8_attention_probe import mean_ms

from ernie_nf4.prompt_enhancer.kernels import nf4_gemv, triton_kernels

ROWS, WIDTH = 8704, 12288


def mean_us(fn) -> float:
    return 1000 * mean_ms(fn, 30)


def main() -> None:
    gate = torch.randn(ROWS, WIDTH, device="cuda", dtype=torch.bfloat16)
    up = torch.randn_like(gate)
    out = torch.empty((ROWS, WIDTH), dtype=torch.float8_e4m3fn, device="cuda")
    scales = torch.empty((ROWS, 1), dtype=torch.float32, device="cuda")
    reference, _ = nf4_gemv.gelu_mul_fp8(gate, up)
    ideal = ROWS * WIDTH * 5 / 3.35e12 * 1e6  # two bf16 inputs read, one FP8 output written
    print(f"current {mean_us(lambda: nf4_gemv.gelu_mul_fp8(gate, up)):.0f} us; ideal at 3.35TB/s {ideal:.0f} us")
    for warps in (4, 8, 16, 32):

        def launch(warps: int = warps) -> None:
            triton_kernels.gelu_mul_fp8_kernel[(ROWS,)](
                gate, up, out, scales, WIDTH, nf4_gemv._over_fp8_max(), BLOCK=16384, num_warps=warps
            )

        us = mean_us(launch)
        same = bool((out.view(torch.uint8) == reference.view(torch.uint8)).all())
        print(f"warps {warps} {us:.0f} us same {same}")


if __name__ == "__main__":
    main()
