"""PNG files that carry their generation parameters (the A1111 ``parameters`` text chunk)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from ..request import GenerationRequest


def parameters_text(request: GenerationRequest, seed: int, revised_prompt: str | None, model: str) -> str:
    """A1111-style text: prompt, then ``Negative prompt:``, then ``Key: value`` pairs."""
    pairs = {
        "Steps": request.num_inference_steps,
        "Sampler": "FlowMatchEuler",
        "CFG scale": request.guidance_scale,
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model": model,
        "Prompt enhancer": "on" if request.use_pe else "off",
    }
    if revised_prompt:
        pairs["Revised prompt"] = json.dumps(revised_prompt, ensure_ascii=False)
    lines = [request.prompt, f"Negative prompt: {request.negative_prompt}"]
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs.items()))
    return "\n".join(lines)


def save_png(image, folder: Path, seed: int, parameters: str) -> Path:
    """Save ``image`` under a generated, safe name (time and seed only; nothing from user text)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = Path(folder) / f"ernie-{stamp}-{seed}.png"
    image.save(path, format="PNG", pnginfo=info)
    return path
