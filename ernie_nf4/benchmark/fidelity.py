"""NF4 against bf16, and the fast path against the stock forward: ``python -m ernie_nf4.benchmark --fidelity``.

The transformer's relative output error at a few timesteps (same inputs), cosine similarity of the final latents,
PSNR and SSIM of the decoded images; beside them two yardsticks: the stock forward with another attention kernel
(bf16 rounding noise) and a float32 run of the NF4 weights. The images come from the generator's own stages
(``runtime.denoising``, ``runtime.vae_decode``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace

from ..compat import pad_text
from ..request import GenerationRequest
from ..runtime.denoising import denoise, initial_latents
from ..runtime.loader import load_pipeline
from ..runtime.vae_decode import decode
from ..system import free_device_memory

TIMESTEPS = (999.0, 500.0, 20.0)


def _ssim(a, b) -> float:
    """Mean SSIM of two grayscale images in [0, 1] (7x7 uniform windows)."""
    import torch.nn.functional as F

    c1, c2 = 0.01**2, 0.03**2
    a, b = a[None, None], b[None, None]
    mu_a, mu_b = F.avg_pool2d(a, 7, 1), F.avg_pool2d(b, 7, 1)
    var_a = F.avg_pool2d(a * a, 7, 1) - mu_a**2
    var_b = F.avg_pool2d(b * b, 7, 1) - mu_b**2
    cov = F.avg_pool2d(a * b, 7, 1) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim.mean())


def _relative_error(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _float(value):
    import torch

    return value.float() if torch.is_tensor(value) and value.is_floating_point() else value


def _float32_compute(model) -> None:
    """Make an NF4 (or bf16) model compute in float32: its 4-bit weights are dequantized to float32."""
    import bitsandbytes as bnb
    import torch

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.compute_dtype = torch.float32
        for key, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_floating_point():
                setattr(module, key, buffer.float())
    for param in model.parameters():
        if not isinstance(param, bnb.nn.Params4bit):
            param.data = param.data.float()


def _transformer_inputs(pipe, request: GenerationRequest, latents, device):
    """``inputs(t)``: the transformer's arguments for a CFG batch (negative, then positive) at timestep ``t``."""
    import torch

    text = pipe.encode_prompt([request.prompt], device)
    negative = pipe.encode_prompt([request.negative_prompt], device)
    text_bth, text_lens = pad_text(pipe, negative + text, device, latents.dtype)

    def inputs(t: float) -> dict:
        return dict(
            hidden_states=torch.cat([latents, latents]),
            text_bth=text_bth,
            text_lens=text_lens,
            timestep=torch.full((2,), t, device=device, dtype=latents.dtype),
            return_dict=False,
        )

    return inputs


def _transformer_outputs(bf16, nf4, inputs) -> dict:
    """Outputs per timestep of the bf16 transformer and of the NF4 one: fast path, stock forward (and with the math
    attention kernel), compiled fast path. Leaves ``nf4`` on the eager fast path."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..runtime.fast_transformer import compile_blocks, disable_fast_path, enable_fast_path

    out = {name: {} for name in ("bf16", "stock", "stock_math_attention", "fast", "compiled")}
    for t in TIMESTEPS:
        out["bf16"][t] = bf16(**inputs(t))[0]
        out["fast"][t] = nf4(**inputs(t))[0]
        disable_fast_path(nf4)
        out["stock"][t] = nf4(**inputs(t))[0]
        with sdpa_kernel(SDPBackend.MATH):  # the stock model with another attention kernel: bf16 noise
            out["stock_math_attention"][t] = nf4(**inputs(t))[0]
        enable_fast_path(nf4)
    compile_blocks(nf4)
    nf4(**inputs(TIMESTEPS[0]))  # the eager call that sets compilation up
    for t in TIMESTEPS:
        out["compiled"][t] = nf4(**inputs(t))[0]
    disable_fast_path(nf4)  # the image comparison runs the fast path eagerly (--no-compile)
    enable_fast_path(nf4)
    return out


def _final(pipe, request: GenerationRequest, latents, device):
    """Final latents and the decoded image (float64 array in [0, 1]) through the generator's stages."""
    import numpy as np

    positive = pipe.encode_prompt([request.prompt], device)
    negative = pipe.encode_prompt([request.negative_prompt], device)
    final = denoise(pipe, request, positive, negative, latents.clone())
    return final, np.asarray(decode(pipe, final)[0], dtype=np.float64) / 255.0


