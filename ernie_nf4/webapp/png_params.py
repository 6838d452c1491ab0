"""PNG files that carry their generation parameters, written and read here: the A1111-style ``parameters`` text
chunk (prompt lines, ``Negative prompt:`` lines, a last line of ``Key: value`` pairs). ``parameters_text`` and
``save_png`` write it; ``read_png_parameters`` / ``parse_parameters`` read it back into the form's fields (unknown
keys are ignored; a key that is missing leaves that field as it is)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from dataclasses import dataclass
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


# A1111's pattern for the last line's "Key: value" pairs; a value may be a JSON-quoted string holding commas.
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_NEGATIVE = "Negative prompt:"


@dataclass(frozen=True)
class FormSettings:
    """The form fields a PNG can restore; ``None`` where its text did not say."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    use_pe: bool | None = None


def _pairs(line: str) -> dict[str, str]:
    pairs = {}
    for key, value in _PAIR.findall(line):
        value = value.strip()
        if value.startswith('"'):
            with contextlib.suppress(json.JSONDecodeError):  # not JSON after all: keep the text as written
                value = json.loads(value)
        pairs[key.strip()] = value
    return pairs


def _number(kind, value):
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def parse_parameters(text: str) -> FormSettings:
    """``FormSettings`` from A1111 ``parameters`` text: prompt lines, ``Negative prompt:`` lines, ``Key: value`` line.
    Raises ``ValueError`` when the text holds no prompt."""
    lines = text.strip("\n").split("\n")
    pairs = {}
    if re.match(r"\s*(Steps|Seed|Size|CFG scale):", lines[-1]):
        pairs = _pairs(lines.pop())
    prompt_lines, negative_lines = lines, []
    for index, line in enumerate(lines):
        if line.startswith(_NEGATIVE):
            prompt_lines = lines[:index]
            negative_lines = [line[len(_NEGATIVE) :].strip(), *lines[index + 1 :]]
            break
    prompt = "\n".join(prompt_lines).strip()
    if not prompt:
        raise ValueError("the PNG's parameters hold no prompt")
    width = height = None
    if match := re.fullmatch(r"(\d+)\s*x\s*(\d+)", pairs.get("Size", "")):
        width, height = int(match[1]), int(match[2])
    pe = pairs.get("Prompt enhancer")
    return FormSettings(
        prompt=prompt,
        negative_prompt="\n".join(negative_lines).strip(),
        width=width,
        height=height,
        num_inference_steps=_number(int, pairs.get("Steps")),
        guidance_scale=_number(float, pairs.get("CFG scale")),
        seed=_number(int, pairs.get("Seed")),
        use_pe=None if pe is None else pe == "on",
    )


def read_png_parameters(path: str | Path) -> FormSettings:
    """The settings in a PNG's ``parameters`` chunk; ``ValueError`` naming the file when it has none."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            text = image.info.get("parameters")
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{Path(path).name} is not an image this app can read ({err})") from None
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{Path(path).name} carries no generation parameters (no 'parameters' text chunk)")
    return parse_parameters(text)
