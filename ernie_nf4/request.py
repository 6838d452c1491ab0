"""A generation request: the one dataclass UI, API, CLI and benchmark build, validated at the boundary.

``GenerationRequest`` raises ``InvalidArgument`` (a ``ValueError``) naming the field and its range;
``request_from_form`` is the forgiving parser for UI/API values (snaps sizes, strips control characters).
Field names are the diffusers pipeline's and the API's (``num_inference_steps``, ``guidance_scale``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InvalidArgument

MAX_PROMPT_CHARS = 8000
SIZE_RANGE = (64, 2048)
SIZE_MULTIPLE = 16
STEPS_RANGE = (1, 200)
GUIDANCE_RANGE = (0.0, 30.0)
SEED_LIMIT = 2**63
IMAGES_RANGE = (1, 4)


def _check_int(name: str, value, low: int, high: int, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer in [{low}, {high}]{extra}, got {value!r}")
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be in [{low}, {high}]{extra}, got {value}")


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    seed: int = 1234
    use_pe: bool = True
    num_images: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidArgument("prompt must be a non-blank text")
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name)
            if not isinstance(text, str):
                raise InvalidArgument(f"{name} must be text, got {type(text).__name__}")
            if len(text) > MAX_PROMPT_CHARS:
                raise InvalidArgument(f"{name} must be at most {MAX_PROMPT_CHARS} characters, got {len(text)}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise InvalidArgument(
                    f"{name} holds a character that is not valid Unicode text at position {err.start}; retype it"
                ) from None
        for name in ("width", "height"):
            _check_int(name, getattr(self, name), *SIZE_RANGE, f" and a multiple of {SIZE_MULTIPLE}")
            if getattr(self, name) % SIZE_MULTIPLE:
                raise InvalidArgument(
                    f"{name} must be a multiple of {SIZE_MULTIPLE} in {list(SIZE_RANGE)}, got {getattr(self, name)}"
                )
        _check_int("num_inference_steps", self.num_inference_steps, *STEPS_RANGE)
        guidance = self.guidance_scale
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise InvalidArgument(f"guidance_scale must be a finite number in {list(GUIDANCE_RANGE)}, got {guidance!r}")
        if not GUIDANCE_RANGE[0] <= guidance <= GUIDANCE_RANGE[1]:
            raise InvalidArgument(f"guidance_scale must be in {list(GUIDANCE_RANGE)}, got {guidance}")
        _check_int("seed", self.seed, 0, SEED_LIMIT - IMAGES_RANGE[1])
        if not isinstance(self.use_pe, bool):
            raise InvalidArgument(f"use_pe must be true or false, got {self.use_pe!r}")
        _check_int("num_images", self.num_images, *IMAGES_RANGE)

    @property
    def seeds(self) -> list[int]:
        """Image ``i`` uses ``seed + i``: any image can be made again alone from its own seed."""
        return [self.seed + i for i in range(self.num_images)]


_CONTROL = {c: None for c in range(32) if chr(c) not in "\n\t"} | {127: None}


def _whole(name: str, value) -> int:
    """An integer from a form value: ints, and floats/strings holding a whole number; else ValueError."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, str):
        value = value.strip()
    try:
        number = float(value) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name} must be a whole number, got {value!r}") from None
    if isinstance(number, float) and (not math.isfinite(number) or not number.is_integer()):
        raise InvalidArgument(f"{name} must be a whole number, got {value!r}")
    return int(number)


def request_from_form(
    prompt,
    negative_prompt,
    width,
    height,
    num_inference_steps,
    guidance_scale,
    seed,
    use_pe,
    num_images,
) -> tuple[GenerationRequest, list[str]]:
    """A request from UI/API values, forgiving where a user would expect it, with notes of each change:
    control characters are removed from the prompts and a width/height inside the range is snapped to the
    nearest multiple of 16 (1000 -> 1008). Everything else out of range raises ``ValueError`` naming the field."""
    notes = []
    texts = {}
    for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt or "")):
        if not isinstance(text, str):
            raise InvalidArgument(f"{name} must be text, got {type(text).__name__}")
        cleaned = text.translate(_CONTROL)
        if cleaned != text:
            notes.append(f"{name}: removed {len(text) - len(cleaned)} control character(s)")
        texts[name] = cleaned
    sizes = {}
    for name, value in (("width", width), ("height", height)):
        size = _whole(name, value)
        if SIZE_RANGE[0] <= size <= SIZE_RANGE[1] and size % SIZE_MULTIPLE:
            snapped = min(SIZE_RANGE[1], (size + SIZE_MULTIPLE // 2) // SIZE_MULTIPLE * SIZE_MULTIPLE)
            notes.append(f"{name} {size} → {snapped} (a multiple of {SIZE_MULTIPLE})")
            size = snapped
        sizes[name] = size
    try:
        guidance = float(guidance_scale)
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"guidance_scale must be a finite number in {list(GUIDANCE_RANGE)}, got {guidance_scale!r}"
        ) from None
    if not isinstance(use_pe, bool):
        raise InvalidArgument(f"use_pe must be true or false, got {use_pe!r}")
    request = GenerationRequest(
        prompt=texts["prompt"],
        negative_prompt=texts["negative_prompt"],
        num_inference_steps=_whole("num_inference_steps", num_inference_steps),
        guidance_scale=guidance,
        seed=_whole("seed", seed),
        use_pe=use_pe,
        num_images=_whole("num_images", num_images),
        **sizes,
    )
    return request, notes
