"""FP8 attention through NVIDIA's cuDNN frontend (``pip install nvidia-cudnn-frontend``; torch has no FP8 attention
to call on Hopper) against torch's bf16 ``scaled_dot_product_attention``, at the transformer's attention call at
1024x1024 with guidance: a batch of 2, 32 heads of 128, 4,096 image and 256 text tokens.

    python scripts/gpu_cudnn_fp8_attention_probe.py [batch]

Prints torch's version, the card and cuDNN's, bf16 attention's time (ms, mean of 20 after a call), the time to scale
Q, K and V into FP8 (E4M3, one scale a tensor) in eager torch ops, then for each output type (bf16, FP8) either the
FP8 graph's relative error against bf16 and its time, or "FAILED" with why. The softmax's probabilities are scaled
by 1 and by 448 before they are rounded to FP8.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from gpu_fp8_attention_probe import mean_ms  # this folder's, first on the path when a script runs

from ernie_nf4.runtime.fp8_attention import plan

H, S, D = 32, 4352, 128


def per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = x.abs().amax().float() / 448
    return (x.float() / scale).to(torch.float8_e4m3fn), scale.reshape(1, 1, 1, 1)


def fp8_graph(cudnn, handle, fp8: list[torch.Tensor], scales: list[torch.Tensor], out: torch.Tensor, out_type: str):
    """cuDNN's FP8 attention graph for these tensors, built and planned: the graph, its tensors by name and the
    workspace it needs."""
    graph = cudnn.pygraph(
        io_data_type=cudnn.data_type.FP8_E4M3,
        intermediate_data_type=cudnn.data_type.FLOAT,
        compute_data_type=cudnn.data_type.FLOAT,
        handle=handle,
    )
    q, k, v = (graph.tensor_like(t.view(torch.uint8)).set_data_type(cudnn.data_type.FP8_E4M3) for t in fp8)
    one = torch.ones(1, 1, 1, 1, device="cuda")
    descale_q, descale_k, descale_v = (graph.tensor_like(s) for s in scales)
    descale_s, scale_s, scale_o = (graph.tensor_like(one) for _ in range(3))
    o, _, amax_s, amax_o = graph.sdpa_fp8(
        q=q, k=k, v=v, descale_q=descale_q, descale_k=descale_k, descale_v=descale_v, descale_s=descale_s,
        scale_s=scale_s, scale_o=scale_o, generate_stats=False, attn_scale=1 / math.sqrt(D), use_causal_mask=False,
    )  # fmt: skip
    o.set_output(True).set_dim(list(out.shape)).set_stride(list(out.stride()))
    o.set_data_type(getattr(cudnn.data_type, out_type))
    plan(graph, (amax_s, amax_o))
    names = {"q": q, "k": k, "v": v, "descale_q": descale_q, "descale_k": descale_k, "descale_v": descale_v,
             "descale_s": descale_s, "scale_s": scale_s, "scale_o": scale_o, "o": o, "amax_s": amax_s,
             "amax_o": amax_o}  # fmt: skip
    return graph, names, torch.empty(graph.get_workspace_size(), device="cuda", dtype=torch.uint8)


def main(batch: int) -> None:
    import cudnn

    print("torch", torch.__version__, torch.cuda.get_device_name(), "cudnn backend", cudnn.backend_version())
    q, k, v = (torch.randn(batch, H, S, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    reference = F.scaled_dot_product_attention(q, k, v).float()
    print("bf16 torch sdpa ms", round(mean_ms(lambda: F.scaled_dot_product_attention(q, k, v)), 3))
    (q8, qs), (k8, ks), (v8, vs) = per_tensor(q), per_tensor(k), per_tensor(v)
    print("quantize qkv (eager, 3 tensors) ms", round(mean_ms(lambda: [per_tensor(t) for t in (q, k, v)]), 3))
    handle = cudnn.create_handle()
    for out_type in ("BFLOAT16", "FP8_E4M3"):
        dtype = torch.bfloat16 if out_type == "BFLOAT16" else torch.uint8
        out = torch.empty(batch, H, S, D, device="cuda", dtype=dtype)
        try:
            graph, t, workspace = fp8_graph(cudnn, handle, [q8, k8, v8], [qs, ks, vs], out, out_type)
            for s_scale in (1.0, 448.0):
                scale_s = torch.full((1, 1, 1, 1), s_scale, device="cuda")
                one = torch.ones(1, 1, 1, 1, device="cuda")
                pack = {
                    t["q"]: q8.view(torch.uint8), t["k"]: k8.view(torch.uint8), t["v"]: v8.view(torch.uint8),
                    t["descale_q"]: qs, t["descale_k"]: ks, t["descale_v"]: vs, t["descale_s"]: 1 / scale_s,
                    t["scale_s"]: scale_s, t["scale_o"]: one, t["o"]: out,
                    t["amax_s"]: torch.zeros_like(one), t["amax_o"]: torch.zeros_like(one),
                }  # fmt: skip
                graph.execute(pack, workspace, handle=handle)
                torch.cuda.synchronize()
                result = out.float() if out_type == "BFLOAT16" else out.view(torch.float8_e4m3fn).float()
                error = float((result - reference).norm() / reference.norm())
                ms = mean_ms(lambda: graph.execute(pack, workspace, handle=handle))  # noqa: B023 - run at once
                print(f"cudnn fp8 sdpa out={out_type} scale_s={s_scale}: rel err {error:.4f}, ms", round(ms, 3))
        except Exception as e:  # noqa: BLE001 - the probe reports what stopped it
            print("cudnn fp8", out_type, "FAILED", type(e).__name__, str(e)[:400])


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
