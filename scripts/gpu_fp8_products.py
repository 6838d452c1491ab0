"""The transformer's matrix products in bf16 and in FP8, at one denoising step's shapes at 1024x1024 with guidance
(8,704 rows: two samples of 4,096 image and 256 text tokens).

    python scripts/gpu_fp8_products.py [rows]

For each product of a block (K inputs, N outputs: q, k, v and the attention's output 4096 -> 4096; the feed-forward's
gate and up 4096 -> 12288; its last 12288 -> 4096) and each way to multiply it, prints the time (us, mean of 30
after 5), TFLOP/s, and the relative error against float32 arithmetic on the same bf16 values:

- ``bf16``: torch's matmul;
- ``rowwise``: ``torch._scaled_mm`` with a scale per row of the input and per output channel (as ``--compute fp8``);
- ``tensorwise``: one scale for each whole tensor, applied after the product;
- ``-fast``: the same with ``use_fast_accum=True`` (the tensor cores' own accumulation, without cuBLAS's periodic
  promotion to float32).

Then the products of the q/k/v and gate/up layers as one product each (their weights side by side), and the sum
of each way over the step's 252 products (ms).
"""

from __future__ import annotations

import sys

import torch

FP8 = torch.float8_e4m3fn
BLOCKS = 36
# (K, N, products of that shape in a block)
SHAPES = ((4096, 4096, 4), (4096, 12288, 2), (12288, 4096, 1))


def mean_us(fn, n: int = 30) -> float:
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return 1000 * start.elapsed_time(end) / n


def operands(rows: int, k: int, n: int) -> dict:
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    x_scale = x.abs().amax(1, keepdim=True).float() / 448
    w_scale = w.abs().amax(1, keepdim=True).float() / 448
    return dict(x=x, w=w, xs=x_scale, ws=w_scale, xq=(x.float() / x_scale).to(FP8), wq=(w.float() / w_scale).to(FP8))


def ways(o: dict) -> dict:
    """Each way to multiply: (the call, its output as the product of the bf16 values)."""
    one = torch.ones((), device="cuda")

    def scaled(scale_a, scale_b, fast):
        return lambda: torch._scaled_mm(
            o["xq"], o["wq"].t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16, use_fast_accum=fast
        )

    found = {"bf16": (lambda: o["x"] @ o["w"].t(), lambda out: out)}
    for fast in (False, True):
        suffix = "-fast" if fast else ""
        found["rowwise" + suffix] = (scaled(o["xs"], o["ws"].t(), fast), lambda out: out)
        found["tensorwise" + suffix] = (scaled(one, one, fast), lambda out: out.float() * o["xs"] * o["ws"].t())
    return found


def main(rows: int) -> None:
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}, {rows} rows", flush=True)
    step: dict[str, float] = {}
    for k, n, count in SHAPES:
        o = operands(rows, k, n)
        exact = o["x"].float() @ o["w"].float().t()
        for name, (call, as_product) in ways(o).items():
            error = float((as_product(call()).float() - exact).norm() / exact.norm())
            us = mean_us(call)
            step[name] = step.get(name, 0.0) + us * count * BLOCKS / 1000
            rate = 2 * rows * k * n / us / 1e6
            print(f"K={k:5d} N={n:5d} {name:14s} {us:8.1f} us {rate:6.0f} TFLOP/s error {error:.4f}")
    for k, n, what in ((4096, 3 * 4096, "q, k, v as one"), (4096, 2 * 12288, "gate, up as one")):
        o = operands(rows, k, n)
        for name in ("rowwise", "rowwise-fast"):
            us = mean_us(ways(o)[name][0])
            print(f"K={k:5d} N={n:5d} {name:14s} {us:8.1f} us {2 * rows * k * n / us / 1e6:6.0f} TFLOP/s ({what})")
    print("a step's 252 products, ms:", ", ".join(f"{name} {ms:.1f}" for name, ms in step.items()))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8704)
