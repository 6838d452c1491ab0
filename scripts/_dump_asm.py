import re, sys, torch
sys.path.insert(0, ".")
from ernie_nf4 import nf4_gemv as G
import bitsandbytes as bnb
lin = bnb.nn.Linear4bit(3072, 9216, bias=False, compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4", device="meta")
lin.weight = bnb.nn.Params4bit(torch.randn(9216, 3072, dtype=torch.bfloat16, device="cuda") * 0.02, requires_grad=False, compress_statistics=True, quant_type="nf4")
lin = lin.to("cuda")
x = torch.randn(1, 1, 3072, dtype=torch.bfloat16, device="cuda")
for cfg in (G.GemvConfig(8, 16, 8, True, False, 1), G.GemvConfig(8, 16, 8, False, False, 1)):
    n, k = 9216, 3072
    y = torch.empty(1, 1, n, dtype=torch.bfloat16, device="cuda")
    compiled = G._kernels().gemv[(G.triton_cdiv(n, cfg.rows),)](x, y, *G._operands(lin.weight), n, k, **G._meta(lin.weight, cfg))
    ptx = compiled.asm["ptx"]
    ttgir = compiled.asm["ttgir"]
    print("=====", cfg, "regs", getattr(compiled, "n_regs", None), "spills", getattr(compiled, "n_spills", None), "smem", compiled.metadata.shared)
    for op in ("ld.global", "ld.shared", "st.shared", "bar.sync", "shfl", "prmt", "fma.rn", "cvt", "ld.global.nc", "ld.global.v4", "ld.global.v2", "lop3", "shr", "mad"):
        print(op, len(re.findall(re.escape(op), ptx)))
    print([l for l in ttgir.splitlines() if "#blocked" in l and "=" in l][:8])
    print([l.strip()[:200] for l in ttgir.splitlines() if "convert_layout" in l][:12])
    sass = compiled.asm.get("sass")
    if sass: print("sass lines", len(sass.splitlines()))
