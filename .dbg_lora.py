import sys, os, torch
sys.path.insert(0, os.getcwd())
from ernie_nf4.runtime.loader import load_pipeline
from ernie_nf4.runtime.fast_transformer import dummy_call
from ernie_nf4.runtime.lora import LoraSlots
from ernie_nf4.request import LoraChoice
G = 2**30
for loras in ([], [("l", "/tmp/ernie-full/rank64.safetensors")]):
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loaded = load_pipeline("/tmp/ernie-full/ERNIE-Image-NF4", device="cuda", loras=loras)
    t = loaded.pipe.transformer
    lb = sum(b.numel() * b.element_size() for n, b in t.named_buffers() if "lora" in n)
    dts = {str(b.dtype) for n, b in t.named_buffers() if "lora" in n}
    print("loras", bool(loras), "after load GiB", (torch.cuda.memory_allocated() - base) / G, "lora buffers GiB", lb / G, dts, "load peak", torch.cuda.max_memory_allocated() / G, flush=True)
    if loaded.loras: loaded.loras.select([LoraChoice("l", 1.0)])
    with torch.no_grad():
        args = dummy_call(t, (64, 64), (100, 90))
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
        t(**args, return_dict=False)
        torch.cuda.synchronize()
        print("  forward peak over before GiB", (torch.cuda.max_memory_allocated() - before) / G, flush=True)
    del loaded, t, args
    import gc; gc.collect(); torch.cuda.empty_cache()