def _float32_outputs(nf4, inputs) -> dict:
    """The same NF4 weights computing in float32 (stock forward, math attention): a reference that tells rounding
    noise from real differences. Changes ``nf4`` for good: run it last."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..runtime.fast_transformer import disable_fast_path

    disable_fast_path(nf4)
    _float32_compute(nf4)
    with sdpa_kernel(SDPBackend.MATH):
        return {t: nf4(**{k: _float(v) for k, v in inputs(t).items()})[0] for t in TIMESTEPS}


def _compare(out: dict, fp32: dict, finals: dict, images: dict, request: GenerationRequest) -> dict:
    import numpy as np
    import torch

    def relative(a: str, b) -> dict:
        return {str(int(t)): _relative_error(out[a][t], b[t]) for t in TIMESTEPS}

    cosine = float(
        torch.nn.functional.cosine_similarity(finals["nf4"].flatten().float(), finals["bf16"].flatten().float(), dim=0)
    )
    mse = float(np.mean((images["nf4"] - images["bf16"]) ** 2))
    gray = {n: torch.from_numpy(im.mean(axis=2)).float() for n, im in images.items()}
    return {
        "transformer_relative_error": relative("fast", out["bf16"]),
        "fast_path_vs_stock_relative_error": relative("fast", out["stock"]),
        "compiled_vs_stock_relative_error": relative("compiled", out["stock"]),
        "stock_other_attention_kernel_relative_error": relative("stock_math_attention", out["stock"]),
        "vs_float32_relative_error": {name: relative(name, fp32) for name in ("stock", "fast", "compiled")},
        "final_latent_cosine": cosine,
        "psnr_db": float("inf") if mse == 0 else 10 * np.log10(1.0 / mse),
        "ssim": _ssim(gray["nf4"], gray["bf16"]),
        "settings": asdict(request),
    }


def _compute_errors(package: str, compute, device, inputs, out: dict, images: dict, request, latents) -> dict:
    """The package with its transformer's linear layers multiplying in ``compute`` (``runtime.compute``), against
    the bf16 original and against NF4 in bf16: transformer outputs (eager fast path), final image."""
    import numpy as np

    loaded = load_pipeline(package, device=device, compute=compute)
    try:
        ours = {t: loaded.pipe.transformer(**inputs(t))[0] for t in TIMESTEPS}
        _, image = _final(loaded.pipe, request, latents, device)
    finally:
        del loaded
        free_device_memory()
    mse = float(np.mean((image - images["bf16"]) ** 2))
    return {
        "transformer_relative_error": {str(int(t)): _relative_error(ours[t], out["bf16"][t]) for t in TIMESTEPS},
        "vs_nf4_bf16_relative_error": {str(int(t)): _relative_error(ours[t], out["fast"][t]) for t in TIMESTEPS},
        "psnr_db": float("inf") if mse == 0 else 10 * np.log10(1.0 / mse),
    }


def fidelity(original: str, package: str, request: GenerationRequest, device: str, log=print, computes=()) -> dict:
    """NF4 vs bf16 on the same seed and latents, PE off (see the module's docstring); logs a summary line. Each
    of ``computes`` (``runtime.compute`` modes other than bf16) is compared too (``result["computes"]``), but
    ``auto``: uncompiled it is bf16, compiled fp8's error above its rows."""
    import torch

    from ..runtime.compute import Compute

    request = replace(request, use_pe=False, num_images=1)
    pipes = {
        "bf16": load_pipeline(original, device=device, fast=False).pipe,
        "nf4": load_pipeline(package, device=device).pipe,
    }
    device = torch.device(device)
    reference, nf4 = pipes["bf16"], pipes["nf4"].transformer
    latents = initial_latents(reference, request.seed, request.width, request.height, device)
    with torch.no_grad():
        inputs = _transformer_inputs(reference, request, latents, device)
        out = _transformer_outputs(reference.transformer, nf4, inputs)
        finals, images = {}, {}
        for name, pipe in pipes.items():
            finals[name], images[name] = _final(pipe, request, latents, device)
        fp32 = _float32_outputs(nf4, inputs)
        del pipes, reference, nf4  # the compute modes load the package once more, alone beside these outputs
        free_device_memory()
        fixed = [c for c in computes if c is not Compute.AUTO]
        errors = {c.value: _compute_errors(package, c, device, inputs, out, images, request, latents) for c in fixed}
    result = _compare(out, fp32, finals, images, request) | ({"computes": errors} if errors else {})
    log(
        f"[fidelity] nf4 vs bf16 {json.dumps(result['transformer_relative_error'])}; "
        f"fast vs stock {json.dumps(result['fast_path_vs_stock_relative_error'])}; "
        f"compiled vs stock {json.dumps(result['compiled_vs_stock_relative_error'])}; "
        f"cosine {result['final_latent_cosine']:.4f} PSNR {result['psnr_db']:.2f} dB SSIM {result['ssim']:.4f}"
    )
    for name, e in errors.items():
        log(f"[fidelity] {name} vs bf16 {json.dumps(e['transformer_relative_error'])}; PSNR {e['psnr_db']:.2f} dB")
    return result
