"""Fast path vs stock on the full-size NF4 transformer at 1024x1024, against a float32 reference."""
import sys, torch, bitsandbytes as bnb
from torch.nn.attention import SDPBackend, sdpa_kernel
from ernie_nf4.loader import load_pipeline
from ernie_nf4.benchmark import SEED_PROMPT
from ernie_nf4.generation import Generator
from ernie_nf4.fast_transformer import enable_fast_path, disable_fast_path
pipe = load_pipeline(sys.argv[1], fast=False)
g = Generator(pipe)
tr = pipe.transformer
lat = g.initial_latents(1234, 1024, 1024)
with torch.no_grad():
    text = pipe.encode_prompt([SEED_PROMPT], g.device); neg = pipe.encode_prompt([""], g.device)
    tb, tl = pipe._pad_text(neg + text, g.device, lat.dtype, tr.config.text_in_dim)
    print("text lens", tl.tolist())
    def inp(t, dt=torch.bfloat16):
        return dict(hidden_states=torch.cat([lat, lat]).to(dt), text_bth=tb.to(dt), text_lens=tl,
                    timestep=torch.full((2,), t, device=g.device, dtype=dt), return_dict=False)
    def rel(a, b): return float((a.float() - b.float()).norm() / b.float().norm())
    out = {}
    t = 500.0
    out["stock"] = tr(**inp(t))[0]
    with sdpa_kernel(SDPBackend.MATH): out["stock-math"] = tr(**inp(t))[0]
    enable_fast_path(tr)
    out["fast"] = tr(**inp(t))[0]
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION): out["fast-eff"] = tr(**inp(t))[0]
    with sdpa_kernel(SDPBackend.MATH): out["fast-math"] = tr(**inp(t))[0]
    disable_fast_path(tr)
    for m in tr.modules():
        if isinstance(m, bnb.nn.Linear4bit): m.compute_dtype = torch.float32
    for p in tr.parameters():
        if not isinstance(p, bnb.nn.Params4bit): p.data = p.data.float()
    for m in tr.modules():
        for k, b in m._buffers.items():
            if b is not None and b.is_floating_point(): m._buffers[k] = b.float()
    with sdpa_kernel(SDPBackend.MATH): ref = tr(**inp(t, torch.float32))[0]
    for k, v in out.items():
        print(f"{k:10} vs fp32 reference {rel(v, ref):.4f}   vs stock {rel(v, out['stock']):.4f}", flush=True)
