"""Whether this torch can run attention on FP8 inputs on the GPU, at one attention call of the transformer at
1024x1024 (32 heads of 128, 4,096 image and 256 text tokens).

    python scripts/gpu_fp8_attention_probe.py

Prints torch's version, the card, cuDNN's version, the flash-attention implementations torch lists, bf16
``scaled_dot_product_attention``'s time (ms, mean of 20 after a call), then for each FP8 route either "RAN" with its
relative error against bf16 and its time, or "FAILED" with the error: torch's low-precision flash attention
(``aten::_scaled_dot_product_flash_attention.quantized``, after asking for the FA3 implementation),
``scaled_dot_product_attention`` on FP8 tensors, and cuDNN's attention operator on FP8 tensors. Q, K and V are
scaled into FP8 (E4M3) per head. A route that corrupts the GPU's state (an illegal memory access) ends the
process; it is the last tried.
"""

from __future__ import annotations

import time

import torch
import torch.nn.attention as attention
import torch.nn.functional as F

B, H, S, D = 1, 32, 4352, 128


def mean_ms(fn, n: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / n


def per_head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = x.abs().amax(dim=(2, 3), keepdim=True).float() / 448
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


def main() -> None:
    print("torch", torch.__version__, torch.cuda.get_device_name(), "cudnn", torch.backends.cudnn.version())
    print("attention names:", [n for n in dir(attention) if not n.startswith("__")])
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    reference = F.scaled_dot_product_attention(q, k, v)
    print("bf16 sdpa ms", mean_ms(lambda: F.scaled_dot_product_attention(q, k, v)))
    (q8, qs), (k8, ks), (v8, vs) = per_head(q), per_head(k), per_head(v)
    for impl in getattr(attention, "list_flash_attention_impls", list)():
        print("impl", impl)
    if hasattr(attention, "activate_flash_attention_impl"):
        try:
            attention.activate_flash_attention_impl("FA3")
            print("FA3 activated")
        except Exception as e:  # noqa: BLE001 - the probe reports what stopped it
            print("FA3 activate:", type(e).__name__, str(e)[:300])
    flash = torch.ops.aten._scaled_dot_product_flash_attention
    routes = {
        "quantized op": lambda: flash.quantized(q8, k8, v8, qs.reshape(B, H), ks.reshape(B, H), vs.reshape(B, H))[0],
        "sdpa fp8": lambda: F.scaled_dot_product_attention(q8, k8, v8),
        "cudnn op fp8": lambda: torch.ops.aten._scaled_dot_product_cudnn_attention(q8, k8, v8, None, False)[0],
    }
    for name, fn in routes.items():
        try:
            out = fn()
            torch.cuda.synchronize()
            rescale = 1 if name == "quantized op" else vs.reshape(B, H, 1, 1)
            error = float((out.float() * rescale - reference.float()).norm() / reference.float().norm())
            print(name, "RAN", out.dtype, "rel err", error, "ms", mean_ms(fn))
        except Exception as e:  # noqa: BLE001 - the probe reports what stopped it
            print(name, "FAILED", type(e).__name__, str(e)[:300])


if __name__ == "__main__":
    main()
